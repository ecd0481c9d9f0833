"""Per-frame face tracking: keyframe bundling of identity and albedo, then warm-started Gauss-Newton per frame.

:class:`FaceTracker` is the solver half of video tracking (``facerender.tracking.video.track_video`` drives it over a
stream of frames):

* :meth:`FaceTracker.bundle` - Face2Face's model-based bundling: identity (shared) and per-keyframe pose, expression and
  lighting are estimated jointly over keyframes chosen for diversity, with one Levenberg-Marquardt loop whose normal
  equations have the block-arrow structure of a shared block (identity) and per-frame blocks; the step is solved by a
  Schur complement on the identity block. The per-vertex albedo is then estimated in closed form from the samples of
  all keyframes together (smoothness, symmetry, mean prior). Identity and albedo are FIXED afterwards (no drift).
* :meth:`FaceTracker.track_frame` - per frame: landmarks (68, sliding contour) + photometric colour on a face crop at
  ``config.size`` + priors + a temporal term that pulls pose / expression / lighting towards a constant-velocity
  prediction from the previous frames, solved by a few LM iterations warm-started from the previous frame. The
  identity is baked into the model once, so a frame solves only pose (6), expression (53) and SH (27). Gaze
  (``eyeLook*``) comes from the eye analysis when given (the 68 landmarks cannot see it) and is held fixed; frames
  without a face are bridged (the prediction is carried) and flagged.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from morphable_models import LinearFaceModel

from ..errors import FittingError
from ..fitting.albedo import AlbedoConfig, VertexAlbedoEstimator, mirror_vertex_map
from ..fitting.energies import EnergyProblem, LandmarkTerm, PriorTerm
from ..fitting.fit_image import crop_face
from ..fitting.landmark_fit import LandmarkFitConfig, default_focal, fit_landmarks
from ..fitting.params import Block, ParameterLayout, model_bounds
from ..fitting.photometric import PhotometricTerm, sample_bilinear
from ..fitting.solver import GaussNewtonConfig, LeastSquaresProblem, solve
from ..render.lighting import ambient_light, sh_basis

log = logging.getLogger(__name__)

GAZE_SHAPES = ("eyeLookDown_L", "eyeLookDown_R", "eyeLookIn_L", "eyeLookIn_R", "eyeLookOut_L", "eyeLookOut_R",
               "eyeLookUp_L", "eyeLookUp_R")


@dataclass
class TrackerConfig:
    """Settings of :class:`FaceTracker` (defaults: the shipped weights, see docs/tracking.md).

    Attributes:
        landmark: landmark and prior weights (shared with single-image fitting).
        photometric: use the colour term per frame.
        size: side of the square face crop of the colour term (pixels); crop_scale: crop side / landmark box side.
        max_samples: colour samples per frame.
        iterations: LM iterations per frame.
        w_color, w_sh, w_identity: colour weight, SH and identity prior weights of the bundling and per-frame
            photometric solves (as in :class:`~facerender.fitting.fit_image.FitConfig`).
        w_temporal: weight of the temporal term; temporal_sigma: per-frame change that costs one unit, per block.
        velocity: fraction of the last velocity in the prediction (0: previous frame, 1: constant velocity).
        bundle_iterations, bundle_levels: bundling budget; bundle_size: crop side during bundling.
        max_bridge: frames a lost face is bridged with the prediction before the pose is frozen.
        albedo: per-vertex albedo settings.
        landmark_identity: when :meth:`FaceTracker.bundle` is given ``identity_landmarks`` (``track_video`` gives the
            keyframe candidates: up to 60 frames spread over the video), the identity is the fixed identity that
            best explains all of them (:func:`landmark_identity`, with the landmark fit's identity prior) and is
            held fixed in the photometric bundling (which then estimates pose, expression, light and the albedo);
            False: the identity of the joint photometric bundling of the keyframes (before 2026-12).
        identity_rounds: alternations of :func:`landmark_identity`.
    """

    landmark: LandmarkFitConfig = field(default_factory=LandmarkFitConfig)
    photometric: bool = True
    size: int = 128
    crop_scale: float = 1.6
    max_samples: int = 1500
    iterations: int = 3
    w_color: float = 0.003
    w_sh: float = 1e-5
    w_identity: float = 1e-6
    w_temporal: float = 1e-5
    temporal_sigma: Dict[str, float] = field(default_factory=lambda: {
        "rotation": 0.02, "translation": 0.3, "expression": 0.15, "sh": 0.2})
    velocity: float = 0.5
    bundle_iterations: int = 8
    bundle_size: int = 192
    max_bridge: int = 30
    albedo: AlbedoConfig = field(default_factory=AlbedoConfig)
    landmark_identity: bool = False
    identity_rounds: int = 4


@dataclass
class FrameResult:
    """Per-frame output of :meth:`FaceTracker.track_frame` (numpy arrays).

    Attributes:
        rotation (3,) axis-angle (model space), translation (3,) cm (camera space), expression (K_exp,), sh (9, 3),
        landmarks_2d (68, 2) the fitted landmarks (model points matched to the targets; the 17 jawline points slide
        along the contour with the detections), model_landmarks_2d (68, 2) the projection of the model's fixed
        iBUG-68 vertices (independent of the detections: what the jitter of the track is measured on), energy
        (float, NaN when no solve ran), flags (e.g. "no_face", "bridged", "solver_failed"), solve_ms, psnr (dB: the
        solved render's colour against the frame over the photometric term's samples of the face mask in the
        ``size``^2 crop, :meth:`PhotometricTerm.psnr`; NaN without a photometric solve).
    """

    rotation: np.ndarray
    translation: np.ndarray
    expression: np.ndarray
    sh: np.ndarray
    landmarks_2d: np.ndarray
    energy: float
    flags: List[str] = field(default_factory=list)
    solve_ms: float = 0.0
    model_landmarks_2d: Optional[np.ndarray] = None
    psnr: float = float("nan")


def model_with_identity(model: LinearFaceModel, identity: torch.Tensor) -> LinearFaceModel:
    """A copy of ``model`` whose template includes ``identity (K_id,)`` and which has no identity basis."""
    V = model.num_vertices
    template = model.template + (identity.to(model.dtype) @ model.identity_basis).view(V, 3)
    return LinearFaceModel(
        template, model.faces, None, model.expression_basis.view(-1, V, 3),
        expression_std=model.expression_std, expression_names=model.expression_names,
        expression_kind=model.expression_kind, expression_lower=model.expression_lower,
        expression_upper=model.expression_upper, uvs=model.uvs, faces_uv=model.faces_uv,
        landmarks=model.landmarks, regions=model.regions, name=model.name + "+identity", license=model.license,
        units=model.units, dtype=model.dtype, extra={k: v for k, v in model.extra.items() if isinstance(k, str)},
    ).to(model.device)


def _temporal_terms(cfg: TrackerConfig, layout: ParameterLayout, prediction: Dict[str, torch.Tensor], dt, dev):
    terms = []
    for block, sigma in cfg.temporal_sigma.items():
        if block in layout and block in prediction:
            n = layout.slices[block].stop - layout.slices[block].start
            terms.append(PriorTerm(block, cfg.w_temporal, torch.full((n,), float(sigma), dtype=dt, device=dev),
                                   mean=prediction[block]))
            terms[-1].name = f"temporal_{block}"
    return terms


class FaceTracker:
    """Tracks one face through a video (see the module docstring).

    Args:
        model: the full model (``load_ict()``); its dtype is used.
        config: :class:`TrackerConfig`.
        image_size: ``(H, W)`` of the frames.
        fps: frame rate (informational: the temporal weights are per frame).
    """

    def __init__(self, model: LinearFaceModel, config: Optional[TrackerConfig] = None,
                 image_size: Tuple[int, int] = (512, 512), fps: float = 30.0):
        self.model = model
        self.cfg = config or TrackerConfig()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.fps = float(fps)
        self.dt, self.dev = model.dtype, model.device
        H, W = self.image_size
        lc = self.cfg.landmark
        self.focal = float(lc.focal or default_focal((H, W), lc.focal_factor))
        self.pp = torch.tensor([[W / 2.0, H / 2.0]], dtype=self.dt, device=self.dev)
        self.identity = torch.zeros(model.num_identity, dtype=self.dt, device=self.dev)
        self.albedo: Optional[torch.Tensor] = None
        self.video_params: Dict[str, object] = {}
        self._id_model: Optional[LinearFaceModel] = None
        self._region_model: Optional[LinearFaceModel] = None
        self.history: List[Dict[str, torch.Tensor]] = []  # last two solved/bridged parameter sets
        self.bridged = 0
        self._crop: Optional[Tuple[float, float, float]] = None
        self.gaze_index = [model.expression_names.index(n) for n in GAZE_SHAPES if n in model.expression_names]

    # ------------------------------------------------------------------------------------------------ bundling
    def bundle(self, frames: Sequence[np.ndarray], landmarks: Sequence[np.ndarray],
               confidences: Optional[Sequence[np.ndarray]] = None, identity_landmarks: Optional[np.ndarray] = None,
               identity_confidences: Optional[np.ndarray] = None, progress=None) -> dict:
        """Estimate identity (and albedo) jointly over keyframes (``frames``: K ``(H, W, 3)`` uint8, ``landmarks``:
        K ``(68, 2)``). With ``identity_landmarks (N, 68, 2)`` (and ``identity_confidences (N, 68)``) and
        ``config.landmark_identity``, the identity is :func:`landmark_identity` of those frames, held fixed in the
        bundling. ``progress``: a bar (``facerender.progress.stage_bar``) whose total is set and stepped here.
        Returns the per-video parameters."""
        from ..progress import NullBar

        bar = progress if progress is not None else NullBar()
        if len(frames) == 0 or len(frames) != len(landmarks):
            raise FittingError(f"bundle needs as many frames as landmark sets (>= 1), got {len(frames)} frames and "
                               f"{len(landmarks)} landmark sets")
        cfg, dt, dev = self.cfg, self.dt, self.dev
        K = len(frames)
        pts = torch.as_tensor(np.stack(landmarks), dtype=dt, device=dev)
        conf = (torch.as_tensor(np.stack(confidences), dtype=dt, device=dev) if confidences is not None
                else torch.ones(K, 68, dtype=dt, device=dev))
        # 1. independent landmark fits (batched) for initial poses and expressions
        fix_identity = identity_landmarks is not None and cfg.landmark_identity and len(identity_landmarks) > 0
        bar.total = 1 + int(bool(fix_identity)) + self._BUNDLE_ROUNDS + 1  # landmarks, identity, rounds, albedo
        lres = fit_landmarks(self.model, pts, self.image_size, conf, cfg.landmark, focal=self.focal)
        identity = lres.identity.mean(0)
        bar.update()
        if fix_identity:
            il = np.asarray(identity_landmarks, np.float64).reshape(-1, 68, 2)
            ic = (np.asarray(identity_confidences, np.float64).reshape(-1, 68) if identity_confidences is not None
                  else np.ones(il.shape[:2]))
            ident, _ = landmark_identity(self.model, il, ic, self.image_size, self.focal,
                                         self.pp[0].cpu().numpy(), identity.detach().cpu().numpy(),
                                         rounds=cfg.identity_rounds, config=cfg.landmark)
            identity = torch.as_tensor(ident, dtype=dt, device=dev)
            bar.update()
        values = {"rotation": lres.rotation, "translation": lres.translation,
                  "identity": identity.expand(K, -1).clone(), "expression": lres.expression,
                  "focal": torch.full((K, 1), self.focal, dtype=dt, device=dev),
                  "sh": ambient_light(1.0, K, dtype=dt, device=dev).reshape(K, 27)}
        # 2. joint landmark (+ colour) bundling with a shared identity
        images = [torch.from_numpy(np.ascontiguousarray(f)).to(dt) / 255.0 for f in frames]
        values, albedo = self._bundle_photometric(images, pts, conf, values, fix_identity, bar)
        self.identity = values["identity"][0].clone()
        self.albedo = albedo
        self._id_model = model_with_identity(self.model, self.identity)
        self._region_model = self._id_model.submodel("face") if self.cfg.photometric else None
        self.video_params = {
            "identity": self.identity.cpu().numpy(), "albedo": None if albedo is None else albedo.cpu().numpy(),
            "focal": self.focal, "principal_point": self.pp[0].cpu().numpy(), "image_size": self.image_size,
            "keyframe_params": {k: v.detach().cpu().numpy() for k, v in values.items()},
        }
        # the keyframe mean pose/expression seeds the first frame only if no frame was tracked yet
        return self.video_params

    _BUNDLE_ROUNDS = 2  #: alternations (samples, albedo, joint solve) of the bundling

    def _bundle_photometric(self, images, pts, conf, values, fix_identity: bool = False, bar=None):
        cfg, dt, dev, model = self.cfg, self.dt, self.dev, self.model
        K = pts.shape[0]
        lc = cfg.landmark
        region = model.submodel("face")
        mirror = model.extra.get("mirror_face")
        if mirror is None:
            mirror = mirror_vertex_map(region.template.detach().cpu().double().numpy())
            model.extra["mirror_face"] = mirror
        estimator = VertexAlbedoEstimator(region.num_vertices, region.faces.cpu().numpy(), mirror=mirror,
                                          config=cfg.albedo)
        size = cfg.bundle_size
        crops, f_c, pp_c, tg = [], [], [], []
        for k in range(K):
            p = pts[k].cpu().numpy()
            lo, hi = p.min(0), p.max(0)
            c = ((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2)
            side = float(max(hi - lo)) * cfg.crop_scale
            s = size / side
            crops.append(crop_face(images[k], c, side, size))
            f_c.append(self.focal * s)
            pp_c.append(((self.pp[0] - torch.tensor([c[0] - side / 2, c[1] - side / 2], dtype=dt)) * s))
            tg.append((pts[k] - torch.tensor([c[0] - side / 2, c[1] - side / 2], dtype=dt)) * s)
        img = torch.stack(crops).to(dev)
        pp = torch.stack(pp_c).to(dev)
        values = dict(values)
        values["focal"] = torch.tensor(f_c, dtype=dt, device=dev)[:, None]
        lterm = LandmarkTerm(model, torch.stack(tg).to(dev), conf, lc.w_landmark, lc.sliding_contour, huber=lc.huber)
        albedo = torch.full((region.num_vertices, 3), 0.5, dtype=dt, device=dev)
        terms = [lterm]
        pterm = None
        if cfg.photometric:
            pterm = PhotometricTerm(region, img, albedo, cfg.w_color, max_samples=cfg.max_samples * 2)
            terms.append(pterm)
        K_ex = model.num_expression
        # the identity is shared: each of the K items carries 1/K of its prior (the Schur step sums the items)
        if not fix_identity:
            terms.append(PriorTerm("identity", cfg.w_identity / K, model.identity_std.to(dt)))
        terms += [PriorTerm("expression", lc.w_expression, torch.full((K_ex,), lc.expression_sigma, dtype=dt,
                                                                      device=dev)),
                  PriorTerm("sh", cfg.w_sh, torch.ones(27, dtype=dt, device=dev),
                            mean=ambient_light(1.0, 1, dtype=dt, device=dev).reshape(1, 27))]
        blocks = ([] if fix_identity else [Block("identity", model.num_identity)]) + [
            Block("rotation", 3), Block("translation", 3), Block("expression", K_ex, 0.0, 1.0)]
        if cfg.photometric:
            blocks.append(Block("sh", 27))
        layout = ParameterLayout(blocks)
        problem = EnergyProblem(layout, terms, {k: v for k, v in values.items() if k not in layout}, pp)
        x = layout.join(values)
        lo, hi = model_bounds(layout, x, model)  # the model's expression ranges ([0, 1] for ICT, PCA bounds ...)
        for rnd in range(self._BUNDLE_ROUNDS):
            kin = problem.kinematics(x, False)
            lterm.freeze_contour(kin)
            if pterm is not None:
                pterm.update_samples(kin)
                albedo = self._albedo_from_samples(pterm, problem, x, estimator, albedo)
                pterm.albedo = albedo[None].expand(K, -1, -1)
                pterm.update_samples(kin)
            x = shared_block_lm(problem, x, layout.slices.get("identity", slice(0, 0)), lo, hi,
                                cfg.bundle_iterations)
            if bar is not None:
                bar.update()
        values.update(layout.split(x))
        if pterm is not None:
            kin = problem.kinematics(x, False)
            pterm.update_samples(kin)
            albedo = self._albedo_from_samples(pterm, problem, x, estimator, albedo)
        else:
            albedo = None
        if bar is not None:
            bar.update()
        values["focal"] = torch.full((K, 1), self.focal, dtype=dt, device=dev)
        return values, albedo

    @torch.no_grad()
    def _albedo_from_samples(self, pterm, problem, x, estimator, previous):
        kin = problem.kinematics(x, False)
        s = pterm.samples
        X = s["T"] + (s["Bs"] @ kin.coeffs[:, None, :, None]).squeeze(-1)
        uv = kin.project(kin.camera_points(X))
        obs = sample_bilinear(pterm.image, uv)
        n = s["normal"] @ kin.M.transpose(1, 2)
        L = kin.p["sh"].reshape(-1, 9, 3)
        shade = ((sh_basis(n) * pterm.kernel) @ L).clamp_min(1e-3)
        valid = s["valid"] > 0
        if int(valid.sum()) < 50:
            return previous
        try:
            a = estimator(s["face_vertices"][valid], s["bary"][valid], obs[valid].clamp(0, 1), shade[valid])
        except (ValueError, RuntimeError) as e:
            log.warning("albedo estimation failed (%s); keeping the previous albedo", e)
            return previous
        return torch.as_tensor(a, dtype=x.dtype, device=x.device)

    # ------------------------------------------------------------------------------------------------ per frame
    def _prediction(self) -> Optional[Dict[str, torch.Tensor]]:
        if not self.history:
            return None
        last = self.history[-1]
        if len(self.history) < 2 or self.cfg.velocity <= 0:
            return {k: v.clone() for k, v in last.items()}
        prev = self.history[-2]
        v = self.cfg.velocity
        pred = {k: last[k] + v * (last[k] - prev[k]) for k in last}
        ex = pred["expression"]
        pred["expression"] = torch.maximum(torch.minimum(ex, self._id_model.expression_upper),
                                           self._id_model.expression_lower)
        return pred

    def restart(self) -> None:
        """Forget the motion history: the next frame with a face is initialised from its landmarks (flag
        ``reinitialised``) instead of being warm-started from a prediction (``track_video`` calls this when the
        points jumped away from the last model landmarks: a re-seeded or re-detected track, a cut)."""
        self.history = []
        self.bridged = 0
        self._crop = None

    def _push(self, values: Dict[str, torch.Tensor]) -> None:
        self.history = (self.history + [{k: v.detach().clone() for k, v in values.items()}])[-2:]

    def track_frame(self, frame: Optional[np.ndarray], landmarks: Optional[np.ndarray],
                    confidence: Optional[np.ndarray] = None, gaze: Optional[Dict[str, float]] = None,
                    solve_fn=None) -> FrameResult:
        """Solve one frame (see the module docstring). ``frame`` is ``(H, W, 3)`` uint8 RGB or None; ``landmarks``
        ``(68, 2)`` or None (no face); ``gaze`` maps eyeLook* names to weights in [0, 1].

        ``solve_fn(build, x0, lower, upper) -> (params (1, P), energy float)`` replaces the Gauss-Newton solve
        (e.g. the Adam baseline of the benchmarks); ``build(size)`` returns the frame's :class:`EnergyProblem` at a
        crop of ``size`` pixels (the same parameter layout at every size)."""
        t0 = time.perf_counter()
        if self._id_model is None:
            raise FittingError("call bundle(...) before track_frame(...)")
        cfg, dt, dev = self.cfg, self.dt, self.dev
        pred = self._prediction()
        flags: List[str] = []
        have_face = frame is not None and landmarks is not None and np.isfinite(np.asarray(landmarks)).all()
        if not have_face:
            return self._bridge(pred, ["no_face"], t0)
        pts = torch.as_tensor(np.asarray(landmarks, dtype=np.float64), dtype=dt, device=dev)[None]
        conf = (torch.as_tensor(np.asarray(confidence, dtype=np.float64), dtype=dt, device=dev)[None]
                if confidence is not None else torch.ones(1, 68, dtype=dt, device=dev))
        model = self._id_model
        lc = cfg.landmark
        if pred is None or self.bridged > cfg.max_bridge:
            # (re)initialise from landmarks
            init = fit_landmarks(model, pts, self.image_size, conf, replace_cfg(lc, fit_identity=False),
                                 focal=self.focal)
            start = {"rotation": init.rotation, "translation": init.translation, "expression": init.expression,
                     "sh": (pred["sh"] if pred is not None else
                            ambient_light(1.0, 1, dtype=dt, device=dev).reshape(1, 27))}
            temporal_pred = None
            flags.append("reinitialised")
        else:
            start = pred
            temporal_pred = pred
        expr_lo = model.expression_lower.clone()
        expr_hi = model.expression_upper.clone()
        if gaze:
            for name, w in gaze.items():
                if name in model.expression_names:
                    i = model.expression_names.index(name)
                    w = float(min(max(w, float(expr_lo[i])), float(expr_hi[i])))
                    expr_lo[i] = expr_hi[i] = w
                    start = dict(start)
                    start["expression"] = start["expression"].clone()
                    start["expression"][:, i] = w
        values = {k: v.clone() for k, v in start.items()}
        values["identity"] = torch.zeros(1, 0, dtype=dt, device=dev)
        # colour crop around the landmarks (smoothed box)
        p = pts[0].cpu().numpy()
        lo_xy, hi_xy = p.min(0), p.max(0)
        box = ((lo_xy[0] + hi_xy[0]) / 2, (lo_xy[1] + hi_xy[1]) / 2, float(max(hi_xy - lo_xy)) * cfg.crop_scale)
        if self._crop is not None and not flags:
            a = 0.5
            box = tuple(a * b + (1 - a) * c for b, c in zip(box, self._crop))
        self._crop = box
        cx, cy, side = box
        K_ex = model.num_expression
        blocks = [Block("rotation", 3), Block("translation", 3), Block("expression", K_ex, 0.0, 1.0)]
        if cfg.photometric:
            blocks.append(Block("sh", 27))
        layout = ParameterLayout(blocks)
        frame_t = torch.from_numpy(np.ascontiguousarray(frame))
        built = {}

        def build(size: int):
            """The frame's energy at a crop of ``size`` pixels (cached); returns (problem, landmark term, scale, off)."""
            if size in built:
                return built[size]
            s = size / side
            off = torch.tensor([[cx - side / 2, cy - side / 2]], dtype=dt, device=dev)
            pp = (self.pp - off) * s
            vals = dict(values)
            vals["focal"] = torch.full((1, 1), self.focal * s, dtype=dt, device=dev)
            lterm = LandmarkTerm(model, (pts - off) * s, conf, lc.w_landmark, lc.sliding_contour, huber=lc.huber)
            terms = [lterm]
            pterm = None
            if cfg.photometric:
                img = crop_face(frame_t, (cx, cy), side, size).to(dt)
                pterm = PhotometricTerm(self._region_model, img[None].to(dev), self.albedo, cfg.w_color,
                                        max_samples=max(200, int(cfg.max_samples * (size / cfg.size) ** 2)))
                terms.append(pterm)
            terms.append(PriorTerm("expression", lc.w_expression,
                                   torch.full((K_ex,), lc.expression_sigma, dtype=dt, device=dev)))
            if cfg.photometric:
                terms.append(PriorTerm("sh", cfg.w_sh, torch.ones(27, dtype=dt, device=dev),
                                       mean=ambient_light(1.0, 1, dtype=dt, device=dev).reshape(1, 27)))
            if temporal_pred is not None:
                terms += _temporal_terms(cfg, layout, temporal_pred, dt, dev)
            problem = EnergyProblem(layout, terms, {k: v for k, v in vals.items() if k not in layout}, pp)
            kin = problem.kinematics(layout.join(values), False)
            lterm.freeze_contour(kin)
            n = pterm.update_samples(kin) if pterm is not None else None
            built[size] = (problem, lterm, s, off, n)
            return built[size]

        problem, lterm, s, off, n_samples = build(cfg.size)
        if n_samples is not None and n_samples < 30:
            flags.append("few_colour_samples")
        x0 = layout.join(values)
        lo, hi = layout.bounds(x0)
        es = layout.slices["expression"]
        lo[es], hi[es] = expr_lo, expr_hi
        if solve_fn is None:
            res = solve(LeastSquaresProblem(normal_equations=problem.normal_equations, lower=lo, upper=hi),
                        x0, GaussNewtonConfig(max_iterations=cfg.iterations, rtol=1e-4, linear_solver="cholesky",
                                              check_rank=False))
            status = res.status_names()[0]
            params, energy = res.params, float(res.energy[0])
        else:
            params, energy = solve_fn(lambda size: build(size)[0], x0, lo, hi)
            status = "converged" if torch.isfinite(params).all() else "failed_nan"
        if status in ("failed_nan", "singular") or not torch.isfinite(params).all():
            flags.append(f"solver_{status}")
            return self._bridge(pred, flags, t0)
        values.update(layout.split(params))
        # projected landmarks in full-image pixels
        with torch.no_grad():
            problem.residuals(params)
        lm2d = lterm.last_uv[0] / s + off[0]
        psnr = float("nan")
        for term in problem.terms:
            if isinstance(term, PhotometricTerm):
                psnr = float(term.psnr()[0])
        out = {k: values[k] for k in ("rotation", "translation", "expression")}
        fixed_lm = self._project_model_landmarks(out)
        out["sh"] = values.get("sh", ambient_light(1.0, 1, dtype=dt, device=dev).reshape(1, 27))
        self._push(out)
        self.bridged = 0
        return FrameResult(
            rotation=out["rotation"][0].cpu().numpy(), translation=out["translation"][0].cpu().numpy(),
            expression=out["expression"][0].cpu().numpy(), sh=out["sh"][0].reshape(9, 3).cpu().numpy(),
            landmarks_2d=lm2d.cpu().numpy(), energy=energy, flags=flags,
            solve_ms=(time.perf_counter() - t0) * 1e3, model_landmarks_2d=fixed_lm, psnr=psnr)

    @torch.no_grad()
    def _project_model_landmarks(self, p: Dict[str, torch.Tensor]) -> np.ndarray:
        """The model's fixed iBUG-68 vertices projected with parameters ``p`` -> ``(68, 2)`` pixels."""
        from morphable_models.geometry import model_to_camera

        model = self._id_model or self.model
        lm_ids = torch.as_tensor(model.landmarks["ibug68"].vertex_index, device=self.dev)
        V = model.num_vertices
        X = model.template[lm_ids] + (p["expression"] @ model.expression_basis).view(-1, V, 3)[:, lm_ids]
        Xc = model_to_camera(X, p["rotation"], p["translation"])
        uv = Xc[..., :2] / Xc[..., 2:].clamp_min(1e-3) * self.focal + self.pp[:, None]
        return np.nan_to_num(uv[0].cpu().numpy())

    def _bridge(self, pred, flags, t0) -> FrameResult:
        """No usable solve: carry the prediction (velocity decays) and flag the frame."""
        dt, dev = self.dt, self.dev
        if pred is None:
            K = self.model.num_expression
            pred = {"rotation": torch.zeros(1, 3, dtype=dt, device=dev),
                    "translation": torch.tensor([[0.0, 0.0, 60.0]], dtype=dt, device=dev),
                    "expression": torch.zeros(1, K, dtype=dt, device=dev),
                    "sh": ambient_light(1.0, 1, dtype=dt, device=dev).reshape(1, 27)}
            flags = flags + ["no_track_yet"]
        else:
            # bridge with zero velocity after the first frame: push the prediction twice
            self._push(pred)
            self._push(pred)
        self.bridged += 1
        uv = self._project_model_landmarks(pred)
        return FrameResult(
            rotation=pred["rotation"][0].cpu().numpy(), translation=pred["translation"][0].cpu().numpy(),
            expression=pred["expression"][0].cpu().numpy(), sh=pred["sh"][0].reshape(9, 3).cpu().numpy(),
            landmarks_2d=uv, energy=float("nan"), flags=flags + ["bridged"],
            solve_ms=(time.perf_counter() - t0) * 1e3, model_landmarks_2d=uv)

    # ------------------------------------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {"identity": self.identity.cpu().numpy(),
                "albedo": None if self.albedo is None else self.albedo.cpu().numpy(),
                "focal": self.focal, "history": [{k: v.cpu().numpy() for k, v in h.items()} for h in self.history],
                "bridged": self.bridged, "crop": self._crop, "image_size": self.image_size}

    def load_state_dict(self, d: dict) -> None:
        dt, dev = self.dt, self.dev
        self.identity = torch.as_tensor(d["identity"], dtype=dt, device=dev)
        self.albedo = None if d.get("albedo") is None else torch.as_tensor(d["albedo"], dtype=dt, device=dev)
        self.focal = float(d["focal"])
        self.history = [{k: torch.as_tensor(v, dtype=dt, device=dev) for k, v in h.items()}
                        for h in d.get("history", [])]
        self.bridged = int(d.get("bridged", 0))
        self._crop = tuple(d["crop"]) if d.get("crop") is not None else None
        self._id_model = model_with_identity(self.model, self.identity)
        self._region_model = self._id_model.submodel("face") if self.cfg.photometric else None
        self.video_params = {"identity": d["identity"], "albedo": d.get("albedo"), "focal": self.focal,
                             "principal_point": self.pp[0].cpu().numpy(), "image_size": self.image_size}


