"""Neural Voice Puppetry's deferred neural renderer, a method of the shared trainer (``"nvp-render"``,
``facerender train nvp-render``).

Per frame, in the target's stable face crop (:mod:`neural_renderers.data`; conditioning ``("uv", "uv_tile")``
stored as float16):

1. the neural texture (:class:`~neural_renderers.nvp.texture.NeuralTexture`, 16 channels, a Laplacian pyramid per
   UDIM tile) is sampled through the rasterised UV map of the tracked mesh: ``features (B, 16, S, S)``;
2. the lower-face region (:func:`~neural_renderers.nvp.texture.lower_face_weights` baked into the UV layout and
   sampled the same way) gives the compositing alpha and the hole (:func:`~neural_renderers.nvp.texture.
   composite_masks`); at inference the region is the union of the new expression's and the target frame's own, so
   the target's real jaw is covered when the new one is higher;
3. a U-Net (:class:`~neural_renderers.networks.UNetGenerator`) maps ``[features, real crop outside the hole,
   hole]`` (``16 + 3 + 1`` channels) to the RGB crop; only the region (feathered) is composited into the target
   frame, so the rest of the frame stays the target's own.

Losses (the reference code's ``DynamicNeuralTexturesModel``, whose image loss is the L1 of the rendering and of the
texture's first three channels, its GAN term switched off): ``lambda_image`` x L1 of the rendering inside the hole
+ ``lambda_texture`` x L1 of the texture's first 3 channels against the real crop on the mesh + ``lambda_vgg`` x a
VGG-19 feature loss (only with user-supplied VGG-19 weights; nothing is downloaded) + ``lambda_reg`` x the texture
regulariser. Training holes are sometimes grown by a vertically shifted copy of the region (``hole_shift``), so the
renderer also learns to fill pixels where the mesh is not (the inference union).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..blocks import from_network, to_network
from ..losses import FeatureLoss, l1_loss, ssim
from ..networks import UNetGenerator
from ..training.method import Method, Nets, Phase, register_method
from .texture import NeuralTexture, composite_masks, sample_tiled, split_condition

__all__ = ["NVPRenderConfig", "NeuralVoicePuppetryRenderer", "NVP_MAPS"]

#: The conditioning maps the renderer is trained on (a float16 cache): texture coordinates, the UDIM tile and the
#: region id (the eyeballs get a texture slot of their own: ICT lays them over the face's tile).
NVP_MAPS: Tuple[str, ...] = ("uv", "uv_tile", "regions")


@dataclass
class NVPRenderConfig:
    """Settings of the deferred neural renderer (shapes first, then losses and optimiser).

    Attributes:
        size: crop side (a power of two; 256 as the paper, 128 for CPU budgets).
        texture_channels, texture_size, texture_levels: the neural texture (paper: 16 channels, 4 levels).
        tiles: the model's UDIM tiles (ICT-FaceKit: 6); the texture has ``tiles + 1`` slots, the last for the eyes.
        texture_scale: texel learning-rate factor (see :class:`NeuralTexture`).
        base_channels, max_channels, norm, refine: the U-Net (:class:`UNetGenerator`; the reference uses instance
            norm).
        region_size: texels per tile of the baked lower-face region.
        dilate, feather: growth and Gaussian feather of the compositing alpha, as fractions of the crop side.
        hole_shift, hole_shift_prob: training-time growth of the hole by the region shifted vertically by up to
            ``hole_shift`` of the side, with this probability per sample.
        lambda_image, lambda_texture, lambda_vgg, lambda_reg: loss weights (reference: 10 on the image, 1 on the
            texture's colour, 10 on VGG when used; the regulariser's level weights 8 / 2 / 1 / 0).
        vgg_weights: a torchvision-format VGG-19 state dict for the VGG loss.
        lr, beta1, beta2: Adam (one phase for texture and renderer).
    """

    size: int = 256
    texture_channels: int = 16
    texture_size: int = 256
    texture_levels: int = 4
    tiles: int = 6
    texture_scale: float = 20.0
    base_channels: int = 64
    max_channels: int = 512
    norm: str = "instance"
    refine: int = 1
    region_size: int = 128
    dilate: float = 0.02
    feather: float = 0.02
    hole_shift: float = 0.08
    hole_shift_prob: float = 0.5
    lambda_image: float = 10.0
    lambda_texture: float = 1.0
    lambda_vgg: float = 0.0
    lambda_reg: float = 0.01
    vgg_weights: Optional[str] = None
    lr: float = 5e-4
    beta1: float = 0.5
    beta2: float = 0.999

    def __post_init__(self):
        if self.size < 8 or self.size & (self.size - 1):
            raise ValueError(f"size must be a power of two >= 8, got {self.size}")
        if self.texture_channels < 3:
            raise ValueError(f"texture_channels must be >= 3 (the first three are the colour), got "
                             f"{self.texture_channels}")
        for k in ("dilate", "feather", "hole_shift"):
            if not 0 <= getattr(self, k) < 0.5:
                raise ValueError(f"{k} must lie in [0, 0.5), got {getattr(self, k)}")
        if not 0 <= self.hole_shift_prob <= 1:
            raise ValueError(f"hole_shift_prob must lie in [0, 1], got {self.hole_shift_prob}")
        for k in ("lambda_image", "lambda_texture", "lambda_vgg", "lambda_reg"):
            if not getattr(self, k) >= 0:
                raise ValueError(f"{k} must be >= 0, got {getattr(self, k)}")
        if self.lambda_vgg > 0 and not self.vgg_weights:
            raise ValueError("lambda_vgg > 0 needs vgg_weights: a torchvision-format VGG-19 state dict file "
                             "(nothing can be downloaded)")

    @property
    def in_channels(self) -> int:
        return self.texture_channels + 4

    @property
    def slots(self) -> int:
        """Texture slots: the UDIM tiles and the eyes' own (the last)."""
        return self.tiles + 1

    @property
    def eye_slot(self) -> int:
        return self.tiles

    def pixels(self, fraction: float) -> float:
        return fraction * self.size


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if hasattr(m, "module") else m


