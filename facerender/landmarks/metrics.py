"""Landmark accuracy: normalised mean error (NME), batched, for numpy arrays and (differentiable) torch tensors.

NME = mean over points of ``||pred_l - gt_l||`` divided by the distance between the ground-truth outer eye
corners (iBUG points 36 and 45, 0-based; "inter-ocular" normalisation of 300-W). Points whose ground truth is
NaN (missing in the annotation) are left out of the mean.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch

Array = Union[np.ndarray, torch.Tensor]

#: 0-based iBUG indices of the outer eye corners: the subject's right eye (image left) and left eye.
OUTER_EYE_CORNERS = (36, 45)


def _check(pred: Array, gt: Array, left: int, right: int):
    is_torch = isinstance(pred, torch.Tensor)
    if is_torch != isinstance(gt, torch.Tensor):
        raise ValueError(f"pred and gt must both be numpy arrays or both torch tensors, got "
                         f"{type(pred).__name__} and {type(gt).__name__}")
    if not is_torch:
        pred = np.asarray(pred, dtype=np.float64)
        gt = np.asarray(gt, dtype=np.float64)
    if tuple(pred.shape) != tuple(gt.shape) or pred.ndim not in (2, 3) or pred.shape[-1] != 2:
        raise ValueError(f"pred and gt must have the same shape (L, 2) or (B, L, 2), got "
                         f"{tuple(pred.shape)} and {tuple(gt.shape)}")
    n = pred.shape[-2]
    if not (0 <= left < n and 0 <= right < n) or left == right:
        raise ValueError(f"normalising points {left} and {right} are not two distinct points among {n}")
    return pred, gt, is_torch


def outer_eye_distance(gt: Array, *, left: int = OUTER_EYE_CORNERS[0], right: int = OUTER_EYE_CORNERS[1]) -> Array:
    """Distance between points ``left`` and ``right`` of ``gt (L, 2)`` or ``(B, L, 2)``: a scalar or ``(B,)``."""
    d = gt[..., left, :] - gt[..., right, :]
    if isinstance(gt, torch.Tensor):
        return torch.linalg.vector_norm(d, dim=-1)
    return np.linalg.norm(np.asarray(d, dtype=np.float64), axis=-1)


def normalized_point_errors(pred: Array, gt: Array, *, left: int = OUTER_EYE_CORNERS[0],
                            right: int = OUTER_EYE_CORNERS[1]) -> Array:
    """Per-point errors ``||pred_l - gt_l|| / ||gt_left - gt_right||``: ``(L,)`` or ``(B, L)`` (NaN where gt is NaN).

    Args:
        pred: ``(L, 2)`` or ``(B, L, 2)`` predicted points.
        gt: same shape, ground truth; the normalising points must be present (finite) and distinct.
        left, right: indices of the normalising points (default: iBUG outer eye corners 36 and 45).

    Raises:
        ValueError: shape or type mismatch, or a zero / missing normalising distance.
    """
    pred, gt, is_torch = _check(pred, gt, left, right)
    norm = outer_eye_distance(gt, left=left, right=right)
    if not bool((norm > 0).all()):  # also catches NaN
        raise ValueError(f"the normalising distance between gt points {left} and {right} is zero or missing")
    if is_torch:
        valid = torch.isfinite(gt).all(dim=-1)
        diff = torch.where(valid[..., None], pred - torch.nan_to_num(gt), torch.zeros_like(pred))
        err = torch.linalg.vector_norm(diff, dim=-1) / norm[..., None]
        return torch.where(valid, err, torch.full_like(err, float("nan")))
    return np.linalg.norm(pred - gt, axis=-1) / norm[..., None]


def nme(pred: Array, gt: Array, *, left: int = OUTER_EYE_CORNERS[0], right: int = OUTER_EYE_CORNERS[1]) -> Array:
    """Normalised mean error of landmarks (a fraction: 0.0359 is 3.59 %).

    Args:
        pred: ``(L, 2)`` or ``(B, L, 2)`` predicted points, numpy or torch.
        gt: the ground truth, same shape and type. NaN points are left out of the mean.
        left, right: indices of the normalising points (default: the iBUG outer eye corners 36 and 45).

    Returns:
        For ``(L, 2)`` input a Python float (numpy) or 0-d tensor (torch); for ``(B, L, 2)`` a ``(B,)`` array /
        tensor. The torch version is differentiable with respect to ``pred`` and ``gt``, in their dtype and device.

    Raises:
        ValueError: shape or type mismatch, or a zero / missing normalising distance.
    """
    err = normalized_point_errors(pred, gt, left=left, right=right)
    if isinstance(err, torch.Tensor):
        valid = torch.isfinite(err)
        total = torch.where(valid, err, torch.zeros_like(err)).sum(-1)
        return total / valid.sum(-1).to(err.dtype)
    out = np.nanmean(err, axis=-1)
    return float(out) if out.ndim == 0 else out


__all__ = ["nme", "normalized_point_errors", "outer_eye_distance", "OUTER_EYE_CORNERS"]