def landmark_identity(model: LinearFaceModel, landmarks: np.ndarray, confidence: np.ndarray,
                      image_size: Tuple[int, int], focal: float, principal_point: np.ndarray, start: np.ndarray,
                      rounds: int = 6, config: Optional[LandmarkFitConfig] = None) -> Tuple[np.ndarray, float]:
    """The fixed identity that best explains the landmarks of many frames: alternate per-frame landmark fits with
    that identity held fixed (pose, expression, sliding contour) and joint Gauss-Newton steps on the one identity
    over all frames (their poses, expressions and contours held), with the landmark fit's identity prior
    (``config.w_identity``). Returns the identity of the round with the lowest mean distance of the fitted landmarks
    from ``landmarks``, and that distance (px).

    Args:
        model: the full model.
        landmarks: ``(N, 68, 2)`` pixels; confidence: ``(N, 68)``.
        image_size: ``(H, W)``; focal: px; principal_point: ``(2,)`` px.
        start: ``(K_id,)`` the first identity.
        rounds: alternations.
    """
    from ..fitting.landmark_np import LandmarkEnergyNp, rodrigues_np

    cfg = config or LandmarkFitConfig()
    T = np.asarray(landmarks, np.float64).reshape(-1, 68, 2)
    C = np.asarray(confidence, np.float64).reshape(-1, 68)
    n = T.shape[0]
    if n == 0 or C.shape[0] != n:
        raise ValueError(f"landmark_identity needs N >= 1 landmark sets (N, 68, 2) and confidences (N, 68), got "
                         f"{T.shape} and {C.shape}")
    pp = np.asarray(principal_point, np.float64).reshape(2)
    dt = model.dtype
    det = torch.as_tensor(T, dtype=dt)
    conf = torch.as_tensor(C, dtype=dt)
    ppt = torch.as_tensor(pp, dtype=dt)[None].expand(n, 2)
    dp = cfg.w_identity / model.identity_std.double().cpu().numpy() ** 2
    lay = ParameterLayout([Block("identity", model.num_identity)])
    a = np.asarray(start, np.float64).reshape(-1).copy()
    best = (np.inf, a.copy())
    for _ in range(max(1, int(rounds))):
        res = fit_landmarks(model, det, image_size, conf, cfg, focal=focal, principal_point=ppt,
                            fixed_identity=torch.as_tensor(a, dtype=dt)[None].expand(n, -1))
        d = float(np.linalg.norm(res.landmarks_2d.double().numpy() - T, axis=-1).mean())
        if d < best[0]:
            best = (d, a.copy())
        for _ in range(2):
            Hs, gs = np.zeros((a.size, a.size)), np.zeros(a.size)
            for k in range(n):
                term = LandmarkEnergyNp(model, T[k], C[k], cfg.w_landmark, cfg.sliding_contour, cfg.huber, {})
                rot, t = res.rotation[k].double().numpy(), res.translation[k].double().numpy()
                ex = res.expression[k].double().numpy()
                term.freeze(rodrigues_np(rot)[0], t, np.concatenate([a, ex]), focal, pp)
                H, g, _ = term.normal_equations(a.copy(), lay, {"rotation": rot, "translation": t, "expression": ex,
                                                                "focal": np.array([focal])}, pp)
                Hs += H
                gs += g
            Hs[np.diag_indices(a.size)] += dp + 1e-6 * np.diagonal(Hs)
            a = a - np.linalg.solve(Hs, gs + dp * a)
    return best[1], best[0]


