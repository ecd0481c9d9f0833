"""Landmark files and foreign coordinate conventions, converted to the package's pixel convention.

Package convention: continuous pixel coordinates, x right, y down, the centre of pixel (col i, row j) at
``(i + 0.5, j + 0.5)``; points are ``(L, 2)`` float64 ``(x, y)`` arrays.

| source | stores | conversion |
|---|---|---|
| iBUG ``.pts`` (300-W, menpo) | ``x y``, 1-based pixel centres | subtract 0.5 |
| menpo ``.ljson`` (version 3; v1/v2 read too) | ``[y, x]``, 0-based pixel centres | swap, add 0.5 |
| dlib ``full_object_detection`` parts | integer ``(x, y)`` pixel indices | add 0.5 |
| dlib ``rectangle`` | inclusive ``left, top, right, bottom`` indices | box ``(left, top, right + 1, bottom + 1)`` |
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, Sequence, Tuple, Union

import numpy as np

from ..io.atomic import atomic_write

PathLike = Union[str, os.PathLike]
Box = Tuple[float, float, float, float]

#: Offset added to a foreign coordinate to get the package convention.
PTS_OFFSET = -0.5
LJSON_OFFSET = 0.5
DLIB_OFFSET = 0.5


def _as_points(points, what: str) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{what}: points must be (L, 2) (x, y), got shape {arr.shape}")
    return arr


def read_pts(path: PathLike) -> np.ndarray:
    """Read an iBUG ``.pts`` file as ``(L, 2)`` float64 points in the package convention (``value - 0.5``).

    The format: optional header lines (``version: 1``, ``n_points: 68``), then ``{``, one ``x y`` per line, ``}``.
    Values are 1-based: the centre of the top-left pixel is ``(1, 1)`` in the file and ``(0.5, 0.5)`` here.

    Raises:
        FileNotFoundError: no such file.
        ValueError: malformed file, or ``n_points`` disagrees with the number of points (the message names the file).
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    n_declared = None
    rows = []
    inside = False
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not inside:
            if line == "{":
                inside = True
            elif line.lower().startswith("n_points"):
                try:
                    n_declared = int(line.split(":", 1)[1])
                except (IndexError, ValueError):
                    raise ValueError(f"{str(path)!r} line {lineno}: cannot parse {line!r}") from None
            continue
        if line == "}":
            inside = False
            break
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            rows.append((float(parts[0]), float(parts[1])))
        except ValueError:
            raise ValueError(f"{str(path)!r} line {lineno}: expected 'x y', got {line!r}") from None
    if not rows and "{" not in text:
        raise ValueError(f"{str(path)!r} is not a .pts file (no '{{' block)")
    if inside:
        raise ValueError(f"{str(path)!r}: missing the closing '}}' (truncated file?)")
    if n_declared is not None and n_declared != len(rows):
        raise ValueError(f"{str(path)!r} declares n_points: {n_declared} but holds {len(rows)} points")
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2) + PTS_OFFSET


