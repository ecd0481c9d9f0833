"""Reading and writing Wavefront OBJ meshes, fast enough for model installation.

We parse OBJ text with NumPy rather than trimesh because installation reads 158 full-head OBJs
(400 MB of text): the vectorised ``v``-block parser below takes about 30 ms per ICT file, and it keeps the
polygon structure (quads, per-corner texture indices and ``usemtl`` groups) that the model needs. trimesh is
used elsewhere for mesh export when installed, but it is not a dependency of :mod:`morphable_models`.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import ModelFileError

PathOrBytes = Union[str, os.PathLike, bytes]


@dataclass
class ObjMesh:
    """A polygon mesh as stored in an OBJ file (0-based indices).

    Attributes:
        vertices: ``(V, 3)`` float64 positions.
        uvs: ``(T, 2)`` float64 texture coordinates (empty when the file has none).
        polygons: list of ``(n_i,)`` int64 vertex-index arrays, one per ``f`` line (triangles or quads ...).
        polygons_uv: matching list of texture-index arrays (empty arrays when the file has none).
        material_groups: ``{material name: (first polygon, end polygon)}`` from ``usemtl`` lines (end exclusive).
        mtllib: the ``mtllib`` file name, if any.
    """

    vertices: np.ndarray
    uvs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    polygons: List[np.ndarray] = field(default_factory=list)
    polygons_uv: List[np.ndarray] = field(default_factory=list)
    material_groups: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    mtllib: Optional[str] = None


def _read_bytes(src: PathOrBytes) -> Tuple[bytes, str]:
    if isinstance(src, (bytes, bytearray)):
        return bytes(src), "<bytes>"
    path = Path(src)
    try:
        return path.read_bytes(), str(path)
    except OSError as e:  # missing file, permission ...
        raise ModelFileError(f"cannot read OBJ file {path}: {e}") from e


def _numeric_block(data: bytes, prefix: bytes, ncols: int, name: str) -> np.ndarray:
    """Parse every line that starts with ``prefix`` (e.g. b"v ") into an ``(N, ncols)`` float64 array."""
    lines = [ln for ln in data.splitlines() if ln.startswith(prefix)]
    if not lines:
        return np.zeros((0, ncols))
    # Fast path: the lines are contiguous and each has exactly ncols numbers.
    toks = b" ".join(lines).split()
    width = ncols + 1
    if len(toks) == width * len(lines):
        arr = np.array(toks, dtype=bytes).reshape(len(lines), width)[:, 1:]
        try:
            return arr.astype(np.float64)
        except ValueError as e:
            raise ModelFileError(f"{name}: malformed '{prefix.decode().strip()}' line: {e}") from e
    # Slow path: optional extra columns (e.g. vertex colours or a w component); keep the first ncols.
    out = np.empty((len(lines), ncols))
    for i, ln in enumerate(lines):
        parts = ln.split()[1:]
        if len(parts) < ncols:
            raise ModelFileError(f"{name}: line {ln[:60]!r} has {len(parts)} numbers, expected {ncols}")
        try:
            out[i] = [float(p) for p in parts[:ncols]]
        except ValueError as e:
            raise ModelFileError(f"{name}: malformed line {ln[:60]!r}: {e}") from e
    return out


def read_obj_vertices(src: PathOrBytes, expected_count: Optional[int] = None) -> np.ndarray:
    """Read only the ``v`` lines of an OBJ file, as ``(V, 3)`` float64.

    Raises:
        ModelFileError: unreadable file, malformed numbers, or ``expected_count`` not matched (the message
            names the file and both counts).
    """
    data, name = _read_bytes(src)
    # Fast path for files whose v lines form one block: parse that block only.
    if data.startswith(b"v "):
        start = 0
    else:
        k = data.find(b"\nv ")
        start = -1 if k == -1 else k + 1
    if start == -1:
        verts = np.zeros((0, 3))
    else:
        end = len(data)
        for marker in (b"\nvt ", b"\nvn ", b"\nf ", b"\ng ", b"\nusemtl ", b"\no "):
            k = data.find(marker, start)
            if k != -1:
                end = min(end, k)
        block = data[start:end]
        verts = _numeric_block(block, b"v ", 3, name)
        # Any stray v lines after the first block (rare): fall back to the full scan.
        if data.find(b"\nv ", end) != -1:
            verts = _numeric_block(data, b"v ", 3, name)
    if expected_count is not None and verts.shape[0] != expected_count:
        raise ModelFileError(f"{name}: has {verts.shape[0]} vertices, expected {expected_count}")
    return verts


def read_obj(src: PathOrBytes) -> ObjMesh:
    """Read an OBJ file: vertices, texture coordinates, polygons with per-corner UV indices, ``usemtl`` groups.

    Negative (relative) indices are resolved. Normals (``vn``) are ignored.
    """
    data, name = _read_bytes(src)
    vertices = read_obj_vertices(data)
    uvs = _numeric_block(data, b"vt ", 2, name)
    polygons: List[np.ndarray] = []
    polygons_uv: List[np.ndarray] = []
    groups: Dict[str, Tuple[int, int]] = {}
    current: Optional[str] = None
    mtllib = None
    nv, nt = len(vertices), len(uvs)
    for ln in data.splitlines():
        if ln.startswith(b"f "):
            corners = ln.split()[1:]
            if len(corners) < 3:
                raise ModelFileError(f"{name}: face line {ln[:60]!r} has fewer than 3 corners")
            vi, ti = [], []
            for c in corners:
                parts = c.split(b"/")
                try:
                    v = int(parts[0])
                    t = int(parts[1]) if len(parts) > 1 and parts[1] else 0
                except ValueError as e:
                    raise ModelFileError(f"{name}: malformed face line {ln[:60]!r}") from e
                vi.append(v - 1 if v > 0 else nv + v)
                ti.append((t - 1 if t > 0 else nt + t) if t != 0 else -1)
            polygons.append(np.asarray(vi, dtype=np.int64))
            polygons_uv.append(np.asarray(ti, dtype=np.int64))
        elif ln.startswith(b"usemtl"):
            if current is not None:
                groups[current] = (groups[current][0], len(polygons))
            current = ln.split(maxsplit=1)[1].decode().strip() if len(ln.split()) > 1 else ""
            groups[current] = (len(polygons), len(polygons))
        elif ln.startswith(b"mtllib"):
            mtllib = ln.split(maxsplit=1)[1].decode().strip()
    if current is not None:
        groups[current] = (groups[current][0], len(polygons))
    if polygons:
        allv = np.concatenate(polygons)
        if allv.min() < 0 or allv.max() >= nv:
            raise ModelFileError(
                f"{name}: face vertex index out of range [1, {nv}] (found {allv.min() + 1}..{allv.max() + 1})"
            )
        allt = np.concatenate(polygons_uv)
        used = allt[allt >= 0]
        if used.size and used.max() >= nt:
            raise ModelFileError(f"{name}: texture index {used.max() + 1} out of range [1, {nt}]")
    return ObjMesh(vertices, uvs, polygons, polygons_uv, groups, mtllib)


def triangulate(polygons: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Split polygons into triangles as a fan from each polygon's first corner.

    A quad ``(a, b, c, d)`` becomes ``(a, b, c), (a, c, d)``, preserving the winding. The same rule applied to the
    UV index polygons gives matching ``faces_uv``.

    Returns:
        triangles ``(F, 3)`` int64 (indices from the polygons), and ``polygon_offsets`` ``(P + 1,)`` int64:
        polygon ``p`` becomes triangles ``polygon_offsets[p] : polygon_offsets[p + 1]``.
    """
    counts = np.fromiter((len(p) - 2 for p in polygons), dtype=np.int64, count=len(polygons))
    offsets = np.zeros(len(polygons) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    tris = np.empty((int(offsets[-1]), 3), dtype=np.int64)
    # Vectorise the common cases (triangles and quads); loop over the rest.
    sizes = counts + 2
    for n in np.unique(sizes):
        idx = np.nonzero(sizes == n)[0]
        if idx.size == 0:
            continue
        P = np.stack([polygons[i] for i in idx])  # (m, n)
        for k in range(n - 2):
            tris[offsets[idx] + k] = np.stack([P[:, 0], P[:, k + 1], P[:, k + 2]], axis=1)
    return tris, offsets


def write_obj(
    path: Union[str, os.PathLike, io.TextIOBase],
    vertices: np.ndarray,
    faces: np.ndarray,
    uvs: Optional[np.ndarray] = None,
    faces_uv: Optional[np.ndarray] = None,
    mtllib: Optional[str] = None,
    material: Optional[str] = None,
    vertex_colors: Optional[np.ndarray] = None,
) -> None:
    """Write a triangle mesh as OBJ (1-based indices; ``v``, optional ``vt`` and ``f v/vt`` lines).

    Args:
        vertices: ``(V, 3)``; faces: ``(F, 3)`` 0-based; uvs: ``(T, 2)``; faces_uv: ``(F, 3)`` 0-based;
        vertex_colors: optional ``(V, 3)`` in [0, 1], written as ``v x y z r g b``.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    buf = io.StringIO()
    if mtllib:
        buf.write(f"mtllib {mtllib}\n")
    if vertex_colors is not None:
        vc = np.asarray(vertex_colors, dtype=np.float64)
        np.savetxt(buf, np.concatenate([vertices, vc], 1), fmt="v %.6f %.6f %.6f %.4f %.4f %.4f")
    else:
        np.savetxt(buf, vertices, fmt="v %.6f %.6f %.6f")
    if uvs is not None:
        np.savetxt(buf, np.asarray(uvs, dtype=np.float64), fmt="vt %.6f %.6f")
    if material:
        buf.write(f"usemtl {material}\n")
    if uvs is not None and faces_uv is not None:
        f = np.stack([faces + 1, np.asarray(faces_uv, dtype=np.int64) + 1], axis=2).reshape(-1, 6)
        np.savetxt(buf, f, fmt="f %d/%d %d/%d %d/%d")
    else:
        np.savetxt(buf, faces + 1, fmt="f %d %d %d")
    text = buf.getvalue()
    if hasattr(path, "write"):
        path.write(text)  # type: ignore[union-attr]
    else:
        Path(path).write_text(text)