def replace_cfg(cfg, **kw):
    from dataclasses import replace

    return replace(cfg, **kw)


# ------------------------------------------------------------------------------------------------------------------
# Levenberg-Marquardt with a block shared by all batch items (Schur complement)


def shared_block_lm(problem: EnergyProblem, x: torch.Tensor, shared: slice, lower: torch.Tensor,
                    upper: torch.Tensor, iterations: int, damping: float = 1e-4) -> torch.Tensor:
    """Minimise ``sum_b E_b(x_b)`` where the parameters ``x[:, shared]`` are one vector common to all items.

    The normal equations have a block-arrow structure: per item ``[[H_ss, H_sf], [H_fs, H_ff]]``; the shared step
    solves the Schur complement ``sum_b (H_ss - H_sf H_ff^-1 H_fs)`` and each item's own step follows by back
    substitution. Levenberg-Marquardt damping (Marquardt scaling), a step is accepted when the total energy
    decreases; bounds by projection. Returns the new ``(B, P)`` (shared columns equal across rows).
    """
    B, P = x.shape
    idx = torch.arange(P, device=x.device)
    s_mask = (idx >= shared.start) & (idx < shared.stop)
    fi = idx[~s_mask]
    si = idx[s_mask]
    lam = damping

    def energy(xx):
        return float(0.5 * problem.residuals(xx).square().sum())

    x = torch.maximum(torch.minimum(x, upper), lower)
    E = energy(x)
    for _ in range(iterations):
        r, J = problem.jacobian(x)
        H = J.mT @ J
        g = (J.mT @ r.unsqueeze(-1)).squeeze(-1)
        for _attempt in range(6):
            D = H.diagonal(dim1=-2, dim2=-1).clamp_min(1e-9)
            Hd = H + torch.diag_embed(lam * D)
            Hss = Hd[:, si][:, :, si]
            Hsf = Hd[:, si][:, :, fi]
            Hff = Hd[:, fi][:, :, fi]
            gs, gf = g[:, si], g[:, fi]
            Lf = torch.linalg.cholesky(Hff)
            Hff_inv_Hfs = torch.cholesky_solve(Hsf.mT, Lf)  # (B, Pf, Ps)
            Hff_inv_gf = torch.cholesky_solve(gf.unsqueeze(-1), Lf)
            S = (Hss - Hsf @ Hff_inv_Hfs).sum(0)
            rhs = (gs.unsqueeze(-1) - Hsf @ Hff_inv_gf).sum(0)
            ds = -torch.linalg.solve(S, rhs).squeeze(-1)  # (Ps,)
            df = -(Hff_inv_gf.squeeze(-1) + (Hff_inv_Hfs @ ds.unsqueeze(-1)).squeeze(-1))
            step = torch.zeros_like(x)
            step[:, si] = ds
            step[:, fi] = df
            xt = torch.maximum(torch.minimum(x + step, upper), lower)
            Et = energy(xt)
            if math.isfinite(Et) and Et < E:
                x, E = xt, Et
                lam = max(lam / 3, 1e-9)
                break
            lam *= 4
        else:
            break
    return x
