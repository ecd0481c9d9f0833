"""The Surrey Face Model and other eos models: cereal binary archives (``sfm_shape_3448.bin``, ``bfm2017-*.bin``),
eos blendshape files (``expression_blendshapes_3448.bin``), eos landmark mappings (``ibug_to_sfm.txt``) and
contours (``sfm_model_contours.json``).

The byte layout, from eos's ``MorphableModel``/``PcaModel``/``Blendshape`` ``serialize`` functions, its
``eigen_cerealisation.hpp`` and cereal's binary archive (little-endian, no padding; verified, see docs/models.md):

* the archive starts with the ``MorphableModel`` class version, **uint32** (cereal writes it once per versioned
  type); versions 1-4 exist: 1 = shape, colour, texture coordinates; 2 adds the expression model; 3 adds landmark
  definitions; 4 adds texture triangle indices;
* ``PcaModel`` (unversioned) = mean, orthonormal basis, eigenvalues (**variances**), triangle list;
* an Eigen matrix = **int32 rows, int32 cols**, then ``rows * cols`` **float32** in **column-major** order
  (vectors have one column);
* ``std::vector<std::array<int, 3>>`` (triangles, 0-based) = **uint64 count**, then ``count`` int32 triples;
  ``std::vector<std::array<double, 2>>`` (UVs) = uint64 count, then float64 pairs; a ``std::string`` = uint64 length
  + bytes;
* ``std::optional<T>`` = a 1-byte bool ``nullopt`` (1 = empty), then ``T`` when present;
  ``std::variant<PcaModel, Blendshapes>`` = **int32 index** then the alternative;
  ``std::unordered_map<std::string, int>`` = uint64 size, then key, int32 value pairs;
* a blendshape file is a ``std::vector<Blendshape>``: uint64 count, then (name, ``VectorXf`` deformation) each.

Units: eos's Surrey Face Model is in millimetres (``unit=`` overrides for other eos models, e.g. BFM converted to
eos keeps its own units); y up, z towards the viewer.
"""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .correspondence import complete_annotations
from .errors import ModelFileError
from .format_utils import check_finite, orient_outward, read_eos_contours, read_eos_landmark_mapping, unit_scale
from .linear import LinearFaceModel
from .paths import PathLike

log = logging.getLogger(__name__)

SURREY_LICENSE = ("Surrey Face Model / eos model file: used under the licence its user accepted when obtaining it "
                  "(the low-resolution shape model ships with eos under the Apache-2.0 licence; the full Surrey "
                  "models are licensed by the University of Surrey); do not redistribute the converted copy "
                  "beyond that licence")
MAX_EOS_VERSION = 4


class _Reader:
    """Little-endian reader over a byte string that reports truncation with the file name and offset."""

    def __init__(self, data: bytes, where: str):
        self.data, self.pos, self.where = data, 0, where

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ModelFileError(f"{self.where}: truncated: {what} needs {n} bytes at offset {self.pos}, the file has "
                                 f"{len(self.data)}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        dt = np.dtype(dtype).newbyteorder("<")
        return np.frombuffer(self.take(count * dt.itemsize, what), dtype=dt).copy()

    def size(self, what: str, limit: int = 1 << 31) -> int:
        n = self.scalar("Q", what + " count")
        if n > limit:
            raise ModelFileError(f"{self.where}: {what} count {n} at offset {self.pos - 8} is implausible: not an eos "
                                 f"file, or a different version")
        return int(n)

    def string(self, what: str) -> str:
        n = self.size(what + " length", 1 << 20)
        return self.take(n, what).decode("utf-8", errors="replace")

    def matrix(self, what: str) -> np.ndarray:
        rows, cols = self.scalar("i", what + " rows"), self.scalar("i", what + " cols")
        if rows < 0 or cols < 0 or rows * cols > (1 << 31):
            raise ModelFileError(f"{self.where}: {what} has an implausible size {rows} x {cols}: not an eos file, or "
                                 f"a different version")
        data = self.array("f4", rows * cols, what)
        return data.reshape(cols, rows).T  # column-major

    def triangles(self, what: str) -> np.ndarray:
        n = self.size(what)
        return self.array("i4", 3 * n, what).reshape(n, 3).astype(np.int64)

    def flag(self, what: str) -> bool:
        b = self.scalar("B", what)
        if b > 1:
            raise ModelFileError(f"{self.where}: {what} at offset {self.pos - 1} is {b}, expected a bool (0/1)")
        return bool(b)


@dataclass
class EosPca:
    """A ``PcaModel``: ``mean (3N,)``, ``basis (3N, K)`` orthonormal, ``eigenvalues (K,)`` variances,
    ``triangles (F, 3)`` 0-based."""

    mean: np.ndarray
    basis: np.ndarray
    eigenvalues: np.ndarray
    triangles: np.ndarray

    @property
    def empty(self) -> bool:
        return self.mean.size == 0


@dataclass
class EosModel:
    """The content of an eos ``MorphableModel`` archive."""

    version: int
    shape: EosPca
    color: EosPca
    expression: Optional[object] = None  # EosPca, or [(name, deformation (3N,))]
    landmark_definitions: Optional[Dict[str, int]] = None
    texture_coordinates: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    texture_triangles: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))


