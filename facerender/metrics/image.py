"""Per-image PSNR and SSIM (kornia) between a result and a reference (self-reenactment ground truth)."""
from __future__ import annotations

import torch

from ..errors import ShapeError


def _bchw(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ShapeError(f"{name} must be (B, H, W, C) or (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[-1] in (1, 3):  # channel-last (the package convention) first
        x = x.permute(0, 3, 1, 2)
    elif x.shape[1] not in (1, 3):
        raise ShapeError(f"{name} must have 1 or 3 channels, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ShapeError(f"{name} must be floating point in [0, max_val], got dtype {x.dtype}")
    return x


def _pair(a: torch.Tensor, b: torch.Tensor):
    a, b = _bchw(a, "a"), _bchw(b, "b")
    if a.shape != b.shape:
        raise ShapeError(f"images differ in shape: {tuple(a.shape)} and {tuple(b.shape)} (as (B, C, H, W))")
    return a, b.to(a)


def psnr(a: torch.Tensor, b: torch.Tensor, max_val: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB.

    Args:
        a, b: ``(B, H, W, C)`` or ``(B, C, H, W)`` float images (``C`` 1 or 3; ``(H, W, C)``: one image).
        max_val: the value range (1 for [0, 1] images, 255 for 0-255).
    Returns:
        ``(B,)``: ``10 log10(max_val^2 / MSE)``; ``inf`` for identical images.
    """
    a, b = _pair(a, b)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(max_val ** 2 / mse)  # mse == 0 -> inf


def ssim(a: torch.Tensor, b: torch.Tensor, max_val: float = 1.0, window_size: int = 11) -> torch.Tensor:
    """Structural similarity per image: the mean of kornia's SSIM map (Gaussian window, sigma 1.5).

    Args:
        a, b: as :func:`psnr`.
        max_val: the value range; window_size: odd window side (11, Wang et al. 2004).
    Returns:
        ``(B,)`` in [-1, 1]; 1 for identical images.
    """
    import kornia

    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd integer, got {window_size}")
    a, b = _pair(a, b)
    return kornia.metrics.ssim(a, b, window_size, max_val=max_val).flatten(1).mean(1)


__all__ = ["psnr", "ssim"]
