"""Alpha compositing and the image-layout / dtype conversions at the network boundary.

Renders and images in facerender are channel-last ``(B, H, W, C)`` floats in [0, 1]. Networks take
``(B, C, H, W)``: convert there, and only there, with :func:`to_bchw` / :func:`to_bhwc`. :func:`to_uint8` /
:func:`from_uint8` convert to and from 8-bit images (files, video frames).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from morphable_models.errors import ShapeError

__all__ = ["composite", "Compositor", "to_bchw", "to_bhwc", "to_uint8", "from_uint8"]

Background = Union[torch.Tensor, float, Sequence[float]]


def _image(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor of shape (B, H, W, C), got {type(x).__name__}")
    if x.ndim != 4:
        raise ShapeError(f"{name} must have shape (B, H, W, C), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ShapeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def composite(foreground: torch.Tensor, alpha: torch.Tensor, background: Background = 0.0) -> torch.Tensor:
    """``alpha * foreground + (1 - alpha) * background`` (differentiable w.r.t. all three).

    Args:
        foreground: ``(B, H, W, C)``.
        alpha: ``(B, H, W)`` or ``(B, H, W, 1)`` coverage in [0, 1], float (e.g. antialiased) or bool (a mask).
            A batch of 1 broadcasts.
        background: ``(B, H, W, C)`` / ``(H, W, C)`` image, a colour ``(C,)`` (tensor or sequence) or a number
            (or 0-d tensor).
    Returns:
        ``(B, H, W, C)`` with the dtype of ``foreground``. A bool mask SELECTS (``torch.where``): NaN / inf in the
        hidden layer cannot leak. A float alpha blends; where it is exactly 0 or 1 the result equals the visible layer
        for finite inputs, and the gradient w.r.t. alpha is ``foreground - background`` everywhere.
    """
    _image(foreground, "foreground")
    B, H, W, C = foreground.shape
    if not isinstance(alpha, torch.Tensor):
        raise ShapeError(f"alpha must be a torch.Tensor of shape (B, H, W) or (B, H, W, 1), got {type(alpha).__name__}")
    a = alpha if alpha.ndim == 4 else alpha[..., None]
    if a.ndim != 4 or a.shape[1:] != (H, W, 1) or a.shape[0] not in (1, B):
        raise ShapeError(f"alpha must have shape ({B}, {H}, {W}) or ({B}, {H}, {W}, 1) to match the foreground "
                         f"{tuple(foreground.shape)}, got {tuple(alpha.shape)}")
    is_mask = a.dtype == torch.bool
    if not is_mask and not a.is_floating_point():
        raise ShapeError(f"alpha must be bool or floating point, got {alpha.dtype}")
    if (not is_mask and a.dtype != foreground.dtype) or a.device != foreground.device:
        raise ShapeError(f"alpha is {a.dtype} on {a.device}, foreground is {foreground.dtype} on {foreground.device}")

    if isinstance(background, torch.Tensor):
        bg = background
        if not bg.is_floating_point() or bg.dtype != foreground.dtype or bg.device != foreground.device:
            raise ShapeError(f"background is {bg.dtype} on {bg.device}, foreground is {foreground.dtype} on "
                             f"{foreground.device}")
        if bg.ndim <= 1:
            bg = bg.reshape(1, 1, 1, -1)
        elif bg.ndim == 3:
            bg = bg[None]
        ok = bg.ndim == 4 and bg.shape[0] in (1, B) and bg.shape[1] in (1, H) and bg.shape[2] in (1, W) \
            and bg.shape[3] in (1, C)
        if not ok:
            raise ShapeError(f"background must be (B, H, W, C), (H, W, C), (C,) or a number to match the foreground "
                             f"{tuple(foreground.shape)}, got {tuple(background.shape)}")
    else:
        try:
            bg = torch.as_tensor(background, dtype=foreground.dtype, device=foreground.device)
        except (TypeError, ValueError, RuntimeError):
            raise ShapeError(
                f"background must be a tensor, a colour sequence or a number, got {background!r}"
            ) from None
        if bg.ndim > 1 or (bg.ndim == 1 and bg.shape[0] not in (1, C)):
            raise ShapeError(f"a background colour must have 1 or {C} values, got {tuple(bg.shape)}")
        bg = bg.reshape(1, 1, 1, -1)
    if is_mask:
        # exact selection; NaN / inf in the hidden layer stays out of values and gradients
        return torch.where(a, foreground, bg)
    return a * foreground + (1 - a) * bg


class Compositor(nn.Module):
    """Module form of :func:`composite` holding a background colour or image (a buffer, moved by ``.to()``).

    ``forward(foreground (B, H, W, C), alpha (B, H, W) or (B, H, W, 1), background=None) -> (B, H, W, C)``; a
    ``background`` given to ``forward`` replaces the stored one.
    """

    def __init__(self, background: Background = 0.0) -> None:
        super().__init__()
        self.register_buffer("background", torch.as_tensor(background, dtype=torch.get_default_dtype()),
                             persistent=False)

    def forward(self, foreground: torch.Tensor, alpha: torch.Tensor, background: Background = None) -> torch.Tensor:
        bg = self.background.to(foreground.dtype) if background is None else background
        return composite(foreground, alpha, bg)


def to_bchw(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C) -> (B, C, H, W)`` (or ``(H, W, C) -> (C, H, W)``): a view (channels_last strides), no copy."""
    if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(f"to_bchw expects (B, H, W, C) or (H, W, C), got {got}")
    return x.permute(0, 3, 1, 2) if x.ndim == 4 else x.permute(2, 0, 1)


def to_bhwc(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H, W, C)`` (or ``(C, H, W) -> (H, W, C)``): a view, no copy."""
    if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(f"to_bhwc expects (B, C, H, W) or (C, H, W), got {got}")
    return x.permute(0, 2, 3, 1) if x.ndim == 4 else x.permute(1, 2, 0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float image in [0, 1] (any shape) -> uint8 ``round(clamp(x, 0, 1) * 255)``; NaN becomes 0. Not differentiable."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(f"to_uint8 expects a floating-point tensor, got {got}")
    x = torch.nan_to_num(x.detach(), nan=0.0)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def from_uint8(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 image (any shape) -> float ``x / 255`` in [0, 1] of ``dtype``."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(f"from_uint8 expects a uint8 tensor, got {got}")
    if not dtype.is_floating_point:
        raise ShapeError(f"from_uint8: dtype must be floating point, got {dtype}")
    return x.to(dtype) / 255.0
