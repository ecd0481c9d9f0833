"""Textured mesh export: OBJ + MTL + PNG texture, each written atomically.

:func:`write_textured_obj` writes ``name.obj`` (``mtllib name.mtl``, ``usemtl``, ``v``, ``vt``, ``f v/vt``) through
:func:`morphable_models.obj_io.write_obj`, ``name.mtl`` (one material, ``map_Kd name.png`` when a texture is given)
and ``name.png``. The three files are written through :func:`~facerender.io.atomic.atomic_write` (texture and MTL
first, the OBJ last), so a failure never leaves a half-written file and an OBJ never refers to a missing MTL.

UV convention: ``u`` right, ``v`` up, ``(0, 0)`` the bottom-left corner of the texture image (OBJ's convention,
the package's, see ``docs/rendering.md``); the texture is stored like an image (row 0 at the top). ICT-FaceKit
lays its UVs out in UDIM tiles along ``u`` (``[0, 1]`` face and eyeballs, ``[1, 2]`` head, ...): a single texture
covers tile 0; viewers repeat it over the other tiles.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch

from morphable_models.obj_io import write_obj

from ..errors import ShapeError
from .atomic import atomic_write
from .image import to_uint8_rgb

PathLike = Union[str, os.PathLike]

__all__ = ["write_textured_obj"]


def _array(x, name: str, cols: int, kind: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[1] != cols:
        raise ShapeError(f"{name} must have shape (N, {cols}), got {a.shape}")
    if kind == "int":
        if not np.issubdtype(a.dtype, np.integer):
            raise ShapeError(f"{name} must hold integers, got {a.dtype}")
        return a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
        raise ShapeError(f"{name} must be numeric, got {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ShapeError(f"{name} contains NaN or inf values")
    return a


def write_textured_obj(
    path: PathLike,
    vertices,
    faces,
    uvs=None,
    faces_uv=None,
    texture=None,
    *,
    material_name: str = "face",
) -> Path:
    """Write a triangle mesh with texture coordinates (and a texture) as OBJ + MTL (+ PNG).

    Args:
        path: the OBJ file (``.obj`` is appended when missing); the MTL and PNG take its name with ``.mtl`` /
            ``.png``, in the same folder (which must exist).
        vertices: ``(V, 3)`` positions (torch or numpy).
        faces: ``(F, 3)`` 0-based vertex indices.
        uvs: ``(T, 2)`` texture coordinates (``v`` up); None writes no ``vt`` lines.
        faces_uv: ``(F, 3)`` 0-based indices into ``uvs`` (per corner); default ``faces`` when ``T == V``.
        texture: ``(Ht, Wt, 3)`` uint8 image (anything :func:`~facerender.io.image.to_uint8_rgb` accepts, e.g. a
            float image in [0, 1]); None writes no PNG and no ``map_Kd``.
        material_name: the material's name (no whitespace).
    Returns:
        The path of the OBJ.
    Raises:
        ShapeError (a ``ValueError``): wrong shapes, out-of-range indices, non-finite values (stating them);
        ValueError: a bad material name or texture; FileNotFoundError: the folder does not exist.
    """
    path = Path(path)
    if path.suffix.lower() != ".obj":
        path = path.with_name(path.name + ".obj")
    if not material_name or any(ch.isspace() for ch in material_name):
        raise ValueError(f"material_name must be a non-empty name without whitespace, got {material_name!r}")
    v = _array(vertices, "vertices", 3, "float")
    f = _array(faces, "faces", 3, "int")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ShapeError(f"faces index out of range: found [{f.min()}, {f.max()}] for {len(v)} vertices")
    uv = fuv = None
    if uvs is not None:
        uv = _array(uvs, "uvs", 2, "float")
        if faces_uv is None:
            if len(uv) != len(v):
                raise ShapeError(f"faces_uv is required when uvs ({len(uv)}) are not per vertex ({len(v)})")
            fuv = f
        else:
            fuv = _array(faces_uv, "faces_uv", 3, "int")
            if fuv.shape != f.shape:
                raise ShapeError(f"faces_uv must match faces {f.shape}, got {fuv.shape}")
            if fuv.size and (fuv.min() < 0 or fuv.max() >= len(uv)):
                raise ShapeError(f"faces_uv index out of range: found [{fuv.min()}, {fuv.max()}] for {len(uv)} uvs")
    elif faces_uv is not None:
        raise ShapeError("faces_uv given without uvs")
    tex = None
    if texture is not None:
        tex = to_uint8_rgb(texture)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {str(path)!r}: the folder {str(path.parent)!r} does not exist")
    mtl_path = path.with_suffix(".mtl")
    png_path = path.with_suffix(".png")

    if tex is not None:
        from PIL import Image

        with atomic_write(png_path) as tmp:
            Image.fromarray(tex).save(tmp, format="PNG")
    lines = ["# written by facerender", f"newmtl {material_name}", "Ka 1.000 1.000 1.000", "Kd 1.000 1.000 1.000",
             "Ks 0.000 0.000 0.000", "d 1.0", "illum 1"]
    if tex is not None:
        lines.append(f"map_Kd {png_path.name}")
    with atomic_write(mtl_path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_write(path) as tmp:
        write_obj(tmp, v, f, uv, fuv, mtllib=mtl_path.name, material=material_name)
    return path
