"""Pieces shared by every reenactment pipeline (Face2Face, Deep Video Portraits, Neural Voice Puppetry, ...):
the frame schedule (lengths, frame rates, ping-pong), actors' neutral expressions and the relative expression
transfer, random access to a video's frames, the audio policy, side-by-side panels and the seam-stability meter.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import VideoError

log = logging.getLogger(__name__)

__all__ = ["OutputSettings", "load_or_track", "frame_schedule", "actor_neutral", "transfer_expression", "FrameSource",
           "choose_audio", "audio_warning", "label_image", "panel", "side_by_side_frame", "SeamMeter", "square_feather",
           "paste_crop"]


@dataclass
class OutputSettings:
    """The output policies every reenactment pipeline shares (its config subclasses this).

    Attributes:
        length: the output follows the ``"source"`` (the target ping-pongs when shorter), the ``"target"`` (the
            source loops) or the ``"shortest"``; frames are matched by time (:func:`frame_schedule`).
        audio: ``"auto"`` (the video the length follows), ``"source"``, ``"target"`` or ``"none"``
            (:func:`choose_audio`).
        side_by_side: write ``side_by_side.mp4`` (source | target | result); side_height: its panel height.
        stills: output frames whose stage images are saved in ``stills/``.
        max_frames: limit the output length (and the tracking of videos tracked for it).
        crf, preset: x264 settings of the outputs.
    """

    length: str = "source"
    audio: str = "auto"
    side_by_side: bool = True
    side_height: int = 256
    stills: Tuple[int, ...] = (0, 30, 90)
    max_frames: Optional[int] = None
    crf: float = 20
    preset: str = "veryfast"

    def __post_init__(self):
        if self.length not in ("source", "target", "shortest"):
            raise ValueError(f"length must be 'source', 'target' or 'shortest', got {self.length!r}")
        if self.audio not in ("auto", "source", "target", "none"):
            raise ValueError(f"audio must be 'auto', 'source', 'target' or 'none', got {self.audio!r}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.side_height < 16:
            raise ValueError(f"side_height must be >= 16, got {self.side_height}")


def load_or_track(path: Path, out_dir: Path, model, max_frames, progress) -> Tuple[Path, Path]:
    """``(track folder, video path)`` for a video (tracked into ``out_dir``, all frames or the first ``max_frames``)
    or a folder written by ``facerender track`` (reused as is)."""
    from ..tracking.video import load_track, track_video

    path = Path(path)
    if path.is_dir():
        tr = load_track(path)
        video = Path(tr.video)
        if not video.is_file():
            raise FileNotFoundError(f"{path} is a track of {tr.video}, which no longer exists")
        return path, video
    if not path.exists():
        raise FileNotFoundError(f"no such video or track folder: {path}")
    track_video(path, out_dir, model, max_frames=max_frames, overlay=False, progress=progress)
    return out_dir, path


def actor_neutral(expression: np.ndarray, valid: Optional[np.ndarray] = None, percentile: float = 5.0) -> np.ndarray:
    """An actor's neutral expression: the ``percentile``-th percentile of each weight over the (valid) frames."""
    e = np.asarray(expression, dtype=np.float64)
    if valid is not None and np.any(valid):
        e = e[np.asarray(valid, dtype=bool)]
    if e.shape[0] == 0:
        return np.zeros(expression.shape[-1])
    return np.percentile(e, percentile, axis=0)


def transfer_expression(source: np.ndarray, source_neutral: np.ndarray, target_neutral: np.ndarray,
                        keep: Optional[np.ndarray] = None, target_current: Optional[np.ndarray] = None,
                        lower: float = 0.0, upper: float = 1.0) -> np.ndarray:
    """``clip(target_neutral + (source - source_neutral), lower, upper)``; weights where ``keep`` is True take
    ``target_current`` instead (e.g. the target's own gaze). Shapes ``(..., K)``."""
    out = np.clip(np.asarray(target_neutral) + (np.asarray(source) - np.asarray(source_neutral)), lower, upper)
    if keep is not None and target_current is not None:
        out = np.where(keep, target_current, out)
    return out


