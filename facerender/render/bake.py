"""Texture baking: project a photo onto a mesh's UV layout (the texture a fitted face would need to reproduce it).

For every texel of the UV layout (tile ``tile`` of a UDIM layout, the UV convention of
:mod:`facerender.render.texture`: ``u`` right, ``v`` up, row 0 of the texture is ``v = 1``):

1. the mesh is rasterised in UV space (``x = (u - tile) * Wt``, ``y = (1 - v) * Ht``, ``z = 1``, affine
   barycentrics, no culling): each covered texel gets its triangle and barycentrics ``beta``. A texel is covered when
   its centre lies inside a UV triangle, so texels between UV charts are never valid;
2. the texel's surface point is ``P = sum_k beta_k X_k``; its image position is computed from the screen-space
   vertices ``(x_px, y_px, z)``: ``x = sum beta_k z_k x_k / sum beta_k z_k`` (perspective: the projection of ``P``;
   ``perspective=False`` for orthographic screen spaces: ``x = sum beta_k x_k``), its depth ``z = sum beta_k z_k``;
3. the photo is sampled there bilinearly (pixel centres at ``+0.5``, border clamped);
4. the texel is VALID when its point is visible: the mesh is rasterised in image space too, and the point's depth
   must match the z-buffer at the pixel that contains it (same triangle, or ``|z - z_buffer| <= depth_tolerance *
   z_buffer``) and the four pixels of its bilinear footprint must all show the mesh (no background bleeds in at
   silhouettes); with ``cull_backfaces`` the texel's triangle must face the camera in screen space (negative signed
   area, the package's front-face rule); with ``normals`` the cosine between the normal and the direction to the
   camera must exceed ``min_cos``.

Invalid texels are 0 (the ``valid`` mask says which), or filled for display: ``fill="dilate"`` (valid colours
spread into their invalid neighbours) or ``fill=vertex_colors (V, 3)`` (e.g. the per-vertex albedo of
:func:`facerender.fitting.albedo.estimate_vertex_albedo`, rendered into the UV layout by :func:`render_uv`).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ShapeError
from .rasterize import RasterSettings, rasterize

__all__ = ["BakedTexture", "bake_texture", "render_uv", "dilate_texture", "uv_fragments"]

ArrayLike = Union[np.ndarray, torch.Tensor]


class BakedTexture(NamedTuple):
    """What :func:`bake_texture` returns (unpacks as ``texture, valid = bake_texture(...)``).

    Attributes:
        texture: ``(Ht, Wt, 3)`` (``(B, Ht, Wt, 3)`` for a batch of images), uint8 for a uint8 photo, else float in
            the photo's dtype; numpy for a numpy photo, torch otherwise. Row 0 is ``v = 1``.
        valid: ``(Ht, Wt)`` / ``(B, Ht, Wt)`` bool: the texel's surface point is visible in the photo.
    """

    texture: ArrayLike
    valid: ArrayLike


# ------------------------------------------------------------------------------------------------------- inputs
def _size(texture_size: Any) -> Tuple[int, int]:
    if isinstance(texture_size, (int, np.integer)) and not isinstance(texture_size, bool):
        texture_size = (int(texture_size), int(texture_size))
    ok = (isinstance(texture_size, (tuple, list)) and len(texture_size) == 2
          and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in texture_size))
    if not ok:
        raise ValueError(f"texture_size must be a positive int or (Ht, Wt), got {texture_size!r}")
    return int(texture_size[0]), int(texture_size[1])


def _tensor(x: Any, name: str, device=None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if device is None else x.to(device)
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.array(x, copy=True)).to(device or "cpu")
    raise ShapeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def _int_index(x: Any, name: str, rows: Optional[int], limit: int, device) -> torch.Tensor:
    t = _tensor(x, name, device)
    if t.ndim != 2 or t.shape[1] != 3 or (rows is not None and t.shape[0] != rows):
        want = f"({rows}, 3)" if rows is not None else "(F, 3)"
        raise ShapeError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise ShapeError(f"{name} must be an integer array, got {t.dtype}")
    t = t.to(torch.int64)
    if t.numel():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= limit:
            raise ShapeError(f"{name} index out of range: found [{lo}, {hi}] for {limit} rows")
    return t


def uv_fragments(uvs: ArrayLike, faces_uv: ArrayLike, texture_size: Union[int, Tuple[int, int]] = 512, *,
                 tile: int = 0, backend: str = "torch"):
    """Rasterise a UV layout: the :class:`~facerender.render.rasterize.Fragments` (batch 1) of the UV triangles at
    ``(x, y) = ((u - tile) * Wt, (1 - v) * Ht)``, ``z = 1``, affine barycentrics, no culling.

    Args:
        uvs: ``(T, 2)`` texture coordinates; faces_uv: ``(F, 3)`` indices into ``uvs``.
        texture_size: ``Ht = Wt`` or ``(Ht, Wt)``.
        tile: UDIM tile along ``u`` (UDIM ``1001 + tile``).
    """
    Ht, Wt = _size(texture_size)
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)):
        raise ValueError(f"tile must be an int (UDIM tile index along u), got {tile!r}")
    uv = _tensor(uvs, "uvs")
    if uv.ndim != 2 or uv.shape[1] != 2 or not uv.is_floating_point():
        raise ShapeError(f"uvs must be a float (T, 2) array, got {tuple(uv.shape)} {uv.dtype}")
    fuv = _int_index(faces_uv, "faces_uv", None, uv.shape[0], uv.device)
    uv = uv.to(torch.float64)
    screen = torch.stack([(uv[:, 0] - tile) * Wt, (1.0 - uv[:, 1]) * Ht, torch.ones_like(uv[:, 0])], -1)[None]
    settings = RasterSettings(cull_backfaces=False, perspective_correct=False)
    return rasterize(screen, fuv, (Ht, Wt), settings, backend)


def render_uv(vertex_attributes: ArrayLike, faces: ArrayLike, uvs: ArrayLike, faces_uv: ArrayLike,
              texture_size: Union[int, Tuple[int, int]] = 512, *, tile: int = 0, backend: str = "torch",
              fragments=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-vertex attributes (e.g. the per-vertex albedo) rendered into the UV layout, for display.

    Args:
        vertex_attributes: ``(V, C)`` or ``(B, V, C)`` float.
        faces: ``(F, 3)`` vertex indices; uvs ``(T, 2)``; faces_uv ``(F, 3)`` (corner ``k`` of face ``f`` is vertex
            ``faces[f, k]`` at ``uvs[faces_uv[f, k]]``).
        texture_size, tile: see :func:`uv_fragments`; fragments: its result, if already computed.
    Returns:
        ``(image (Ht, Wt, C) or (B, Ht, Wt, C), covered (Ht, Wt) bool)`` as torch tensors (dtype of the attributes,
        0 outside the UV charts).
    """
    a = _tensor(vertex_attributes, "vertex_attributes")
    if a.ndim not in (2, 3) or not a.is_floating_point():
        raise ShapeError(f"vertex_attributes must be a float (V, C) or (B, V, C) array, got {tuple(a.shape)} {a.dtype}")
    V = a.shape[-2]
    fr = uv_fragments(uvs, faces_uv, texture_size, tile=tile, backend=backend) if fragments is None else fragments
    f = _int_index(faces, "faces", None, V, a.device)
    if fr.faces is not None and f.shape[0] != fr.faces.shape[0]:
        raise ShapeError(f"faces has {f.shape[0]} rows but faces_uv has {fr.faces.shape[0]}")
    tri = fr.triangle_id[0]
    covered = tri >= 0
    t = tri.clamp_min(0).to(a.device)
    bary = fr.barycentrics[0].to(device=a.device, dtype=a.dtype)
    corners = f[t]  # (Ht, Wt, 3)
    if a.ndim == 2:
        out = (a[corners] * bary[..., None]).sum(-2)
    else:
        out = (a[:, corners] * bary[None, ..., None]).sum(-2)
    out = torch.where(covered.to(a.device)[..., None], out, torch.zeros((), dtype=a.dtype, device=a.device))
    return out, covered


