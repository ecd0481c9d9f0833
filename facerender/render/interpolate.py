"""Interpolation of per-vertex or per-corner attributes over rasterized pixels (nvdiffrast's ``interpolate``)."""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import ShapeError
from .rasterize import Fragments

__all__ = ["interpolate"]


def interpolate(
    attributes: torch.Tensor,
    fragments: Fragments,
    faces: Optional[torch.Tensor] = None,
    *,
    faces_uv: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Interpolate attributes with the fragments' barycentrics.

    Args:
        attributes: ``(V, C)`` or ``(B, V, C)`` per-vertex attributes (colours, normals, camera-space positions ...),
            indexed by ``faces``; or ``(T, C)`` / ``(B, T, C)`` per-corner attributes (e.g. UVs) indexed by
            ``faces_uv``.
        fragments: the :class:`~facerender.render.rasterize.Fragments` of :func:`rasterize`.
        faces: ``(F, 3)`` indices into ``attributes`` for the three corners of each triangle; default
            ``fragments.faces`` (per-vertex attributes).
        faces_uv: ``(F, 3)`` per-corner index (e.g. ICT's ``faces_uv`` into its ``(T, 2)`` UVs); use instead of
            ``faces`` when the attributes live on texture-coordinate corners. Give at most one of the two.
    Returns:
        ``(B, H, W, C)``: ``sum_k barycentrics[..., k] * attributes[index[triangle_id, k]]`` on covered pixels,
        0 on background. Differentiable w.r.t. ``attributes`` and (through the barycentrics) the screen vertices.
        dtype: the promotion of the attribute and barycentric dtypes.
    Raises:
        ShapeError for wrong shapes, a batch size that matches neither 1 nor the fragments', or indices out of
        range (the message states what was received).
    """
    if faces is not None and faces_uv is not None:
        raise ValueError("give either faces or faces_uv, not both")
    index = faces_uv if faces_uv is not None else faces
    name = "faces_uv" if faces_uv is not None else "faces"
    if index is None:
        index = fragments.faces
        if index is None:
            raise ValueError("fragments.faces is None: pass the faces (F, 3) explicitly")
    if not isinstance(attributes, torch.Tensor) or attributes.ndim not in (2, 3):
        got = tuple(attributes.shape) if isinstance(attributes, torch.Tensor) else type(attributes).__name__
        raise ShapeError(f"attributes must be (V, C) or (B, V, C), got {got}")
    if not (attributes.is_floating_point() or attributes.is_complex()):
        raise ShapeError(f"attributes must be a floating tensor, got {attributes.dtype}")
    if not isinstance(index, torch.Tensor) or index.ndim != 2 or index.shape[1] != 3 or index.is_floating_point():
        got = (tuple(index.shape), index.dtype) if isinstance(index, torch.Tensor) else type(index).__name__
        raise ShapeError(f"{name} must be an integer (F, 3) tensor, got {got}")
    B = fragments.batch_size
    H, W = fragments.image_size
    Ba = attributes.shape[0] if attributes.ndim == 3 else 1
    if Ba not in (1, B):
        raise ShapeError(f"attributes batch size {Ba} matches neither 1 nor the fragments' batch size {B}")
    T, C = attributes.shape[-2], attributes.shape[-1]
    device = fragments.triangle_id.device
    index = index.to(device=device, dtype=torch.int64)
    pix, tri, bary = fragments.packed()
    if tri.numel() and int(tri.max()) >= index.shape[0]:
        raise ShapeError(f"{name} has {index.shape[0]} rows but the fragments reference triangle {int(tri.max())}")
    if index.numel():
        lo, hi = torch.aminmax(index)
        if int(lo) < 0 or int(hi) >= T:
            raise ShapeError(f"{name} index out of range: found [{int(lo)}, {int(hi)}] for {T} attribute rows")
    dtype = torch.promote_types(attributes.dtype, bary.dtype)
    if attributes.ndim == 3 and Ba == B and B > 1:
        offset = torch.div(pix, H * W, rounding_mode="floor") * T
        table = attributes.reshape(B * T, C)
    else:
        offset = None
        table = attributes.reshape(T, C)
    index_t = index.t().contiguous()  # (3, F)
    out = None
    for k in range(3):
        corner = index_t[k].index_select(0, tri)
        if offset is not None:
            corner = corner + offset
        term = bary[:, k, None].to(dtype) * table.index_select(0, corner).to(dtype)  # (P, C)
        out = term if out is None else out + term
    dense = out.new_zeros(B * H * W, C)
    dense.index_put_((pix,), out)  # in place on a fresh tensor: no copy, still differentiable w.r.t. out
    return dense.view(B, H, W, C)
