"""Helpers shared by the model-file loaders: units, triangle index bases and winding, key checks, eos mapping files.

Every check raises :class:`~morphable_models.errors.ModelFileError` naming the file and what was found.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import ModelFileError

log = logging.getLogger(__name__)

#: Length of one file unit in centimetres.
UNIT_TO_CM: Dict[str, float] = {"um": 1e-4, "mm": 0.1, "cm": 1.0, "dm": 10.0, "m": 100.0}


def unit_scale(unit: str, where: str = "") -> float:
    """Centimetres per ``unit`` (one of ``um``, ``mm``, ``cm``, ``dm``, ``m``)."""
    try:
        return UNIT_TO_CM[unit]
    except KeyError:
        raise ModelFileError(f"{where}: unknown unit {unit!r}; use one of {sorted(UNIT_TO_CM)}") from None


def require_keys(found: Sequence[str], needed: Sequence[str], where: str, what: str) -> None:
    """Raise when ``needed`` keys are missing from ``found`` (the message lists what the file has)."""
    missing = [k for k in needed if k not in found]
    if missing:
        have = sorted(found)
        raise ModelFileError(f"{where}: not a {what} file: missing {', '.join(missing)} (found: "
                             f"{', '.join(have[:20]) if have else 'nothing'}{' ...' if len(have) > 20 else ''})")


def as_triangles(faces: np.ndarray, num_vertices: int, base: int, where: str, name: str) -> np.ndarray:
    """Validate ``faces`` stored with 0- or 1-based indices and return them 0-based ``(F, 3)`` int64.

    A 1-based array holding a 0, or a 0-based one whose largest index equals ``num_vertices``, is reported as an
    index-base mix-up.
    """
    f = np.asarray(faces)
    if f.ndim != 2 or 3 not in f.shape:
        raise ModelFileError(f"{where}: {name} must be (F, 3) or (3, F) triangles, got shape {f.shape}")
    if f.shape[1] != 3:
        f = f.T
    if not np.issubdtype(f.dtype, np.number) or f.size == 0:
        raise ModelFileError(f"{where}: {name} holds {f.dtype} values, expected integer vertex indices")
    fi = np.asarray(f, dtype=np.float64)
    if not np.all(np.isfinite(fi)) or not np.all(fi == np.round(fi)):
        raise ModelFileError(f"{where}: {name} holds non-integer vertex indices")
    fi = fi.astype(np.int64)
    lo, hi = int(fi.min()), int(fi.max())
    if base == 1:
        if lo == 0:
            raise ModelFileError(f"{where}: {name} contains index 0 but this format stores 1-based (MATLAB) indices: "
                                 f"the file looks 0-based (indices {lo}..{hi} for {num_vertices} vertices)")
        if lo < 1 or hi > num_vertices:
            raise ModelFileError(f"{where}: {name} indices {lo}..{hi} are outside 1..{num_vertices}")
        return fi - 1
    if lo < 0 or hi > num_vertices - 1:
        extra = " (it looks 1-based; this format stores 0-based indices)" if hi == num_vertices and lo >= 1 else ""
        raise ModelFileError(f"{where}: {name} indices {lo}..{hi} are outside 0..{num_vertices - 1}{extra}")
    return fi


def outward_fraction(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Area-weighted share of triangles whose normal (counter-clockwise winding) points away from the mesh's centre.

    About 1 for outward-facing (counter-clockwise seen from outside) face and head meshes, about 0 when the winding
    is reversed.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    n = np.cross(b - a, c - a)
    centre = v.mean(0) - np.array([0.0, 0.0, 0.5 * np.ptp(v[:, 2])])  # behind the face: works for masks and heads
    s = ((a + b + c) / 3 - centre) * n
    area = np.linalg.norm(n, axis=1)
    out = s.sum(1) > 0
    return float(area[out].sum() / max(area.sum(), 1e-30))


def orient_outward(vertices: np.ndarray, faces: np.ndarray, where: str) -> Tuple[np.ndarray, bool]:
    """Return ``faces`` wound counter-clockwise seen from outside (the package convention), flipping all triangles
    when most of the area faces inward. Returns ``(faces, flipped)``; a flip is logged as a warning."""
    frac = outward_fraction(vertices, faces)
    if frac < 0.5:
        log.warning("%s: %.0f %% of the triangle area faces inward with the documented winding; flipping the "
                    "winding", where, 100 * (1 - frac))
        return np.ascontiguousarray(faces[:, [0, 2, 1]]), True
    return faces, False


def check_finite(arr: np.ndarray, where: str, name: str) -> None:
    if not np.all(np.isfinite(arr)):
        raise ModelFileError(f"{where}: {name} contains NaN or inf values")


# ------------------------------------------------------------------------------------------------------------------
# eos landmark mapping and contour files


def read_eos_landmark_mapping(path, num_vertices: Optional[int] = None) -> Dict[int, int]:
    """Read an eos landmark mapping (``ibug_to_sfm.txt``, ``ibug_to_bfm.txt``, ...) as ``{iBUG point (0-based):
    vertex id (0-based)}``.

    Two syntaxes exist: TOML (``[landmark_mappings]`` with lines ``9 = 33``, eos >= 0.12) and the older boost INFO
    syntax (``landmarkMappings { 9 33 }``). Keys are 1-based iBUG point numbers; values are 0-based vertex ids.
    Points eos leaves out (the jaw contour, which eos picks per pose from ``model_contours.json``, and the inner mouth
    corners 61 and 65) are simply absent from the result.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{p}: cannot read the landmark mapping ({e})") from None
    out: Dict[int, int] = {}
    if "[landmark_mappings]" in text:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ModelFileError(f"{p}: not valid TOML ({e})") from None
        table = data.get("landmark_mappings", {})
        items = table.items()
    elif "landmarkMappings" in text:
        body = text.split("landmarkMappings", 1)[1]
        if "{" not in body or "}" not in body:
            raise ModelFileError(f"{p}: truncated landmarkMappings block (no closing brace)")
        body = body[body.index("{") + 1: body.index("}")]
        items = []
        for line in body.splitlines():
            line = line.split(";", 1)[0].strip()
            if line:
                parts = line.split()
                if len(parts) != 2:
                    raise ModelFileError(f"{p}: expected 'IBUG_POINT VERTEX_ID' in landmarkMappings, got {line!r}")
                items.append((parts[0], parts[1]))
    else:
        raise ModelFileError(f"{p}: not an eos landmark mapping (no [landmark_mappings] table or landmarkMappings "
                             f"block)")
    for k, v in items:
        try:
            point, vid = int(k), int(v)
        except (TypeError, ValueError):
            raise ModelFileError(f"{p}: mapping {k!r} = {v!r} is not 'integer = integer'") from None
        if not 1 <= point <= 68:
            raise ModelFileError(f"{p}: iBUG point {point} is outside 1..68")
        if vid < 0 or (num_vertices is not None and vid >= num_vertices):
            raise ModelFileError(f"{p}: vertex id {vid} of iBUG point {point} is outside 0..{num_vertices - 1}")
        out[point - 1] = vid
    if not out:
        raise ModelFileError(f"{p}: the landmark mapping is empty")
    return out


