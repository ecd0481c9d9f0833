"""Face2Face (Thies et al., CVPR 2016): the source actor's facial expressions on the target actor's video.

``face2face(source, target, out_dir) -> Face2FaceResult`` (and ``facerender reenact``):

1. **Tracking** both videos (:func:`facerender.tracking.video.track_video`; a folder written by
   ``facerender track`` is reused as is).
2. **Expression transfer** relative to each actor's neutral: the neutral of an actor is a robust low percentile of
   each blendshape weight over its frames (``neutral_percentile``, default the 5th); the target gets
   ``clip(neutral_target + (source - neutral_source), 0, 1)``. The target keeps its pose, lighting, albedo and gaze
   (``eyeLook*`` are not transferred: dlib's points do not see the eyes' direction reliably in both videos); blinks
   transfer with the offsets. Optionally the source's head rotation relative to its median pose is applied on top of
   the target's (``transfer_pose``).
3. **Rendering** the target face with the transferred expression in a square face crop (``crop_size``, default
   256^2) and **colouring** it from the CURRENT target frame: each pixel's surface point on the target's TRACKED
   mesh is projected into the frame and sampled there (visibility-checked), falling back to albedo x SH where the
   frame does not see the surface (newly exposed areas), brightness-matched (``facerender.reenact.reproject``).
4. **Mouth interior** by Face2Face's mouth retrieval: a database of the target's own mouth crops; per output frame
   the best match for the reenacted mouth shape with temporal coherence, warped into place with a thin-plate spline
   (``facerender.reenact.mouth``). Targets too short for a database (or queries without a fitting entry) keep the
   model-rendered mouth (tongue and teeth of the model).
5. **Compositing**: gradient-domain (Poisson) blending inside the rendered face mask (colour matched at the border
   by construction), then the crop is pasted back into the full frame with a feathered mask (only face pixels
   change).
6. **Encoding** ``result.mp4`` and ``side_by_side.mp4`` (source | target | result) with audio, and stills of each stage.

Length, frame rate and size policy: the output follows the SOURCE by default (``length="source"``): one output frame
per source frame at the source's frame rate; the target video is played forward and backward (ping-pong) when it is
shorter, so there is never a jump. ``length="target"`` follows the target (the source loops when shorter),
``"shortest"`` stops at the shorter. Frames are matched by time, so different frame rates work. The output has the
target's size. Audio: ``"auto"`` takes the audio of the video the output follows (``"source"``, ``"target"`` or
``"none"`` to choose); audio shorter than the output ends early.
"""
from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from morphable_models import LinearFaceModel, model_to_camera
from morphable_models.paths import PathLike

from ..cameras import PinholeCamera
from ..errors import FaceRenderError
from ..render.rasterize import RasterSettings, rasterize
from .common import (FrameSource, OutputSettings, SeamMeter, actor_neutral, choose_audio, frame_schedule, load_or_track,
                     side_by_side_frame, transfer_expression)

log = logging.getLogger(__name__)

RENDER_REGIONS = ("face", "mouth_socket", "gums_and_tongue", "teeth")
MOUTH_INTERIOR = ("mouth_socket", "gums_and_tongue", "teeth")


