"""Hard cases for face tracking, made from real clips: fast moves with motion blur, a face moving over a larger frame,
a face walking towards the camera, a face that leaves and comes back, a scene cut, two faces where the tracked one
leaves (``docs/tracking.md``, "Hard cases").

Each case places the frames of one or two source videos on a canvas, frame by frame (:class:`Layer`: which source
frame, its scale and its top-left position), over a smooth background made from the first source frame (blurred so
that no face can be found in it). A layer that moved by more than a pixel since the previous frame is drawn with
motion blur: the average of up to ``blur_steps`` copies along the move (a shutter open for the whole frame
interval, centred on the frame's time, so the layer's own placement is where the blurred face is on average), which
also gives the "ghost" double contours of real fast turns.

:func:`hard_case_frames` yields :class:`HardCaseFrame` (the image and its layers); :meth:`HardCaseFrame.map_points`
takes points of a source frame (e.g. a fresh detection on the source) into the canvas, which gives the tests a
ground truth. :func:`write_hard_case` writes a case to a video file. Nothing here imports dlib or torch.

Example:
    >>> from facerender.io import VideoReader
    >>> frames = [f.image for f in VideoReader("talking_d3.mp4")][:90]            # doctest: +SKIP
    >>> write_hard_case("fast_move", "fast_move.mp4", frames, canvas=(720, 1280))  # doctest: +SKIP
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["HARD_CASES", "Layer", "HardCaseFrame", "hard_case_layers", "hard_case_frames", "write_hard_case"]

#: The cases, with what each one shows.
HARD_CASES = {
    "fast_move": "the face jumps sideways twice (0.3 of the frame width in 4 frames) with motion blur and a 10 % "
                 "scale change, holding still in between",
    "moving": "the clip composited onto a larger frame and moved along a smooth path",
    "approach": "the face walks towards the camera: its scale grows 3x over the clip",
    "leave_return": "the face leaves the frame to the left, is away for a fifth of the clip, and comes back",
    "scene_cut": "a cut from the first source to the second (another person, elsewhere in the frame)",
    "two_faces": "two people; the larger (tracked) one walks out to the left while the other stays",
}


@dataclass(frozen=True)
class Layer:
    """One source frame drawn on the canvas: ``source`` (0 or 1), its frame ``index``, ``scale`` (canvas px per
    source px) and the canvas position ``(x, y)`` of its top-left corner at the frame's time; ``blur`` holds the
    placements ``(scale, x, y)`` averaged into the frame (motion blur over the frame interval, centred on that
    time; empty when the layer did not move)."""

    source: int
    index: int
    scale: float
    x: float
    y: float
    blur: Tuple[Tuple[float, float, float], ...] = ()

    def map_points(self, points: np.ndarray) -> np.ndarray:
        """``(..., 2)`` source-frame points (package pixel convention) -> canvas points."""
        return np.asarray(points, np.float64) * self.scale + np.array([self.x, self.y])


@dataclass(frozen=True)
class HardCaseFrame:
    """A frame of a case: ``image (H, W, 3)`` uint8 and its ``layers`` (back to front)."""

    image: np.ndarray
    layers: Tuple[Layer, ...]

    def map_points(self, points: np.ndarray, source: int = 0) -> Optional[np.ndarray]:
        """Source ``source``'s points in this frame, or None when that source is not shown or less than half of the
        points lie inside the canvas."""
        for layer in self.layers:
            if layer.source == source:
                q = layer.map_points(points)
                H, W = self.image.shape[:2]
                inside = ((q[..., 0] >= 0) & (q[..., 0] <= W) & (q[..., 1] >= 0) & (q[..., 1] <= H)).mean()
                return q if inside >= 0.5 else None
        return None


def _smoothstep(u: float) -> float:
    u = min(max(u, 0.0), 1.0)
    return u * u * (3 - 2 * u)


def hard_case_layers(name: str, n: int, canvas: Tuple[int, int], source_size: Tuple[int, int],
                     other_size: Optional[Tuple[int, int]] = None) -> List[List[Tuple[int, int, float, float, float]]]:
    """The placements of a case: per output frame, a list of ``(source, source_index, scale, x, y)`` (back to front).

    Args:
        name: a key of :data:`HARD_CASES`.
        n: frames.
        canvas: ``(H, W)`` of the output.
        source_size, other_size: ``(H, W)`` of the two sources (the second only for ``scene_cut`` / ``two_faces``).
    Raises:
        ValueError: unknown case, ``n < 8``, or a second source missing where the case needs one.
    """
    if name not in HARD_CASES:
        raise ValueError(f"unknown hard case {name!r}; choose from {sorted(HARD_CASES)}")
    if n < 8:
        raise ValueError(f"a hard case needs at least 8 frames, got {n}")
    if name in ("scene_cut", "two_faces") and other_size is None:
        raise ValueError(f"the case {name!r} needs a second source")
    H, W = canvas
    h0, w0 = source_size

    def place(scale, cx, cy, size=source_size, src=0, idx=0):
        """Source ``src`` at ``scale`` with its centre at canvas fraction ``(cx, cy)``."""
        return (src, idx, scale, cx * W - 0.5 * size[1] * scale, cy * H - 0.5 * size[0] * scale)

    base = 0.8 * H / h0  # the source fills 80 % of the canvas height
    out: List[List[Tuple[int, int, float, float, float]]] = []
    for i in range(n):
        u = i / (n - 1)
        if name == "fast_move":
            # two jumps of 4 frames each, at 30 % and 65 % of the clip; 10 % larger while on the right
            k1, k2 = int(0.3 * n), int(0.65 * n)
            a = _smoothstep((i - k1) / 4.0) - _smoothstep((i - k2) / 4.0)
            layers = [place(base * 0.75 * (1 + 0.1 * a), 0.35 + 0.3 * a, 0.5, idx=i)]
        elif name == "moving":
            s = base * 0.6
            layers = [place(s, 0.5 + 0.25 * math.sin(2 * math.pi * u), 0.5 + 0.15 * math.sin(4 * math.pi * u + 0.5),
                            idx=i)]
        elif name == "approach":
            s = base * 0.3 * 3.0 ** u
            layers = [place(s, 0.5 + 0.05 * math.sin(3 * u), 0.5 + 0.1 * (1 - u) * 0.5, idx=i)]
        elif name == "leave_return":
            # out over 0.25-0.4, away until 0.6, back over 0.6-0.75
            s = base * 0.7
            half = 0.5 * w0 * s / W
            a = _smoothstep((u - 0.25) / 0.15) - _smoothstep((u - 0.6) / 0.15)
            cx = 0.5 - a * (0.5 + half + 0.02)
            layers = [place(s, cx, 0.5, idx=i)]
        elif name == "scene_cut":
            if i < n // 2:
                layers = [place(base * 0.75, 0.4, 0.5, idx=i)]
            else:
                layers = [place(0.8 * H / other_size[0] * 0.6, 0.7, 0.45, size=other_size, src=1, idx=i - n // 2)]
        else:  # two_faces: the larger face (source 0) on the left leaves over 0.35-0.55
            s1 = 0.8 * H / other_size[0] * 0.5
            a = _smoothstep((u - 0.35) / 0.2)
            s0 = base * 0.75
            half = 0.5 * w0 * s0 / W
            layers = [place(s1, 0.78, 0.55, size=other_size, src=1, idx=i),
                      place(s0, 0.3 - a * (0.3 + half + 0.02), 0.5, idx=i)]
        out.append(layers)
    return out


def _background(first: np.ndarray, canvas: Tuple[int, int]) -> np.ndarray:
    """A smooth canvas-sized background from a frame: downsampled to 8 x 8, upsampled, darkened (no face in it)."""
    from PIL import Image

    H, W = canvas
    small = Image.fromarray(first).resize((8, 8), Image.BOX)
    big = np.asarray(small.resize((W, H), Image.BICUBIC), dtype=np.float32)
    return np.clip(0.6 * big + 20, 0, 255).astype(np.uint8)


def _draw(canvas: np.ndarray, weight: np.ndarray, frame: np.ndarray, scale: float, x: float, y: float,
          w: float) -> None:
    """Add ``w`` x the frame scaled by ``scale`` at ``(x, y)`` into the float canvas, and ``w`` into ``weight``."""
    from PIL import Image

    H, W = canvas.shape[:2]
    h0, w0 = frame.shape[:2]
    sw, sh = max(1, int(round(w0 * scale))), max(1, int(round(h0 * scale)))
    xi, yi = int(round(x)), int(round(y))
    x0, y0, x1, y1 = max(0, xi), max(0, yi), min(W, xi + sw), min(H, yi + sh)
    if x1 <= x0 or y1 <= y0:
        return
    img = frame if (sw, sh) == (w0, h0) else np.asarray(Image.fromarray(frame).resize((sw, sh), Image.BILINEAR))
    canvas[y0:y1, x0:x1] += w * img[y0 - yi:y1 - yi, x0 - xi:x1 - xi].astype(np.float32)
    weight[y0:y1, x0:x1] += w


def hard_case_frames(name: str, sources: Sequence[Sequence[np.ndarray]], canvas: Tuple[int, int],
                     n: Optional[int] = None, blur_steps: int = 12) -> Iterator[HardCaseFrame]:
    """The frames of a case.

    Args:
        name: a key of :data:`HARD_CASES`.
        sources: one or two sequences of ``(H, W, 3)`` uint8 frames (indexable; frames past the end repeat the last).
        canvas: ``(H, W)`` of the output frames.
        n: frames (default: the length of the first source).
        blur_steps: most copies averaged into a frame whose layer moved (motion blur; 1 turns it off).
    Yields:
        :class:`HardCaseFrame`.
    Raises:
        ValueError: an unknown case, empty sources, or a bad canvas.
    """
    if not sources or len(sources[0]) == 0:
        raise ValueError("hard_case_frames needs at least one non-empty source")
    if len(canvas) != 2 or min(canvas) < 16:
        raise ValueError(f"canvas must be (H, W) with both >= 16, got {canvas}")
    n = len(sources[0]) if n is None else int(n)
    other = tuple(sources[1][0].shape[:2]) if len(sources) > 1 and len(sources[1]) else None
    plan = hard_case_layers(name, n, canvas, tuple(sources[0][0].shape[:2]), other)
    bg = _background(np.asarray(sources[0][0]), canvas).astype(np.float32)

    def find(i: int, src: int) -> Optional[Tuple[float, float, float]]:
        if 0 <= i < len(plan):
            for s_, _, scale, x, y in plan[i]:
                if s_ == src:
                    return scale, x, y
        return None

    for i, layers in enumerate(plan):
        out = bg.copy()
        done: List[Layer] = []
        for src, idx, scale, x, y in layers:
            seq = sources[src]
            frame = np.asarray(seq[min(idx, len(seq) - 1)])
            cur = np.array([scale, x, y])
            p, q = find(i - 1, src), find(i + 1, src)
            # the velocity at this frame (central difference; one-sided at the ends of the layer's appearance)
            vel = ((np.array(q) if q is not None else cur) - (np.array(p) if p is not None else cur))
            vel = vel / (2.0 if p is not None and q is not None else 1.0)
            move = max(abs(vel[1]), abs(vel[2]), abs(vel[0]) * frame.shape[1])
            k = 1 if move <= 1.0 else int(min(blur_steps, math.ceil(move / 2.0)))
            # the shutter is open for the whole frame interval, centred on the frame's time
            steps = [tuple(cur + vel * t) for t in (np.arange(k) + 0.5) / k - 0.5] if k > 1 else [(scale, x, y)]
            acc = np.zeros_like(out)
            wsum = np.zeros(out.shape[:2] + (1,), np.float32)
            for s_, x_, y_ in steps:
                _draw(acc, wsum, frame, s_, x_, y_, 1.0 / k)
            # the layer covers the background where it was drawn, in proportion to the time it spent there
            out = out * (1.0 - wsum) + acc
            blur = tuple(tuple(float(v) for v in st) for st in steps) if k > 1 else ()
            done.append(Layer(src, int(idx), float(scale), float(x), float(y), blur))
        yield HardCaseFrame(np.clip(out + 0.5, 0, 255).astype(np.uint8), tuple(done))


def write_hard_case(name: str, path, sources: Sequence[Sequence[np.ndarray]], canvas: Tuple[int, int],
                    fps: float = 30.0, n: Optional[int] = None, crf: float = 18,
                    callback: Optional[Callable[[int, HardCaseFrame], None]] = None) -> Path:
    """Write a case to a video file (H.264, ``crf``); ``callback(i, frame)`` sees each frame (e.g. to keep the
    layers). Returns the path."""
    from ..io.video import VideoWriter

    with VideoWriter(path, fps, preset="ultrafast", crf=crf) as w:
        for i, fr in enumerate(hard_case_frames(name, sources, canvas, n)):
            w.write(fr.image)
            if callback is not None:
                callback(i, fr)
    return Path(path)