def dilate_texture(texture: ArrayLike, valid: ArrayLike, iterations: int = 8) -> Tuple[ArrayLike, ArrayLike]:
    """Spread valid texels into their invalid neighbours (for display and to hide seams under bilinear filtering).

    Each iteration gives every invalid texel with at least one valid 8-neighbour the mean of those neighbours and
    marks it valid. Valid texels never change.

    Args:
        texture: ``(Ht, Wt, C)`` or ``(B, Ht, Wt, C)`` (uint8 or float; numpy or torch).
        valid: ``(Ht, Wt)`` / ``(B, Ht, Wt)`` bool.
        iterations: number of one-texel growth steps (>= 0).
    Returns:
        ``(texture, filled)``: a new texture of the input's type and dtype, and the grown mask.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    is_np = isinstance(texture, np.ndarray)
    tex = _tensor(texture, "texture")
    m = _tensor(valid, "valid", tex.device)
    if tex.ndim not in (3, 4) or m.shape != tex.shape[:-1]:
        raise ShapeError(f"texture must be (Ht, Wt, C) or (B, Ht, Wt, C) and valid its first dimensions, got "
                         f"{tuple(tex.shape)} and {tuple(m.shape)}")
    batched = tex.ndim == 4
    x = (tex if batched else tex[None]).permute(0, 3, 1, 2).to(torch.float64)
    mk = (m if batched else m[None]).to(torch.bool)[:, None].to(torch.float64)
    kernel = torch.ones(1, 1, 3, 3, dtype=torch.float64, device=x.device)
    x = x * mk
    for _ in range(int(iterations)):
        cnt = F.conv2d(mk, kernel, padding=1)
        s = F.conv2d(x.reshape(-1, 1, *x.shape[2:]), kernel, padding=1).reshape(x.shape)
        grow = (cnt > 0) & (mk == 0)
        if not bool(grow.any()):
            break
        x = torch.where(grow, s / cnt.clamp_min(1), x)
        mk = torch.where(grow, torch.ones_like(mk), mk)
    out = x.permute(0, 2, 3, 1)
    filled = mk[:, 0] > 0
    if not batched:
        out, filled = out[0], filled[0]
    out = _like_dtype(out, tex.dtype)
    if is_np:
        return out.cpu().numpy(), filled.cpu().numpy()
    return out, filled


def _like_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.uint8:
        return x.round().clamp(0, 255).to(torch.uint8)
    return x.to(dtype)


# ------------------------------------------------------------------------------------------------------ baking
def bake_texture(
    image: ArrayLike,
    screen_vertices: ArrayLike,
    faces: ArrayLike,
    uvs: ArrayLike,
    faces_uv: ArrayLike,
    texture_size: Union[int, Tuple[int, int]] = 512,
    *,
    tile: int = 0,
    cull_backfaces: bool = True,
    perspective: bool = True,
    depth_tolerance: float = 5e-3,
    normals: Optional[ArrayLike] = None,
    camera_vertices: Optional[ArrayLike] = None,
    min_cos: float = 0.0,
    fill: Union[None, str, ArrayLike] = None,
    dilate_iterations: int = 8,
    backend: str = "torch",
    uv_raster=None,
) -> BakedTexture:
    """Bake the visible part of a photo into the mesh's UV texture (see the module docstring for the method).

    Args:
        image: ``(H, W, 3)`` or ``(B, H, W, 3)`` photo, uint8 or float in [0, 1] (numpy or torch).
        screen_vertices: ``(V, 3)`` or ``(B, V, 3)`` ``(x_px, y_px, z)`` of the fitted mesh in that photo
            (``camera.to_screen(model_to_camera(...))``).
        faces: ``(F, 3)`` vertex indices; uvs: ``(T, 2)``; faces_uv: ``(F, 3)`` indices into ``uvs``.
        texture_size: ``Ht = Wt`` or ``(Ht, Wt)``.
        tile: the UDIM tile to bake (ICT-FaceKit: 0 is the face).
        cull_backfaces: texels of triangles facing away from the camera are invalid (and the z-buffer is built from
            front faces only, as the renderer does).
        perspective: screen space from a pinhole camera (``z`` is the depth of a 3D point); False for orthographic.
        depth_tolerance: relative depth tolerance of the visibility test (``|z - z_buffer| <= tol * z_buffer``).
        normals: optional ``(V, 3)`` / ``(B, V, 3)`` camera-space vertex normals (x right, y down, z forward): texels
            whose interpolated normal has ``cos(normal, direction to the camera) <= min_cos`` are invalid. The view
            direction is from ``camera_vertices`` ``(V, 3)`` / ``(B, V, 3)`` when given, else the optical axis.
        min_cos: see ``normals`` (ignored without them; a positive value without normals raises).
        fill: None (invalid texels are 0), ``"dilate"`` (``dilate_iterations`` steps of :func:`dilate_texture`), or
            per-vertex colours ``(V, 3)`` / ``(B, V, 3)`` in [0, 1] rendered into the layout (:func:`render_uv`) for
            the invalid texels inside the UV charts.
        dilate_iterations: see ``fill``.
        backend: rasterizer backend.
        uv_raster: the result of :func:`uv_fragments` for these ``uvs``, ``faces_uv``, ``texture_size`` and ``tile``,
            to skip rasterising the UV layout again (e.g. once per video instead of once per frame).
    Returns:
        :class:`BakedTexture` ``(texture, valid)``; ``valid`` reports visibility only, whatever ``fill`` did.
    Raises:
        ShapeError / ValueError stating what was received (shapes, index ranges, settings).
    """
    is_np = isinstance(image, np.ndarray)
    img = _tensor(image, "image")
    if img.ndim not in (3, 4) or img.shape[-1] != 3 or img.shape[-2] == 0 or img.shape[-3] == 0:
        raise ShapeError(f"image must have shape (H, W, 3) or (B, H, W, 3), got {tuple(img.shape)}")
    if not (img.dtype == torch.uint8 or img.is_floating_point()):
        raise ShapeError(f"image must be uint8 or float, got {img.dtype}")
    device = img.device
    sv = _tensor(screen_vertices, "screen_vertices", device)
    if sv.ndim not in (2, 3) or sv.shape[-1] != 3 or not sv.is_floating_point():
        raise ShapeError(f"screen_vertices must be a float (V, 3) or (B, V, 3) array, got {tuple(sv.shape)} {sv.dtype}")
    batched = img.ndim == 4 or sv.ndim == 3
    imgs = img if img.ndim == 4 else img[None]
    svb = sv if sv.ndim == 3 else sv[None]
    B = max(imgs.shape[0], svb.shape[0])
    if imgs.shape[0] not in (1, B) or svb.shape[0] not in (1, B):
        raise ShapeError(f"batch mismatch: image has batch {imgs.shape[0]}, screen_vertices {svb.shape[0]}")
    V = svb.shape[1]
    f = _int_index(faces, "faces", None, V, device)
    uv_t = _tensor(uvs, "uvs", device)
    if uv_t.ndim != 2 or uv_t.shape[1] != 2 or not uv_t.is_floating_point():
        raise ShapeError(f"uvs must be a float (T, 2) array, got {tuple(uv_t.shape)} {uv_t.dtype}")
    fuv = _int_index(faces_uv, "faces_uv", f.shape[0], uv_t.shape[0], device)
    if not isinstance(depth_tolerance, (int, float)) or not depth_tolerance >= 0:
        raise ValueError(f"depth_tolerance must be a number >= 0, got {depth_tolerance!r}")
    if normals is None and min_cos > 0:
        raise ValueError(f"min_cos={min_cos} needs normals (camera-space vertex normals (V, 3))")
    Ht, Wt = _size(texture_size)
    H, W = int(imgs.shape[1]), int(imgs.shape[2])
    svb = svb.to(torch.float64).expand(B, V, 3)
    imgs = imgs.expand(B, H, W, 3)

    # 1. UV raster (shared by the batch)
    ufr = uv_fragments(uv_t, fuv, (Ht, Wt), tile=tile, backend=backend) if uv_raster is None else uv_raster
    if tuple(ufr.triangle_id.shape) != (1, Ht, Wt):
        raise ShapeError(f"uv_raster must be uv_fragments(...) of size (1, {Ht}, {Wt}), "
                         f"got {tuple(ufr.triangle_id.shape)}")
    tri = ufr.triangle_id[0].to(device)  # (Ht, Wt)
    covered = tri >= 0
    t = tri.clamp_min(0)
    beta = ufr.barycentrics[0].to(device=device, dtype=torch.float64)  # (Ht, Wt, 3)
    corners = f[t]  # (Ht, Wt, 3) vertex ids

    # 2. image position and depth of each texel's surface point
    c = svb[:, corners]  # (B, Ht, Wt, 3 corners, 3 coords)
    z = (beta[None] * c[..., 2]).sum(-1)  # (B, Ht, Wt)
    if perspective:
        wz = beta[None] * c[..., 2]
        denom = wz.sum(-1).clamp_min(1e-30)
        px = (wz * c[..., 0]).sum(-1) / denom
        py = (wz * c[..., 1]).sum(-1) / denom
    else:
        px = (beta[None] * c[..., 0]).sum(-1)
        py = (beta[None] * c[..., 1]).sum(-1)

    # 3. visibility: z-buffer of the same mesh in image space
    settings = RasterSettings(cull_backfaces=cull_backfaces, perspective_correct=perspective)
    ifr = rasterize(svb, f, (H, W), settings, backend)
    col = torch.floor(px).to(torch.int64)
    row = torch.floor(py).to(torch.int64)
    inside = (col >= 0) & (col < W) & (row >= 0) & (row < H) & torch.isfinite(px) & torch.isfinite(py)
    flat = (row.clamp(0, H - 1) * W + col.clamp(0, W - 1)).reshape(B, -1)
    zbuf = ifr.depth.detach().to(torch.float64).reshape(B, -1).gather(1, flat).reshape(B, Ht, Wt)
    tbuf = ifr.triangle_id.reshape(B, -1).gather(1, flat).reshape(B, Ht, Wt)
    visible = (tbuf == t[None]) | ((tbuf >= 0) & ((z - zbuf).abs() <= depth_tolerance * zbuf.abs()))
    valid = covered[None] & inside & visible & (z > 0 if perspective else torch.ones_like(visible))
    # the four pixels the bilinear sample reads must all show the mesh (no background bleeding at silhouettes)
    cov = ifr.triangle_id >= 0
    c0 = torch.floor(px - 0.5).to(torch.int64)
    r0 = torch.floor(py - 0.5).to(torch.int64)
    for dr in (0, 1):
        for dc in (0, 1):
            rr = (r0 + dr).clamp(0, H - 1)
            cc = (c0 + dc).clamp(0, W - 1)
            valid &= cov.reshape(B, -1).gather(1, (rr * W + cc).reshape(B, -1)).reshape(B, Ht, Wt)
    if cull_backfaces:
        x0, x1, x2 = c[..., 0].unbind(-1)
        y0, y1, y2 = c[..., 1].unbind(-1)
        area2 = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        valid &= area2 < 0
    if normals is not None:
        n = _tensor(normals, "normals", device)
        n = n if n.ndim == 3 else n[None]
        if n.ndim != 3 or n.shape[1:] != (V, 3) or n.shape[0] not in (1, B) or not n.is_floating_point():
            raise ShapeError(f"normals must be a float ({V}, 3) or ({B}, {V}, 3) array, got {tuple(n.shape)}")
        nn_ = (beta[None, ..., None] * n.to(torch.float64)[:, corners]).sum(-2)  # (B, Ht, Wt, 3)
        nn_ = F.normalize(nn_, dim=-1)
        if camera_vertices is not None:
            cvt = _tensor(camera_vertices, "camera_vertices", device)
            cvt = cvt if cvt.ndim == 3 else cvt[None]
            if cvt.shape[1:] != (V, 3) or cvt.shape[0] not in (1, B) or not cvt.is_floating_point():
                raise ShapeError(f"camera_vertices must be a float ({V}, 3) or ({B}, {V}, 3) array, "
                                 f"got {tuple(cvt.shape)}")
            view = F.normalize((beta[None, ..., None] * cvt.to(torch.float64)[:, corners]).sum(-2), dim=-1)
        else:
            view = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64, device=device).expand_as(nn_)
        valid &= -(nn_ * view).sum(-1) > min_cos

    # 4. bilinear sampling of the photo (pixel centres at +0.5 <=> align_corners=False)
    grid = torch.stack([2 * px / W - 1, 2 * py / H - 1], -1)
    grid = torch.where(valid[..., None], grid, torch.zeros((), dtype=grid.dtype, device=device))
    work = torch.float64 if img.dtype == torch.float64 else torch.float32
    src = imgs.permute(0, 3, 1, 2).to(work)
    samp = F.grid_sample(src, grid.to(work), mode="bilinear", padding_mode="border", align_corners=False)
    tex = samp.permute(0, 2, 3, 1)
    tex = torch.where(valid[..., None], tex, torch.zeros((), dtype=work, device=device))

    # 5. fill
    if fill is not None:
        if isinstance(fill, str):
            if fill != "dilate":
                raise ValueError(f"fill must be None, 'dilate' or per-vertex colours (V, 3), got {fill!r}")
            tex, _ = dilate_texture(tex, valid, dilate_iterations)
        else:
            fc = _tensor(fill, "fill", device)
            if fc.ndim not in (2, 3) or fc.shape[-2:] != (V, 3) or (fc.ndim == 3 and fc.shape[0] not in (1, B)):
                raise ShapeError(f"fill colours must have shape ({V}, 3) or ({B}, {V}, 3), got {tuple(fc.shape)}")
            scale = 255.0 if img.dtype == torch.uint8 else 1.0
            rendered, _ = render_uv(fc.to(work) * scale, f, uv_t, fuv, (Ht, Wt), fragments=ufr)
            rendered = rendered if rendered.ndim == 4 else rendered[None]
            tex = torch.where(valid[..., None] | ~covered[None, ..., None], tex, rendered.expand_as(tex))
    tex = _like_dtype(tex, img.dtype)
    if not batched:
        tex, valid = tex[0], valid[0]
    if is_np:
        return BakedTexture(tex.cpu().numpy(), valid.cpu().numpy())
    return BakedTexture(tex, valid)