def read_eos_contours(path, num_vertices: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Read eos's ``model_contours.json`` (``{"model_contour": {"right_contour": [...], "left_contour": [...]}}``,
    0-based vertex ids; "right" is the subject's right, iBUG points 1-8). Returns ``(right, left)``."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        mc = data["model_contour"]
        right = np.asarray(mc["right_contour"], dtype=np.int64)
        left = np.asarray(mc["left_contour"], dtype=np.int64)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelFileError(f"{p}: not a readable model-contour JSON ({e})") from None
    except (KeyError, TypeError) as e:
        raise ModelFileError(f"{p}: expected {{'model_contour': {{'right_contour': [...], 'left_contour': [...]}}}}, "
                             f"missing {e}") from None
    for name, ids in (("right_contour", right), ("left_contour", left)):
        if ids.ndim != 1 or ids.size < 2:
            raise ModelFileError(f"{p}: {name} must list at least 2 vertex ids, got {ids.size}")
        if ids.min() < 0 or (num_vertices is not None and ids.max() >= num_vertices):
            raise ModelFileError(f"{p}: {name} has vertex ids outside 0..{(num_vertices or 0) - 1}")
    return right, left


def partial_ibug(mapping: Mapping[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """``{point: vertex}`` -> ``(points (n,), vertex ids (n,))`` sorted by point."""
    pts = np.array(sorted(mapping), dtype=np.int64)
    return pts, np.array([mapping[int(k)] for k in pts], dtype=np.int64)