@dataclass
class Face2FaceConfig(OutputSettings):
    """Settings of :func:`face2face` (see the module docstring for the policies); the output settings (length,
    audio, side-by-side, stills, max_frames, x264) are :class:`~facerender.reenact.common.OutputSettings`'.

    Attributes:
        crop_size: side of the square face crop the face is re-rendered and composited in (pixels).
        crop_scale: crop side / side of the target's landmark box; crop_smoothing: exponential smoothing of the
            crop box over frames (0: none).
        neutral_percentile: percentile of each blendshape weight taken as an actor's neutral.
        transfer_pose: also apply the source's head rotation relative to its median pose.
        mouth: ``"retrieval"`` (Face2Face) or ``"model"`` (the model's rendered mouth interior).
        mouth_region: what the retrieved mouth replaces: ``"lips"`` (the whole mouth inside the outer lips: the
            target's own lips in the retrieved shape) or ``"inner"`` (only the inside of the inner lips; the lips stay
            the re-coloured render's, whose inner surfaces, hidden in the tracked frame, take the albedo fallback
            when the mouth opens).
        mouth_min_frames: targets with fewer tracked frames use the model mouth.
        colour_from_frame: colour the face from the current target frame (else albedo x SH everywhere).
        keep_detail: add back the target frame's detail finer than the crop (``frame - upsampled crop``, full
            resolution), carried along with the surface from the tracked to the reenacted mesh, wherever the face is
            coloured from the frame (not in the mouth or where the frame does not see the surface): a face crop
            smaller than the face in the frame otherwise blurs the whole face. Needs ``colour_from_frame``.
        blend: :class:`~facerender.reenact.blend.BlendConfig` method (``"poisson"``, ``"multiband"``, ...); erode: px.
    """

    crop_size: int = 256
    crop_scale: float = 1.7
    crop_smoothing: float = 0.6
    neutral_percentile: float = 5.0
    transfer_pose: bool = False
    mouth: str = "retrieval"
    mouth_region: str = "lips"
    mouth_min_frames: int = 30
    colour_from_frame: bool = True
    keep_detail: bool = True
    blend: str = "poisson"
    erode: int = 3

    def __post_init__(self):
        super().__post_init__()
        if self.mouth_region not in ("inner", "lips"):
            raise ValueError(f"mouth_region must be 'inner' or 'lips', got {self.mouth_region!r}")
        if self.mouth not in ("retrieval", "model"):
            raise ValueError(f"mouth must be 'retrieval' or 'model', got {self.mouth!r}")
        if self.crop_size < 32:
            raise ValueError(f"crop_size must be >= 32, got {self.crop_size}")


@dataclass
class Face2FaceResult:
    """What :func:`face2face` wrote: ``result_path``, ``side_by_side_path``, the two track folders, ``stills``
    (paths), ``frames``, per-frame ``source_index`` / ``target_index`` and ``flags``, ``timings`` (seconds per stage)
    and ``fps`` of the reenactment loop."""

    out_dir: Path
    result_path: Path
    side_by_side_path: Optional[Path]
    source_track: Path
    target_track: Path
    stills: List[Path]
    frames: int
    source_index: np.ndarray
    target_index: np.ndarray
    flags: List[List[str]]
    timings: Dict[str, float]
    fps: float
    summary: Dict[str, object] = field(default_factory=dict)


# expression transfer, the frame schedule, frame access, audio, panels and the seam meter: .common (re-exported
# here: actor_neutral, transfer_expression, frame_schedule)


