"""Identity and feature (perceptual) losses from dlib's face-recognition ResNet, and batched descriptors.

* :func:`face_descriptors`: images + landmarks -> ``(B, 128)`` descriptors (chips by :func:`face_chips`, then the
  network), batched; ``quantize=True`` reproduces ``dlib.face_recognition_model_v1.compute_face_descriptor``.
* :class:`IdentityLoss`: ``1 - cos(descriptor(pred), descriptor(target))`` per face (Latent Pose Descriptors'
  identity error; ``1 - CSIM``).
* :class:`IdentityFeatureLoss`: weighted mean absolute difference of the network's intermediate activations
  (a perceptual loss from a face network, as MarioNETte / X2Face use VGG-Face features).

All take images ``(B, H, W, 3)`` or ``(B, 3, H, W)`` in [0, 1] with landmarks ``(B, 68, 2)`` / ``(B, 5, 2)`` in the
package convention, or already aligned ``(B, 3, 150, 150)`` chips with ``landmarks=None``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShapeError
from .chips import MIN_EYE_DISTANCE, face_chips
from .network import CHIP_SIZE, DESCRIPTOR_DIM, FEATURE_NAMES, DlibFaceNet

_REDUCTIONS = ("mean", "sum", "none")


def _aligned(images: torch.Tensor, landmarks, padding: float, min_eye_distance: float) -> torch.Tensor:
    """``(B, 3, 150, 150)`` chips from images + landmarks, or the images themselves when already chips."""
    if landmarks is not None:
        return face_chips(images, landmarks, CHIP_SIZE, padding, min_eye_distance=min_eye_distance)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ShapeError(f"without landmarks the images must be aligned chips (B, 3, {CHIP_SIZE}, {CHIP_SIZE}), "
                         f"got {tuple(getattr(images, 'shape', ()))}")
    if images.shape[1:] == (3, CHIP_SIZE, CHIP_SIZE):
        return images
    if images.shape[1:] == (CHIP_SIZE, CHIP_SIZE, 3):
        return images.permute(0, 3, 1, 2)
    raise ShapeError(f"without landmarks the images must be aligned chips (B, 3, {CHIP_SIZE}, {CHIP_SIZE}) or "
                     f"(B, {CHIP_SIZE}, {CHIP_SIZE}, 3); got shape {tuple(images.shape)} (pass landmarks to align)")


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def face_descriptors(images: torch.Tensor, landmarks=None, net: Optional[DlibFaceNet] = None, *,
                     padding: float = 0.25, quantize: bool = False, batch_size: int = 32,
                     min_eye_distance: float = MIN_EYE_DISTANCE) -> torch.Tensor:
    """128-d face descriptors of a batch of faces.

    Args:
        images: ``(B, H, W, 3)`` / ``(B, 3, H, W)`` in [0, 1] (uint8 is accepted here and divided by 255), or
            aligned chips ``(B, 3, 150, 150)`` when ``landmarks`` is None.
        landmarks: ``(B, 68, 2)`` / ``(B, 5, 2)`` (package convention) or None.
        net: the network (default :meth:`DlibFaceNet.from_dlib` on the images' device).
        quantize: chips rounded like dlib's uint8 path (descriptors then equal dlib's ``compute_face_descriptor``).
        batch_size: faces per network call.
    Returns:
        ``(B, 128)`` descriptors in the network's dtype (differentiable unless ``quantize``).
    """
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
        images = images.float() / 255.0
    if net is None:
        net = DlibFaceNet.from_dlib(device=images.device if isinstance(images, torch.Tensor) else None)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = images.shape[0] if isinstance(images, torch.Tensor) and images.ndim == 4 else 1
    out = []
    for s in range(0, n, batch_size):
        lm = None if landmarks is None else landmarks[s:s + batch_size]
        if lm is None:
            chips = _aligned(images[s:s + batch_size], None, padding, min_eye_distance)
        else:
            chips = face_chips(images[s:s + batch_size], lm, CHIP_SIZE, padding, quantize=quantize,
                               min_eye_distance=min_eye_distance)
        out.append(net(chips.to(net.device)))
    if not out:
        return torch.zeros(0, DESCRIPTOR_DIM, dtype=net.dtype, device=net.device)
    return torch.cat(out)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of descriptors ``(..., D)`` and ``(..., D)`` (broadcast) -> ``(...)``."""
    if a.shape[-1] != b.shape[-1]:
        raise ShapeError(f"descriptors differ in length: {tuple(a.shape)} and {tuple(b.shape)}")
    return F.cosine_similarity(a, b, dim=-1, eps=eps)