#: What :func:`match_frames` does beyond the input's end.
MATCH_ORDERS = ("time", "clamp", "loop", "pingpong")


def match_frames(n_out: int, fps_out: float, n_in: int, fps_in: float, order: str = "time") -> np.ndarray:
    """Index of the input frame shown at each output frame's time.

    Args:
        n_out, fps_out: output frames and rate; n_in, fps_in: input frames and rate.
        order: beyond the input's end: ``"time"`` (-1: no frame), ``"clamp"`` (its last frame), ``"loop"``,
            ``"pingpong"`` (forward, backward, ...).
    Returns:
        ``(n_out,)`` int64 indices (-1 where ``"time"`` runs out).
    """
    if order not in MATCH_ORDERS:
        raise ValueError(f"order must be one of {MATCH_ORDERS}, got {order!r}")
    if n_out < 0 or n_in < 1 or not (fps_out > 0 and fps_in > 0):
        raise ValueError(f"need n_out >= 0, n_in >= 1 and positive frame rates, got {n_out}, {n_in}, "
                         f"{fps_out}, {fps_in}")
    k = np.round(np.arange(n_out) / fps_out * fps_in).astype(np.int64)
    if order == "time":
        return np.where(k < n_in, k, -1)
    if order == "clamp":
        return np.minimum(k, n_in - 1)
    if order == "loop":
        return k % n_in
    if n_in == 1:
        return np.zeros_like(k)
    period = 2 * (n_in - 1)
    k = k % period
    return np.where(k < n_in, k, period - k)


def frame_schedule(n_source: int, fps_source: float, n_target: int, fps_target: float, length: str
                   ) -> Tuple[np.ndarray, np.ndarray, float]:
    """Source and target frame index per output frame, and the output fps (see the module docstring)."""
    if n_source < 1 or n_target < 1:
        raise ValueError(f"both videos need frames, got {n_source} and {n_target}")
    if length == "source":
        fps, dur = fps_source, n_source / fps_source
    elif length == "target":
        fps, dur = fps_target, n_target / fps_target
    else:
        fps = fps_source
        dur = min(n_source / fps_source, n_target / fps_target)
    n = max(1, int(round(dur * fps)))
    src = match_frames(n, fps, n_source, fps_source, "loop" if length == "target" else "clamp")
    tgt = match_frames(n, fps, n_target, fps_target, "pingpong")
    return src, tgt, fps


class FrameSource:
    """Frames of a video by index: a cache (when indices go back, e.g. ping-pong) or a forward stream."""

    def __init__(self, path: Path, cache: bool, limit: Optional[int] = None):
        from ..io.video import VideoReader

        self.reader = VideoReader(path)
        self.cache: Optional[List[np.ndarray]] = None
        self.limit = limit
        if cache:
            self.cache = []
            for i, fr in enumerate(self.reader):
                if limit is not None and i >= limit:
                    break
                self.cache.append(fr.image)
        self._it: Optional[Iterator] = None
        self._pos = -1
        self._cur: Optional[np.ndarray] = None

    def get(self, i: int) -> np.ndarray:
        if self.cache is not None:
            return self.cache[min(i, len(self.cache) - 1)]
        if self._it is None or i < self._pos:  # restart (a loop)
            self._it = iter(self.reader)
            self._pos = -1
        while self._pos < i:
            try:
                self._cur = next(self._it).image
                self._pos += 1
            except StopIteration:
                break
        return self._cur


