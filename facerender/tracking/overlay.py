"""The overlay video of a track: each frame with the tracked face rendered over it, the detected (green) and model
(red) landmarks, and marks for the frames whose tracking was not confident."""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from ..errors import VideoError
from ..io.video import VideoReader, VideoWriter
from .streams import iter_frames as _frames, progress_bar as _progress
from .trackfile import Track, load_track

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

__all__ = ["render_overlay", "frame_marks"]

_MAX_AUDIO_BYTES = 64 * 1024 * 1024


def _load_model(model):
    """``model``, or the default ICT model when None."""
    if model is None:
        from morphable_models import load_ict

        model = load_ict()
    return model


RED, ORANGE, GREEN = (255, 60, 60), (255, 170, 0), (60, 220, 60)


def frame_marks(flags, face_found: bool, audit_error: float = float("nan"),
                audit_sampled: bool = False) -> Tuple[Optional[Tuple[int, int, int]], List[Tuple[str, Tuple]]]:
    """What the overlay marks on a frame: ``(border colour or None, [(text, colour), ...])``. Red: no usable face
    (``LOST - interpolated`` / ``LOST - held``, or ``no face (bridged)`` before any face); orange: the track was
    re-seeded, re-detected or the solver re-initialised, or the photometric check flagged the frame; green: a fresh
    detection verified the frame. On audited frames the audit error (% of the eye distance, red above 10 %)."""
    names = set(x for x in str(flags).split(",") if x)
    lines: List[Tuple[str, Tuple]] = []
    border = None
    if not face_found:
        border = RED
        if "interpolated" in names:
            lines.append(("LOST - interpolated", RED))
        elif "lost" in names or any(x.startswith("lost:") for x in names):
            lines.append(("LOST - held", RED))
        else:
            lines.append(("no face (bridged)", RED))
    for flag, text in (("reseeded", "re-seeded"), ("redetected", "re-detected"), ("reinitialised", "re-initialised"),
                       ("photometric_outlier", "photometric outlier")):
        if flag in names:
            lines.append((text, ORANGE))
            border = border or ORANGE
    if "verified" in names:
        lines.append(("verified", GREEN))
        border = border or GREEN
    if audit_sampled and math.isfinite(float(audit_error)):
        e = 100.0 * float(audit_error)
        lines.append((f"audit {e:.1f} %", GREEN if e <= 10.0 else RED))
    return border, lines


def _mark(img: np.ndarray, border, lines) -> np.ndarray:
    """Draw :func:`frame_marks`' border (4 px) and text lines (top left, on black) into a copy of ``img``."""
    if border is None and not lines:
        return img
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    H, W = img.shape[:2]
    if border is not None:
        d.rectangle([0, 0, W - 1, H - 1], outline=border, width=4)
    for k, (text, colour) in enumerate(lines):
        y = 6 + 15 * k
        d.rectangle([4, y, 7 * len(text) + 10, y + 14], fill=(0, 0, 0))
        d.text((7, y + 2), text, fill=colour)
    return np.asarray(im)