@register_method
class NeuralVoicePuppetryRenderer(Method):
    """The neural texture and the deferred neural renderer of one target video (see the module docstring).

    Batches are dicts from :class:`~neural_renderers.data.WindowDataset` with window 1 over a :data:`NVP_MAPS`
    float16 cache: ``condition (B, S, S, 4)`` (u, v, tile + 1, region id), ``image (B, S, S, 3)`` in [0, 1].

    Args:
        config: :class:`NVPRenderConfig`.
        region: ``(tiles + 1, 1, r, r)`` the baked lower-face weights (:func:`~neural_renderers.nvp.texture.
            region_texture` with ``slots=tiles + 1``); None weighs every mesh pixel 1 (the whole face; tests).
    """

    name = "nvp-render"
    config_class = NVPRenderConfig

    def __init__(self, config: Optional[NVPRenderConfig] = None, *, region: Optional[torch.Tensor] = None):
        config = config or NVPRenderConfig()
        super().__init__(config)
        c = config
        self.texture = NeuralTexture(c.texture_channels, c.texture_size, c.texture_levels, c.slots, c.texture_scale)
        self.renderer = UNetGenerator(c.in_channels, 3, c.size, c.base_channels, c.max_channels, c.norm, 0.0,
                                      refine=c.refine)
        if region is None:
            region = torch.ones(c.slots, 1, 2, 2)
        if region.ndim != 4 or region.shape[:2] != (c.slots, 1):
            raise ValueError(f"region must be (tiles + 1 = {c.slots}, 1, r, r), got {tuple(region.shape)}")
        self.register_buffer("region", region.float(), persistent=False)
        self.vgg_loss = None
        if c.lambda_vgg > 0:
            from ..networks import VGG19Features

            self.vgg_loss = FeatureLoss(VGG19Features.from_file(c.vgg_weights))

    # ---------------------------------------------------------------------------------------------- pieces
    def region_weight(self, condition: torch.Tensor) -> torch.Tensor:
        """``(B, S, S)`` lower-face weight of each pixel of a conditioning ``(B, S, S, 3 or 4)``."""
        uv, tile = self.split(condition)
        return sample_tiled([self.region.to(uv.dtype)], uv, tile)[..., 0].clamp(0, 1)

    def split(self, condition: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(uv, slot + 1)`` of a conditioning (:func:`~neural_renderers.nvp.texture.split_condition`)."""
        return split_condition(condition, self.config.eye_slot)

    def masks(self, weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(alpha, hole)`` ``(B, S, S)`` from region weights (:func:`composite_masks` with the config's sizes)."""
        c = self.config
        return composite_masks(weight, c.pixels(c.dilate), c.pixels(c.feather))

    def _shifted(self, weight: torch.Tensor) -> torch.Tensor:
        """Training-time hole growth: with probability ``hole_shift_prob`` per sample, the union with the region
        shifted vertically by a uniform ``[-hole_shift, hole_shift] * S`` pixels."""
        c = self.config
        if c.hole_shift <= 0 or c.hole_shift_prob <= 0:
            return weight
        B, S = weight.shape[0], weight.shape[1]
        draw = torch.rand(B, 2)
        out = []
        for b in range(B):
            w = weight[b]
            if float(draw[b, 0]) < c.hole_shift_prob:
                dy = int(round((2 * float(draw[b, 1]) - 1) * c.hole_shift * S))
                if dy:
                    sh = torch.zeros_like(w)
                    if dy > 0:
                        sh[dy:] = w[:-dy]
                    else:
                        sh[:dy] = w[-dy:]
                    w = torch.maximum(w, sh)
            out.append(w)
        return torch.stack(out)

    def generate(self, texture: nn.Module, renderer: nn.Module, condition: torch.Tensor, image: torch.Tensor,
                 weight: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The forward pass: ``condition (B, S, S, 3)``, ``image (B, S, S, 3)`` in [0, 1] (the real crop; only its
        part outside the hole is used), region ``weight (B, S, S)`` -> ``features (B, C, S, S)``, ``fake (B, 3, S,
        S)`` in [-1, 1], ``real``, ``alpha``, ``hole`` ``(B, 1, S, S)``, ``mesh`` ``(B, 1, S, S)``."""
        uv, tile = self.split(condition)
        feats = texture(uv, tile)  # (B, S, S, C)
        alpha, hole = self.masks(weight)
        real = to_network(image, channels_last=self.channels_last)
        feats_n = feats.permute(0, 3, 1, 2)
        hole_n = hole[:, None].to(real.dtype)
        x = torch.cat([feats_n.to(real.dtype), real * (1 - hole_n), hole_n], 1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        fake = renderer(x)
        return {"features": feats_n, "fake": fake, "real": real, "alpha": alpha[:, None].to(real.dtype),
                "hole": hole_n, "mesh": (tile > 0)[:, None].to(real.dtype)}

    # ------------------------------------------------------------------------------------------ trainer API
    def networks(self) -> Dict[str, nn.Module]:
        return {"texture": self.texture, "renderer": self.renderer}

    def phases(self) -> List[Phase]:
        c = self.config
        return [Phase("render", ("texture", "renderer"), c.lr, (c.beta1, c.beta2))]

    def forward_train(self, nets: Nets, batch: Dict[str, Any]) -> Dict[str, Any]:
        cond = batch["condition"]
        weight = self.region_weight(cond)
        if self.training:
            weight = self._shifted(weight)
        return self.generate(nets.texture, nets.renderer, cond, batch["image"], weight)

    def phase_loss(self, phase: str, nets: Nets, batch, outputs) -> Dict[str, torch.Tensor]:
        c = self.config
        fake, real, hole, mesh = outputs["fake"], outputs["real"], outputs["hole"], outputs["mesh"]
        out = {"l1": l1_loss(fake, real, hole),
               "texture": l1_loss(outputs["features"][:, :3].to(real.dtype), real, mesh)}
        total = c.lambda_image * out["l1"] + c.lambda_texture * out["texture"]
        if self.vgg_loss is not None:
            comp = hole * fake + (1 - hole) * real
            out["vgg"] = self.vgg_loss(comp, real)
            total = total + c.lambda_vgg * out["vgg"]
        if c.lambda_reg > 0:
            out["reg"] = _unwrap(nets.texture).regularization()
            total = total + c.lambda_reg * out["reg"]
        out["total"] = total
        return out

    def visuals(self, batch, outputs) -> Dict[str, torch.Tensor]:
        f = lambda x: from_network(x.detach().float()).clamp(0, 1)  # noqa: E731
        real, fake, alpha, hole = outputs["real"], outputs["fake"], outputs["alpha"], outputs["hole"]
        return {"texture (rgb)": f(outputs["features"][:, :3] * outputs["mesh"] - (1 - outputs["mesh"])),
                "input": f(real * (1 - hole)), "network": f(fake),
                "composite": f(alpha * fake + (1 - alpha) * real), "real": batch["image"].float()}

    @torch.no_grad()
    def validate(self, nets: Nets, batch) -> Dict[str, float]:
        """PSNR / SSIM / L1 of the composited crop against the real one, and PSNR inside the region (alpha-weighted),
        on frames driven by their own tracked expressions."""
        o = self.generate(nets.texture, nets.renderer, batch["condition"], batch["image"],
                          self.region_weight(batch["condition"]))
        return crop_figures(o["fake"], o["real"], o["alpha"])

    def signature(self) -> Dict[str, Any]:
        c = self.config
        return {"size": c.size, "texture_channels": c.texture_channels, "texture_size": c.texture_size,
                "texture_levels": c.texture_levels, "tiles": c.tiles, "base_channels": c.base_channels,
                "max_channels": c.max_channels, "norm": c.norm, "refine": c.refine}

    # ------------------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def render(self, condition: torch.Tensor, image: torch.Tensor, own_condition: Optional[torch.Tensor] = None
               ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Render crops for new expressions (call ``eval()`` first).

        Args:
            condition: ``(B, S, S, 4)`` the new expression's maps (:data:`NVP_MAPS`) in the target frame's crop.
            image: ``(B, S, S, 3)`` in [0, 1] the target frame's real crop.
            own_condition: ``(B, S, S, 4)`` the target frame's own maps (its tracked expression); the region is the
                union of both (None: the new one only).
        Returns:
            ``crop (B, S, S, 3)`` in [0, 1] and ``alpha (B, S, S)``: composite ``alpha * crop + (1 - alpha) *
            frame`` (:func:`facerender.reenact.common.paste_crop`).
        """
        S = self.config.size
        if condition.ndim != 4 or condition.shape[1:3] != (S, S) or condition.shape[-1] not in (3, 4) \
                or image.shape != condition.shape[:3] + (3,):
            raise ValueError(f"expected condition (B, {S}, {S}, 4) and image (B, {S}, {S}, 3), got "
                             f"{tuple(condition.shape)} and {tuple(image.shape)}")
        dt = self.renderer.head[0].weight.dtype
        weight = self.region_weight(condition.to(dt))
        if own_condition is not None:
            weight = torch.maximum(weight, self.region_weight(own_condition.to(dt)))
        o = self.generate(self.texture, self.renderer, condition.to(dt), image.to(dt), weight)
        return from_network(o["fake"].float()).clamp(0, 1), o["alpha"][:, 0].float()


def crop_figures(fake: torch.Tensor, real: torch.Tensor, alpha: torch.Tensor) -> Dict[str, float]:
    """Figures of composited crops: ``fake, real (B, 3, S, S)`` in [-1, 1], ``alpha (B, 1, S, S)``. Returns ``psnr``,
    ``ssim``, ``l1`` of ``alpha * fake + (1 - alpha) * real`` against ``real`` over the crop (in [0, 1]) and
    ``psnr_region``: the alpha-weighted PSNR (the re-rendered pixels only)."""
    comp = ((alpha * fake + (1 - alpha) * real).float() + 1) / 2
    ref = (real.float() + 1) / 2
    comp = comp.clamp(0, 1)
    mse = ((comp - ref) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    a = alpha.float()
    mse_r = (a * (comp - ref) ** 2).flatten(1).sum(1) / (3 * a.flatten(1).sum(1)).clamp_min(1e-6)
    return {"psnr": float((10 * torch.log10(1.0 / mse)).mean()), "ssim": float(ssim(comp, ref)),
            "l1": float((comp - ref).abs().mean()),
            "psnr_region": float((10 * torch.log10(1.0 / mse_r.clamp_min(1e-10))).mean())}
