"""Render the default face model (ICT-FaceKit) with expressions to a PNG: ``facerender render``.

:func:`render_expressions` writes one image or a labelled grid of expressions; :func:`render_conditioning_montage`
writes a labelled montage of the conditioning maps of :func:`~facerender.render.conditioning.conditioning_maps`
(the README pictures ``docs/images/render_grid.png`` and ``docs/images/conditioning.png`` come from these two).

Yaw: positive degrees turn the face towards the image RIGHT (the subject's left), a rotation about the model's
up axis. Outputs are written atomically (a temporary file renamed onto the target).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import FaceRenderError
from ..io.image import write_image
from ..render.conditioning import conditioning_maps
from ..render.renderer import frame_face

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

__all__ = ["render_expressions", "render_conditioning_montage", "GRID_TILES", "ExpressionError", "expression_weights"]


class ExpressionError(FaceRenderError, ValueError):
    """An expression name the model does not have, or a weight outside its range (the message lists both)."""


#: The tiles of the default grid: (label, blendshape weights, extra yaw in degrees).
GRID_TILES: Tuple[Tuple[str, Mapping[str, float], float], ...] = (
    ("neutral", {}, 0.0),
    ("jawOpen", {"jawOpen": 1.0}, 0.0),
    ("mouthSmile L+R", {"mouthSmile_L": 1.0, "mouthSmile_R": 1.0}, 0.0),
    ("eyeBlink L+R", {"eyeBlink_L": 1.0, "eyeBlink_R": 1.0}, 0.0),
    ("browInnerUp L+R", {"browInnerUp_L": 1.0, "browInnerUp_R": 1.0}, 0.0),
    ("mouthPucker", {"mouthPucker": 1.0}, 0.0),
    ("eyeLookOut_L + In_R", {"eyeLookOut_L": 1.0, "eyeLookIn_R": 1.0}, 0.0),
    ("mix", {"jawOpen": 0.35, "mouthSmile_L": 0.8, "mouthSmile_R": 0.8, "browInnerUp_L": 0.5,
             "browInnerUp_R": 0.5, "cheekSquint_L": 0.4, "cheekSquint_R": 0.4}, 0.0),
    ("mix, yaw +35", {"jawOpen": 0.35, "mouthSmile_L": 0.8, "mouthSmile_R": 0.8, "browInnerUp_L": 0.5,
                      "browInnerUp_R": 0.5, "cheekSquint_L": 0.4, "cheekSquint_R": 0.4}, 35.0),
)
#: Background colour of the pictures.
BACKGROUND = (0.88, 0.89, 0.91)
#: Fraction of the tile height the face region spans (less than frame_face's 0.9 so that the skull fits).
FILL = 0.84
#: Supersampling factor of the pictures (rendered at ``factor * size``, box-filtered down).
SUPERSAMPLE = 2


def expression_weights(model, expressions: Optional[Mapping[str, float]], batch_size: int = 1) -> torch.Tensor:
    """``{name: weight}`` -> ``(B, K)`` expression coefficients of ``model``; unknown names or weights outside a
    blendshape's range raise :class:`ExpressionError` naming them (and the available names)."""
    names = list(model.expression_names)
    w = torch.zeros(batch_size, len(names), dtype=model.dtype, device=model.device)
    for name, value in (expressions or {}).items():
        if name not in names:
            close = [n for n in names if n.lower().startswith(str(name).lower()[:4])][:8]
            hint = f" (similar: {', '.join(close)})" if close else ""
            raise ExpressionError(f"unknown expression {name!r}{hint}; model {model.name!r} has {len(names)}: "
                                  f"{', '.join(names)}")
        k = names.index(name)
        lo, hi = float(model.expression_lower[k]), float(model.expression_upper[k])
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ExpressionError(f"expression {name!r}: weight {value!r} is not a number") from None
        if not (lo - 1e-9 <= value <= hi + 1e-9) or math.isnan(value):
            raise ExpressionError(f"expression {name!r} = {value} is outside its range [{lo}, {hi}]")
        w[:, k] = value
    return w


