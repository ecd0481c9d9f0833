"""Deep Video Portraits reenactment: the source actor's head pose, expression, eye gaze and blinks on the target
video, rendered by the network trained on the target (``facerender reenact --method dvp --model RUN``).

Per output frame (the schedule, lengths, ping-pong and audio policies are Face2Face's,
:mod:`facerender.reenact.common`):

* **Transfer** onto the target's track: the expression relative to each actor's neutral (Face2Face's rule, the
  ``neutral_percentile``-th percentile of each blendshape weight), blinks with it; the eye gaze (``eyeLook*``) is
  the source's own; the head rotation is the source's rotation relative to its mean, applied to the target's mean
  rotation; the translation is the target's mean plus the source's offset from its mean, scaled by the ratio of
  the actors' mean depths. Lighting (SH) is the target frame's. ``transfer_pose=False`` keeps the target frame's
  own pose (expression and gaze only, "visual dubbing").
* **Conditioning** rendered from the transferred parameters with the target's identity, albedo and camera, in a
  crop centred on the reenacted head (the target's crop size, :func:`~neural_renderers.data.crop_boxes_from_pose`),
  quantised as the training cache is, stacked into the space-time window (the first frame repeats at the start).
* **Network** -> the crop; **compositing** back into the target frame at the crop's place with a feathered square
  border (``feather`` of the crop side), so only the head region changes.
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from facerender.reenact.common import (FrameSource, OutputSettings, SeamMeter, actor_neutral, choose_audio,
                                       frame_schedule, load_or_track, paste_crop, side_by_side_frame,
                                       square_feather, transfer_expression)

from ..data import ConditioningCache, ConditioningRenderer, ConditioningSettings, \
    crop_boxes_from_pose, crop_reference, dequantize, quantize
from ..errors import DatasetError

log = logging.getLogger(__name__)

__all__ = ["DVPReenactConfig", "DVPReenactResult", "dvp_reenact", "transfer_pose"]

PathLike = Union[str, Path]


@dataclass
class DVPReenactConfig(OutputSettings):
    """Settings of :func:`dvp_reenact`; the output settings (length, audio, side-by-side, stills, max_frames, x264)
    are :class:`~facerender.reenact.common.OutputSettings`' (Face2Face's).

    Attributes:
        transfer_pose: transfer the source's head pose (else the target keeps its own).
        transfer_gaze: the source's eye gaze (else the target's own).
        neutral_percentile: percentile of each blendshape weight taken as an actor's neutral.
        feather: width of the crop's blended border, as a fraction of the crop side.
        batch: frames rendered and translated together.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``.
    """

    transfer_pose: bool = True
    transfer_gaze: bool = True
    neutral_percentile: float = 5.0
    feather: float = 0.12
    batch: int = 4
    device: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.feather < 0.5:
            raise ValueError(f"feather must lie in [0, 0.5), got {self.feather}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")


@dataclass
class DVPReenactResult:
    """What :func:`dvp_reenact` wrote (``result.mp4``, ``side_by_side.mp4``, ``stills/``, ``summary.json``) and the
    per-frame source / target indices, timings (seconds per stage) and the loop's frames per second."""

    out_dir: Path
    result_path: Path
    side_by_side_path: Optional[Path]
    frames: int
    source_index: np.ndarray
    target_index: np.ndarray
    timings: Dict[str, float]
    fps: float
    summary: Dict[str, object] = field(default_factory=dict)


