"""Pictures for people: landmarks drawn on photos, renders blended over photos, side-by-side panels, energy plots.

numpy and Pillow only (no OpenCV); matplotlib is used for :func:`plot_energy` when installed (through its Agg
canvas, without pyplot's global state), else a simple Pillow line plot. Every function returns a NEW uint8
``(H, W, 3)`` array and never modifies its inputs; files are written atomically
(:func:`facerender.io.atomic_write`).

Pixel convention (package-wide): pixel ``(col i, row j)`` is ``image[j, i]`` and has its centre at
``(i + 0.5, j + 0.5)``; a landmark at ``(10.5, 20.5)`` is the centre of pixel ``(col 10, row 20)``.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import ShapeError
from ..io.atomic import atomic_write
from ..io.image import to_uint8_rgb

__all__ = ["draw_landmarks", "blend_overlay", "side_by_side", "plot_energy", "DEFAULT_LANDMARK_COLOR"]

PathLike = Union[str, os.PathLike]
ColorLike = Union[Sequence[int], np.ndarray]

#: Green, the colour landmarks are drawn in by default.
DEFAULT_LANDMARK_COLOR: Tuple[int, int, int] = (0, 255, 0)


def _color(color, n: Optional[int] = None) -> np.ndarray:
    """``(3,)`` or ``(n, 3)`` uint8 from 0..255 ints (or floats in [0, 1] when every value is <= 1 and a float)."""
    c = np.asarray(color.detach().cpu().numpy() if isinstance(color, torch.Tensor) else color)
    if c.shape not in ((3,),) and not (n is not None and c.shape == (n, 3)):
        want = "(3,)" + (f" or ({n}, 3)" if n is not None else "")
        raise ShapeError(f"color must have shape {want}, got {c.shape}")
    if np.issubdtype(c.dtype, np.floating) and c.size and np.nanmax(c) <= 1.0:
        c = c * 255.0
    if not np.isfinite(c.astype(np.float64)).all() or c.min() < 0 or c.max() > 255:
        raise ValueError(f"color values must be in [0, 255] (or floats in [0, 1]), got {c.tolist()}")
    return np.round(c).astype(np.uint8)


def _points(points, name: str = "points") -> np.ndarray:
    p = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ShapeError(f"{name} must have shape (L, 2) (x, y in pixels), got {p.shape}")
    if not np.issubdtype(p.dtype, np.number):
        raise ShapeError(f"{name} must hold numbers, got dtype {p.dtype}")
    return p.astype(np.float64)


def draw_landmarks(
    image,
    points,
    color: ColorLike = DEFAULT_LANDMARK_COLOR,
    radius: float = 2.0,
) -> np.ndarray:
    """Draw landmarks as filled discs on a copy of ``image``.

    A pixel is painted when its CENTRE lies within ``radius`` of the point (``radius = 0``: only the pixel that
    contains the point, ``floor(x), floor(y)``). Points with NaN coordinates (missing landmarks) are skipped; discs
    are clipped at the image border.

    Args:
        image: ``(H, W, 3)`` uint8 (anything :func:`facerender.io.to_uint8_rgb` accepts).
        points: ``(L, 2)`` ``(x, y)`` in the package's pixel convention (numpy or torch).
        color: ``(3,)`` RGB 0..255 (floats in [0, 1] are scaled), or ``(L, 3)`` one colour per point.
        radius: disc radius in pixels (>= 0).
    Returns:
        a new ``(H, W, 3)`` uint8 array.
    """
    out = to_uint8_rgb(image)  # always a new array
    if out is image:  # pragma: no cover - to_uint8_rgb copies; keep the promise explicit
        out = out.copy()
    p = _points(points)
    col = _color(color, p.shape[0])
    if not isinstance(radius, (int, float)) or isinstance(radius, bool) or not radius >= 0 or math.isinf(radius):
        raise ValueError(f"radius must be a finite number >= 0, got {radius!r}")
    H, W = out.shape[:2]
    r = float(radius)
    for k, (x, y) in enumerate(p):
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        c = col if col.ndim == 1 else col[k]
        if r == 0:
            i, j = int(math.floor(x)), int(math.floor(y))
            if 0 <= i < W and 0 <= j < H:
                out[j, i] = c
            continue
        i0, i1 = max(int(math.floor(x - r - 0.5)), 0), min(int(math.ceil(x + r - 0.5)), W - 1)
        j0, j1 = max(int(math.floor(y - r - 0.5)), 0), min(int(math.ceil(y + r - 0.5)), H - 1)
        if i0 > i1 or j0 > j1:
            continue
        jj, ii = np.mgrid[j0:j1 + 1, i0:i1 + 1]
        inside = (ii + 0.5 - x) ** 2 + (jj + 0.5 - y) ** 2 <= r * r + 1e-9
        out[j0:j1 + 1, i0:i1 + 1][inside] = c
    return out


def _float_image(x, name: str) -> np.ndarray:
    """An image in 0..255 float64 ``(H, W, 3)``: uint8 as is, floats taken in [0, 1]."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise ShapeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    a = x[0] if x.ndim == 4 and x.shape[0] == 1 else x
    if a.ndim != 3 or a.shape[2] != 3:
        raise ShapeError(f"{name} must have shape (H, W, 3), got {x.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float64)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} holds NaN or inf values")
        return np.clip(a.astype(np.float64), 0.0, 1.0) * 255.0
    return to_uint8_rgb(a).astype(np.float64)


