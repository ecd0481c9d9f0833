"""The losses of every neural renderer, as small functions and modules (imaginaire / pix2pixHD style).

Images are network tensors ``(B, C, H, W)`` in ``[-1, 1]`` unless stated. Discriminator outputs follow
:mod:`neural_renderers.networks.discriminator`: a list of scales, each a list of feature maps whose LAST entry is
the patch logits; a bare tensor is accepted as one scale of logits.

* :func:`l1_loss` (optionally masked);
* :class:`GANLoss`: ``"vanilla"`` (the original cGAN, binary cross-entropy with logits), ``"lsgan"`` (least
  squares), ``"hinge"`` and ``"wgan"`` (Wasserstein; use with :func:`gradient_penalty`, WGAN-GP);
* :func:`gradient_penalty`: WGAN-GP's ``(||grad_x D(x_hat)||_2 - 1)^2`` on random interpolates;
* :func:`feature_matching_loss`: L1 between the discriminator's intermediate features on real and fake;
* :class:`SSIMLoss`: ``(1 - SSIM) / 2`` (kornia);
* :class:`FeatureLoss`: weighted L1 between the features of any feature network (e.g.
  :class:`~neural_renderers.networks.VGG19Features` loaded from a user's state-dict file).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["l1_loss", "GANLoss", "GAN_MODES", "gradient_penalty", "feature_matching_loss", "SSIMLoss",
           "FeatureLoss", "ssim"]

#: Adversarial objectives of :class:`GANLoss`.
GAN_MODES = ("vanilla", "lsgan", "hinge", "wgan")

Logits = Union[torch.Tensor, Sequence[Sequence[torch.Tensor]]]
_PIX2PIXHD_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


def l1_loss(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean absolute error; with ``mask (B, 1|C, H, W)`` the mean over the masked elements (0 when empty)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    d = (pred - target).abs()
    if mask is None:
        return d.mean()
    m = mask.to(d.dtype).expand_as(d)
    return (d * m).sum() / m.sum().clamp_min(1.0)


def _logits(out: Logits) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [scale[-1] if isinstance(scale, (list, tuple)) else scale for scale in out]


class GANLoss(nn.Module):
    """Adversarial losses for the generator and the discriminator, averaged over discriminator scales.

    * ``generator(fake_out)``: vanilla ``BCE(D(G), 1)``, lsgan ``(D(G) - 1)^2``, hinge and wgan ``-D(G)``;
    * ``discriminator(real_out, fake_out)``: vanilla ``(BCE(D(x), 1) + BCE(D(G), 0)) / 2``, lsgan
      ``((D(x) - 1)^2 + D(G)^2) / 2``, hinge ``(relu(1 - D(x)) + relu(1 + D(G))) / 2``, wgan ``D(G) - D(x)``.
    """

    def __init__(self, mode: str = "vanilla"):
        super().__init__()
        if mode not in GAN_MODES:
            raise ValueError(f"unknown GAN mode {mode!r}; choose one of {GAN_MODES}")
        self.mode = mode

    def generator(self, fake_out: Logits) -> torch.Tensor:
        losses = []
        for f in _logits(fake_out):
            if self.mode == "vanilla":
                losses.append(F.binary_cross_entropy_with_logits(f, torch.ones_like(f)))
            elif self.mode == "lsgan":
                losses.append(((f - 1) ** 2).mean())
            else:
                losses.append(-f.mean())
        return torch.stack(losses).mean()

    def discriminator(self, real_out: Logits, fake_out: Logits) -> torch.Tensor:
        losses = []
        for r, f in zip(_logits(real_out), _logits(fake_out)):
            if self.mode == "vanilla":
                losses.append(0.5 * (F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
                                     + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))))
            elif self.mode == "lsgan":
                losses.append(0.5 * (((r - 1) ** 2).mean() + (f ** 2).mean()))
            elif self.mode == "hinge":
                losses.append(0.5 * (F.relu(1 - r).mean() + F.relu(1 + f).mean()))
            else:
                losses.append(f.mean() - r.mean())
        return torch.stack(losses).mean()


def gradient_penalty(discriminator: Callable[[torch.Tensor], Logits], real: torch.Tensor, fake: torch.Tensor,
                     condition: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None
                     ) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): ``mean((||grad D(x_hat)||_2 - 1)^2)`` at ``x_hat = a x + (1 - a) G``,
    ``a ~ U(0, 1)`` per sample. With ``condition (B, C_c, H, W)`` the discriminator sees ``cat(condition, x_hat)``
    and the gradient is taken with respect to the image part only. Differentiable (``create_graph``) so it can be
    added to the discriminator's loss. Use a discriminator without batch normalisation."""
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} differ")
    a = torch.rand(real.shape[0], 1, 1, 1, dtype=real.dtype, device=real.device, generator=generator)
    x = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    inp = x if condition is None else torch.cat([condition.detach(), x], 1)
    logits = _logits(discriminator(inp))
    total = sum(l.sum() for l in logits)
    (g,) = torch.autograd.grad(total, x, create_graph=True)
    return ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()