class _Reenactor:
    """Per-frame rendering and compositing for one target (precomputed model, mouth database, camera)."""

    def __init__(self, model: LinearFaceModel, tgt, cfg: Face2FaceConfig, target_frames: "FrameSource"):
        ok = int(np.asarray(tgt.face_found, dtype=bool).sum())
        self.use_retrieval = cfg.mouth == "retrieval" and ok >= cfg.mouth_min_frames
        from ..render.conditioning import region_albedo
        from ..tracking.tracker import model_with_identity

        self.cfg = cfg
        dt = torch.float32
        self.id_model = model_with_identity(model.to(dt), torch.as_tensor(tgt.identity, dtype=dt))
        # with mouth retrieval the target's own mouth fills the opening: the mouth socket alone marks it (the teeth
        # and tongue meshes, 15k triangles, would double the rasterization cost for pixels that are replaced)
        wanted = ("face", "mouth_socket") if self.use_retrieval else RENDER_REGIONS
        regions = [r for r in wanted if r in self.id_model.regions]
        reg = self.id_model.regions[regions[0]]
        for r in regions[1:]:
            reg = reg.union(self.id_model.regions[r])
        self.vid = torch.as_tensor(reg.vertex_ids)
        sub = self.id_model.submodel(reg)
        self.faces = sub.faces
        V = self.id_model.num_vertices
        self.template = self.id_model.template[self.vid]
        self.basis = self.id_model.expression_basis.view(-1, V, 3)[:, self.vid].reshape(-1, self.vid.numel() * 3)
        albedo = region_albedo(self.id_model)
        if tgt.albedo is not None:
            fid = torch.as_tensor(self.id_model.regions["face"].vertex_ids)
            albedo[fid] = torch.as_tensor(tgt.albedo, dtype=dt)
        self.albedo = albedo[self.vid]
        # triangles of the mouth interior (rendered by the model, replaced by retrieval)
        mouth = np.zeros(V, dtype=bool)
        for r in MOUTH_INTERIOR:
            if r in self.id_model.regions:
                mouth[self.id_model.regions[r].vertex_ids] = True
        old_to_new = -np.ones(V, dtype=np.int64)
        old_to_new[reg.vertex_ids] = np.arange(reg.vertex_ids.size)
        self.mouth_faces = torch.as_tensor(mouth[reg.vertex_ids][self.faces.numpy()].all(1))
        lm = self.id_model.landmarks["ibug68"].vertex_index
        self.lm_local = torch.as_tensor(old_to_new[lm])
        # the face-area triangles come first (region ids are sorted): the tracked z-buffer only needs them, and
        # their ids are the same in both rasterizations
        face_v = np.zeros(V, dtype=bool)
        face_v[self.id_model.regions["face"].vertex_ids] = True
        is_face = face_v[reg.vertex_ids][self.faces.numpy()].all(1)
        self.n_face = int(np.argmin(is_face)) if not is_face.all() else len(is_face)
        # fallback shading per vertex from the neutral shape's normals (rotated per frame): the fallback only shows
        # where the frame does not see the surface, and is brightness-matched to the frame there
        from morphable_models import vertex_normals

        self.normals = vertex_normals(self.template[None], self.faces)[0]
        self.focal = float(tgt.focal)
        self.pp = np.asarray(tgt.principal_point, dtype=np.float64)
        self.box = None
        self.mouth_db = None
        self.prev_match = None

    def build_mouth_database(self, tgt, frames: "FrameSource"):
        from .mouth import MouthConfig, MouthDatabase

        idx = np.nonzero(np.asarray(tgt.face_found, dtype=bool))[0]
        if not self.use_retrieval:
            return None
        # always use the best entry (max_cost = inf): a stretched target mouth looks better than the model's
        db = MouthDatabase(MouthConfig(max_cost=float("inf"), region=self.cfg.mouth_region),
                           expression_names=list(tgt.expression_names))
        for i in idx:
            db.add(frames.get(int(i)), tgt.landmarks_2d[i], tgt.expression[i], frame_id=int(i))
        self.mouth_db = db
        return db

    def vertices(self, expression: np.ndarray) -> torch.Tensor:
        e = torch.as_tensor(np.asarray(expression, dtype=np.float32))[None]
        return (self.template.reshape(1, -1) + e @ self.basis).view(1, -1, 3)

    def crop_box(self, landmarks: np.ndarray, size_hw) -> Tuple[float, float, float]:
        lo, hi = landmarks.min(0), landmarks.max(0)
        box = ((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, float(max(hi - lo)) * self.cfg.crop_scale)
        if self.box is not None and self.cfg.crop_smoothing > 0:
            a = self.cfg.crop_smoothing
            box = tuple(a * p + (1 - a) * b for p, b in zip(self.box, box))
        self.box = box
        return box

    @torch.no_grad()
    def frame(self, frame: np.ndarray, rot: np.ndarray, trans: np.ndarray, sh: np.ndarray, expr_track: np.ndarray,
              expr_out: np.ndarray, landmarks: np.ndarray, timer: Dict[str, float], stills: Optional[dict] = None
              ) -> np.ndarray:
        from ..render.interpolate import interpolate
        from ..render.lighting import sh_irradiance
        from .blend import seamless_blend
        from .reproject import recolor, reproject_frame

        cfg = self.cfg
        t0 = time.perf_counter()
        H, W = frame.shape[:2]
        S = cfg.crop_size
        cx, cy, side = self.crop_box(landmarks, (H, W))
        s = S / side
        x0, y0 = cx - side / 2, cy - side / 2
        # the target frame's crop (bilinear; area-like pre-blur when shrinking)
        from ..fitting.fit_image import crop_face

        frame_t = torch.from_numpy(frame)
        crop = crop_face(frame_t, (cx, cy), side, S)
        cam = PinholeCamera(self.focal * s, self.focal * s, (self.pp[0] - x0) * s, (self.pp[1] - y0) * s, (S, S))
        R = torch.as_tensor(rot, dtype=torch.float32)[None]
        T = torch.as_tensor(trans, dtype=torch.float32)[None]
        v_out = self.vertices(expr_out)
        v_trk = self.vertices(expr_track)
        c_out = model_to_camera(v_out, R, T)
        c_trk = model_to_camera(v_trk, R, T)
        scr_out = cam.to_screen(c_out)
        scr_trk = cam.to_screen(c_trk)
        timer["transfer"] += time.perf_counter() - t0
        t1 = time.perf_counter()
        settings = RasterSettings(cull_backfaces=True)
        frag_out = rasterize(scr_out, self.faces, (S, S), settings)
        frag_trk = rasterize(scr_trk, self.faces[:self.n_face], (S, S), settings)
        n_cam = self.normals @ (R[0] * torch.tensor([[1.0], [-1.0], [-1.0]])).T
        vcol = self.albedo * sh_irradiance(n_cam[None], torch.as_tensor(sh, dtype=torch.float32).reshape(1, 9, 3))[0]
        vcol = vcol / math.pi  # Lambertian: albedo * E / pi
        fallback = interpolate(vcol, frag_out)[0].clamp(0, 1)
        mask = frag_out.triangle_id[0] >= 0
        timer["render"] += time.perf_counter() - t1
        t2 = time.perf_counter()
        tri = frag_out.triangle_id[0]
        in_mouth = torch.zeros_like(mask)
        in_mouth[mask] = self.mouth_faces[tri[mask]]
        detail = None
        if cfg.colour_from_frame:
            rep = reproject_frame(crop[None], frag_out, scr_trk, tracked_fragments=frag_trk)
            valid = rep.valid[0] & ~in_mouth
            face = recolor(rep.colors[0], valid, fallback, mask)
            if cfg.keep_detail:
                detail = self._detail(rep.positions[0], valid)
        else:
            face = fallback
        # mouth interior from the target's own frames
        lm_out = scr_out[0, self.lm_local, :2]
        if self.mouth_db is not None:
            m = self.mouth_db.query(lm_out.double().numpy(), expr_out, previous=self.prev_match)
            self.prev_match = m
            if m is not None:
                w = self.mouth_db.warp(m, lm_out.double().numpy(), (S, S))
                a = w.alpha.to(face.dtype)[..., None]
                face = a * w.image.to(face.dtype) + (1 - a) * face
                if detail is not None:
                    detail = (detail[0] * (1 - w.alpha.to(detail[0].dtype)), detail[1])
        # seamless blending inside the rendered mask, then paste back with a feathered mask
        blended = seamless_blend(face, crop, mask, method=cfg.blend, erode=cfg.erode)
        out = self._paste(frame_t, blended, mask, x0, y0, side, crop if detail is not None else None, detail)
        timer["composite"] += time.perf_counter() - t2
        if stills is not None:
            stills.update(crop=crop, fallback=fallback * mask[..., None], face=face * mask[..., None],
                          blended=blended)
        return out

    @staticmethod
    def _detail(positions: torch.Tensor, valid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The frame-detail layer of a crop: ``(S, S)`` weights (``valid`` softened by a 3-px box filter) and
        ``(S, S, 2)`` where each pixel's surface point lies in the tracked crop (crop pixels; the pixel itself where
        the render does not cover it)."""
        S = positions.shape[0]
        c = torch.arange(S, dtype=positions.dtype) + 0.5
        centres = torch.stack(torch.meshgrid(c, c, indexing="xy"), -1)
        pos = torch.where(torch.isfinite(positions), positions, centres)
        w = valid.to(positions.dtype)
        k = torch.full((1, 1, 1, 3), 1.0 / 3.0, dtype=w.dtype)
        w = F.conv2d(F.conv2d(F.pad(w[None, None], (1, 1, 1, 1)), k), k.transpose(-1, -2))[0, 0]
        return w.float(), pos.float()

    def _paste(self, frame: torch.Tensor, crop: torch.Tensor, mask: torch.Tensor, x0: float, y0: float,
               side: float, original: Optional[torch.Tensor] = None,
               detail: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> np.ndarray:
        """Resample the crop back into the frame's pixels under a feathered version of ``mask``. With
        ``original`` (the target frame's crop, ``(S, S, 3)``) and ``detail`` (weights ``(S, S)``, tracked positions
        ``(S, S, 2)`` in crop pixels, from :meth:`_detail`), the frame's detail finer than the crop, ``frame -
        resampled original``, is read at the tracked positions and added with those weights."""
        H, W = frame.shape[:2]
        S = crop.shape[0]
        ys = torch.nonzero(mask.any(1)).flatten()
        xs = torch.nonzero(mask.any(0)).flatten()
        self.last_band = None
        if ys.numel() == 0:
            return frame.numpy()
        scale = side / S
        r0 = max(0, int(math.floor(y0 + float(ys[0]) * scale)) - 2)
        r1 = min(H, int(math.ceil(y0 + (float(ys[-1]) + 1) * scale)) + 2)
        c0 = max(0, int(math.floor(x0 + float(xs[0]) * scale)) - 2)
        c1 = min(W, int(math.ceil(x0 + (float(xs[-1]) + 1) * scale)) + 2)
        if r1 <= r0 or c1 <= c0:
            return frame.numpy()
        # frame pixel centres -> crop pixel coordinates -> grid in [-1, 1]
        py = (torch.arange(r0, r1, dtype=torch.float32) + 0.5 - y0) / scale
        px = (torch.arange(c0, c1, dtype=torch.float32) + 0.5 - x0) / scale
        gy, gx = torch.meshgrid(py / S * 2 - 1, px / S * 2 - 1, indexing="ij")
        grid = torch.stack([gx, gy], -1)[None]
        # alpha: the eroded mask, feathered (a 5-px box blur in the crop)
        from .blend import erode_mask

        a = erode_mask(mask[None], max(1, self.cfg.erode))[0].float()[None, None]
        # where the face runs past the crop (the forehead of a lowered head: most frames of the README job), fade out
        # before the crop's edge: cut there, the resampled crop left a dark line across the forehead
        a[..., :3, :] = 0
        a[..., -3:, :] = 0
        a[..., :, :3] = 0
        a[..., :, -3:] = 0
        k = torch.full((1, 1, 1, 5), 0.2)  # separable 5-px box feather (avg_pool2d with stride 1 is slow on CPU)
        a = F.conv2d(F.conv2d(F.pad(a, (2, 2, 2, 2)), k), k.transpose(-1, -2))
        chans = [crop.permute(2, 0, 1), a[0]]
        if detail is not None:
            chans += [original.permute(2, 0, 1).to(crop.dtype), detail[0][None].to(crop.dtype),
                      detail[1].permute(2, 0, 1).to(crop.dtype)]
        src = torch.cat(chans, 0)[None]
        res = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        rgb, alpha = res[:3].permute(1, 2, 0), res[3][..., None]
        out = frame.clone()
        region = out[r0:r1, c0:c1].float() / 255.0
        if detail is not None:
            fine = (region - res[4:7].permute(1, 2, 0)).permute(2, 0, 1)[None]  # (1, 3, h, w)
            h, w = r1 - r0, c1 - c0
            fx = x0 + res[8] * scale - c0  # tracked positions in the region's pixels
            fy = y0 + res[9] * scale - r0
            g2 = torch.stack([fx / w * 2 - 1, fy / h * 2 - 1], -1)[None]
            moved = F.grid_sample(fine, g2, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
            rgb = rgb + res[7][..., None] * moved.permute(1, 2, 0)
        comp = alpha * rgb + (1 - alpha) * region
        out[r0:r1, c0:c1] = (comp.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        # the band around the blend border (about 8 px wide): where a seam would show
        edge = ((alpha > 0.02) & (alpha < 0.98)).float()[None, None, ..., 0]
        band = F.max_pool2d(edge, 5, stride=1, padding=2)[0, 0] > 0
        self.last_band = (r0, c0, band)
        return out.numpy()


def face2face(
    source: PathLike,
    target: PathLike,
    out_dir: PathLike,
    model: Optional[LinearFaceModel] = None,
    config: Optional[Face2FaceConfig] = None,
    *,
    progress: bool = True,
) -> Face2FaceResult:
    """Reenact: the source's expressions on the target video (see the module docstring).

    Args:
        source, target: a video file, or a folder written by ``facerender track`` (tracking is then not repeated).
        out_dir: output folder: ``result.mp4``, ``side_by_side.mp4``, ``stills/``, ``source_track/``,
            ``target_track/`` and ``summary.json``.
        model: the face model (default ``load_ict()``).
        config: :class:`Face2FaceConfig`.
    Raises:
        FileNotFoundError, VideoError (unreadable videos), NoFaceError (no face anywhere in a video). Outputs are
        written to temporary files and renamed: a failure never leaves a half-written video.
    """
    from morphable_models import load_ict

    from ..io.atomic import atomic_write
    from ..io.image import write_image
    from ..io.video import VideoWriter
    from ..tracking.video import load_track

    cfg = config or Face2FaceConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model or load_ict()
    timer = {k: 0.0 for k in ("track_source", "track_target", "mouth_database", "decode", "transfer", "render",
                              "composite", "encode")}
    t = time.perf_counter()
    src_dir, src_video = load_or_track(Path(source), out / "source_track", model, cfg.max_frames, progress)
    timer["track_source"] = time.perf_counter() - t
    t = time.perf_counter()
    tgt_dir, tgt_video = load_or_track(Path(target), out / "target_track", model, cfg.max_frames, progress)
    timer["track_target"] = time.perf_counter() - t
    src, tgt = load_track(src_dir), load_track(tgt_dir)
    if tuple(src.expression_names) != tuple(tgt.expression_names):
        raise FaceRenderError("the two tracks were made with different expression sets")
    names = list(tgt.expression_names)
    n_src, n_tgt = len(src), len(tgt)
    si, ti, fps = frame_schedule(n_src, src.fps, n_tgt, tgt.fps, cfg.length)
    if cfg.max_frames is not None:
        si, ti = si[:cfg.max_frames], ti[:cfg.max_frames]
    N = len(si)
    # neutrals and the transferred expressions
    n_s = actor_neutral(src.expression, src.face_found, cfg.neutral_percentile)
    n_t = actor_neutral(tgt.expression, tgt.face_found, cfg.neutral_percentile)
    keep = np.array([n.startswith("eyeLook") for n in names])
    expr_out = transfer_expression(src.expression[si], n_s, n_t, keep, tgt.expression[ti])
    rot_out = tgt.rotation[ti].copy()
    if cfg.transfer_pose:
        from scipy.spatial.transform import Rotation as Rot

        ref = Rot.from_rotvec(src.rotation[src.face_found]).mean() if src.face_found.any() else Rot.identity()
        rel = Rot.from_rotvec(src.rotation[si]) * ref.inv()
        rot_out = (rel * Rot.from_rotvec(rot_out)).as_rotvec()
    # frames
    t = time.perf_counter()
    tgt_frames = FrameSource(tgt_video, cache=True, limit=n_tgt)
    src_frames = FrameSource(src_video, cache=False)
    timer["decode"] += time.perf_counter() - t
    re = _Reenactor(model, tgt, cfg, tgt_frames)
    t = time.perf_counter()
    re.build_mouth_database(tgt, tgt_frames)
    timer["mouth_database"] = time.perf_counter() - t
    audio = choose_audio(cfg.audio, cfg.length, src_video, tgt_video)
    stills_dir = out / "stills"
    stills_dir.mkdir(exist_ok=True)
    still_paths: List[Path] = []
    flags: List[List[str]] = []
    from ..progress import progress_bar

    t_loop = time.perf_counter()
    H, W = tgt.image_size
    seam = SeamMeter()
    # each video is renamed into place when its block ends, and deleted if the block raises (VideoWriter's context)
    with VideoWriter(out / "result.mp4", fps=fps, audio_from=audio, crf=cfg.crf, preset=cfg.preset) as writer, \
            (VideoWriter(out / "side_by_side.mp4", fps=fps, audio_from=audio, crf=cfg.crf, preset=cfg.preset)
             if cfg.side_by_side else nullcontext()) as side, \
            (progress_bar(total=N, unit="frame", desc="reenact") if progress else nullcontext()) as bar:
        for k in range(N):
            s_i, t_i = int(si[k]), int(ti[k])
            t = time.perf_counter()
            frame = tgt_frames.get(t_i)
            sframe = src_frames.get(s_i) if side is not None else None
            timer["decode"] += time.perf_counter() - t
            fl = []
            if not src.face_found[s_i]:
                fl.append("source_no_face")
            if not tgt.face_found[t_i]:
                fl.append("target_no_face")
            stills = {} if k in cfg.stills else None
            if tgt.face_found[t_i] or np.isfinite(tgt.landmarks_2d[t_i]).all():
                result = re.frame(frame, rot_out[k], tgt.translation[t_i], tgt.sh[t_i], tgt.expression[t_i],
                                  expr_out[k], tgt.landmarks_2d[t_i], timer, stills)
            else:
                result = frame
                fl.append("unchanged")
            flags.append(fl)
            band = re.last_band if "unchanged" not in fl else None
            seam.add(result, frame, None if band is None else (band[0], band[1], band[2].numpy()))
            t = time.perf_counter()
            writer.write(result)
            if side is not None:
                side.write(side_by_side_frame([sframe, frame, result], ["source", "target", "result"],
                                              cfg.side_height))
            timer["encode"] += time.perf_counter() - t
            if stills:
                for name, img in stills.items():
                    arr = (img.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
                    still_paths.append(write_image(stills_dir / f"frame{k:05d}_{name}.png", arr))
                still_paths.append(write_image(stills_dir / f"frame{k:05d}_result.png", result))
            if bar is not None:
                bar.update(1)
                el = time.perf_counter() - t_loop
                bar.set_postfix(fps=f"{(k + 1) / el:.1f}")
    loop_s = time.perf_counter() - t_loop
    per_frame = {k: v / max(N, 1) * 1e3 for k, v in timer.items() if k in ("decode", "transfer", "render",
                                                                          "composite", "encode")}
    summary = {
        "frames": N, "fps_output": fps, "source": str(src_video), "target": str(tgt_video),
        "source_frames": n_src, "target_frames": n_tgt, "reenactment_fps": N / loop_s if loop_s > 0 else None,
        "timings_s": timer, "per_frame_ms": per_frame, "config": asdict(cfg),
        # None: a track folder was given (nothing tracked)
        "tracking_fps": {"source": None if Path(source).is_dir() else n_src / max(timer["track_source"], 1e-9),
                         "target": None if Path(target).is_dir() else n_tgt / max(timer["track_target"], 1e-9)},
        "mouth": "retrieval" if re.mouth_db is not None else "model",
        "seam_stability": seam.summary(),
        "flags": {"source_no_face": int(sum("source_no_face" in f for f in flags)),
                  "target_no_face": int(sum("target_no_face" in f for f in flags))},
    }
    with atomic_write(out / "summary.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1, default=str))
    return Face2FaceResult(out_dir=out, result_path=out / "result.mp4",
                           side_by_side_path=out / "side_by_side.mp4" if side is not None else None,
                           source_track=src_dir, target_track=tgt_dir, stills=still_paths, frames=N,
                           source_index=si, target_index=ti, flags=flags, timings=timer,
                           fps=N / loop_s if loop_s > 0 else float("nan"), summary=summary)


# ``facerender.reenact.face2face(...)`` calls the function even where the import system bound the attribute to this
# module (``from facerender.reenact.face2face import Face2FaceConfig`` before the first access).
from morphable_models._lazy import make_callable  # noqa: E402

make_callable(__name__, "face2face")
