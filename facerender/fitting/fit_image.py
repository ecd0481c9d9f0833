"""Single-image fitting: landmarks, then photometric refinement on a face crop, coarse to fine.

``fit_image(image) -> FitResult``:

1. landmarks: dlib by default (the largest face, or a box / index), or user-supplied (``landmarks=``);
2. :func:`~facerender.fitting.landmark_fit.fit_landmarks` (pose, identity, expression, sliding contour);
3. photometric refinement on a square crop around the face resampled to ``config.size`` (default 256^2), over a
   pyramid (``config.levels``): per level and round, the surface samples are re-drawn, the per-vertex albedo is
   re-estimated in closed form (smoothness + symmetry + mean prior, :mod:`facerender.fitting.albedo`), then
   Levenberg-Marquardt runs on pose, identity, expression and SH lighting with the energy

       E = w_col E_col + w_lan E_lan + w_id |alpha / sigma|^2 + w_exp |delta / sigma_exp|^2 + w_sh |L - L0|^2

   (docs/fitting.md explains the terms and weights).

Numerical trouble is flagged on the result (``flags``); parameters are never NaN.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from morphable_models import LinearFaceModel

from ..errors import FittingError
from ..render.lighting import ambient_light
from .albedo import AlbedoConfig, VertexAlbedoEstimator, mirror_vertex_map
from .energies import EnergyProblem, LandmarkTerm, PriorTerm
from .landmark_fit import LandmarkFitConfig, default_focal, fit_landmarks
from .params import Block, ParameterLayout, model_bounds
from .photometric import PhotometricTerm, sample_bilinear
from .solver import GaussNewtonConfig, LeastSquaresProblem, solve

log = logging.getLogger(__name__)


@dataclass
class FitConfig:
    """Settings of :func:`fit_image` (defaults: the shipped weights, see docs/fitting.md).

    Attributes:
        landmark: settings (and landmark/prior weights) of the landmark stage; the same landmark and prior weights
            are used in the photometric stage.
        photometric: run the photometric stage (else landmarks only).
        size: side of the square face crop used by the photometric stage (pixels).
        crop_scale: crop side = ``crop_scale`` x the larger side of the landmarks' bounding box.
        levels: pyramid sides (coarse to fine), each <= ``size``.
        rounds: alternations (samples, albedo, solve) per level.
        iterations: LM iterations per round.
        w_color: weight of the mean l2,1 colour error (colours in [0, 1]).
        w_sh: weight of the prior ``|L - L_ambient|^2`` on the SH coefficients.
        w_identity: identity prior weight of the photometric stage (stronger than the landmark stage's: the dense
            colour term leaves the depth / head-size valley flat, and a well-posed identity makes Gauss-Newton
            converge in ~10 iterations instead of crawling along it).
        max_samples: surface samples per image at the finest level.
        fit_identity: identity free in the photometric stage.
        albedo: :class:`AlbedoConfig` of the per-vertex albedo.
        region: model region rasterised by the colour term.
        auto_orient: when detecting (no ``landmarks``, ``box`` or ``face_index``), also try the image turned by 90,
            180 and 270 degrees if the upright detection is missing or weak, and fit the turn that shows an upright
            face (:mod:`facerender.fitting.orientation`); the result is mapped back to the photo.
    """

    landmark: LandmarkFitConfig = field(default_factory=LandmarkFitConfig)
    photometric: bool = True
    size: int = 256
    crop_scale: float = 1.6
    levels: Tuple[int, ...] = (64, 128, 256)
    rounds: int = 2
    iterations: int = 3
    w_color: float = 0.003
    w_sh: float = 1e-5
    w_identity: float = 1e-6
    max_samples: int = 4000
    fit_identity: bool = True
    albedo: AlbedoConfig = field(default_factory=AlbedoConfig)
    region: str = "face"
    auto_orient: bool = True


@dataclass
class FitResult:
    """Parameters of a fitted photo (batch of one; tensors are ``(1, ...)``).

    Attributes:
        rotation ``(1, 3)`` (axis-angle, model space), translation ``(1, 3)`` (camera space, cm), identity
        ``(1, K_id)``, expression ``(1, K_exp)`` in [0, 1], sh ``(1, 9, 3)``, albedo ``(V_region, 3)`` per-vertex
        albedo of the fitted region (vertex ids of ``region`` in the full model), focal ``(1,)`` and principal point
        ``(1, 2)`` of the FULL image, image_size ``(H, W)``.
        landmarks: the 68 target points used ``(68, 2)`` and their confidence ``(68,)``; landmarks_2d the model's
        projected landmarks ``(68, 2)``; box the face box; detector its name.
        photometric_error: mean l2 colour error over the samples at the finest level (None: landmarks only).
        energy_history: ``{stage: [energy per iteration]}``; flags: list of warnings; timings: seconds per stage.
        turns: quarter turns (counter-clockwise) of the photo that made the face upright for the fit (0: none);
        the parameters above are already mapped back to the photo.
    """

    rotation: torch.Tensor
    translation: torch.Tensor
    identity: torch.Tensor
    expression: torch.Tensor
    sh: torch.Tensor
    albedo: Optional[torch.Tensor]
    focal: torch.Tensor
    principal_point: torch.Tensor
    image_size: Tuple[int, int]
    landmarks: np.ndarray
    confidence: np.ndarray
    landmarks_2d: np.ndarray
    box: Optional[Tuple[float, float, float, float]] = None
    detector: str = ""
    region: str = "face"
    photometric_error: Optional[float] = None
    energy_history: Dict[str, List[float]] = field(default_factory=dict)
    flags: List[str] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)
    turns: int = 0

    @property
    def converged(self) -> bool:
        """Every stage converged and nothing is flagged."""
        return not self.flags

    def camera(self, dtype=None):
        """The :class:`~facerender.cameras.PinholeCamera` of the photo (batch 1, ``image_size``): with the pose,
        coefficients, ``sh`` and ``albedo`` it re-renders the fit (``facerender.render(model, fit)``). dtype: that
        of ``focal`` unless given."""
        from ..cameras import PinholeCamera

        f = self.focal.reshape(-1)[:1]
        pp = self.principal_point.reshape(-1, 2)[:1]
        if dtype is not None:
            f, pp = f.to(dtype), pp.to(dtype)
        return PinholeCamera(f, f.clone(), pp[:, 0].clone(), pp[:, 1].clone(), tuple(int(s) for s in self.image_size))

    def to_dict(self) -> dict:
        """JSON-serialisable parameters (lists), as written by ``facerender fit``."""
        def L(t):
            return t.detach().cpu().double().numpy().tolist() if isinstance(t, torch.Tensor) else t

        return {
            "rotation_axis_angle": L(self.rotation[0]), "translation_cm": L(self.translation[0]),
            "identity": L(self.identity[0]), "expression": L(self.expression[0]), "sh": L(self.sh[0]),
            "focal_px": float(self.focal[0]), "principal_point_px": L(self.principal_point[0]),
            "image_size": list(self.image_size), "landmarks": np.asarray(self.landmarks).tolist(),
            "landmark_confidence": np.asarray(self.confidence).tolist(),
            "landmarks_projected": np.asarray(self.landmarks_2d).tolist(), "box": self.box,
            "detector": self.detector, "region": self.region, "photometric_error": self.photometric_error,
            "energy_history": self.energy_history, "flags": self.flags, "timings_s": self.timings,
            "image_turns_ccw": self.turns,
        }


# ------------------------------------------------------------------------------------------------------------------


def _as_image_tensor(image, dtype) -> Tuple[np.ndarray, torch.Tensor]:
    from ..io.image import read_image, to_uint8_rgb

    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        arr = read_image(image)
    else:
        arr = to_uint8_rgb(image)
    return arr, torch.from_numpy(arr).to(dtype) / 255.0


def crop_face(image: torch.Tensor, center: Tuple[float, float], side: float, size: int) -> torch.Tensor:
    """Resample the square ``[cx - side/2, cx + side/2] x [cy - side/2, ...]`` of ``image (H, W, 3)`` (float in
    [0, 1], or uint8: converted) to ``(size, size, 3)``: bilinear, replicate border. When shrinking by ``m >= 2``
    times, the window is first box-averaged by the integer factor ``m`` (``avg_pool2d`` with stride ``m``: an
    anti-alias pre-filter that costs less than the resampling). Only the window around the square is processed, so
    the cost does not depend on the image size."""
    H, W, _ = image.shape
    m = max(1, int(side / size))
    pad = m + 2
    c0 = int(max(0, math.floor(center[0] - side / 2) - pad))
    c1 = int(min(W, math.ceil(center[0] + side / 2) + pad))
    r0 = int(max(0, math.floor(center[1] - side / 2) - pad))
    r1 = int(min(H, math.ceil(center[1] + side / 2) + pad))
    if c1 <= c0 or r1 <= r0:  # the square lies outside the image: replicate the nearest border pixels
        c0, c1 = (0, 1) if center[0] < W / 2 else (W - 1, W)
        r0, r1 = (0, 1) if center[1] < H / 2 else (H - 1, H)
    x = image[r0:r1, c0:c1].permute(2, 0, 1)[None]
    if not x.is_floating_point():  # uint8: convert the window only
        x = x.float() / 255.0
    scale = 1.0
    if m > 1 and min(x.shape[-2:]) >= m:
        x = F.avg_pool2d(x, m, stride=m, ceil_mode=True, count_include_pad=False)
        scale = float(m)
    h, w = x.shape[-2:]
    t = (torch.arange(size, dtype=x.dtype) + 0.5) / size * side
    xs = (center[0] - side / 2 + t - c0) / scale
    ys = (center[1] - side / 2 + t - r0) / scale
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx / w * 2 - 1, gy / h * 2 - 1], -1)[None]
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0].permute(1, 2, 0)


def fit_image(
    model: LinearFaceModel,
    image,
    *,
    landmarks=None,
    box: Optional[Sequence[float]] = None,
    face_index: Optional[int] = None,
    config: Optional[FitConfig] = None,
    focal: Optional[float] = None,
    detector: str = "dlib",
    progress: bool = False,
) -> FitResult:
    """Fit the model to one photo.

    Args:
        model: the full model (e.g. ``load_ict()``); its dtype is used for the fit.
        image: a path, or an image array (gray / RGB / RGBA, uint8 / uint16 / float).
        landmarks: optional ``(68, 2)`` points (package pixel convention) or a ``Landmarks`` object; skips detection.
        box, face_index: choose the face to detect (default: the largest).
        config: :class:`FitConfig`.
        focal: focal length in pixels (default ``landmark.focal_factor * max(H, W)``).
        detector: ``"dlib"`` (default), ``"mediapipe"`` or a detector object
            (``facerender.landmarks.get_detector("dlib", threshold=-0.5, upsample=1)``).
        progress: a progress bar of the photometric stage on stderr (one step per pyramid level and round).
    Raises:
        NoFaceError when no face is found (with detection), FittingError for unusable landmarks.
    """
    from ..landmarks.detect import Landmarks, as_landmarks, detect_landmarks

    cfg = config or FitConfig()
    dt, dev = model.dtype, model.device
    t0 = time.perf_counter()
    arr, img = _as_image_tensor(image, dt)
    H, W = arr.shape[:2]
    timings: Dict[str, float] = {}
    if landmarks is None and box is None and face_index is None and cfg.auto_orient:
        from .orientation import find_upright_turn, turn_image, unturn_fit

        from ..progress import stage_bar

        name = detector if isinstance(detector, str) else type(detector).__name__.replace("Detector", "").lower()
        with stage_bar(f"detecting the face ({name}, upright or turned)", None, progress):
            orient = find_upright_turn(arr, detector)
        timings["detection"] = time.perf_counter() - t0
        if orient.turns:
            import dataclasses

            res = fit_image(model, turn_image(arr, orient.turns), landmarks=orient.landmarks,
                            config=dataclasses.replace(cfg, auto_orient=False), focal=focal, detector=detector,
                            progress=progress)
            out = unturn_fit(res, orient.turns, (H, W))
            out.turns = orient.turns
            out.detector = orient.landmarks.detector or ""
            out.timings = {"detection": timings["detection"], **res.timings}
            out.timings["total"] = time.perf_counter() - t0
            return out
        lm = orient.landmarks
    elif landmarks is None:
        lm = detect_landmarks(arr, box=box, index=face_index, detector=detector)
        timings["detection"] = time.perf_counter() - t0
    else:
        lm = as_landmarks(landmarks, image_size=(H, W)) if not isinstance(landmarks, Landmarks) else landmarks
    pts = np.array(lm.points, dtype=np.float64)  # copies: the caller's (possibly read-only) arrays are not shared
    conf = np.array(lm.confidence, dtype=np.float64) if lm.confidence is not None else np.ones(68)
    if pts.shape != (68, 2):
        raise FittingError(f"fit_image needs 68 landmarks, got an array of shape {pts.shape}")
    flags: List[str] = []
    t1 = time.perf_counter()
    lcfg = cfg.landmark
    f_full = float(focal) if focal is not None else (lcfg.focal or default_focal((H, W), lcfg.focal_factor))
    lres = fit_landmarks(model, torch.as_tensor(pts.copy(), dtype=dt, device=dev), (H, W),
                         torch.as_tensor(conf.copy(), dtype=dt, device=dev)[None], lcfg, focal=f_full)
    timings["landmark_fit"] = time.perf_counter() - t1
    history = {"landmarks": lres.energy_history[:, 0].tolist()}
    if lres.flags and lres.flags[0]:
        flags.extend(f"landmark fit: {f}" for f in lres.flags[0])
    elif any(s not in ("converged", "max_iterations") for s in lres.status):
        flags.append(f"landmark fit: {lres.status[0]}")
    values = {k: v.clone() for k, v in lres.params().items()}
    pp_full = lres.principal_point
    sh0 = ambient_light(1.0, 1, dtype=dt, device=dev).reshape(1, 27)
    values["sh"] = sh0.clone()
    albedo = None
    photo_err = None
    region_model = model.submodel(cfg.region) if cfg.photometric else None
    if cfg.photometric:
        t2 = time.perf_counter()
        values, albedo, photo_err, hist = _photometric(model, region_model, img.to(dev), pts, conf, values, pp_full,
                                                       cfg, flags, progress)
        history.update(hist)
        timings["photometric_fit"] = time.perf_counter() - t2
    # final projected landmarks in the full image
    term = LandmarkTerm(model, torch.as_tensor(pts, dtype=dt, device=dev)[None], None, 1.0,
                        lcfg.sliding_contour)
    layout = ParameterLayout([Block("rotation", 3), Block("translation", 3)])
    prob = EnergyProblem(layout, [term], {k: v for k, v in values.items() if k not in layout}, pp_full)
    with torch.no_grad():
        prob.residuals(layout.join(values))
    for k, v in values.items():
        if not torch.isfinite(v).all():  # never return NaN parameters
            flags.append(f"non-finite {k}; replaced by the landmark fit")
            values[k] = lres.params()[k] if k in lres.params() else sh0
    timings["total"] = time.perf_counter() - t0
    return FitResult(
        rotation=values["rotation"], translation=values["translation"], identity=values["identity"],
        expression=values["expression"], sh=values["sh"].reshape(1, 9, 3), albedo=albedo,
        focal=values["focal"].reshape(-1), principal_point=pp_full, image_size=(H, W), landmarks=pts,
        confidence=conf, landmarks_2d=term.last_uv[0].cpu().numpy(), box=tuple(lm.box) if lm.box is not None else None,
        detector=lm.detector or "", region=cfg.region, photometric_error=photo_err, energy_history=history,
        flags=flags, timings=timings,
    )


def _photometric(model, region_model, img, pts, conf, values, pp_full, cfg: FitConfig, flags, progress=False):
    from ..progress import stage_bar

    with stage_bar(f"photometric fit ({len(cfg.levels)} levels x {cfg.rounds} rounds)",
                   len(cfg.levels) * cfg.rounds, progress) as bar:
        return _photometric_levels(model, region_model, img, pts, conf, values, pp_full, cfg, flags, bar)


def _photometric_levels(model, region_model, img, pts, conf, values, pp_full, cfg: FitConfig, flags, bar):
    dt, dev = model.dtype, model.device
    lcfg = cfg.landmark
    lo_xy, hi_xy = pts.min(0), pts.max(0)
    center = ((lo_xy[0] + hi_xy[0]) / 2, (lo_xy[1] + hi_xy[1]) / 2)
    side = float(max(hi_xy - lo_xy)) * cfg.crop_scale
    crop = crop_face(img, center, side, cfg.size)
    s_full = cfg.size / side
    x0, y0 = center[0] - side / 2, center[1] - side / 2
    mirror = model.extra.get("mirror_face")
    if mirror is None:
        mirror = mirror_vertex_map(region_model.template.detach().cpu().double().numpy())
        model.extra["mirror_face"] = mirror
    estimator = VertexAlbedoEstimator(region_model.num_vertices, region_model.faces.cpu().numpy(), mirror=mirror,
                                      config=cfg.albedo)
    K_ex = model.num_expression
    priors = [PriorTerm("identity", cfg.w_identity, model.identity_std.to(dt)),
              PriorTerm("expression", lcfg.w_expression,
                        torch.full((K_ex,), lcfg.expression_sigma, dtype=dt, device=dev)),
              PriorTerm("sh", cfg.w_sh, torch.ones(27, dtype=dt, device=dev),
                        mean=ambient_light(1.0, 1, dtype=dt, device=dev).reshape(1, 27))]
    blocks = [Block("rotation", 3), Block("translation", 3)]
    if cfg.fit_identity and lcfg.fit_identity:
        blocks.append(Block("identity", model.num_identity))
    if lcfg.fit_expression:
        blocks.append(Block("expression", K_ex, 0.0, 1.0))
    blocks.append(Block("sh", 27))
    layout = ParameterLayout(blocks)
    albedo = None
    history: Dict[str, List[float]] = {}
    err = None
    f_crop = values["focal"] * s_full
    pp_crop = (pp_full - torch.tensor([[x0, y0]], dtype=dt, device=dev)) * s_full
    for level in cfg.levels:
        level = min(int(level), cfg.size)
        k = level / cfg.size
        lvl_img = crop if level == cfg.size else F.interpolate(crop.permute(2, 0, 1)[None], size=(level, level),
                                                              mode="area")[0].permute(1, 2, 0)
        lvl_img = lvl_img[None].contiguous()
        pp = pp_crop * k
        vals = dict(values)
        vals["focal"] = f_crop * k
        targets = torch.as_tensor((pts - np.array([x0, y0])) * s_full * k, dtype=dt, device=dev)[None]
        lterm = LandmarkTerm(model, targets, torch.as_tensor(conf, dtype=dt, device=dev)[None], lcfg.w_landmark,
                             lcfg.sliding_contour, huber=lcfg.huber)
        if albedo is None:
            albedo = torch.full((region_model.num_vertices, 3), 0.5, dtype=dt, device=dev)
        pterm = PhotometricTerm(region_model, lvl_img, albedo, cfg.w_color,
                                max_samples=max(500, int(cfg.max_samples * k * k)))
        problem = EnergyProblem(layout, [lterm, pterm] + priors,
                                {kk: v for kk, v in vals.items() if kk not in layout}, pp)
        damping = None
        for rnd in range(cfg.rounds):
            x0v = layout.join(vals)
            kin = problem.kinematics(x0v, False)
            lterm.freeze_contour(kin)
            n = pterm.update_samples(kin)
            if n < 50:
                flags.append(f"level {level}: only {n} visible face samples")
                break
            # albedo in closed form for the current geometry and lighting
            albedo = _estimate_albedo(pterm, problem, x0v, estimator, albedo)
            pterm.albedo = albedo[None]
            pterm.update_samples(kin)
            res = solve(LeastSquaresProblem(normal_equations=problem.normal_equations,
                                            lower=model_bounds(layout, x0v, model)[0],
                                            upper=model_bounds(layout, x0v, model)[1]),
                        x0v, GaussNewtonConfig(max_iterations=cfg.iterations, rtol=1e-4, linear_solver="cholesky",
                                               check_rank=False), damping=damping)
            damping = res.damping
            history.setdefault(f"level_{level}", []).extend(res.energy_history[:, 0].tolist())
            if res.status_names()[0] in ("failed_nan", "singular"):
                flags.append(f"level {level}: solver {res.status_names()[0]}")
            vals.update(layout.split(res.params))
            bar.update()
        for kk in layout.slices:
            values[kk] = vals[kk]
        with torch.no_grad():
            kin = problem.kinematics(layout.join(vals), False)
            pterm.evaluate(kin)
            s = pterm.samples
            uv = kin.project(kin.camera_points(s["T"] + (s["Bs"] @ kin.coeffs[:, None, :, None]).squeeze(-1)))
            obs = sample_bilinear(lvl_img, uv)
            e = (pterm.last_model_colour - obs).norm(dim=-1)
            err = float((e * s["valid"]).sum() / s["valid"].sum().clamp_min(1))
    return values, albedo, err, history


@torch.no_grad()
def _estimate_albedo(pterm: PhotometricTerm, problem: EnergyProblem, x: torch.Tensor,
                     estimator: VertexAlbedoEstimator, previous: torch.Tensor) -> torch.Tensor:
    """Closed-form per-vertex albedo from the current samples (observed colour / shading)."""
    from ..render.lighting import sh_basis

    kin = problem.kinematics(x, False)
    s = pterm.samples
    X = s["T"] + (s["Bs"] @ kin.coeffs[:, None, :, None]).squeeze(-1)
    uv = kin.project(kin.camera_points(X))
    obs = sample_bilinear(pterm.image, uv)[0]
    n = s["normal"] @ kin.M.transpose(1, 2)
    L = kin.p["sh"].reshape(-1, 9, 3)
    shade = ((sh_basis(n) * pterm.kernel) @ L)[0].clamp_min(1e-3)
    valid = s["valid"][0] > 0
    if int(valid.sum()) < 50:
        return previous
    try:
        a = estimator(s["face_vertices"][0][valid], s["bary"][0][valid], obs[valid].clamp(0, 1), shade[valid])
    except (ValueError, RuntimeError) as e:  # degenerate data: keep the previous estimate
        log.warning("albedo estimation failed (%s); keeping the previous albedo", e)
        return previous
    return torch.as_tensor(a, dtype=x.dtype, device=x.device)


# ``facerender.fitting.fit_image(...)`` calls the function even where the import system bound the attribute to this
# module (``from facerender.fitting.fit_image import FitConfig`` before the first access).
from morphable_models._lazy import make_callable  # noqa: E402

make_callable(__name__, "fit_image")