def blend_overlay(image, render, mask, alpha: float = 0.6) -> np.ndarray:
    """Blend a render over a photo where the render covers it.

    ``out = image + alpha * mask * (render - image)``, rounded to uint8: pixels with ``mask = 0`` keep the photo
    exactly, pixels with ``mask = 1`` become ``alpha * render + (1 - alpha) * image``. A float mask in [0, 1] (e.g.
    the antialiased coverage) blends proportionally.

    Args:
        image: ``(H, W, 3)`` photo, uint8 or float in [0, 1].
        render: ``(H, W, 3)`` render, uint8 or float in [0, 1] (e.g. ``RenderOutput.image[0]``).
        mask: ``(H, W)`` (or ``(H, W, 1)``) bool or float in [0, 1].
        alpha: opacity of the render, in [0, 1].
    Returns:
        a new ``(H, W, 3)`` uint8 array.
    """
    img = _float_image(image, "image")
    ren = _float_image(render, "render")
    if ren.shape != img.shape:
        raise ShapeError(f"render must have the image's shape {img.shape}, got {ren.shape}")
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.ndim == 4 and m.shape[0] == 1:
        m = m[0]
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.shape != img.shape[:2]:
        raise ShapeError(f"mask must have shape {img.shape[:2]}, got {np.shape(mask)}")
    m = m.astype(np.float64)
    if not np.isfinite(m).all() or m.min() < 0 or m.max() > 1:
        raise ValueError(f"mask values must be in [0, 1], got the range [{np.nanmin(m)}, {np.nanmax(m)}]")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    out = img + (alpha * m)[..., None] * (ren - img)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _label_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument
        return ImageFont.load_default()


def side_by_side(
    images: Sequence,
    labels: Optional[Sequence[Optional[str]]] = None,
    *,
    gap: int = 4,
    background: ColorLike = (0, 0, 0),
    label_height: int = 18,
    label_color: ColorLike = (255, 255, 255),
) -> np.ndarray:
    """Images next to each other, left to right, top-aligned (shorter ones padded with ``background``).

    Args:
        images: a non-empty sequence of images (anything :func:`facerender.io.to_uint8_rgb` accepts).
        labels: optional text per image (None or "" for none), written in a strip of ``label_height`` pixels
            above the images (Pillow's default font).
        gap: pixels between images (>= 0).
        background, label_color: RGB 0..255.
    Returns:
        a new uint8 array ``(label_height * any(labels) + max H, sum W + gap * (n - 1), 3)``.
    """
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 3:
        raise ShapeError(f"images must be a sequence of images, got one array of shape {tuple(images.shape)}")
    imgs = [to_uint8_rgb(im) for im in images]
    if not imgs:
        raise ValueError("side_by_side needs at least one image, got none")
    if labels is not None and len(labels) != len(imgs):
        raise ValueError(f"got {len(labels)} labels for {len(imgs)} images")
    if isinstance(gap, bool) or not isinstance(gap, int) or gap < 0:
        raise ValueError(f"gap must be an int >= 0, got {gap!r}")
    bg = _color(background)
    has_labels = labels is not None and any(labels)
    top = int(label_height) if has_labels else 0
    H = max(im.shape[0] for im in imgs) + top
    W = sum(im.shape[1] for im in imgs) + gap * (len(imgs) - 1)
    out = np.empty((H, W, 3), dtype=np.uint8)
    out[:] = bg
    x = 0
    lefts = []
    for im in imgs:
        out[top:top + im.shape[0], x:x + im.shape[1]] = im
        lefts.append(x)
        x += im.shape[1] + gap
    if has_labels:
        from PIL import Image, ImageDraw

        strip = Image.fromarray(np.ascontiguousarray(out[:top]))
        draw = ImageDraw.Draw(strip)
        font = _label_font(max(8, top - 6))
        fg = tuple(int(v) for v in _color(label_color))
        for left, im, text in zip(lefts, imgs, labels):
            if text:
                draw.text((left + 3, 2), str(text), fill=fg, font=font)
        out[:top] = np.asarray(strip)
    return out


