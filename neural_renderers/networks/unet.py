"""The U-Net encoder/decoder of Deep Video Portraits' rendering-to-video translation network (and of pix2pix).

``UNetGenerator(in_channels, out_channels, size)``: ``levels = log2(size)`` encoder modules
(:class:`~neural_renderers.blocks.DownBlock`: 4x4 conv stride 2, norm, LeakyReLU 0.2) take the input down to 1x1
(8 modules at 256^2, 7 at 128^2, 5 at 32^2: the depth follows the resolution); as many decoder modules
(:class:`~neural_renderers.blocks.UpBlock`: 4x4 transposed conv stride 2, norm, dropout in the first
``dropout_layers``, ReLU, then ``refine`` 3x3 refinement convolutions) come back up, each taking the
concatenation of the previous decoder output and the encoder output of the same resolution (skip connections).
The last decoder module is followed by a 3x3 convolution to ``out_channels`` and ``tanh``.

As in pix2pix, the first and the innermost encoder modules have no normalisation (the innermost is 1x1, where
instance norm would zero it and batch norm at batch 1 would).
"""
from __future__ import annotations

import math
from typing import List

import torch
from torch import nn

from ..blocks import DownBlock, UpBlock, activation, channel_schedule, init_weights

__all__ = ["UNetGenerator"]


class UNetGenerator(nn.Module):
    """U-Net generator ``(B, in_channels, S, S) -> (B, out_channels, S, S)`` in ``[-1, 1]``.

    Args:
        in_channels: input channels (Deep Video Portraits: ``9 * window``).
        out_channels: output channels (3: RGB).
        size: input side ``S``, a power of two >= 8 (it sets the depth: ``log2(S)`` modules each way).
        base_channels, max_channels: encoder widths ``min(base * 2^i, max)`` (paper: 64 ... 512).
        norm: ``"batch"`` (paper), ``"instance"`` or ``"none"``.
        dropout, dropout_layers: dropout probability in the first (innermost) decoder modules (paper/pix2pix:
            0.5 in the first three).
        refine: refinement convolutions per decoder module.
        output: output activation (``"tanh"``; ``"none"`` for raw features).
    """

    def __init__(self, in_channels: int, out_channels: int = 3, size: int = 256, base_channels: int = 64,
                 max_channels: int = 512, norm: str = "batch", dropout: float = 0.5, dropout_layers: int = 3,
                 refine: int = 1, output: str = "tanh"):
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ValueError(f"size must be a power of two >= 8, got {size}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        self.size = size
        self.in_channels = in_channels
        self.out_channels = out_channels
        levels = int(math.log2(size))
        widths = channel_schedule(levels, base_channels, max_channels)
        self.levels = levels
        downs: List[nn.Module] = []
        prev = in_channels
        for i, w in enumerate(widths):
            downs.append(DownBlock(prev, w, norm="none" if i in (0, levels - 1) else norm))
            prev = w
        self.down = nn.ModuleList(downs)
        ups: List[nn.Module] = []
        # decoder module j (0 = innermost) maps to the width of encoder level levels - 2 - j; the last one to base
        for j in range(levels):
            src = widths[levels - 1 - j]
            cin = src if j == 0 else src * 2  # innermost takes the bottleneck alone, the others [up, skip]
            cout = widths[levels - 2 - j] if j < levels - 1 else base_channels
            ups.append(UpBlock(cin, cout, norm=norm, dropout=dropout if j < dropout_layers else 0.0, refine=refine))
        self.up = nn.ModuleList(ups)
        self.head = nn.Sequential(nn.Conv2d(base_channels, out_channels, 3, 1, 1), activation(output))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, in_channels, S, S)`` -> ``(B, out_channels, S, S)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-1] != self.size or x.shape[-2] != self.size:
            raise ValueError(f"expected input (B, {self.in_channels}, {self.size}, {self.size}), got "
                             f"{tuple(x.shape)}")
        skips = []
        for m in self.down:
            x = m(x)
            skips.append(x)
        y = self.up[0](skips[-1])
        for j in range(1, self.levels):
            y = self.up[j](torch.cat([y, skips[-1 - j]], 1))
        return self.head(y)