def _yaw(degrees: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor([[0.0, math.radians(degrees), 0.0]], dtype=like.dtype, device=like.device)


def _framing(model, size: int, yaw: float):
    """Frame the FRONTAL neutral face, then turn the head about its origin: every view shares scale and position."""
    cam, _, t = frame_face(model, (size, size), fill=FILL)
    return cam, _yaw(yaw, model.template), t


def _render(model, weights: torch.Tensor, size: int, yaw: float) -> np.ndarray:
    """One supersampled, antialiased shaded render ``(size, size, 3)`` float in [0, 1] (framed on the neutral)."""
    big = size * SUPERSAMPLE
    out = model(expression=weights)
    cam, R, t = _framing(model, big, yaw)
    with torch.no_grad():
        img = conditioning_maps(model, out, cam, R, t, maps=("shaded",), antialias=True,
                                background=BACKGROUND)["shaded"]
    img = torch.nn.functional.avg_pool2d(img.permute(0, 3, 1, 2), SUPERSAMPLE).permute(0, 2, 3, 1)
    return img[0].clamp(0, 1).cpu().numpy()


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    """Draw ``text`` in the top-left corner of a float tile (PIL's default font; cheap)."""
    from PIL import Image, ImageDraw, ImageFont

    im = Image.fromarray(np.round(tile * 255).astype(np.uint8))
    h = im.height
    px = max(10, h // 16)
    try:
        font = ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(im, "RGBA")
    box = draw.textbbox((0, 0), text, font=font)
    pad = max(2, px // 4)
    draw.rectangle((0, 0, box[2] - box[0] + 2 * pad, box[3] + 2 * pad), fill=(255, 255, 255, 170))
    draw.text((pad, pad), text, fill=(20, 20, 25), font=font)
    return np.asarray(im).astype(np.float32) / 255.0


def _grid(tiles: Sequence[np.ndarray], cols: int, gap: int = 2) -> np.ndarray:
    rows = math.ceil(len(tiles) / cols)
    h, w = tiles[0].shape[:2]
    out = np.ones((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), dtype=np.float32)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = tile
    return out


def _write_png(path: PathLike, image: np.ndarray) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        log.info("writing %s in the format of its suffix %r", path, path.suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_image(path, image)


def _load(home):
    from morphable_models import load_ict

    return load_ict(home)


def _check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not 16 <= int(size) <= 4096:
        raise ValueError(f"size must be an int in [16, 4096], got {size!r}")
    return int(size)


def _describe(expressions: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in expressions.items()) or "neutral"


def render_expressions(
    output_png: PathLike,
    expressions: Optional[Mapping[str, float]] = None,
    size: int = 256,
    home: Optional[PathLike] = None,
    yaw: float = 0.0,
    grid: bool = True,
    *,
    model=None,
) -> Path:
    """Render ICT-FaceKit with expressions and write a PNG.

    * ``expressions=None, grid=True``: a labelled 3 x 3 grid of :data:`GRID_TILES` (neutral, jawOpen, smile,
      blink, brows up, pucker, gaze to the subject's left, a mix, the mix turned by 35 degrees), all at ``yaw``
      (plus the tile's own yaw);
    * ``expressions`` given, ``grid=True``: the expression from three views, ``yaw - 35``, ``yaw``, ``yaw + 35``,
      labelled;
    * ``grid=False``: one unlabelled image of the expression (neutral when None) at ``yaw``.

    Each tile is ``size x size``, rendered with the region albedo (skin, eyes with iris and pupil, mouth interior,
    teeth) and the default light (ambient + a key light from the front, upper left) over a light grey background,
    2x supersampled and antialiased. The face is framed once, frontal and neutral (``frame_face``), and the head turns
    about its model origin for yawed views, so all tiles share scale and position.

    Args:
        output_png: the file to write (its folder is created); written atomically.
        expressions: ``{blendshape name: weight}`` (weights within the blendshape's range, [0, 1] for ICT).
        size: tile height and width in pixels.
        home: model cache (default ``$FACERENDER_HOME`` or ``~/.cache/facerender``).
        yaw: head yaw in degrees (positive: the face turns towards the image right).
        grid: a grid (see above) or a single image.
        model: an already loaded model to use instead of loading ICT from ``home``.
    Returns:
        The path written.
    Raises:
        ExpressionError: an unknown expression name or an out-of-range weight (before anything is written).
        ModelNotInstalledError: the model is not installed in ``home``.
    """
    size = _check_size(size)
    model = _load(home) if model is None else model
    yaw = float(yaw)
    if expressions is None:
        jobs = [("neutral", {}, 0.0)] if not grid else list(GRID_TILES)
    else:
        expressions = dict(expressions)
        if grid:
            jobs = [(f"yaw {yaw + d:+g}", expressions, d) for d in (-35.0, 0.0, 35.0)]
        else:
            jobs = [(_describe(expressions), expressions, 0.0)]
    weights = [expression_weights(model, e) for _, e, _ in jobs]  # validate all names before rendering
    tiles = [_render(model, w, size, yaw + dyaw) for w, (_, _, dyaw) in zip(weights, jobs)]
    if not grid:
        image = tiles[0]
    else:
        labelled = [_label(tile, label) for tile, (label, _, _) in zip(tiles, jobs)]
        image = _grid(labelled, cols=3)
    path = _write_png(output_png, image)
    log.info("wrote %s (%d tile(s) of %d px)", path, len(tiles), size)
    return path


# ------------------------------------------------------------------------------------------------ montage
_REGION_PALETTE = np.array([(0.0, 0.0, 0.0), (0.85, 0.65, 0.55), (0.25, 0.55, 1.0), (0.75, 0.15, 0.2),
                            (1.0, 0.95, 0.6)], dtype=np.float32)


def _depth_vis(depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Near = bright, normalised over the covered pixels."""
    d = depth[..., 0]
    m = mask[..., 0] > 0
    if not bool(m.any()):
        return torch.zeros_like(depth).expand(-1, -1, -1, 3)
    lo, hi = d[m].min(), d[m].max()
    v = torch.where(m, 0.15 + 0.85 * (hi - d) / (hi - lo).clamp_min(1e-9), torch.zeros_like(d))
    return v[..., None].expand(-1, -1, -1, 3)


def render_conditioning_montage(
    output_png: PathLike,
    expressions: Optional[Mapping[str, float]] = None,
    size: int = 192,
    home: Optional[PathLike] = None,
    yaw: float = 20.0,
    *,
    model=None,
) -> Path:
    """Write a labelled montage of the conditioning maps of one expression (the README picture).

    Tiles: shaded, albedo, normals (``(n + 1) / 2``), depth (near bright), mask, correspondence, uv (``u, v, 0``),
    UDIM tile, regions (palette: skin, eyes, mouth interior, teeth), gaze (and a 3x magnified crop of the eyes),
    landmark image. Default expression: a smile with the mouth open and the eyes looking to the subject's left.
    """
    size = _check_size(size)
    model = _load(home) if model is None else model
    if expressions is None:
        expressions = {"jawOpen": 0.3, "mouthSmile_L": 0.8, "mouthSmile_R": 0.8, "eyeLookOut_L": 0.7,
                       "eyeLookIn_R": 0.7, "browInnerUp_L": 0.3, "browInnerUp_R": 0.3}
    w = expression_weights(model, expressions)
    out = model(expression=w)
    cam, R, t = _framing(model, size, float(yaw))
    with torch.no_grad():
        c = conditioning_maps(model, out, cam, R, t, maps="all")
        # the eyes, magnified: a 3x camera cropped around the eye landmarks
        eyes = c["landmarks_2d"][0, 36:48].mean(0) * 3
        top, left = int(eyes[1]) - size // 2, int(eyes[0]) - size // 2
        zoom = cam.scaled(3.0).crop(top, left, (size, size))
        gaze_zoom = conditioning_maps(model, out, zoom, R, t, maps=("gaze",))["gaze"]
    mask = c["mask"]
    rid = c["regions"][0, ..., 0].cpu().numpy()
    tile_id = c["uv_tile"].to(mask.dtype)
    tile_vis = torch.where(tile_id >= 0, 0.25 + 0.75 * tile_id / max(float(tile_id.max()), 1.0), torch.zeros_like(tile_id))
    tiles = [
        ("shaded", c["shaded"]),
        ("albedo", c["albedo"]),
        ("normals", (c["normals"] + 1) / 2 * mask),
        ("depth", _depth_vis(c["depth"], mask)),
        ("mask", mask.expand(-1, -1, -1, 3)),
        ("correspondence", c["correspondence"]),
        ("uv", torch.cat([c["uv"], torch.zeros_like(c["uv"][..., :1])], -1)),
        ("uv tile", tile_vis.expand(-1, -1, -1, 3)),
        ("regions", torch.from_numpy(_REGION_PALETTE[rid])[None]),
        ("gaze", c["gaze"]),
        ("gaze (eyes, 3x)", gaze_zoom),
        ("landmarks", c["landmark_image"].expand(-1, -1, -1, 3)),
    ]
    labelled = [_label(img[0].float().clamp(0, 1).cpu().numpy(), label) for label, img in tiles]
    path = _write_png(output_png, _grid(labelled, cols=6))
    log.info("wrote %s", path)
    return path
