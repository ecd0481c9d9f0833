"""PatchGAN discriminators (pix2pix's N-layer PatchGAN and pix2pixHD's multi-scale stack).

A conditional discriminator sees the conditioning and the image concatenated along channels; the caller does the
concatenation (so the same module serves unconditional uses). Every discriminator returns a list of scales, each
a list of intermediate feature maps whose last entry is the patch logits: the form feature matching and the GAN
losses of :mod:`neural_renderers.losses` take.
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn
import torch.nn.functional as F

from ..blocks import init_weights, norm_layer

__all__ = ["PatchDiscriminator", "MultiScaleDiscriminator"]


class PatchDiscriminator(nn.Module):
    """pix2pix's N-layer PatchGAN: 4x4 convolutions, ``n_layers`` with stride 2, one with stride 1, then a
    1-channel 4x4 convolution (70x70 receptive field for ``n_layers=3``).

    ``forward(x (B, C, H, W)) -> [[f_1, ..., f_n, logits (B, 1, h, w)]]`` (one scale).

    Args:
        in_channels: ``C`` (conditional: conditioning channels + 3).
        base_channels, max_channels: widths ``min(base * 2^i, max)``.
        n_layers: stride-2 layers.
        norm: ``"batch"``, ``"instance"`` or ``"none"`` (no normalisation: required by WGAN-GP's per-sample penalty).
        spectral: spectral normalisation on every convolution.
    """

    def __init__(self, in_channels: int, base_channels: int = 64, max_channels: int = 512, n_layers: int = 3,
                 norm: str = "batch", spectral: bool = False):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.in_channels = in_channels
        sn = nn.utils.spectral_norm if spectral else (lambda m: m)
        layers: List[nn.Module] = [nn.Sequential(sn(nn.Conv2d(in_channels, base_channels, 4, 2, 1)),
                                                 nn.LeakyReLU(0.2, True))]
        prev = base_channels
        for i in range(1, n_layers + 1):
            w = min(base_channels * 2 ** i, max_channels)
            stride = 2 if i < n_layers else 1
            layers.append(nn.Sequential(sn(nn.Conv2d(prev, w, 4, stride, 1, bias=norm == "none")),
                                        norm_layer(norm, w), nn.LeakyReLU(0.2, True)))
            prev = w
        layers.append(sn(nn.Conv2d(prev, 1, 4, 1, 1)))
        self.layers = nn.ModuleList(layers)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> List[List[torch.Tensor]]:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        feats = []
        for m in self.layers:
            x = m(x)
            feats.append(x)
        return [feats]


class MultiScaleDiscriminator(nn.Module):
    """pix2pixHD's stack of ``num_scales`` PatchGANs on the input downsampled by 2 between scales (3x3 average
    pooling, stride 2). ``forward(x) -> [features of scale 0, features of scale 1, ...]``."""

    def __init__(self, in_channels: int, num_scales: int = 2, **kwargs):
        super().__init__()
        if num_scales < 1:
            raise ValueError(f"num_scales must be >= 1, got {num_scales}")
        self.scales = nn.ModuleList([PatchDiscriminator(in_channels, **kwargs) for _ in range(num_scales)])

    def forward(self, x: torch.Tensor) -> List[List[torch.Tensor]]:
        out = []
        for i, d in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.extend(d(x))
        return out
