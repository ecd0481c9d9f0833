"""Building blocks shared by every neural renderer: the image <-> network layout helpers, normalisation and
activation factories, convolution modules (down / up / residual) and weight initialisation.

A convolution followed by a normalisation layer has no bias: the normalisation removes it, and under Adam a
redundant bias is not merely useless but drifts by the learning rate on rounding noise (its true gradient is 0).

Layout convention (``../shared/docs/STYLE.md``): everything outside a network is channel-last ``(B, H, W, C)`` float
in ``[0, 1]``; networks work on ``(B, C, H, W)`` in ``[-1, 1]``. :func:`to_network` and :func:`from_network` are the
ONE place where the two meet.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from facerender.errors import ShapeError
from facerender.render.compositing import to_bchw, to_bhwc

__all__ = [
    "to_network",
    "from_network",
    "norm_layer",
    "activation",
    "ConvBlock",
    "DownBlock",
    "UpBlock",
    "ResBlock",
    "init_weights",
    "NORMS",
]

#: Normalisation layers understood by :func:`norm_layer`.
NORMS = ("batch", "instance", "none")


def to_network(images: torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
    """``(B, H, W, C)`` in ``[0, 1]`` -> ``(B, C, H, W)`` in ``[-1, 1]`` (the layout change is
    :func:`facerender.render.compositing.to_bchw`; contiguous, or in the ``channels_last`` memory format, the fast
    layout for convolutions on CUDA)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ShapeError(f"expected images (B, H, W, C), got {_describe(images)}")
    x = to_bchw(images) * 2.0 - 1.0
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def from_network(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` in ``[-1, 1]`` -> ``(B, H, W, C)`` in ``[0, 1]`` (not clamped: losses see the raw output)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ShapeError(f"expected a network tensor (B, C, H, W), got {_describe(x)}")
    return (to_bhwc(x) + 1.0) * 0.5


def _describe(x) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def norm_layer(kind: str, channels: int) -> nn.Module:
    """``"batch"`` (BatchNorm2d), ``"instance"`` (InstanceNorm2d with affine parameters) or ``"none"``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


def activation(kind: str) -> nn.Module:
    """``"relu"``, ``"lrelu"`` (slope 0.2), ``"tanh"``, ``"sigmoid"`` or ``"none"``."""
    table = {"relu": lambda: nn.ReLU(inplace=True), "lrelu": lambda: nn.LeakyReLU(0.2, inplace=True),
             "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "none": nn.Identity}
    if kind not in table:
        raise ValueError(f"unknown activation {kind!r}; choose one of {sorted(table)}")
    return table[kind]()


class ConvBlock(nn.Sequential):
    """Conv2d -> norm -> (dropout) -> activation. ``(B, C_in, H, W) -> (B, C_out, H', W')``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: Optional[int] = None, norm: str = "batch", act: str = "relu", dropout: float = 0.0,
                 padding_mode: str = "zeros"):
        pad = kernel_size // 2 if padding is None else padding
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad, bias=norm == "none",
                            padding_mode=padding_mode), norm_layer(norm, out_channels)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(activation(act))
        super().__init__(*layers)


class DownBlock(nn.Sequential):
    """One encoder module of pix2pix / Deep Video Portraits: 4x4 convolution with stride 2 -> norm -> LeakyReLU(0.2).

    ``(B, C_in, H, W) -> (B, C_out, H / 2, W / 2)``.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch", act: str = "lrelu"):
        super().__init__(nn.Conv2d(in_channels, out_channels, 4, 2, 1, bias=norm == "none"),
                         norm_layer(norm, out_channels), activation(act))


class UpBlock(nn.Module):
    """One decoder module of Deep Video Portraits: 4x4 transposed convolution with stride 2 -> norm -> (dropout) ->
    ReLU, followed by ``refine`` refinement convolutions (3x3, stride 1, norm, ReLU).

    ``(B, C_in, H, W) -> (B, C_out, 2H, 2W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch", dropout: float = 0.0,
                 refine: int = 1):
        super().__init__()
        layers = [nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=norm == "none"),
                  norm_layer(norm, out_channels)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.ReLU(inplace=True))
        self.up = nn.Sequential(*layers)
        self.refine = nn.Sequential(*[ConvBlock(out_channels, out_channels, 3, norm=norm, act="relu")
                                      for _ in range(refine)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.refine(self.up(x))


class ResBlock(nn.Module):
    """Residual block ``x + conv(norm(relu(conv(x))))`` with 3x3 convolutions (pix2pixHD / CycleGAN style).

    ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int, norm: str = "instance", padding_mode: str = "reflect"):
        super().__init__()
        self.body = nn.Sequential(
            ConvBlock(channels, channels, 3, norm=norm, act="relu", padding_mode=padding_mode),
            nn.Conv2d(channels, channels, 3, 1, 1, padding_mode=padding_mode, bias=norm == "none"),
            norm_layer(norm, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def init_weights(module: nn.Module, kind: str = "normal", gain: float = 0.02) -> nn.Module:
    """pix2pix initialisation, in place on a freshly built module: convolution / linear weights from
    ``N(0, gain)`` (``"normal"``), Xavier or Kaiming; biases 0; norm weights from ``N(1, gain)``, biases 0.
    Returns the module."""
    if kind not in ("normal", "xavier", "kaiming"):
        raise ValueError(f"unknown init {kind!r}; choose normal, xavier or kaiming")
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Conv1d)):
            if kind == "normal":
                nn.init.normal_(m.weight, 0.0, gain)
            elif kind == "xavier":
                nn.init.xavier_normal_(m.weight, gain=gain)
            else:
                nn.init.kaiming_normal_(m.weight, a=0.2, mode="fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module


def channel_schedule(levels: int, base: int, maximum: int) -> Sequence[int]:
    """Encoder widths ``base * 2^i`` capped at ``maximum`` for ``i < levels`` (pix2pix: 64, 128, 256, 512, 512 ...)."""
    return [min(base * 2 ** i, maximum) for i in range(levels)]
