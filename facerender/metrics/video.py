"""One evaluation for every reenactment method: :func:`evaluate` (source, target, result [, reference]) videos.

Each output frame is matched BY TIME to a source (driver) frame, a target frame and a reference frame
(``t = k / fps_result``, ``index = round(t * fps)``). When the result lasts longer than a video, that video is
continued by the order named in the config (``"loop"``, ``"pingpong"``, ``"clamp"``); ``"auto"`` keeps plain time
matching when the video is long enough, else loops the source, and for the target picks the order whose frames
look most like the result's (the background outside the face is the target's in a face-editing result). The
choices are stated in :attr:`Evaluation.matching`.

Faces are found by dlib (``facerender.landmarks.detect_landmarks``, its defaults); a frame without a face is
counted (``faceless``) and left out of the figures that need it, never fatal. Figures (see docs/evaluation.md):

* identity: CSIM (cosine of dlib-ResNet descriptors, :mod:`facerender.identity`, to the mean descriptor of the
  target's / source's frames) and the mean descriptor distance (dlib's scale: same person < 0.6), on every
  ``identity_stride``-th output frame and every ``target_identity_stride``-th target frame;
* expression: inner-lip opening correlation with the source; blendshape-weight distance and FACS action-unit
  agreement (AUCON-like) through our ICT-FaceKit landmark fit;
* pose: LPD's P_T (landmark error over the outer-eye-corner distance) to the source (scale+shift aligned), to the
  target and to the reference (unaligned);
* image: PSNR and SSIM to the reference (self-reenactment ground truth);
* temporal: seam flicker (:mod:`facerender.metrics.temporal`) and faceless frames.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from ..errors import NoFaceError, VideoError
from ..reenact.common import MATCH_ORDERS, match_frames
from .temporal import SeamConfig, SeamMeter

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
ORDERS = ("auto",) + MATCH_ORDERS


# ----------------------------------------------------------------------------------------------------------
# frame matching


# ----------------------------------------------------------------------------------------------------------
# configuration and result


@dataclass
class EvaluateConfig:
    """Settings of :func:`evaluate`.

    Attributes:
        max_frames: evaluate only the first N output frames.
        identity_stride: descriptors on every N-th output frame (and the source frames matched to them).
        target_identity_stride: descriptors on every N-th frame of the whole target video (its identity).
        source_order, target_order, reference_order: how a video shorter than the result continues
            (:data:`ORDERS`; ``"auto"``: see the module docstring).
        expression: fit ICT-FaceKit for the blendshape and action-unit figures (needs the installed model).
        seam: measure the seam flicker (two extra passes over result and target).
        seam_config: :class:`~facerender.metrics.temporal.SeamConfig`.
        au_threshold: action-unit activation threshold for the agreement.
        batch_size: faces per network call.
        home: model cache for ICT-FaceKit (default ``$FACERENDER_HOME``).
        progress: show progress bars.
    """

    max_frames: Optional[int] = None
    identity_stride: int = 10
    target_identity_stride: int = 15
    source_order: str = "auto"
    target_order: str = "auto"
    reference_order: str = "time"
    expression: bool = True
    seam: bool = True
    seam_config: SeamConfig = field(default_factory=SeamConfig)
    au_threshold: float = 0.2
    batch_size: int = 32
    home: Optional[str] = None
    progress: bool = False

    def __post_init__(self):
        for name in ("source_order", "target_order", "reference_order"):
            if getattr(self, name) not in ORDERS:
                raise ValueError(f"{name} must be one of {ORDERS}, got {getattr(self, name)!r}")
        if self.identity_stride < 1 or self.target_identity_stride < 1:
            raise ValueError("identity strides must be >= 1")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")


@dataclass
class Evaluation:
    """Figures of one result video (see the module docstring; None where not measurable).

    Attributes:
        frames: output frames evaluated; fps: the result's frame rate.
        matching: how each input video was matched to the output, in words.
        faceless: frames without a detected face, per video (result frames listed in ``faceless_result``).
        csim_target, csim_source: mean cosine similarity of output descriptors to the target's / source's identity
            (the mean descriptor of its frames, as Latent Pose Descriptors).
        csim_reference: mean cosine similarity of each output frame's descriptor to the matched reference frame's
            (MarioNETte's self-reenactment CSIM; 1 for identical videos).
        identity_distance_target, identity_distance_source: mean descriptor distance over all pairs.
        lip_correlation: Pearson r of the inner-lip opening, output vs matched source frames.
        pose_error_source: P_T to the matched source frames after per-frame scale+shift alignment.
        pose_error_target: P_T to the matched target frames (unaligned).
        pose_error_reference: P_T to the reference (unaligned; LPD's self-reenactment figure).
        expression_distance_source: mean |blendshape weight difference|, relative to each actor's neutral.
        au_agreement_source: AUCON-like agreement of FACS action units with the source.
        expression_distance_reference, au_agreement_reference: the same against the reference (raw weights).
        psnr, ssim: mean over frames against the reference (PSNR inf when every frame is identical).
        seam_ratio, seam_output_mad, seam_target_mad, seam_frames: seam flicker.
        descriptors: how many descriptors each figure used.
        seconds: wall time; timings: seconds per stage (target, result, seam, source, descriptors, expression).
    """

    result: str
    source: str
    target: str
    reference: Optional[str]
    frames: int
    fps: float
    matching: Dict[str, str]
    faceless: Dict[str, int]
    faceless_result: List[int]
    csim_target: Optional[float] = None
    csim_source: Optional[float] = None
    csim_reference: Optional[float] = None
    identity_distance_target: Optional[float] = None
    identity_distance_source: Optional[float] = None
    lip_correlation: Optional[float] = None
    pose_error_source: Optional[float] = None
    pose_error_target: Optional[float] = None
    pose_error_reference: Optional[float] = None
    expression_distance_source: Optional[float] = None
    au_agreement_source: Optional[float] = None
    expression_distance_reference: Optional[float] = None
    au_agreement_reference: Optional[float] = None
    psnr: Optional[float] = None
    ssim: Optional[float] = None
    seam_ratio: Optional[float] = None
    seam_output_mad: Optional[float] = None
    seam_target_mad: Optional[float] = None
    seam_frames: int = 0
    descriptors: Dict[str, int] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dictionary (NaN and inf written as strings)."""
        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return str(v)
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        return clean(asdict(self))

    def table(self) -> str:
        """The figures as a Markdown table."""
        def f(v, nd=3):
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else (
                "inf" if isinstance(v, float) and math.isinf(v) else f"{v:.{nd}f}")

        rows = [
            ("frames evaluated (output)", f"{self.frames} at {self.fps:.3f} fps", ""),
            ("identity: CSIM to the target / to the source", f"{f(self.csim_target)} / {f(self.csim_source)}",
             "higher to the target"),
            ("identity: descriptor distance to the target / to the source",
             f"{f(self.identity_distance_target)} / {f(self.identity_distance_source)}", "< 0.6 same person"),
            ("expression: inner-lip opening correlation with the source", f(self.lip_correlation), "1 best"),
            ("expression: blendshape distance / AU agreement with the source",
             f"{f(self.expression_distance_source)} / {f(self.au_agreement_source)}", "0 / 1 best"),
            ("pose: P_T to the source (aligned) / to the target",
             f"{f(self.pose_error_source)} / {f(self.pose_error_target)}", "0 best"),
        ]
        if self.reference is not None:
            rows += [
                ("reference: PSNR (dB) / SSIM / CSIM", f"{f(self.psnr, 2)} / {f(self.ssim)} / "
                 f"{f(self.csim_reference)}", "higher"),
                ("reference: P_T / blendshape distance / AU agreement",
                 f"{f(self.pose_error_reference)} / {f(self.expression_distance_reference)} / "
                 f"{f(self.au_agreement_reference)}", "0 / 0 / 1 best"),
            ]
        rows += [
            ("seam flicker: band difference, output / target", f"{f(self.seam_ratio)} ({self.seam_frames} frames)",
             "<= 1.2"),
            ("frames without a face: result / source / target", f"{self.faceless.get('result', 0)} / "
             f"{self.faceless.get('source', 0)} / {self.faceless.get('target', 0)}", "0"),
        ]
        out = ["| figure | value | note |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
        out += [""] + [f"- {k}: {v}" for k, v in self.matching.items()] + [f"- {n}" for n in self.notes]
        return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------
# helpers


def _reader(path: PathLike, what: str):
    from ..io.video import VideoReader

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} video not found: {str(p)!r}")
    return VideoReader(p)


def _count_frames(reader) -> int:
    if reader.frame_count_exact:
        return reader.frame_count
    return sum(1 for _ in reader)


def _landmarks(image: np.ndarray) -> Optional[np.ndarray]:
    from ..landmarks.detect import detect_landmarks

    try:
        return np.asarray(detect_landmarks(image).points, dtype=np.float64)
    except NoFaceError:
        return None


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from ..progress import progress_bar as tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, unit="frame")


class _Frames:
    """Frames of a video by index: streamed when the indices never go back, else from an in-memory cache."""

    def __init__(self, reader, indices: np.ndarray, cache: Optional[Dict[int, np.ndarray]] = None):
        self.reader = reader
        self.cache: Optional[Dict[int, np.ndarray]] = cache
        if cache is None and self.needs_cache(indices):
            need = set(int(i) for i in indices[indices >= 0])
            self.cache = {f.index: f.image for f in reader if f.index in need}
        self._it: Optional[Iterator] = None
        self._cur: Optional[Tuple[int, np.ndarray]] = None

    @staticmethod
    def needs_cache(indices: np.ndarray) -> bool:
        """True when the indices go back somewhere (loop / ping-pong): the frames are then kept in memory."""
        valid = indices[indices >= 0]
        return bool(len(valid) > 1 and np.any(np.diff(valid) < 0))

    def get(self, i: int) -> Optional[np.ndarray]:
        if i < 0:
            return None
        if self.cache is not None:
            return self.cache.get(i)
        if self._cur is not None and self._cur[0] == i:
            return self._cur[1]
        if self._it is None or (self._cur is not None and self._cur[0] > i):
            self._it = iter(self.reader)
            self._cur = None
        for f in self._it:
            self._cur = (f.index, f.image)
            if f.index == i:
                return f.image
            if f.index > i:
                break
        return None


def _choose_order(kind: str, n_out: int, fps_out: float, n_in: int, fps_in: float, requested: str,
                  result_path: Optional[PathLike] = None, input_path: Optional[PathLike] = None
                  ) -> Tuple[str, str]:
    """Resolve ``"auto"``: returns (order, sentence)."""
    last = int(round((n_out - 1) / fps_out * fps_in)) if n_out else 0
    covers = last < n_in
    base = (f"{kind} ({n_in} frames at {fps_in:.3f} fps) matched to the output ({n_out} frames at {fps_out:.3f} "
            "fps) by time")
    if requested != "auto":
        extra = "" if covers else f"; past its end: {requested}"
        return requested, base + extra
    if covers:
        return "time", base
    if kind != "target" or result_path is None:
        return "loop", base + "; it is shorter, so it loops (auto)"
    # target: the order whose frames look most like the result's past the target's end
    cands = ("pingpong", "loop", "clamp")
    ks = np.unique(np.linspace(int(n_in / fps_in * fps_out) + 1, n_out - 1, 6).round().astype(int))
    idx = {o: match_frames(n_out, fps_out, n_in, fps_in, o)[ks] for o in cands}
    need_in = set(int(i) for v in idx.values() for i in v)
    need_out = set(int(k) for k in ks)

    def frames(path, what, need):
        return {f.index: f.image[::4, ::4].astype(np.float32)
                for f in itertools.islice(_reader(path, what), max(need) + 1) if f.index in need}

    tgt = frames(input_path, kind, need_in)
    res = frames(result_path, "result", need_out)
    cost = {}
    for o in cands:
        d = [np.abs(res[int(k)] - tgt[int(i)]).mean() for k, i in zip(ks, idx[o])
             if int(k) in res and int(i) in tgt and res[int(k)].shape == tgt[int(i)].shape]
        cost[o] = float(np.mean(d)) if d else float("inf")
    best = min(cost, key=cost.get)
    txt = ", ".join(f"{o} {c:.1f}" for o, c in cost.items())
    return best, base + f"; it is shorter, so it continues by {best} (auto: mean difference to the output " \
                      f"frames past its end: {txt})"


def _descriptors(images: List[np.ndarray], landmarks: List[np.ndarray], batch_size: int) -> np.ndarray:
    import torch

    from ..identity import face_chips

    if not images:
        return np.zeros((0, 128))
    net = _net()
    out = []
    for s in range(0, len(images), batch_size):
        chips = []
        for img, lm in zip(images[s:s + batch_size], landmarks[s:s + batch_size]):
            x = torch.from_numpy(np.ascontiguousarray(img)).float().div(255.0)[None]
            p = torch.from_numpy(np.array(lm, dtype=np.float64))[None]
            chips.append(face_chips(x, p, quantize=True, min_eye_distance=0.0)[0])
        with torch.no_grad():
            out.append(net(torch.stack(chips)).double().numpy())
    return np.concatenate(out)


_NET = None


def _net():
    global _NET
    if _NET is None:
        from ..identity import DlibFaceNet

        _NET = DlibFaceNet.from_dlib()
    return _NET


# ----------------------------------------------------------------------------------------------------------


def evaluate(source: PathLike, target: PathLike, result: PathLike, reference: Optional[PathLike] = None,
             config: Optional[EvaluateConfig] = None) -> Evaluation:
    """Evaluate a reenactment's output video against its source (driver) and target (identity) videos.

    Args:
        source: the driving video (expressions / pose come from it).
        target: the target video (identity, and the background of face-editing methods).
        result: the method's output video.
        reference: the real video the output should equal (self-reenactment ground truth), optional.
        config: :class:`EvaluateConfig`.
    Returns:
        :class:`Evaluation`.
    Raises:
        FileNotFoundError / VideoError: a video is missing or unreadable (names it).
    """
    import torch

    from .expression import action_units, au_agreement, blendshape_distance, fit_expressions, neutral_relative
    from .identity import csim, identity_distance
    from .image import psnr, ssim
    from .landmarks import lip_opening, pearson, pose_error

    cfg = config or EvaluateConfig()
    t_start = time.perf_counter()
    r_res, r_src, r_tgt = _reader(result, "result"), _reader(source, "source"), _reader(target, "target")
    r_ref = _reader(reference, "reference") if reference is not None else None
    n_res = _count_frames(r_res)
    if n_res == 0:
        raise VideoError(f"the result video {str(result)!r} holds no frames")
    N = min(n_res, cfg.max_frames) if cfg.max_frames else n_res
    fps = r_res.fps if r_res.fps > 0 else 25.0
    n_src, n_tgt = _count_frames(r_src), _count_frames(r_tgt)
    matching: Dict[str, str] = {}
    o_src, matching["source"] = _choose_order("source", N, fps, n_src, r_src.fps, cfg.source_order)
    o_tgt, matching["target"] = _choose_order("target", N, fps, n_tgt, r_tgt.fps, cfg.target_order, result, target)
    si = match_frames(N, fps, n_src, r_src.fps, o_src)
    ti = match_frames(N, fps, n_tgt, r_tgt.fps, o_tgt)
    ri = None
    if r_ref is not None:
        n_ref = _count_frames(r_ref)
        o_ref, matching["reference"] = _choose_order("reference", N, fps, n_ref, r_ref.fps, cfg.reference_order)
        ri = match_frames(N, fps, n_ref, r_ref.fps, o_ref)
    notes: List[str] = []
    timings: Dict[str, float] = {}
    t_stage = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t_stage
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - t_stage
        t_stage = now

    # ---- target: landmarks of every frame, descriptors every target_identity_stride-th (and the frames the
    # output needs, when the target plays back and forth)
    tgt_cache = {} if _Frames.needs_cache(ti) else None
    tgt_need = set(int(i) for i in ti if i >= 0)
    tgt_lm = np.full((n_tgt, 68, 2), np.nan)
    tgt_desc_img, tgt_desc_lm = [], []
    bar = _bar(n_tgt, "target", cfg.progress)
    for f in r_tgt:
        if f.index >= n_tgt:
            break
        if tgt_cache is not None and f.index in tgt_need:
            tgt_cache[f.index] = f.image
        lm = _landmarks(f.image)
        if lm is not None:
            tgt_lm[f.index] = lm
            if f.index % cfg.target_identity_stride == 0:
                tgt_desc_img.append(f.image)
                tgt_desc_lm.append(lm)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    lap("target")
    tgt_desc = _descriptors(tgt_desc_img, tgt_desc_lm, cfg.batch_size)
    del tgt_desc_img
    lap("descriptors")

    # ---- result pass 1: landmarks, descriptor frames, reference figures, seam region
    res_lm = np.full((N, 68, 2), np.nan)
    ref_lm = np.full((N, 68, 2), np.nan) if r_ref is not None else None
    res_desc_img, res_desc_lm, res_desc_k = [], [], []
    psnrs, ssims = [], []
    ref_desc_img, ref_desc_lm, ref_desc_k = [], [], []
    seam = SeamMeter(cfg.seam_config) if cfg.seam else None
    tgt_frames = _Frames(r_tgt, ti, tgt_cache)
    ref_frames = _Frames(r_ref, ri) if r_ref is not None else None
    bar = _bar(N, "result", cfg.progress)
    for f in r_res:
        k = f.index
        if k >= N:
            break
        lm = _landmarks(f.image)
        if lm is not None:
            res_lm[k] = lm
            if k % cfg.identity_stride == 0:
                res_desc_img.append(f.image)
                res_desc_lm.append(lm)
                res_desc_k.append(k)
        tframe = tgt_frames.get(int(ti[k]))
        if seam is not None and tframe is not None and tframe.shape == f.image.shape:
            seam.add_edit(f.image, tframe, lm)
        if ref_frames is not None:
            rframe = ref_frames.get(int(ri[k]))
            if rframe is not None:
                a = torch.from_numpy(f.image).float().div(255)[None]
                b = torch.from_numpy(rframe).float().div(255)[None]
                if a.shape != b.shape:
                    b = torch.nn.functional.interpolate(b.permute(0, 3, 1, 2), size=a.shape[1:3], mode="bilinear",
                                                        align_corners=False).permute(0, 2, 3, 1)
                    if "resized" not in " ".join(notes):
                        notes.append(f"the reference frames ({rframe.shape[1]}x{rframe.shape[0]}) were resized to "
                                     f"the output size ({f.image.shape[1]}x{f.image.shape[0]}) for PSNR / SSIM")
                psnrs.append(float(psnr(a, b)[0]))
                ssims.append(float(ssim(a, b)[0]))
                rl = _landmarks(rframe)
                if rl is not None:
                    ref_lm[k] = rl * (np.array(f.image.shape[1::-1]) / np.array(rframe.shape[1::-1]))
                    if k % cfg.identity_stride == 0:
                        ref_desc_img.append(rframe)
                        ref_desc_lm.append(rl)
                        ref_desc_k.append(k)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    lap("result")
    res_desc = _descriptors(res_desc_img, res_desc_lm, cfg.batch_size)
    ref_desc = _descriptors(ref_desc_img, ref_desc_lm, cfg.batch_size)
    del res_desc_img, ref_desc_img
    lap("descriptors")

    # ---- result pass 2: seam flicker
    seam_res = None
    if seam is not None and seam.region() is not None:
        tgt_frames2 = _Frames(r_tgt, ti) if tgt_frames.cache is None else tgt_frames
        prev = None
        for f in r_res:
            k = f.index
            if k >= N:
                break
            tframe = tgt_frames2.get(int(ti[k]))
            if prev is not None and tframe is not None and prev[1] is not None and tframe.shape == f.image.shape:
                seam.add_flicker(f.image, prev[0], tframe, prev[1], res_lm[k] if np.isfinite(res_lm[k]).all()
                                 else None)
            prev = (f.image, tframe)
        seam_res = seam.result()
    elif seam is not None:
        notes.append("seam flicker: no edited region found (the output equals the target, or no face)")

    lap("seam")

    # ---- source: landmarks of the matched frames, descriptors at the identity frames
    need = set(int(i) for i in si if i >= 0)
    desc_src_idx = set(int(si[k]) for k in range(0, N, cfg.identity_stride) if si[k] >= 0)
    src_lm_by = {}
    src_desc_img, src_desc_lm = [], []
    bar = _bar(len(need), "source", cfg.progress)
    for f in r_src:
        if f.index not in need:
            if f.index > max(need, default=-1):
                break
            continue
        lm = _landmarks(f.image)
        src_lm_by[f.index] = lm
        if lm is not None and f.index in desc_src_idx:
            src_desc_img.append(f.image)
            src_desc_lm.append(lm)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    lap("source")
    src_desc = _descriptors(src_desc_img, src_desc_lm, cfg.batch_size)
    del src_desc_img
    lap("descriptors")
    src_lm = np.full((N, 68, 2), np.nan)
    for k in range(N):
        v = src_lm_by.get(int(si[k]))
        if v is not None:
            src_lm[k] = v
    tgt_lm_m = np.full((N, 68, 2), np.nan)
    ok_t = ti >= 0
    tgt_lm_m[ok_t] = tgt_lm[ti[ok_t]]

    # ---- figures
    faceless_res = [int(k) for k in range(N) if not np.isfinite(res_lm[k]).all()]
    ev = Evaluation(
        result=str(result), source=str(source), target=str(target),
        reference=None if reference is None else str(reference), frames=N, fps=float(fps), matching=matching,
        faceless={"result": len(faceless_res),
                  "source": int(sum(1 for i in need if src_lm_by.get(i) is None)),
                  "target": int((~np.isfinite(tgt_lm).all(axis=(1, 2))).sum()),
                  **({"reference": int((~np.isfinite(ref_lm).all(axis=(1, 2))).sum())} if ref_lm is not None
                     else {})},
        faceless_result=faceless_res, notes=notes,
        descriptors={"result": len(res_desc), "source": len(src_desc), "target": len(tgt_desc),
                     **({"reference": len(ref_desc)} if r_ref is not None else {})},
    )

    def mean(x):
        x = np.asarray(x, dtype=np.float64)
        x = x[~np.isnan(x)]
        return float(x.mean()) if x.size else None

    if len(res_desc) and len(tgt_desc):
        ev.csim_target = mean(csim(res_desc, tgt_desc))
        ev.identity_distance_target = identity_distance(res_desc, tgt_desc)
    if len(res_desc) and len(src_desc):
        ev.csim_source = mean(csim(res_desc, src_desc))
        ev.identity_distance_source = identity_distance(res_desc, src_desc)
    r = pearson(lip_opening(res_lm), lip_opening(src_lm))
    ev.lip_correlation = None if math.isnan(r) else r
    ev.pose_error_source = mean(pose_error(res_lm, src_lm, align=True))
    ev.pose_error_target = mean(pose_error(res_lm, tgt_lm_m))
    if ref_lm is not None:
        pairs = [(res_desc[res_desc_k.index(k)], ref_desc[i]) for i, k in enumerate(ref_desc_k) if k in res_desc_k]
        if pairs:
            a, b = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
            ev.csim_reference = mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
        ev.pose_error_reference = mean(pose_error(res_lm, ref_lm))
        ev.psnr = float(np.mean(psnrs)) if psnrs else None
        ev.ssim = float(np.mean(ssims)) if ssims else None
    if seam_res is not None:
        ev.seam_ratio, ev.seam_output_mad, ev.seam_target_mad = (seam_res.ratio, seam_res.output_band_mad,
                                                                 seam_res.target_band_mad)
        ev.seam_frames = seam_res.frames

    if cfg.expression:
        try:
            from morphable_models import load_ict

            model = load_ict(cfg.home)
        except Exception as e:  # the model is optional for the other figures
            notes.append(f"expression figures skipped: {e}")
            model = None
        if model is not None:
            H, W = r_res.size
            fr = fit_expressions(res_lm, (H, W), model)
            src_size = r_src.size
            fs = fit_expressions(src_lm, src_size, model)
            ev.expression_distance_source = mean(blendshape_distance(fr.expression, fs.expression, relative=True))
            au_r, _ = action_units(np.clip(neutral_relative(fr.expression), 0, None), fr.names)
            au_s, _ = action_units(np.clip(neutral_relative(fs.expression), 0, None), fs.names)
            ev.au_agreement_source = au_agreement(au_r, au_s, cfg.au_threshold)
            if ref_lm is not None:
                fref = fit_expressions(ref_lm, (H, W), model)
                ev.expression_distance_reference = mean(blendshape_distance(fr.expression, fref.expression,
                                                                            relative=False))
                a1, _ = action_units(fr.expression, fr.names)
                a2, _ = action_units(fref.expression, fref.names)
                ev.au_agreement_reference = au_agreement(a1, a2, cfg.au_threshold)
        lap("expression")
    ev.seconds = time.perf_counter() - t_start
    ev.timings = {k: round(v, 2) for k, v in timings.items()}
    return ev


__all__ = ["EvaluateConfig", "Evaluation", "ORDERS", "evaluate", "match_frames"]