def choose_audio(policy: str, length: str, source_video: Path, target_video: Path) -> Optional[Path]:
    """The file whose audio goes into the output: ``policy`` ``"auto"`` takes the video the output's length follows
    (``length`` ``"source"``/``"target"``; ``"shortest"`` takes the source), else ``"source"`` / ``"target"``;
    ``"none"`` or a chosen video without an audio stream gives None (a warning says so)."""
    if policy not in ("auto", "source", "target", "none"):
        raise ValueError(f"audio must be 'auto', 'source', 'target' or 'none', got {policy!r}")
    choice = policy if policy != "auto" else (length if length != "shortest" else "source")
    if choice == "none":
        return None
    from ..io.video import VideoReader

    path = Path(source_video if choice == "source" else target_video)
    try:
        if VideoReader(path).has_audio:
            return path
    except VideoError:
        pass
    if policy != "auto":
        log.warning("the %s video %s has no audio stream: the output is silent", choice, path)
    return None


def _video_of(path) -> Optional[Path]:
    """The video of ``path``: itself, or the video a ``facerender track`` folder was made from (its summary)."""
    path = Path(path)
    if not path.is_dir():
        return path
    import json

    try:
        v = json.loads((path / "summary.json").read_text()).get("video")
    except (OSError, ValueError):
        return None
    return Path(v) if v else None


def audio_warning(policy: str, length: str, source, target) -> Optional[str]:
    """A warning for the user when the audio ``policy`` cannot be honoured before any work starts: an explicit
    ``"source"`` / ``"target"`` (or ``"auto"``'s choice) names a video without an audio stream, so the output would
    be silent. ``source``/``target``: videos or ``facerender track`` folders. None when there is nothing to say
    (or ``policy`` is ``"none"``)."""
    if policy == "none":
        return None
    choice = policy if policy != "auto" else (length if length != "shortest" else "source")
    given = source if choice == "source" else target
    if given is None:
        return None
    video = _video_of(given)
    if video is None or not video.is_file():
        return None
    from ..io.video import VideoReader

    try:
        has = VideoReader(video).has_audio
    except (VideoError, OSError):
        return None
    if has:
        return None
    how = f"--audio {policy}" if policy != "auto" else f"--audio auto (follows the {choice}, --length {length})"
    return f"{how}: the {choice} video {video} has no audio stream: the result will be silent"


