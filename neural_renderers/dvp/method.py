"""Deep Video Portraits (Kim et al., SIGGRAPH 2018): the rendering-to-video translation network and its training.

Input: a space-time window of ``window`` frames of conditioning (colour render, correspondence image, eye-gaze
map: 9 channels per frame, the current frame last; :mod:`neural_renderers.data.dataset`). Generator: the U-Net of
:class:`~neural_renderers.networks.UNetGenerator` (``log2(size)`` encoder and decoder modules, skip connections,
refinement convolutions per decoder module), output the RGB face crop. Discriminator: a PatchGAN that sees the
conditioning and the image concatenated (``disc_condition="window"``: the whole window, as the paper's conditional
GAN; ``"current"``: the current frame's maps only).

Objective: ``E = E_cGAN + lambda_l1 * E_l1`` (the paper's: lambda 100, the original (vanilla) cGAN), optionally
plus discriminator feature matching, SSIM and a VGG feature loss (from a user-supplied VGG-19 file). Adam,
learning rate 2e-4, betas (0.5, 0.999) for both networks. ``docs/deep_video_portraits.md`` says which details we
could check against the paper and which are our choices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..blocks import from_network, to_network
from ..losses import GAN_MODES, FeatureLoss, GANLoss, SSIMLoss, feature_matching_loss, gradient_penalty, l1_loss, ssim
from ..networks import MultiScaleDiscriminator, PatchDiscriminator, UNetGenerator
from ..training.method import Method, Nets, Phase, register_method

__all__ = ["DVPConfig", "DeepVideoPortraits", "DVP_MAPS"]

DVP_MAPS: Tuple[str, ...] = ("shaded", "correspondence", "gaze")


@dataclass
class DVPConfig:
    """Deep Video Portraits' settings (shapes first, then losses and optimiser).

    Attributes:
        size: crop side (a power of two; 256 in the paper, 128 for CPU budgets).
        window: conditioning frames per input (paper: 11; input channels ``9 * window``).
        maps: conditioning maps per frame (default the paper's three).
        base_channels, max_channels, norm, dropout, refine: the generator (:class:`UNetGenerator`).
        disc_channels, disc_layers, disc_norm, disc_scales: the PatchGAN (``disc_scales > 1``: pix2pixHD's
            multi-scale stack).
        disc_condition: ``"window"`` or ``"current"`` (what the discriminator sees besides the image).
        gan_mode: ``"vanilla"`` (paper), ``"lsgan"``, ``"hinge"`` or ``"wgan"`` (with ``lambda_gp``; use
            ``disc_norm="none"`` or ``"instance"``).
        lambda_l1, lambda_fm, lambda_ssim, lambda_vgg, lambda_gp: loss weights (paper: 100 for L1; the others 0).
        vgg_weights: a torchvision-format VGG-19 state dict for the VGG loss (nothing is downloaded).
        lr, beta1, beta2: Adam for both networks.
    """

    size: int = 256
    window: int = 11
    maps: Tuple[str, ...] = DVP_MAPS
    base_channels: int = 64
    max_channels: int = 512
    norm: str = "batch"
    dropout: float = 0.5
    refine: int = 1
    disc_channels: int = 64
    disc_layers: int = 3
    disc_norm: str = "batch"
    disc_scales: int = 1
    disc_condition: str = "window"
    gan_mode: str = "vanilla"
    lambda_l1: float = 100.0
    lambda_fm: float = 0.0
    lambda_ssim: float = 0.0
    lambda_vgg: float = 0.0
    lambda_gp: float = 10.0
    vgg_weights: Optional[str] = None
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999

    def __post_init__(self):
        from ..data.cache import MAP_CHANNELS

        if self.size < 8 or self.size & (self.size - 1):
            raise ValueError(f"size must be a power of two >= 8, got {self.size}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        bad = [m for m in self.maps if m not in MAP_CHANNELS]
        if bad:
            raise ValueError(f"unknown conditioning maps {bad}; choose from {sorted(MAP_CHANNELS)}")
        if self.gan_mode not in GAN_MODES:
            raise ValueError(f"gan_mode must be one of {GAN_MODES}, got {self.gan_mode!r}")
        if self.disc_condition not in ("window", "current"):
            raise ValueError(f"disc_condition must be 'window' or 'current', got {self.disc_condition!r}")
        if self.lambda_vgg > 0 and not self.vgg_weights:
            raise ValueError("lambda_vgg > 0 needs vgg_weights: a torchvision-format VGG-19 state dict file "
                             "(nothing can be downloaded)")
        self.maps = tuple(self.maps)

    @property
    def frame_channels(self) -> int:
        from ..data.cache import MAP_CHANNELS

        return sum(MAP_CHANNELS[m] for m in self.maps)

    @property
    def in_channels(self) -> int:
        return self.frame_channels * self.window


@register_method
class DeepVideoPortraits(Method):
    """The Deep Video Portraits method for the shared trainer (see the module docstring).

    Batches are dicts from :class:`~neural_renderers.data.WindowDataset`: ``condition (B, S, S, 9N)``,
    ``image (B, S, S, 3)``.
    """

    name = "dvp"
    config_class = DVPConfig

    def __init__(self, config: Optional[DVPConfig] = None):
        config = config or DVPConfig()
        super().__init__(config)
        c = config
        self.generator = UNetGenerator(c.in_channels, 3, c.size, c.base_channels, c.max_channels, c.norm, c.dropout,
                                       refine=c.refine)
        d_in = (c.in_channels if c.disc_condition == "window" else c.frame_channels) + 3
        kw = dict(base_channels=c.disc_channels, n_layers=c.disc_layers, norm=c.disc_norm)
        self.discriminator = (PatchDiscriminator(d_in, **kw) if c.disc_scales == 1
                              else MultiScaleDiscriminator(d_in, c.disc_scales, **kw))
        self.gan = GANLoss(c.gan_mode)
        self.ssim_loss = SSIMLoss() if c.lambda_ssim > 0 else None
        self.vgg_loss = None
        if c.lambda_vgg > 0:
            from ..networks import VGG19Features

            self.vgg_loss = FeatureLoss(VGG19Features.from_file(c.vgg_weights))

    # ------------------------------------------------------------------------------------------------ trainer API
    def networks(self) -> Dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def phases(self) -> List[Phase]:
        betas = (self.config.beta1, self.config.beta2)
        return [Phase("discriminator", ("discriminator",), self.config.lr, betas),
                Phase("generator", ("generator",), self.config.lr, betas)]

    def _disc_condition(self, cond: torch.Tensor) -> torch.Tensor:
        if self.config.disc_condition == "window":
            return cond
        return cond[:, -self.config.frame_channels:]

    def forward_train(self, nets: Nets, batch: Dict[str, Any]) -> Dict[str, Any]:
        cond = to_network(batch["condition"], channels_last=self.channels_last)
        real = to_network(batch["image"], channels_last=self.channels_last)
        fake = nets.generator(cond)
        return {"cond": cond, "real": real, "fake": fake}

    def phase_loss(self, phase: str, nets: Nets, batch, outputs) -> Dict[str, torch.Tensor]:
        c = self.config
        cd = self._disc_condition(outputs["cond"])
        real, fake = outputs["real"], outputs["fake"]
        D = nets.discriminator
        if phase == "discriminator":
            real_out = D(torch.cat([cd, real], 1))
            fake_out = D(torch.cat([cd, fake.detach()], 1))
            loss = self.gan.discriminator(real_out, fake_out)
            out = {"gan": loss}
            if c.gan_mode == "wgan":
                gp = gradient_penalty(D, real, fake, cd)
                out["gp"] = gp
                loss = loss + c.lambda_gp * gp
            out["total"] = loss
            return out
        fake_out = D(torch.cat([cd, fake], 1))
        out = {"gan": self.gan.generator(fake_out), "l1": l1_loss(fake, real)}
        total = out["gan"] + c.lambda_l1 * out["l1"]
        if c.lambda_fm > 0:
            with torch.no_grad():
                real_out = D(torch.cat([cd, real], 1))
            out["fm"] = feature_matching_loss(real_out, fake_out)
            total = total + c.lambda_fm * out["fm"]
        if self.ssim_loss is not None:
            out["ssim"] = self.ssim_loss(fake.float(), real.float())
            total = total + c.lambda_ssim * out["ssim"]
        if self.vgg_loss is not None:
            out["vgg"] = self.vgg_loss(fake, real)
            total = total + c.lambda_vgg * out["vgg"]
        out["total"] = total
        return out

    def visuals(self, batch, outputs) -> Dict[str, torch.Tensor]:
        fc = self.config.frame_channels
        cur = batch["condition"][..., -fc:]
        cols: Dict[str, torch.Tensor] = {}
        k = 0
        from ..data.cache import MAP_CHANNELS

        for m in self.config.maps:
            n = MAP_CHANNELS[m]
            if n in (1, 3):
                cols[m] = cur[..., k:k + n]
            k += n
        cols["output"] = from_network(outputs["fake"].detach().float()).clamp(0, 1)
        cols["real"] = batch["image"]
        return cols

    @torch.no_grad()
    def validate(self, nets: Nets, batch) -> Dict[str, float]:
        cond = to_network(batch["condition"], channels_last=self.channels_last)
        fake = from_network(nets.generator(cond).float()).clamp(0, 1)
        real = batch["image"].float()
        mse = ((fake - real) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        psnr = (10 * torch.log10(1.0 / mse)).mean()
        s = ssim(fake.permute(0, 3, 1, 2), real.permute(0, 3, 1, 2))
        return {"psnr": float(psnr), "ssim": float(s), "l1": float((fake - real).abs().mean())}

    def signature(self) -> Dict[str, Any]:
        c = self.config
        return {"size": c.size, "window": c.window, "maps": list(c.maps), "base_channels": c.base_channels,
                "max_channels": c.max_channels, "norm": c.norm, "refine": c.refine, "disc_channels": c.disc_channels,
                "disc_layers": c.disc_layers, "disc_norm": c.disc_norm, "disc_scales": c.disc_scales,
                "disc_condition": c.disc_condition}

    # ------------------------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def render(self, condition: torch.Tensor) -> torch.Tensor:
        """``condition (B, S, S, 9N)`` in [0, 1] -> the generated crops ``(B, S, S, 3)`` in [0, 1] (call ``eval()``
        first for inference)."""
        c = self.config
        if condition.ndim != 4 or condition.shape[-1] != c.in_channels or condition.shape[1] != c.size:
            raise ValueError(f"expected condition (B, {c.size}, {c.size}, {c.in_channels}), got "
                             f"{tuple(condition.shape)}")
        x = to_network(condition.to(next(self.generator.parameters()).dtype), channels_last=self.channels_last)
        return from_network(self.generator(x).float()).clamp(0, 1)