def write_pts(path: PathLike, points) -> Path:
    """Write ``(L, 2)`` points (package convention) as an iBUG ``.pts`` file (1-based: ``value + 0.5``), atomically.

    Values are written with 6 decimals (``read_pts(write_pts(p))`` equals ``p`` to 1e-6).

    Raises:
        ValueError: points not ``(L, 2)`` or not finite.
    """
    pts = _as_points(points, "write_pts")
    if not np.all(np.isfinite(pts)):
        raise ValueError("write_pts: points hold NaN or inf; the .pts format cannot store missing points")
    lines = ["version: 1", f"n_points:  {len(pts)}", "{"]
    lines += [f"{x - PTS_OFFSET:.6f} {y - PTS_OFFSET:.6f}" for x, y in pts]
    lines.append("}")
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_ljson_groups(path: PathLike) -> Dict[str, np.ndarray]:
    """Read every group of a menpo ``.ljson`` file: ``{group name: (L, 2) points}`` in the package convention.

    menpo stores ``[y, x]`` 0-based (pixel centre of the top-left pixel at ``[0, 0]``): the points are swapped to
    ``(x, y)`` and 0.5 is added. Missing points (``null``) become NaN. Version 3 files have ``groups``; the older
    single-group layout (versions 1 and 2, ``landmarks.points``) is returned as the group ``"LJSON"``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or not an LJSON layout (the message names the file).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} is not an LJSON file (top level is not an object)")
    if "groups" in data and isinstance(data["groups"], dict):
        raw = {name: g.get("landmarks", {}).get("points") for name, g in data["groups"].items()}
    elif isinstance(data.get("landmarks"), dict) and "points" in data["landmarks"]:
        raw = {"LJSON": data["landmarks"]["points"]}
    else:
        raise ValueError(f"{str(path)!r} is not an LJSON file (no 'groups' or 'landmarks.points')")
    out = {}
    for name, pts in raw.items():
        if pts is None:
            raise ValueError(f"{str(path)!r}: group {name!r} has no 'landmarks.points'")
        rows = []
        for p in pts:
            if p is None or any(v is None for v in p):
                rows.append((math.nan, math.nan))
            elif len(p) != 2:
                raise ValueError(f"{str(path)!r}: group {name!r} holds a point with {len(p)} coordinates; only 2-D "
                                 "landmarks are supported")
            else:
                rows.append((float(p[1]), float(p[0])))
        out[name] = np.asarray(rows, dtype=np.float64).reshape(-1, 2) + LJSON_OFFSET
    return out


def read_ljson(path: PathLike, group: str = "LJSON") -> np.ndarray:
    """One group of a menpo ``.ljson`` file as ``(L, 2)`` points in the package convention (see
    :func:`read_ljson_groups`). The default group ``"LJSON"`` holds the 68 iBUG points in menpo's files.

    Raises:
        KeyError: no such group (the message lists the groups present).
    """
    groups = read_ljson_groups(path)
    if group not in groups:
        raise KeyError(f"{str(path)!r} has no landmark group {group!r}; groups: {sorted(groups)}")
    return groups[group]


def read_landmarks(path: PathLike) -> np.ndarray:
    """Read ``(L, 2)`` points in the package convention from a ``.pts`` or ``.ljson`` file (chosen by suffix;
    for ``.ljson`` the group ``"LJSON"``, or the only group when there is one)."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".pts":
        return read_pts(path)
    if ext == ".ljson":
        groups = read_ljson_groups(path)
        if "LJSON" in groups:
            return groups["LJSON"]
        if len(groups) == 1:
            return next(iter(groups.values()))
        raise ValueError(f"{str(path)!r}: several landmark groups {sorted(groups)} and none named 'LJSON'; "
                         "use read_ljson(path, group=...)")
    raise ValueError(f"cannot read landmarks from {str(path)!r}: supported suffixes are .pts and .ljson")


def from_dlib_points(shape) -> np.ndarray:
    """dlib landmark coordinates (integer pixel indices) to ``(L, 2)`` float64 in the package convention (``+ 0.5``).

    Args:
        shape: a ``dlib.full_object_detection`` (its ``parts()`` are used) or an ``(L, 2)`` array of dlib ``(x, y)``.
    """
    if hasattr(shape, "parts"):
        arr = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64).reshape(-1, 2)
    else:
        arr = _as_points(shape, "from_dlib_points")
    return arr + DLIB_OFFSET


def to_dlib_points(points) -> np.ndarray:
    """``(L, 2)`` package points to dlib's integer pixel indices ``round(p - 0.5)`` (int64)."""
    return np.round(_as_points(points, "to_dlib_points") - DLIB_OFFSET).astype(np.int64)


def box_from_dlib_rect(rect) -> Box:
    """A dlib ``rectangle`` (inclusive pixel indices) as a box ``(x0, y0, x1, y1)`` of pixel edges in the package
    convention: ``(left, top, right + 1, bottom + 1)``; its width equals dlib's ``rect.width()``."""
    return (float(rect.left()), float(rect.top()), float(rect.right() + 1), float(rect.bottom() + 1))


def box_to_dlib_ltrb(box: Sequence[float]) -> Tuple[int, int, int, int]:
    """A package box ``(x0, y0, x1, y1)`` as dlib's inclusive ``(left, top, right, bottom)`` integer indices
    (the inverse of :func:`box_from_dlib_rect`, rounding to whole pixels)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return int(round(x0)), int(round(y0)), int(round(x1)) - 1, int(round(y1)) - 1


__all__ = [
    "read_pts",
    "write_pts",
    "read_ljson",
    "read_ljson_groups",
    "read_landmarks",
    "from_dlib_points",
    "to_dlib_points",
    "box_from_dlib_rect",
    "box_to_dlib_ltrb",
    "PTS_OFFSET",
    "LJSON_OFFSET",
    "DLIB_OFFSET",
]