class _OverlayRenderer:
    """Renders the tracked face (region ``face`` of the identity model) into a crop around it and blends it."""

    def __init__(self, model, track_identity: np.ndarray, albedo: Optional[np.ndarray], focal: float,
                 pp: np.ndarray, size: Tuple[int, int], alpha: float):
        import torch

        self.torch = torch
        region = model.submodel("face") if "face" in (getattr(model, "regions", {}) or {}) else model
        self.model = region
        dt = region.dtype
        with torch.no_grad():
            idt = torch.as_tensor(track_identity, dtype=dt).reshape(1, -1) if track_identity.size else None
            self.base_kw = {"identity": idt} if idt is not None and idt.shape[1] == region.num_identity else {}
        self.albedo = (torch.as_tensor(albedo, dtype=dt) if albedo is not None and albedo.shape[0] ==
                       region.num_vertices else None)
        self.focal, self.pp, self.size, self.alpha = float(focal), np.asarray(pp, np.float64), size, alpha

    def __call__(self, image: np.ndarray, rotation, translation, expression, sh, points2d) -> np.ndarray:
        torch = self.torch
        from ..cameras import PinholeCamera
        from ..render.overlay import blend_overlay
        from ..render.renderer import render_face

        H, W = self.size
        p = np.asarray(points2d, np.float64)
        if not np.isfinite(p).all():
            return image
        lo, hi = p.min(0), p.max(0)
        c, side = (lo + hi) / 2, float(max(hi - lo)) * 1.8 + 8
        x0, y0 = int(max(0, math.floor(c[0] - side / 2))), int(max(0, math.floor(c[1] - side / 2)))
        x1, y1 = int(min(W, math.ceil(c[0] + side / 2))), int(min(H, math.ceil(c[1] + side / 2)))
        if x1 - x0 < 4 or y1 - y0 < 4:
            return image
        dt = self.model.dtype
        with torch.no_grad():
            ex = torch.as_tensor(np.asarray(expression), dtype=dt).reshape(1, -1)
            verts = self.model(expression=ex, **self.base_kw).vertices
            t1 = lambda v: torch.tensor([float(v)], dtype=dt)  # noqa: E731
            cam = PinholeCamera(fx=t1(self.focal), fy=t1(self.focal), cx=t1(self.pp[0] - x0), cy=t1(self.pp[1] - y0),
                                image_size=(y1 - y0, x1 - x0))
            out = render_face(verts, self.model.faces, cam, torch.as_tensor(np.asarray(rotation), dtype=dt)[None],
                              torch.as_tensor(np.asarray(translation), dtype=dt)[None], albedo=self.albedo,
                              sh=torch.as_tensor(np.asarray(sh), dtype=dt).reshape(1, 9, 3), antialias=False)
        crop = image[y0:y1, x0:x1]
        mask = out.mask[0].to(torch.float64).numpy()
        if mask.ndim == 3:
            mask = mask[..., 0]
        blended = blend_overlay(crop, out.image[0].clamp(0, 1).numpy(), mask, self.alpha)
        res = image.copy()
        res[y0:y1, x0:x1] = blended
        return res


_RECORD_KEYS = ("index", "time", "rotation", "translation", "expression", "sh", "landmarks", "landmarks_2d",
                "face_found", "flags", "audit_error", "audit_sampled")


def _records_from_arrays(arrays: Dict[str, np.ndarray]) -> Iterator[Dict[str, Any]]:
    for i in range(len(arrays["index"])):
        yield {k: arrays[k][i] for k in _RECORD_KEYS}


def _records_from_store(store, manifest) -> Iterator[Dict[str, Any]]:
    for k in range(len(manifest["chunks"])):
        yield from _records_from_arrays(store.read_chunk(k))


def render_overlay(track: Union[PathLike, Track], video: PathLike, path: PathLike, model=None, *, alpha: float = 0.6,
                   crf: float = 20, preset: str = "veryfast", progress: bool = True,
                   timings: Optional[Dict[str, float]] = None) -> Path:
    """Write the overlay video of a track: each frame with the tracked face rendered over it (``alpha``), the
    detected landmarks (green) and the model's projected landmarks (red) drawn, and the marks of :func:`frame_marks`
    (lost, re-seeded, re-initialised, verified frames; the audit error on audited frames).

    The video is streamed (frames are never held). The audio of the video is copied when it decodes to less than
    64 MB (longer audio is left out to keep memory bounded). Written atomically; frame times are the video's own.

    Args:
        track: a :class:`Track` or the folder / ``params.npz`` of one.
        video: the tracked video.
        path: the output ``.mp4``.
        model: the face model of the track (default ``load_ict()``).
        alpha: opacity of the render; crf, preset: x264 settings; progress: a progress bar.
        timings: a dict receiving ``overlay_decode``, ``overlay_render``, ``overlay_encode`` seconds.
    Raises:
        ValueError: the track is for another frame size. VideoError: the video cannot be read.
    """
    tr = track if isinstance(track, Track) else load_track(track)
    arrays = {k: getattr(tr, k) for k in _RECORD_KEYS}
    return _write_overlay(_records_from_arrays(arrays), len(tr), tr.image_size, video, path, _load_model(model),
                          tr.identity, tr.albedo, tr.focal, tr.principal_point, tr.fps, alpha, crf, preset, progress,
                          timings)