def _pca(r: _Reader, what: str) -> EosPca:
    mean = r.matrix(what + ".mean").reshape(-1)
    basis = r.matrix(what + ".orthonormal_pca_basis")
    ev = r.matrix(what + ".eigenvalues").reshape(-1)
    tri = r.triangles(what + ".triangle_list")
    if mean.size and (basis.shape[0] != mean.size or basis.shape[1] != ev.size):
        raise ModelFileError(f"{r.where}: {what}: basis {basis.shape} does not match the mean ({mean.size},) and "
                             f"{ev.size} eigenvalues")
    return EosPca(mean, basis, ev, tri)


def _blendshapes(r: _Reader, what: str) -> List[Tuple[str, np.ndarray]]:
    n = r.size(what, 1 << 16)
    out = []
    for i in range(n):
        name = r.string(f"{what}[{i}].name")
        out.append((name, r.matrix(f"{what}[{i}].deformation").reshape(-1)))
    return out


def _read_bytes(path: PathLike) -> Tuple[bytes, str]:
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such file")
    try:
        return p.read_bytes(), str(p)
    except OSError as e:
        raise ModelFileError(f"{p}: cannot read ({e})") from None


def read_eos_model(path: PathLike) -> EosModel:
    """Parse an eos ``MorphableModel`` cereal binary archive (versions 1-4)."""
    data, where = _read_bytes(path)
    r = _Reader(data, where)
    version = r.scalar("I", "class version")
    if version < 1 or version > MAX_EOS_VERSION:
        hint = " (it looks like an eos blendshape file)" if len(data) >= 8 and data[4:8] == b"\0\0\0\0" else ""
        raise ModelFileError(f"{where}: not an eos MorphableModel archive: class version {version}, expected "
                             f"1..{MAX_EOS_VERSION}{hint}")
    shape = _pca(r, "shape_model")
    color = _pca(r, "color_model")
    m = EosModel(version, shape, color)
    if version >= 2 and not r.flag("expression_model.nullopt"):
        idx = r.scalar("i", "expression_model variant index")
        if idx == 0:
            m.expression = _pca(r, "expression_model")
        elif idx == 1:
            m.expression = _blendshapes(r, "expression_model")
        else:
            raise ModelFileError(f"{where}: expression model variant index {idx}, expected 0 (PcaModel) or 1 "
                                 f"(Blendshapes)")
    if version >= 3 and not r.flag("landmark_definitions.nullopt"):
        n = r.size("landmark_definitions", 1 << 20)
        m.landmark_definitions = {}
        for _ in range(n):
            k = r.string("landmark name")
            m.landmark_definitions[k] = int(r.scalar("i", "landmark vertex"))
    n = r.size("texture_coordinates")
    m.texture_coordinates = r.array("f8", 2 * n, "texture_coordinates").reshape(n, 2)
    if version >= 4:
        m.texture_triangles = r.triangles("texture_triangle_indices")
    if r.pos != len(data):
        raise ModelFileError(f"{where}: {len(data) - r.pos} unread bytes after the model (version {version}): not an "
                             f"eos MorphableModel archive of this version")
    return m


def read_eos_blendshapes(path: PathLike) -> List[Tuple[str, np.ndarray]]:
    """Parse an eos blendshape file: ``[(name, deformation (3N,))]``."""
    data, where = _read_bytes(path)
    r = _Reader(data, where)
    out = _blendshapes(r, "blendshapes")
    if r.pos != len(data):
        raise ModelFileError(f"{where}: {len(data) - r.pos} unread bytes after {len(out)} blendshapes: not an eos "
                             f"blendshape file")
    return out