def feature_matching_loss(real_out: Sequence[Sequence[torch.Tensor]], fake_out: Sequence[Sequence[torch.Tensor]]
                          ) -> torch.Tensor:
    """pix2pixHD's discriminator feature matching: mean over scales of the sum over intermediate layers (all but
    the logits) of ``L1(D_l(fake), D_l(real).detach())``."""
    if len(real_out) != len(fake_out):
        raise ValueError(f"{len(real_out)} real and {len(fake_out)} fake discriminator scales")
    total = []
    for r, f in zip(real_out, fake_out):
        if len(r) < 2:
            raise ValueError("feature matching needs the discriminator's intermediate features (lists of >= 2 maps)")
        total.append(sum(F.l1_loss(fl, rl.detach()) for rl, fl in zip(r[:-1], f[:-1])))
    return torch.stack([torch.as_tensor(t) for t in total]).mean()


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11, max_val: float = 1.0) -> torch.Tensor:
    """Mean SSIM of ``(B, C, H, W)`` images with values in ``[0, max_val]`` (kornia's Gaussian-window SSIM)."""
    from kornia.metrics import ssim as kssim

    return kssim(pred, target, window, max_val=max_val).mean()


class SSIMLoss(nn.Module):
    """``(1 - SSIM) / 2`` of network tensors in ``[-1, 1]`` (mapped to ``[0, 1]`` first), kornia's SSIM with a
    Gaussian window of ``window`` pixels."""

    def __init__(self, window: int = 11):
        super().__init__()
        self.window = window

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (1 - ssim((pred + 1) / 2, (target + 1) / 2, self.window)) / 2


class FeatureLoss(nn.Module):
    """Weighted L1 between feature maps of any network returning ``{name: (B, C, H, W)}``:
    ``sum_l w_l * L1(f_l(pred), f_l(target))`` (target features detached).

    Args:
        network: the feature network (frozen here; e.g. ``VGG19Features.from_file(path)``).
        weights: per-layer weights (default: pix2pixHD's 1/32, 1/16, 1/8, 1/4, 1 when the network returns five
            layers, in order; uniform otherwise).
    """

    def __init__(self, network: nn.Module, weights: Optional[Mapping[str, float]] = None):
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.weights = dict(weights) if weights is not None else None

    def train(self, mode: bool = True):  # the feature network stays in eval mode
        super().train(mode)
        self.network.eval()
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fp: Dict[str, torch.Tensor] = self.network(pred)
        with torch.no_grad():
            ft: Dict[str, torch.Tensor] = self.network(target)
        names = list(fp)
        if self.weights is not None:
            w = self.weights
        elif len(names) == len(_PIX2PIXHD_WEIGHTS):
            w = dict(zip(names, _PIX2PIXHD_WEIGHTS))
        else:
            w = {n: 1.0 / len(names) for n in names}
        return sum(w.get(n, 0.0) * F.l1_loss(fp[n], ft[n]) for n in names)