def transfer_pose(src_rotation: np.ndarray, src_translation: np.ndarray, src_valid: np.ndarray, rows: np.ndarray,
                  tgt_rotation: np.ndarray, tgt_translation: np.ndarray, tgt_valid: np.ndarray
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """The source's head motion relative to its mean pose, applied to the target's mean pose (see the module
    docstring).

    Args:
        src_rotation, src_translation: ``(N_s, 3)`` the source track's axis-angle rotations and translations.
        src_valid: ``(N_s,)`` bool, the frames whose mean is the source's rest pose.
        rows: ``(M,)`` the source frames to transfer.
        tgt_rotation, tgt_translation, tgt_valid: the same for the target (``N_t`` frames).
    Returns:
        ``(M, 3)`` rotations (axis-angle) and ``(M, 3)`` translations.
    """
    from scipy.spatial.transform import Rotation as Rot

    def mean_pose(r, t, v):
        v = np.asarray(v, bool)
        if not v.any():
            raise DatasetError("no tracked frame to define an actor's mean head pose")
        return Rot.from_rotvec(np.asarray(r)[v]).mean(), np.mean(np.asarray(t)[v], 0)

    rs, ts = mean_pose(src_rotation, src_translation, src_valid)
    rt, tt = mean_pose(tgt_rotation, tgt_translation, tgt_valid)
    rows = np.asarray(rows)
    rel = Rot.from_rotvec(np.asarray(src_rotation)[rows]) * rs.inv()
    rot = (rel * rt).as_rotvec()
    depth_ratio = float(tt[2] / max(ts[2], 1e-6))
    trans = tt[None] + (np.asarray(src_translation)[rows] - ts[None]) * depth_ratio
    return rot, trans


def dvp_reenact(run: PathLike, source: PathLike, target: Optional[PathLike], out_dir: PathLike,
                config: Optional[DVPReenactConfig] = None, *, model=None, progress: bool = True
                ) -> DVPReenactResult:
    """Reenact the target of a trained Deep Video Portraits run with the source actor (see the module docstring).

    Args:
        run: the run folder of ``facerender train dvp``.
        source: the source video or its track folder.
        target: the target video or its track folder; None takes the run's own target. It must be the video the
            network was trained on (DVP renders one person).
        out_dir: output folder.
        config: :class:`DVPReenactConfig`.
        model: the face model (default ``load_ict()``).
    Raises:
        TrainingError / CheckpointError (the run), DatasetError (a target the network was not trained on, tracks
        that do not match their videos), FileNotFoundError, VideoError.
    """
    from morphable_models import load_ict

    from facerender.io.atomic import atomic_write
    from facerender.io.image import write_image
    from facerender.io.video import VideoWriter
    from facerender.tracking import load_track

    from ..training.trainer import peak_memory_mb
    from .train import load_dvp

    cfg = config or DVPReenactConfig()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"the output {str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if cfg.device == "auto" else cfg.device))
    timer = {k: 0.0 for k in ("load", "track_source", "track_target", "decode", "transfer", "conditioning",
                              "network", "composite", "encode")}
    t0 = time.perf_counter()
    method, saved = load_dvp(run, dev)
    c = method.config
    data = saved["data"]
    model = model or load_ict()
    timer["load"] = time.perf_counter() - t0
    # the target: the run's own, or a video / track checked to be that one
    t0 = time.perf_counter()
    from ..data import open_trained_target

    named = data["video"] if target is None else str(target)
    tgt_src = open_trained_target(
        data, target, model=model, progress=progress,
        refusal=(f"the network in {str(run)!r} was trained on {data['video']!r}, not on {named!r}: Deep Video "
                 f"Portraits renders the one person it was trained on; train a model on this target first "
                 f"('facerender train dvp --target {named} -o RUN')"))
    tgt = tgt_src.track
    timer["track_target"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    src_dir, src_video = load_or_track(Path(source), out / "source_track", model, cfg.max_frames, progress)
    src = load_track(src_dir)
    timer["track_source"] = time.perf_counter() - t0
    if tuple(src.expression_names) != tuple(tgt.expression_names):
        raise DatasetError("the source and target tracks were made with different expression sets")
    # schedule and transfer
    t0 = time.perf_counter()
    si, ti, fps = frame_schedule(len(src), src.fps, len(tgt), tgt.fps, cfg.length)
    if cfg.max_frames is not None:
        si, ti = si[:cfg.max_frames], ti[:cfg.max_frames]
    N = len(si)
    names = list(tgt.expression_names)
    n_s = actor_neutral(src.expression, src.face_found, cfg.neutral_percentile)
    n_t = actor_neutral(tgt.expression, tgt.face_found, cfg.neutral_percentile)
    gaze = np.array([n.startswith("eyeLook") for n in names])
    expr = transfer_expression(src.expression[si], n_s, n_t)
    expr[:, gaze] = src.expression[si][:, gaze] if cfg.transfer_gaze else tgt.expression[ti][:, gaze]
    src_ok = np.asarray(src.face_found, bool)
    # frames where the source has no face keep the target's own parameters
    no_face = ~src_ok[si]
    expr[no_face] = tgt.expression[ti][no_face]
    if cfg.transfer_pose:
        rot, trans = transfer_pose(src.rotation, src.translation, src_ok, si, tgt.rotation, tgt.translation,
                                   np.asarray(tgt.face_found, bool))
        rot[no_face], trans[no_face] = tgt.rotation[ti][no_face], tgt.translation[ti][no_face]
    else:
        rot, trans = tgt.rotation[ti].copy(), tgt.translation[ti].copy()
    sh = tgt.sh[ti]
    settings = ConditioningSettings(**{k: (tuple(v) if k == "maps" else v) for k, v in data["settings"].items()})
    try:
        ref = ConditioningCache.open(data["cache"]).crop_reference
    except (DatasetError, OSError, KeyError):
        ref = crop_reference(tgt, model, scale=settings.crop_scale)
    boxes = crop_boxes_from_pose(rot, trans, tgt.focal, tgt.principal_point, ref,
                                 vertical_offset=settings.crop_offset, sigma=settings.crop_sigma)
    renderer = ConditioningRenderer(model, tgt, settings, device=dev)
    alpha = square_feather(c.size, cfg.feather * c.size)
    timer["transfer"] += time.perf_counter() - t0
    # frames, audio, writers
    t0 = time.perf_counter()
    tgt_frames = FrameSource(tgt_src.video, cache=True, limit=len(tgt))
    src_frames = FrameSource(src_video, cache=False)
    timer["decode"] += time.perf_counter() - t0
    audio = choose_audio(cfg.audio, cfg.length, src_video, tgt_src.video)
    stills_dir = out / "stills"
    stills_dir.mkdir(exist_ok=True)
    still_paths: List[Path] = []
    seam = SeamMeter()
    from facerender.progress import progress_bar

    W = c.window
    history: Optional[np.ndarray] = None  # the last W - 1 conditioning frames (as the cache stores them)
    t_loop = time.perf_counter()
    # each video is renamed into place when its block ends, and deleted if the block raises (VideoWriter's context)
    with VideoWriter(out / "result.mp4", fps=fps, audio_from=audio, crf=cfg.crf, preset=cfg.preset) as writer, \
            (VideoWriter(out / "side_by_side.mp4", fps=fps, audio_from=audio, crf=cfg.crf, preset=cfg.preset)
             if cfg.side_by_side else nullcontext()) as side, \
            (progress_bar(total=N, unit="frame", desc="reenact (dvp)") if progress else nullcontext()) as bar:
        for k0 in range(0, N, cfg.batch):
            k1 = min(N, k0 + cfg.batch)
            t0 = time.perf_counter()
            with torch.no_grad():
                maps = renderer(expr[k0:k1], rot[k0:k1], trans[k0:k1], sh[k0:k1], boxes.centre[k0:k1],
                                boxes.side[k0:k1])
            q = quantize(maps, settings.storage)
            seq = q if history is None else np.concatenate([history, q], 0)
            offset = 0 if history is None else len(history)
            idx = np.arange(k1 - k0)[:, None] + offset - (W - 1) + np.arange(W)[None]
            windows = seq[np.clip(idx, 0, None)]  # (b, W, S, S, C): oldest first, current last
            b = k1 - k0
            cond = torch.from_numpy(dequantize(np.ascontiguousarray(windows.transpose(0, 2, 3, 1, 4)).reshape(
                b, c.size, c.size, -1))).to(dev)
            history = seq[-(W - 1):] if W > 1 else None
            timer["conditioning"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            crops = method.render(cond).cpu().numpy()
            timer["network"] += time.perf_counter() - t0
            for j in range(b):
                k = k0 + j
                t0 = time.perf_counter()
                frame = tgt_frames.get(int(ti[k]))
                sframe = src_frames.get(int(si[k])) if side is not None else None
                timer["decode"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                result, band = paste_crop(frame, crops[j], boxes.centre[k], float(boxes.side[k]), alpha)
                seam.add(result, frame, band)
                timer["composite"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                writer.write(result)
                if side is not None:
                    side.write(side_by_side_frame([sframe, frame, result], ["source", "target", "result (DVP)"],
                                                  cfg.side_height))
                timer["encode"] += time.perf_counter() - t0
                if k in cfg.stills:
                    still_paths.append(write_image(stills_dir / f"frame{k:05d}_conditioning.png",
                                                   (np.clip(dequantize(q[j][..., :3]), 0, 1) * 255 + 0.5)
                                                   .astype(np.uint8)))
                    still_paths.append(write_image(stills_dir / f"frame{k:05d}_network.png",
                                                   (crops[j] * 255 + 0.5).astype(np.uint8)))
                    still_paths.append(write_image(stills_dir / f"frame{k:05d}_result.png", result))
                if bar is not None:
                    bar.update(1)
    loop_s = time.perf_counter() - t_loop
    per_frame = {k: timer[k] / max(N, 1) * 1e3 for k in ("decode", "conditioning", "network", "composite", "encode")}
    summary = {
        "method": "dvp", "run": str(run), "checkpoint_step": saved.get("checkpoint_step"), "frames": N,
        "fps_output": fps, "source": str(src_video), "target": str(tgt_src.video), "source_frames": len(src),
        "target_frames": len(tgt), "reenactment_fps": N / loop_s if loop_s > 0 else None, "timings_s": timer,
        "per_frame_ms": per_frame, "config": asdict(cfg), "device": str(dev), "crop_size": c.size,
        "peak_memory_mb": peak_memory_mb(dev), "audio": str(audio) if audio else None,
        "seam_stability": seam.summary(),
        "flags": {"source_no_face": int(no_face.sum())},
    }
    with atomic_write(out / "summary.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1, default=str))
    return DVPReenactResult(out, out / "result.mp4", out / "side_by_side.mp4" if side is not None else None, N, si,
                            ti, timer, N / loop_s if loop_s > 0 else float("nan"), summary)