def load_surrey(
    path: PathLike,
    *,
    blendshapes: Optional[PathLike] = None,
    landmarks: Optional[PathLike] = None,
    contours: Optional[PathLike] = None,
    unit: str = "mm",
    n_identity: Optional[int] = None,
    n_expression: Optional[int] = None,
    n_albedo: Optional[int] = None,
    expression_bound: float = 4.0,
    dtype: torch.dtype = torch.float32,
    home: Optional[PathLike] = None,
    ict_model=None,
    name: str = "surrey",
) -> LinearFaceModel:
    """Load an eos model (the Surrey Face Model) as a :class:`LinearFaceModel` (cm, standard-normal identity).

    Args:
        path: the ``.bin`` model.
        blendshapes: an eos blendshape file (the model's expression set when the archive has none; e.g.
            ``expression_blendshapes_3448.bin``: anger, disgust, fear, happiness, sadness, surprise, weights [0, 1]).
        landmarks, contours: ``ibug_to_sfm.txt`` and ``sfm_model_contours.json`` (else derived from ICT-FaceKit).
        unit: the file's length unit (millimetres for the SFM).
    """
    m = read_eos_model(path)
    where = str(path)
    if m.shape.empty:
        raise ModelFileError(f"{where}: the shape model is empty")
    s = unit_scale(unit, where)
    N = m.shape.mean.size // 3
    if m.shape.mean.size % 3:
        raise ModelFileError(f"{where}: shape mean has {m.shape.mean.size} entries, not a multiple of 3")

    def scaled(pca: EosPca, K, factor):
        k = pca.basis.shape[1] if K is None else min(int(K), pca.basis.shape[1])
        if np.any(pca.eigenvalues[:k] < -1e-9):
            raise ModelFileError(f"{where}: negative eigenvalues (variances)")
        b = (pca.basis[:, :k] * np.sqrt(np.clip(pca.eigenvalues[:k], 0, None))).T.reshape(k, N, 3) * factor
        return pca.mean.reshape(N, 3).astype(np.float64) * factor, b

    mean, id_basis = scaled(m.shape, n_identity, s)
    tri = m.shape.triangles
    if tri.size == 0:
        raise ModelFileError(f"{where}: the shape model has no triangles")
    if tri.min() < 0 or tri.max() >= N:
        raise ModelFileError(f"{where}: triangle indices {tri.min()}..{tri.max()} outside 0..{N - 1}")
    ex_basis = ex_names = None
    kind, lo, hi = "pca", None, None
    expr = m.expression
    if expr is None and blendshapes is not None:
        expr = read_eos_blendshapes(blendshapes)
        where_ex = str(blendshapes)
    else:
        where_ex = where
    if isinstance(expr, EosPca):
        ex_mean, ex_basis = scaled(expr, n_expression, s)
        mean = mean + ex_mean  # eos's get_mean adds a PCA expression model's mean
        ex_names = [f"expression{k:03d}" for k in range(ex_basis.shape[0])]
        lo, hi = np.full(len(ex_names), -expression_bound), np.full(len(ex_names), expression_bound)
    elif expr:
        bad = [n for n, d in expr if d.size != 3 * N]
        if bad:
            raise ModelFileError(f"{where_ex}: blendshapes {bad[:5]} do not have 3N = {3 * N} entries")
        k = len(expr) if n_expression is None else min(int(n_expression), len(expr))
        ex_basis = np.stack([d.reshape(N, 3) for _, d in expr[:k]]).astype(np.float64) * s
        ex_names = [n for n, _ in expr[:k]]
        kind, lo, hi = "blendshape", np.zeros(k), np.ones(k)
    alb_mean = alb_basis = None
    if not m.color.empty:
        if m.color.mean.size != 3 * N:
            raise ModelFileError(f"{where}: colour model has {m.color.mean.size // 3} vertices, shape {N}")
        alb_mean, alb_basis = scaled(m.color, n_albedo, 1.0)
    for a, label in ((mean, "shape mean"), (id_basis, "shape basis")):
        check_finite(a, where, label)
    faces, flipped = orient_outward(mean, tri, where)
    partial = read_eos_landmark_mapping(landmarks, N) if landmarks is not None else None
    if partial is None and m.landmark_definitions:
        ib = {int(k) - 1: v for k, v in m.landmark_definitions.items() if k.isdigit() and 1 <= int(k) <= 68}
        partial = ib or None
    cont = read_eos_contours(contours, N) if contours is not None else None
    lms, regs, info = complete_annotations(mean, faces, where=where, ibug_partial=partial, contours=cont,
                                           ict_model=ict_model, home=home)
    uvs = faces_uv = None
    if m.texture_coordinates.size:
        uvs = m.texture_coordinates.astype(np.float32)
        if m.texture_triangles.size:
            faces_uv = m.texture_triangles if not flipped else m.texture_triangles[:, [0, 2, 1]]
        elif uvs.shape[0] != N:
            raise ModelFileError(f"{where}: {uvs.shape[0]} texture coordinates for {N} vertices and no texture "
                                 f"triangles")
        else:
            faces_uv = faces
    return LinearFaceModel(
        mean.astype(np.float32), faces, id_basis.astype(np.float32),
        None if ex_basis is None else ex_basis.astype(np.float32),
        expression_names=ex_names, expression_kind=kind, expression_lower=lo, expression_upper=hi,
        albedo_mean=None if alb_mean is None else np.clip(alb_mean, 0, 1).astype(np.float32),
        albedo_basis=None if alb_basis is None else alb_basis.astype(np.float32),
        uvs=uvs, faces_uv=faces_uv, landmarks=lms, regions=regs, name=name, license=SURREY_LICENSE, units="cm",
        dtype=dtype,
        extra={"source_file": where, "format": "eos", "eos_version": m.version, "file_units": unit,
               "annotations": info, "winding_flipped": flipped,
               "eos_landmark_definitions": m.landmark_definitions or {},
               "blendshape_file": str(blendshapes) if blendshapes else None},
    )
