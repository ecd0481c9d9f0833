"""Bilinear UV texture sampling, differentiable w.r.t. the texture AND the UV coordinates.

UV convention (docs/rendering.md, "Textures and compositing"):
  * ``u`` to the right, ``v`` UP (the OBJ convention): ``(u, v) = (0, 0)`` is the bottom-left CORNER of the texture
    image and ``(1, 1)`` its top-right corner. Texture tensors are stored like images, row 0 at the top, so texel
    (col ``i``, row ``j``) of a ``(Ht, Wt, C)`` texture has its centre at ``u = (i + 0.5) / Wt``,
    ``v = 1 - (j + 0.5) / Ht``. Sampling exactly at a texel centre returns that texel.
  * UDIM tiles (ICT-FaceKit: ``u`` in [0, 1] is the face, [1, 2] the back of the head, ...): ``tile=k`` samples the
    texture image of tile ``k`` (UDIM number ``1001 + k``) by using ``u - k``.
  * Out-of-range coordinates: ``wrap="clamp"`` (default) repeats the border texels (bilinear blending stops at the
    border texel centres), ``wrap="repeat"`` tiles the texture periodically (blending across the seam),
    ``wrap="zeros"`` blends with zeros outside.

The op is ``torch.nn.functional.grid_sample(align_corners=False)`` underneath (its first and second derivatives are
checked with float64 gradcheck / gradgradcheck in the tests). Bilinear interpolation is piecewise linear: its
derivative w.r.t. ``uv`` jumps at texel centres.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from morphable_models.errors import ShapeError

__all__ = ["sample_texture", "TextureSampler", "WRAP_MODES"]

WRAP_MODES = ("clamp", "repeat", "zeros")
_MODES = ("bilinear", "nearest")


def _check_mask(mask: torch.Tensor, B: int, H: int, W: int) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise ShapeError(f"mask must be a torch.Tensor of shape (B, H, W) or (B, H, W, 1), got {type(mask).__name__}")
    m = mask[..., 0] if mask.ndim == 4 and mask.shape[-1] == 1 else mask
    if m.ndim != 3 or m.shape[1:] != (H, W) or m.shape[0] not in (1, B):
        raise ShapeError(f"mask must have shape ({B}, {H}, {W}) or ({B}, {H}, {W}, 1), got {tuple(mask.shape)}")
    return (m if m.dtype == torch.bool else m != 0).expand(B, H, W)


def sample_texture(
    texture: torch.Tensor,
    uv: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    *,
    tile: int = 0,
    wrap: str = "clamp",
    mode: str = "bilinear",
) -> torch.Tensor:
    """Sample a texture at per-pixel UV coordinates.

    Args:
        texture: ``(B, Ht, Wt, C)`` or ``(Ht, Wt, C)`` (shared by the batch), row 0 at the top.
        uv: ``(B, H, W, 2)`` with ``u`` right and ``v`` up (see the module docstring).
        mask: optional ``(B, H, W)`` or ``(B, H, W, 1)`` bool (or 0/1 float): where False the output is 0 and the uv
            values there are not used at all (garbage or NaN uv in the background is harmless).
        tile: UDIM tile index along ``u`` (UDIM ``1001 + tile``): samples at ``u - tile``.
        wrap: ``"clamp"``, ``"repeat"`` or ``"zeros"``.
        mode: ``"bilinear"`` or ``"nearest"`` (no gradient w.r.t. ``uv``).
    Returns:
        ``(B, H, W, C)`` with the dtype and device of the inputs.
    """
    if not isinstance(texture, torch.Tensor) or texture.ndim not in (3, 4):
        got = tuple(texture.shape) if isinstance(texture, torch.Tensor) else type(texture).__name__
        raise ShapeError(f"texture must have shape (B, Ht, Wt, C) or (Ht, Wt, C), got {got}")
    if not texture.is_floating_point():
        raise ShapeError(f"texture must be a floating-point tensor, got {texture.dtype}")
    if not isinstance(uv, torch.Tensor) or uv.ndim != 4 or uv.shape[-1] != 2:
        got = tuple(uv.shape) if isinstance(uv, torch.Tensor) else type(uv).__name__
        raise ShapeError(f"uv must have shape (B, H, W, 2), got {got}")
    if uv.dtype != texture.dtype or uv.device != texture.device:
        raise ShapeError(f"uv is {uv.dtype} on {uv.device} but texture is {texture.dtype} on {texture.device}")
    if wrap not in WRAP_MODES:
        raise ValueError(f"wrap must be one of {WRAP_MODES}, got {wrap!r}")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if isinstance(tile, bool) or not isinstance(tile, int):
        raise ValueError(f"tile must be an int (UDIM tile index along u), got {tile!r}")

    shared = texture.ndim == 3 or texture.shape[0] == 1
    tex = texture if texture.ndim == 4 else texture[None]
    Bt, Ht, Wt, C = tex.shape
    Bu, H, W, _ = uv.shape
    if not shared and Bu not in (1, Bt):
        raise ShapeError(f"batch mismatch: texture has batch {Bt}, uv has batch {Bu}")
    if Ht == 0 or Wt == 0:
        raise ShapeError(f"texture is empty: {tuple(texture.shape)}")
    B = Bu if shared else Bt

    m = _check_mask(mask, B, H, W) if mask is not None else None
    if m is not None:
        uv = torch.where(m[..., None], uv, torch.zeros((), dtype=uv.dtype, device=uv.device))
    if uv.shape[0] != B:
        uv = uv.expand(B, H, W, 2)

    u, v = uv.unbind(-1)
    if tile:
        u = u - tile
    t = tex.permute(0, 3, 1, 2)  # (Bt, C, Ht, Wt)
    if wrap == "repeat":
        u = u - torch.floor(u)
        v = v - torch.floor(v)
        t = F.pad(t, (1, 1, 1, 1), mode="circular")
        gx = (2 * (u * Wt + 1)) / (Wt + 2) - 1
        gy = (2 * ((1 - v) * Ht + 1)) / (Ht + 2) - 1
    else:
        gx = 2 * u - 1
        gy = 1 - 2 * v
    grid = torch.stack([gx, gy], dim=-1)  # (B, H, W, 2)
    if shared:
        grid = grid.reshape(1, B * H, W, 2)  # one call for the whole batch
    out = F.grid_sample(t, grid, mode=mode, padding_mode="zeros" if wrap == "zeros" else "border",
                        align_corners=False)
    out = out.permute(0, 2, 3, 1).reshape(B, H, W, C)
    if m is not None:
        out = torch.where(m[..., None], out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out


class TextureSampler(nn.Module):
    """Module form of :func:`sample_texture` holding ``tile``, ``wrap`` and ``mode``.

    ``forward(texture (B, Ht, Wt, C) or (Ht, Wt, C), uv (B, H, W, 2), mask=None) -> (B, H, W, C)``.
    """

    def __init__(self, tile: int = 0, wrap: str = "clamp", mode: str = "bilinear") -> None:
        super().__init__()
        if wrap not in WRAP_MODES:
            raise ValueError(f"wrap must be one of {WRAP_MODES}, got {wrap!r}")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self.tile, self.wrap, self.mode = tile, wrap, mode

    def forward(self, texture: torch.Tensor, uv: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return sample_texture(texture, uv, mask, tile=self.tile, wrap=self.wrap, mode=self.mode)

    def extra_repr(self) -> str:
        return f"tile={self.tile}, wrap={self.wrap!r}, mode={self.mode!r}"
