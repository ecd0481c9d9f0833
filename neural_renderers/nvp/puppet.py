"""Neural Voice Puppetry end to end: speech drives the target video's mouth (``facerender puppet``).

``puppet(audio, run, out_dir)``, per output frame (at the target's frame rate; the output lasts as long as the
audio: the target loops ping-pong when the audio is longer, a shorter audio cuts it; the schedule is
:func:`facerender.reenact.common.frame_schedule`'s):

1. **Audio -> expressions.** The audio's features (:func:`~neural_renderers.nvp.targets.audio_features`; a file
   without sound, or silence, is refused; music or noise is flagged), a 16-step window centred on each frame's time,
   Audio2ExpressionNet's shared code and the target's own map (fitted on its track by ``train nvp-render
   --audio-model``, or here with ``audio_model``). The mouth and jaw blendshapes (:data:`~neural_renderers.nvp.
   targets.MOUTH_PREFIXES`) come from the audio, the others (eyes, brows) stay the target frame's own.
2. **Rendering.** The UV maps of the new expression in the target frame's pose and stable crop (quantised to the
   cache's float16, as in training), the target frame's real crop and its own tracked maps -> the neural texture
   and the U-Net -> the crop and the lower-face alpha (the union of the new and the tracked regions, feathered).
3. **Compositing** into the target frame (:func:`~facerender.reenact.common.paste_crop`): only the mouth and jaw
   region changes. Target frames without a tracked face are passed through unchanged (flagged).
4. **Writing**: ``result.mp4`` and ``side_by_side.mp4`` (target | result) are encoded without sound, then the
   driving audio is muxed under them (:func:`facerender.audio.mux.mux_audio`, streamed; the sound at time 0 plays
   with frame 0), each written atomically; ``summary.json`` and ``expressions.npz`` (the per-frame weights) last.

Memory: the audio features are kept (32 kB per second of audio), everything per frame is streamed; a target that
must loop is held decoded in memory (frames up to the last one used).
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch

from facerender.progress import progress_bar

from ..errors import DatasetError

log = logging.getLogger(__name__)

__all__ = ["PuppetConfig", "PuppetResult", "puppet"]

PathLike = Union[str, Path]


@dataclass
class PuppetConfig:
    """Settings of :func:`puppet`.

    Attributes:
        max_frames: write only the first N frames.
        target_start: the target frame the output begins with (the ping-pong walk starts there).
        drive: ``"mouth"`` (the mouth and jaw blendshapes from the audio, the rest the target's own) or ``"all"``.
        require_speech: refuse audio that does not look like speech (default: flag it and go on).
        batch: frames rendered together. device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``.
        side_by_side, side_height: the ``target | result`` video and its panel height.
        stills: output frames saved as PNG (network crop, alpha, result).
        crf, preset: x264 settings.
    """

    max_frames: Optional[int] = None
    target_start: int = 0
    drive: str = "mouth"
    require_speech: bool = False
    batch: int = 4
    device: str = "auto"
    side_by_side: bool = True
    side_height: int = 256
    stills: Tuple[int, ...] = (0, 25, 75)
    crf: float = 18
    preset: str = "veryfast"

    def __post_init__(self):
        if self.drive not in ("mouth", "all"):
            raise ValueError(f"drive must be 'mouth' or 'all', got {self.drive!r}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.target_start < 0:
            raise ValueError(f"target_start must be >= 0, got {self.target_start}")
        self.stills = tuple(int(s) for s in self.stills)


@dataclass
class PuppetResult:
    """What :func:`puppet` wrote and measured: the paths, the frame count, the per-frame target indices and
    expressions, timings (seconds per stage), the loop's frames per second and the summary."""

    out_dir: Path
    result_path: Path
    side_by_side_path: Optional[Path]
    frames: int
    target_index: np.ndarray
    expression: np.ndarray
    timings: Dict[str, float]
    fps: float
    summary: Dict[str, object] = field(default_factory=dict)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _open_run_target(run: Path, data: dict, target: Optional[PathLike], model, progress: bool):
    """The run's own target, or ``target`` (a video or track folder) checked to be that video."""
    from ..data import open_trained_target

    tp = data["video"] if target is None else str(target)
    refusal = (f"the renderer in {str(run)!r} was trained on {data['video']!r}, not on {tp!r}: a neural texture "
               f"renders the one person (and video) it was trained on; train one on this target first "
               f"('facerender train nvp-render --target {tp} -o RUN')")
    return open_trained_target(data, target, refusal=refusal, model=model, progress=progress)


def puppet(audio: PathLike, run: PathLike, out_dir: PathLike, config: Optional[PuppetConfig] = None, *,
           target: Optional[PathLike] = None, audio_model: Optional[PathLike] = None, model=None,
           progress: bool = True) -> PuppetResult:
    """Make the target video of a ``train nvp-render`` run speak ``audio`` (see the module docstring).

    Args:
        audio: the driving speech: any file with sound (wav, mp3, m4a, a video ...).
        run: the run folder of ``facerender train nvp-render``.
        out_dir: output folder (``result.mp4``, ``side_by_side.mp4``, ``summary.json``, ``expressions.npz``,
            ``stills/``).
        config: :class:`PuppetConfig`.
        target: the target video or its track folder (default the run's own; another video is refused).
        audio_model: a ``train nvp-audio`` run (or checkpoint): its map for the target is fitted here on the
            target's own track; default the model stored in the run (``audio2expression.pt``).
        model: the face model (default ``load_ict()``).
    Raises:
        AudioError (no audio stream, silent, or not speech with ``require_speech``), DatasetError (a target the
        renderer was not trained on), TrainingError / CheckpointError (the runs), UsageError (no audio model).
    """
    from morphable_models import load_ict

    from facerender.audio import frame_times
    from facerender.audio.mux import mux_audio
    from facerender.errors import AudioError, UsageError
    from facerender.fitting.fit_image import crop_face
    from facerender.io.atomic import atomic_write
    from facerender.io.image import write_image
    from facerender.io.video import VideoWriter
    from facerender.reenact.common import FrameSource, SeamMeter, frame_schedule, paste_crop, side_by_side_frame

    from ..data import (ConditioningCache, ConditioningRenderer, ConditioningSettings, crop_boxes_from_pose,
                        crop_reference, dequantize, quantize)
    from ..training.trainer import peak_memory_mb
    from .targets import _codes, audio_features, fit_target_map, load_nvp_audio, mouth_mask
    from .train import AUDIO_MODEL_FILE, load_nvp_render

    cfg = config or PuppetConfig()
    run = Path(run)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"the output {str(out)!r} exists and is not a folder")
    dev = _device(cfg.device)
    timer = {k: 0.0 for k in ("load", "target", "audio", "expressions", "decode", "conditioning", "network",
                              "composite", "encode", "mux")}
    t0 = time.perf_counter()
    model = model or load_ict()
    method, saved = load_nvp_render(run, dev, model)
    c = method.config
    data = saved["data"]
    stored = run / AUDIO_MODEL_FILE
    if audio_model is None and not stored.is_file():
        raise UsageError(f"the run {str(run)!r} holds no audio model (it was trained without --audio-model): pass "
                         f"--audio-model AUDIO_RUN (from 'facerender train nvp-audio')")
    amethod, asaved = load_nvp_audio(audio_model if audio_model is not None else stored, dev)
    timer["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tgt_src = _open_run_target(run, data, target, model, progress)
    tgt = tgt_src.track
    timer["target"] = time.perf_counter() - t0
    names = list(tgt.expression_names)
    # the audio first: a file without sound or silence stops here, before any output exists
    t1 = time.perf_counter()
    feats = audio_features(audio, amethod.config.features)
    flags: Dict[str, object] = {"silent": feats.silent, "speech_like": feats.speech_like,
                                "band_limited": feats.band_limited}
    if feats.silent:
        raise AudioError(f"the audio {str(audio)!r} is silent (no step above -60 dBFS in {feats.duration:.2f} s): "
                         f"there is no speech to drive the face")
    if not feats.speech_like:
        msg = (f"the audio {str(audio)!r} does not look like speech ({100 * feats.speech_fraction:.0f} % of its "
               f"2-s blocks do): music or noise drive the mouth poorly")
        if cfg.require_speech:
            raise AudioError(msg)
        log.warning(msg)
        flags["warning"] = msg
    timer["audio"] = time.perf_counter() - t1
    out.mkdir(parents=True, exist_ok=True)
    # the target's map: the run's stored one, or fitted here for a given audio model
    if audio_model is None:
        W = amethod.net.maps.weight[0].detach().cpu().numpy()
        b = amethod.net.maps.bias[0].detach().cpu().numpy()
        map_info = data.get("map", {"source": "stored"})
    else:
        cut = int(np.floor(len(tgt) * (1 - float(data.get("val_fraction", 0.2)))))
        fr = np.arange(len(tgt))
        tmap = fit_target_map(amethod, tgt_src.video, tgt, fr < cut, fr >= cut)
        W, b, map_info = tmap.weight, tmap.bias, tmap.summary()
    if map_info.get("source") == "average":
        flags["identity_map"] = map_info.get("note", "the speakers' mean map")
    # schedule: the audio's length at the target's frame rate
    n_audio = max(1, int(round(feats.duration * tgt.fps)))
    if cfg.target_start >= len(tgt):
        raise UsageError(f"the target starts at frame {cfg.target_start} but {str(tgt_src.video)!r} has {len(tgt)} "
                         f"frames")
    start = int(cfg.target_start)
    _, ti, fps = frame_schedule(n_audio + start, tgt.fps, len(tgt), tgt.fps, "source")
    ti = ti[start:]
    if cfg.max_frames is not None:
        ti = ti[:cfg.max_frames]
    N = len(ti)
    times = frame_times(N, fps)
    t1 = time.perf_counter()
    codes = _codes(amethod.net, feats, times)
    pred = (codes @ W.T.astype(np.float64) + b.astype(np.float64)).astype(np.float32)  # the network's output
    drive = mouth_mask(names) if cfg.drive == "mouth" else np.ones(len(names), bool)
    expr = np.asarray(tgt.expression, np.float32)[ti].copy()
    expr[:, drive] = np.clip(pred[:, drive], 0.0, 1.0)  # blendshape weights live in [0, 1]
    valid = np.asarray(tgt.face_found, bool) & np.isfinite(tgt.expression).all(1) \
        & np.isfinite(tgt.rotation).all(1) & np.isfinite(tgt.translation).all(1)
    no_face = ~valid[ti]
    timer["expressions"] = time.perf_counter() - t1
    # crops and conditioning: the training cache's settings and crop boxes
    settings = ConditioningSettings(**{k: (tuple(v) if k == "maps" else v) for k, v in data["settings"].items()})
    cache = None
    try:
        cache = ConditioningCache.open(data["cache"])
        if cache.num_frames != len(tgt):
            cache = None
    except (DatasetError, OSError, KeyError, ValueError):
        cache = None
    if cache is not None:
        boxes = cache.boxes
    else:
        from ..data.crops import _valid

        ref = crop_reference(tgt, model, scale=settings.crop_scale)
        boxes = crop_boxes_from_pose(tgt.rotation, tgt.translation, tgt.focal, tgt.principal_point, ref,
                                     _valid(tgt), vertical_offset=settings.crop_offset, sigma=settings.crop_sigma)
    t0 = time.perf_counter()
    renderer = ConditioningRenderer(model, tgt, settings, device=dev)
    timer["load"] += time.perf_counter() - t0
    # frames: stream when the schedule only moves forward, hold the used frames when it loops
    t0 = time.perf_counter()
    loops = bool(np.any(np.diff(ti) < 0))
    tgt_frames = FrameSource(tgt_src.video, cache=loops, limit=int(ti.max()) + 1)
    timer["decode"] += time.perf_counter() - t0
    stills_dir = out / "stills"
    seam = SeamMeter()
    tmp_result = out / ".result.noaudio.mp4"
    tmp_side = out / ".side_by_side.noaudio.mp4"
    S = c.size
    t_loop = time.perf_counter()
    try:
        # each video is renamed into place when its block ends, and deleted if the block raises (VideoWriter's context)
        with VideoWriter(tmp_result, fps=fps, crf=cfg.crf, preset=cfg.preset) as writer, \
                (VideoWriter(tmp_side, fps=fps, crf=cfg.crf, preset=cfg.preset) if cfg.side_by_side
                 else nullcontext()) as side, \
                (progress_bar(total=N, unit="frame", desc="puppet (nvp)") if progress else nullcontext()) as bar:
            for k0 in range(0, N, cfg.batch):
                k1 = min(N, k0 + cfg.batch)
                rows = ti[k0:k1]
                t0 = time.perf_counter()
                frames = [tgt_frames.get(int(i)) for i in rows]
                timer["decode"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                with torch.no_grad():
                    maps = renderer(expr[k0:k1], tgt.rotation[rows], tgt.translation[rows], tgt.sh[rows],
                                    boxes.centre[rows], boxes.side[rows])
                    if cache is not None:
                        own = np.stack([cache.read("cond", int(i)) for i in rows])
                    else:
                        own = quantize(renderer(tgt.expression[rows], tgt.rotation[rows], tgt.translation[rows],
                                                tgt.sh[rows], boxes.centre[rows], boxes.side[rows]), "float16")
                cond = torch.from_numpy(dequantize(quantize(maps, settings.storage))).to(dev)
                own_t = torch.from_numpy(dequantize(own)).to(dev)
                real = torch.stack([crop_face(torch.from_numpy(f), boxes.centre[i], float(boxes.side[i]), S).clamp(0, 1)
                                    for f, i in zip(frames, rows)]).to(dev)
                timer["conditioning"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                crops, alpha = method.render(cond, real, own_t)
                crops, alpha = crops.cpu().numpy(), alpha.cpu().numpy()
                timer["network"] += time.perf_counter() - t0
                for j, i in enumerate(rows):
                    k = k0 + j
                    t0 = time.perf_counter()
                    frame = frames[j]
                    if no_face[k]:
                        result, band = frame, None
                    else:
                        result, band = paste_crop(frame, crops[j], boxes.centre[i], float(boxes.side[i]), alpha[j])
                    seam.add(result, frame, band)
                    timer["composite"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    writer.write(result)
                    if side is not None:
                        side.write(side_by_side_frame([frame, result], ["target", "result (NVP)"], cfg.side_height))
                    timer["encode"] += time.perf_counter() - t0
                    if k in cfg.stills:
                        stills_dir.mkdir(exist_ok=True)
                        write_image(stills_dir / f"frame{k:05d}_network.png", (crops[j] * 255 + 0.5).astype(np.uint8))
                        write_image(stills_dir / f"frame{k:05d}_alpha.png", (alpha[j] * 255 + 0.5).astype(np.uint8))
                        write_image(stills_dir / f"frame{k:05d}_result.png", result)
                    if bar is not None:
                        bar.update(1)
        loop_s = time.perf_counter() - t_loop
        # the driving audio under both videos (streamed; each file appears complete or not at all)
        t0 = time.perf_counter()
        mux_audio(tmp_result, audio, out / "result.mp4")
        if cfg.side_by_side:
            mux_audio(tmp_side, audio, out / "side_by_side.mp4")
        timer["mux"] = time.perf_counter() - t0
    finally:
        for p in (tmp_result, tmp_side):
            p.unlink(missing_ok=True)
    per_frame = {k: timer[k] / max(N, 1) * 1e3 for k in ("decode", "conditioning", "network", "composite", "encode")}
    audio_s = feats.summary()
    summary = {
        "method": "nvp", "run": str(run), "checkpoint_step": saved.get("checkpoint_step"),
        "audio": str(audio), "audio_info": audio_s, "audio_model": str(asaved["path"]),
        "audio_model_step": asaved["step"], "identity_map": map_info, "target": str(tgt_src.video),
        "target_frames": len(tgt), "frames": N, "fps_output": fps, "duration_s": N / fps,
        "target_loops": loops, "drive": cfg.drive, "driven_blendshapes": [n for n, d in zip(names, drive) if d],
        "puppet_fps": N / loop_s if loop_s > 0 else None, "timings_s": timer, "per_frame_ms": per_frame,
        "config": asdict(cfg), "device": str(dev), "crop_size": S, "peak_memory_mb": peak_memory_mb(dev),
        "seam_stability": seam.summary(),
        "jaw_open": ({"min": float(expr[:, names.index("jawOpen")].min()),
                      "max": float(expr[:, names.index("jawOpen")].max())} if "jawOpen" in names else None),
        "flags": {**flags, "target_no_face": int(no_face.sum())},
        "sync": "frame k shows time k / fps_output; its audio window is centred on that time; the sound starts "
                "with frame 0 (result.mp4)",
    }
    with atomic_write(out / "expressions.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, expression=expr, predicted=pred, target_index=ti, times=times,
                     names=np.array(names), no_face=no_face)
    with atomic_write(out / "summary.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1, default=str))
    return PuppetResult(out, out / "result.mp4", out / "side_by_side.mp4" if side is not None else None, N, ti, expr,
                        timer, N / loop_s if loop_s > 0 else float("nan"), summary)