def _write_overlay(records: Iterator[Dict[str, Any]], n: int, image_size, video: PathLike, path: PathLike, model,
                   identity, albedo, focal, pp, fps_track, alpha, crf, preset, progress, timings) -> Path:
    from ..render.overlay import draw_landmarks

    reader = VideoReader(video)
    H, W = reader.size
    if tuple(int(v) for v in image_size) != (H, W):
        raise ValueError(f"the track is for {image_size[1]}x{image_size[0]} frames but {str(video)!r} is {W}x{H}")
    if n == 0:
        raise ValueError("the track holds no frame")
    renderer = _OverlayRenderer(model, np.asarray(identity), albedo, focal, pp, (H, W), alpha)
    audio = None
    if reader.has_audio and reader.duration > 0:
        est = reader.duration * (reader.info.audio_sample_rate or 48000) * (reader.info.audio_channels or 2) * 4
        if est <= _MAX_AUDIO_BYTES:
            audio = Path(video)
        else:
            log.info("audio not copied into the overlay (%.0f MB decoded; limit %d MB)", est / 2 ** 20,
                     _MAX_AUDIO_BYTES // 2 ** 20)
    t = timings if timings is not None else {}
    radius = max(1.0, round(min(H, W) / 320.0, 1))
    dec: Dict[str, float] = {}
    last_t = -1.0
    fps_w = reader.fps if reader.fps > 0 else (fps_track or 30.0)
    try:
        writer = VideoWriter(path, fps_w, (H, W), audio_from=audio, crf=crf, preset=preset)
    except (VideoError, ValueError):
        if audio is None:
            raise
        log.info("the audio of %s could not be read; the overlay has none", video)
        writer = VideoWriter(path, fps_w, (H, W), crf=crf, preset=preset)
    bar = _progress(n, 0, progress, "overlay")
    written = 0
    try:
        rec = next(records, None)
        for fr in _frames(reader, 0, None, dec):
            if rec is None:
                break
            if fr.index < int(rec["index"]):
                continue
            while rec is not None and int(rec["index"]) < fr.index:  # a frame the video no longer has
                rec = next(records, None)
            if rec is None or int(rec["index"]) != fr.index:
                continue
            t0 = time.perf_counter()
            img = renderer(fr.image, rec["rotation"], rec["translation"], rec["expression"], rec["sh"],
                           rec["landmarks_2d"])
            if rec["face_found"]:
                img = draw_landmarks(img, rec["landmarks"], (0, 255, 0), radius)
            img = draw_landmarks(img, rec["landmarks_2d"], (255, 40, 40), radius)
            img = _mark(img, *frame_marks(rec["flags"], bool(rec["face_found"]), rec["audit_error"],
                                          bool(rec["audit_sampled"])))
            t1 = time.perf_counter()
            ts = float(rec["time"])
            if not math.isfinite(ts) or ts <= last_t:
                ts = last_t + 1e-3 if last_t >= 0 else 0.0
            ts = max(ts, 0.0)
            writer.write(img, time=ts)
            last_t = ts
            t2 = time.perf_counter()
            t["overlay_render"] = t.get("overlay_render", 0.0) + (t1 - t0)
            t["overlay_encode"] = t.get("overlay_encode", 0.0) + (t2 - t1)
            written += 1
            if bar is not None:
                bar.update(1)
            rec = next(records, None)
        if written == 0:
            raise VideoError(f"no frame of {str(video)!r} matched the track")
        t0 = time.perf_counter()
        writer.close()
        t["overlay_encode"] = t.get("overlay_encode", 0.0) + time.perf_counter() - t0
    except BaseException as e:
        writer.abort(e)
        raise
    finally:
        if bar is not None:
            bar.close()
    t["overlay_decode"] = t.get("overlay_decode", 0.0) + dec.get("decode", 0.0)
    return Path(path)