def _series(history) -> Dict[str, np.ndarray]:
    """``{name: values}`` from a dict of sequences, a sequence of numbers, or a sequence of per-step dicts."""
    def arr(v, name):
        a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, dtype=object)
        try:
            a = np.asarray(a, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"history entry {name!r} must be a sequence of numbers") from None
        return a

    if isinstance(history, Mapping):
        out = {str(k): arr(v, k) for k, v in history.items()}
    elif isinstance(history, (np.ndarray, torch.Tensor)):
        out = {"energy": arr(history, "energy")}
    elif isinstance(history, Sequence) and not isinstance(history, (str, bytes)):
        if history and all(isinstance(h, Mapping) for h in history):
            keys = list(dict.fromkeys(k for h in history for k in h))
            out = {str(k): np.array([float(h.get(k, np.nan)) for h in history]) for k in keys}
        else:
            out = {"energy": arr(history, "energy")}
    else:
        raise ValueError(f"history must be a dict of sequences, a sequence of numbers or of dicts, "
                         f"got {type(history).__name__}")
    if not out or all(v.size == 0 for v in out.values()):
        raise ValueError("history is empty: nothing to plot")
    return out


def plot_energy(
    history,
    path: PathLike,
    *,
    title: Optional[str] = None,
    log_scale: Optional[bool] = None,
    size: Tuple[int, int] = (640, 400),
    xlabel: str = "iteration",
) -> Path:
    """Plot energies over iterations into an image file (written atomically).

    Args:
        history: ``{name: values}`` (e.g. ``{"total": [...], "landmarks": [...]}``), a sequence of numbers, or a
            sequence of per-iteration dicts ``[{"total": e0, ...}, ...]``. Non-finite values are left out.
        path: output image (``.png``, ``.jpg`` ...); its folder must exist.
        title: plot title.
        log_scale: logarithmic y axis; default: when every finite value is positive.
        size: ``(width, height)`` in pixels.
        xlabel: label of the x axis.
    Returns:
        ``Path(path)``.
    """
    series = _series(history)
    path = Path(path)
    finite = np.concatenate([v[np.isfinite(v)] for v in series.values()])
    if finite.size == 0:
        raise ValueError("history holds no finite value: nothing to plot")
    if log_scale is None:
        log_scale = bool((finite > 0).all())
    elif log_scale and not (finite > 0).all():
        raise ValueError("log_scale=True needs every finite value to be > 0")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        arr = _plot_pil(series, title, log_scale, size)
    else:
        arr = _plot_matplotlib(series, title, log_scale, size, xlabel)
    from PIL import Image

    ext = path.suffix.lower()
    if ext not in Image.registered_extensions():
        raise ValueError(f"cannot write {str(path)!r}: unknown image suffix {path.suffix!r}")
    with atomic_write(path) as tmp:
        Image.fromarray(arr).save(tmp)
    return path


def _plot_matplotlib(series, title, log_scale, size, xlabel) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, v in series.items():
        x = np.arange(v.size)
        ok = np.isfinite(v)
        ax.plot(x[ok], v[ok], marker="." if v.size <= 50 else None, label=name)
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("energy")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _plot_pil(series, title, log_scale, size) -> np.ndarray:
    """Fallback without matplotlib: axes box, one polyline per series, a legend; white background."""
    from PIL import Image, ImageDraw

    W, H = int(size[0]), int(size[1])
    im = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(im)
    font = _label_font(12)
    left, right, top, bottom = 60, W - 10, 25, H - 25
    d.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    vals = [(n, np.log10(v) if log_scale else v) for n, v in series.items()]
    finite = np.concatenate([v[np.isfinite(v)] for _, v in vals])
    lo, hi = float(finite.min()), float(finite.max())
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    n = max(v.size for _, v in vals)
    for k, (name, v) in enumerate(vals):
        col = _PALETTE[k % len(_PALETTE)]
        xs = left + (right - left) * np.arange(v.size) / max(n - 1, 1)
        ys = bottom - (bottom - top) * (v - lo) / (hi - lo)
        pts = [(float(x), float(y)) for x, y in zip(xs, ys) if np.isfinite(y)]
        if len(pts) > 1:
            d.line(pts, fill=col, width=2)
        elif pts:
            d.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=col)
        d.text((left + 8, top + 4 + 14 * k), name, fill=col, font=font)
    fmt = (lambda t: f"1e{t:.1f}") if log_scale else (lambda t: f"{t:.3g}")
    d.text((2, top), fmt(hi), fill=(0, 0, 0), font=font)
    d.text((2, bottom - 12), fmt(lo), fill=(0, 0, 0), font=font)
    if title:
        d.text((left, 5), title, fill=(0, 0, 0), font=font)
    return np.asarray(im).copy()
