"""Generic loaders: a neutral OBJ plus a folder of blendshape OBJs (same topology)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import ModelFileError
from .linear import LinearFaceModel
from .obj_io import read_obj, read_obj_vertices, triangulate
from .paths import PathLike


def load_blendshape_folder(
    neutral: PathLike,
    folder: Optional[PathLike] = None,
    *,
    identity_pattern: Optional[str] = None,
    names: Optional[Sequence[str]] = None,
    lower: float = 0.0,
    upper: float = 1.0,
    dtype: torch.dtype = torch.float32,
    name: str = "blendshape-model",
) -> LinearFaceModel:
    """Build a :class:`LinearFaceModel` from ``neutral.obj`` and a folder of full-mesh blendshape OBJs.

    Each OBJ in ``folder`` (default: the neutral's folder; the neutral itself excluded) must have the neutral's
    vertex count; its delta ``obj - neutral`` becomes one basis vector. Files whose stem matches the regular
    expression ``identity_pattern`` (e.g. ``r"identity\\d+"``) form the identity basis (standard-normal PCA
    modes), the rest the expression basis (weights in ``[lower, upper]``).

    Args:
        names: restrict/order the expression shapes (file stems); missing files raise ModelFileError.
    Raises:
        ModelFileError: a missing or malformed OBJ, or one with the wrong vertex count (the message names it).
    """
    neutral = Path(neutral)
    mesh = read_obj(neutral)
    V = mesh.vertices.shape[0]
    folder = Path(folder) if folder is not None else neutral.parent
    if not folder.is_dir():
        raise ModelFileError(f"{folder}: not a folder")
    files = {p.stem: p for p in sorted(folder.glob("*.obj")) if p.resolve() != neutral.resolve()}
    pat = re.compile(identity_pattern) if identity_pattern else None
    id_names = [n for n in files if pat is not None and pat.fullmatch(n)]
    if names is not None:
        missing = [n for n in names if n not in files]
        if missing:
            raise ModelFileError(f"{folder}: missing blendshape OBJ(s): {', '.join(m + '.obj' for m in missing)}")
        ex_names = list(names)
    else:
        ex_names = [n for n in files if n not in id_names]

    def deltas(ns):
        if not ns:
            return None
        return np.stack([read_obj_vertices(files[n], V) - mesh.vertices for n in ns]).astype(np.float32)

    tris, _ = triangulate(mesh.polygons)
    uvs = faces_uv = None
    if mesh.uvs.shape[0] and all((p >= 0).all() for p in mesh.polygons_uv):
        uvs = mesh.uvs
        faces_uv, _ = triangulate(mesh.polygons_uv)
    return LinearFaceModel(
        mesh.vertices.astype(np.float32), tris, deltas(id_names), deltas(ex_names),
        identity_names=id_names, expression_names=ex_names,
        expression_lower=np.full(len(ex_names), lower), expression_upper=np.full(len(ex_names), upper),
        uvs=uvs, faces_uv=faces_uv, name=name, dtype=dtype,
    )