def label_image(img: np.ndarray, text: str) -> np.ndarray:
    """A copy of ``img (H, W, 3)`` uint8 with ``text`` in a black box at the top left."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, 8 + 7 * len(text), 16], fill=(0, 0, 0))
    d.text((4, 2), text, fill=(255, 255, 255))
    return np.asarray(im)


def panel(img: np.ndarray, height: int) -> np.ndarray:
    """``img`` resized to ``height`` rows (even width, aspect kept)."""
    from PIL import Image

    h, w = img.shape[:2]
    nw = max(2, int(round(w * height / h)) // 2 * 2)
    return np.asarray(Image.fromarray(img).resize((nw, height), Image.BILINEAR))


def side_by_side_frame(images: Sequence[np.ndarray], labels: Sequence[str], height: int) -> np.ndarray:
    """Labelled panels of equal height next to each other (the ``side_by_side.mp4`` frame)."""
    return np.concatenate([label_image(panel(im, height), t) for im, t in zip(images, labels)], 1)


class SeamMeter:
    """Seam stability of a composite: the mean absolute frame-to-frame difference (0-255) inside a band around
    the blend border, in the output and in the target video itself over the same band. ``ratio`` near 1 means the
    border does not flicker more than the video does there."""

    def __init__(self):
        self.out: List[float] = []
        self.tgt: List[float] = []
        self._prev: Optional[Tuple[np.ndarray, np.ndarray]] = None

    def add(self, result: np.ndarray, target: np.ndarray, band) -> None:
        """``band``: ``(row0, col0, mask (h, w) bool)`` in the frame, or None (frame not composited)."""
        if band is not None and self._prev is not None:
            r0, c0, bm = band
            bm = np.asarray(bm, dtype=bool)
            h, w = bm.shape
            sl = (slice(r0, r0 + h), slice(c0, c0 + w))
            if bm.any():
                self.out.append(float(np.abs(result[sl].astype(np.float32) - self._prev[0][sl]).mean(-1)[bm].mean()))
                self.tgt.append(float(np.abs(target[sl].astype(np.float32) - self._prev[1][sl]).mean(-1)[bm].mean()))
        self._prev = (result.astype(np.float32), target.astype(np.float32))

    def summary(self) -> dict:
        o = float(np.mean(self.out)) if self.out else None
        t = float(np.mean(self.tgt)) if self.tgt else None
        return {"output_band_mad": o, "target_band_mad": t,
                "ratio": float(o / max(t, 1e-6)) if o is not None else None,
                "note": "mean absolute frame-to-frame difference (0-255) in the band around the blend border, in "
                        "the output and in the target video itself over the same band"}


def square_feather(size: int, feather: float) -> np.ndarray:
    """``(size, size)`` alpha of a square crop: 1 inside, falling smoothly (smoothstep) to 0 over the outer
    ``feather`` pixels towards each edge."""
    if size < 1 or feather < 0:
        raise ValueError(f"size must be >= 1 and feather >= 0, got {size}, {feather}")
    c = np.arange(size) + 0.5
    d = np.minimum(c, size - c)  # distance of each pixel centre to the nearer edge
    a = np.clip(d / feather, 0, 1) if feather > 0 else np.ones(size)
    a = a * a * (3 - 2 * a)
    return np.minimum(a[:, None], a[None, :])


def paste_crop(frame: np.ndarray, crop, centre, side: float, alpha: np.ndarray):
    """Resample a square ``crop (S, S, 3)`` (float in [0, 1], numpy or torch) covering the frame square of ``side``
    pixels centred at ``centre (x, y)`` back into ``frame (H, W, 3)`` uint8, blended with ``alpha (S, S)``.

    Returns:
        ``(new frame (H, W, 3) uint8, band)``: ``band`` is ``(row0, col0, mask (h, w) bool)``, the pixels where the
        resampled alpha is strictly between 0.02 and 0.98 (the blend border, for :class:`SeamMeter`), or None when
        the square misses the frame.
    """
    import torch
    import torch.nn.functional as F

    H, W = frame.shape[:2]
    crop_t = torch.as_tensor(np.asarray(crop, dtype=np.float32)) if not isinstance(crop, torch.Tensor) \
        else crop.detach().float().cpu()
    S = crop_t.shape[0]
    x0, y0 = float(centre[0]) - side / 2, float(centre[1]) - side / 2
    r0, r1 = max(0, int(np.floor(y0))), min(H, int(np.ceil(y0 + side)))
    c0, c1 = max(0, int(np.floor(x0))), min(W, int(np.ceil(x0 + side)))
    if r1 <= r0 or c1 <= c0:
        return frame.copy(), None
    scale = side / S
    py = (torch.arange(r0, r1, dtype=torch.float32) + 0.5 - y0) / scale
    px = (torch.arange(c0, c1, dtype=torch.float32) + 0.5 - x0) / scale
    gy, gx = torch.meshgrid(py / S * 2 - 1, px / S * 2 - 1, indexing="ij")
    src = torch.cat([crop_t.permute(2, 0, 1), torch.as_tensor(alpha, dtype=torch.float32)[None]], 0)[None]
    res = F.grid_sample(src, torch.stack([gx, gy], -1)[None], mode="bilinear", padding_mode="zeros",
                        align_corners=False)[0]
    rgb, a = res[:3].permute(1, 2, 0).numpy(), res[3].numpy()[..., None]
    out = frame.copy()
    region = out[r0:r1, c0:c1].astype(np.float32) / 255.0
    out[r0:r1, c0:c1] = np.clip((a * rgb + (1 - a) * region) * 255 + 0.5, 0, 255).astype(np.uint8)
    band = (a[..., 0] > 0.02) & (a[..., 0] < 0.98)
    return out, (r0, c0, band)