class IdentityLoss(nn.Module):
    """``1 - cos(descriptor(pred), descriptor(target))`` with dlib's face network (0 for the same face chip).

    Args:
        net: a :class:`DlibFaceNet` (default: loaded from ``face-recognition-models`` on first use).
        padding: chip padding (0.25, dlib's descriptor setting).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (``(B,)``).
        detach_target: no gradient through the target's descriptor (default True).

    ``forward(pred, target, landmarks=None, target_landmarks=None)``:
        pred: ``(B, H, W, 3)`` / ``(B, 3, H, W)`` in [0, 1], or chips ``(B, 3, 150, 150)`` with ``landmarks=None``.
        target: images like ``pred`` (aligned with ``target_landmarks``, default ``landmarks``), or descriptors
            ``(B, 128)`` / ``(128,)``.
        landmarks: ``(B, 68, 2)`` / ``(B, 5, 2)`` of the faces in ``pred`` (package convention).
    Returns the loss (a scalar, or ``(B,)``). Gradients flow to ``pred``'s pixels through the chip warp.
    """

    def __init__(self, net: Optional[DlibFaceNet] = None, *, padding: float = 0.25, reduction: str = "mean",
                 detach_target: bool = True, min_eye_distance: float = MIN_EYE_DISTANCE):
        super().__init__()
        self.net = net
        self.padding = float(padding)
        self.reduction = _check_reduction(reduction)
        self.detach_target = bool(detach_target)
        self.min_eye_distance = float(min_eye_distance)

    def _net(self, like: torch.Tensor) -> DlibFaceNet:
        if self.net is None:
            self.net = DlibFaceNet.from_dlib(device=like.device)
        return self.net

    def descriptors(self, images: torch.Tensor, landmarks=None) -> torch.Tensor:
        """``(B, 128)`` descriptors of images (+ landmarks) or chips."""
        net = self._net(images)
        return net(_aligned(images, landmarks, self.padding, self.min_eye_distance))

    def forward(self, pred: torch.Tensor, target: torch.Tensor, landmarks=None, target_landmarks=None
                ) -> torch.Tensor:
        d_pred = self.descriptors(pred, landmarks)
        if isinstance(target, torch.Tensor) and target.shape[-1] == DESCRIPTOR_DIM and target.ndim <= 2:
            d_tgt = target.to(d_pred)
        else:
            tl = landmarks if target_landmarks is None else target_landmarks
            if self.detach_target:
                with torch.no_grad():
                    d_tgt = self.descriptors(target, tl)
            else:
                d_tgt = self.descriptors(target, tl)
        if self.detach_target:
            d_tgt = d_tgt.detach()
        if d_tgt.ndim == 2 and d_tgt.shape[0] not in (1, d_pred.shape[0]):
            raise ShapeError(f"target holds {d_tgt.shape[0]} faces, pred {d_pred.shape[0]}")
        return _reduce(1.0 - cosine_similarity(d_pred, d_tgt), self.reduction)


class IdentityFeatureLoss(nn.Module):
    """Feature (perceptual) loss from dlib's face network: ``sum_l w_l * mean |phi_l(pred) - phi_l(target)|``.

    Args:
        net: a :class:`DlibFaceNet` (default: loaded on first use).
        layers: feature names (see :meth:`DlibFaceNet.features`; default stem, level4, level3, level2, level1).
        weights: one weight per layer (default 1 each).
        padding: chip padding.
        reduction: ``"mean"`` / ``"sum"`` over the batch, or ``"none"`` (``(B,)``).

    ``forward(pred, target, landmarks=None, target_landmarks=None)``: as :class:`IdentityLoss`, with ``target``
    images (or chips); the target's features carry no gradient.
    """

    def __init__(self, net: Optional[DlibFaceNet] = None, layers: Sequence[str] = FEATURE_NAMES[:5],
                 weights: Optional[Sequence[float]] = None, *, padding: float = 0.25, reduction: str = "mean",
                 min_eye_distance: float = MIN_EYE_DISTANCE):
        super().__init__()
        layers = list(layers)
        bad = [n for n in layers if n not in FEATURE_NAMES + ("descriptor",)]
        if not layers or bad:
            raise ValueError(f"layers must be a non-empty subset of {FEATURE_NAMES + ('descriptor',)}, got {layers}")
        if weights is None:
            weights = [1.0] * len(layers)
        if len(weights) != len(layers):
            raise ValueError(f"{len(weights)} weights for {len(layers)} layers")
        self.net = net
        self.layers = layers
        self.weights = [float(w) for w in weights]
        self.padding = float(padding)
        self.reduction = _check_reduction(reduction)
        self.min_eye_distance = float(min_eye_distance)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, landmarks=None, target_landmarks=None
                ) -> torch.Tensor:
        if self.net is None:
            self.net = DlibFaceNet.from_dlib(device=pred.device)
        fp = self.net.features(_aligned(pred, landmarks, self.padding, self.min_eye_distance), self.layers)
        tl = landmarks if target_landmarks is None else target_landmarks
        with torch.no_grad():
            ft = self.net.features(_aligned(target, tl, self.padding, self.min_eye_distance), self.layers)
        total: Optional[torch.Tensor] = None
        for name, w in zip(self.layers, self.weights):
            a, b = fp[name], ft[name]
            if b.shape[0] == 1 and a.shape[0] > 1:
                b = b.expand_as(a)
            per = (a - b).abs().flatten(1).mean(1) * w
            total = per if total is None else total + per
        return _reduce(total, self.reduction)


__all__ = ["IdentityFeatureLoss", "IdentityLoss", "cosine_similarity", "face_descriptors"]
