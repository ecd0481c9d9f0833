"""Landmark metrics: the Latent Pose Descriptors pose reconstruction error P_T, inner-lip opening, correlation.

All take NumPy arrays; missing faces are rows of NaN and are left out (never fatal).
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError


def _lm(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1:] != (68, 2):
        raise ShapeError(f"{name} must be (T, 68, 2) iBUG landmarks, got shape {a.shape}")
    return a


def interocular(landmarks) -> np.ndarray:
    """Outer-eye-corner distance ``|p36 - p45|`` (iBUG 0-based): ``(T, 68, 2)`` -> ``(T,)``."""
    a = _lm(landmarks, "landmarks")
    return np.linalg.norm(a[:, 36] - a[:, 45], axis=-1)


def lip_opening(landmarks) -> np.ndarray:
    """Inner-lip opening ``|p62 - p66| / |p36 - p45|``: ``(T, 68, 2)`` -> ``(T,)`` (NaN where a face is missing)."""
    a = _lm(landmarks, "landmarks")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.linalg.norm(a[:, 62] - a[:, 66], axis=-1) / interocular(a)


def pearson(a, b) -> float:
    """Pearson correlation of two ``(T,)`` series over the entries finite in both (NaN if fewer than 3)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ShapeError(f"series differ in length: {a.shape} and {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def align_scale_shift(pred, ref) -> np.ndarray:
    """Per frame, the scale and shift of ``pred`` that best fit ``ref`` (least squares; LPD's "optimal alignment").

    Args:
        pred, ref: ``(T, 68, 2)``.
    Returns:
        ``(T, 68, 2)``: ``s * pred + t`` (rows with NaN stay NaN).
    """
    p, r = _lm(pred, "pred"), _lm(ref, "ref")
    if p.shape != r.shape:
        raise ShapeError(f"pred and ref differ in shape: {p.shape} and {r.shape}")
    out = np.full_like(p, np.nan)
    for i in range(p.shape[0]):
        if not (np.isfinite(p[i]).all() and np.isfinite(r[i]).all()):
            continue
        A = np.zeros((136, 3))
        A[:, 0] = p[i].reshape(-1)
        A[0::2, 1] = 1.0
        A[1::2, 2] = 1.0
        s, tx, ty = np.linalg.lstsq(A, r[i].reshape(-1), rcond=None)[0]
        out[i] = s * p[i] + np.array([tx, ty])
    return out


def pose_error(pred, ref, align: bool = False) -> np.ndarray:
    """Per-frame pose reconstruction error of Latent Pose Descriptors (Burkov et al. 2020, P_T).

    The mean over the 68 points of ``|ref - pred|`` divided by the reference's outer-eye-corner distance (clipped
    at 1e-2), per frame; P_T is its mean over frames (``np.nanmean``). With ``align`` the prediction is first
    scaled and shifted onto the reference (their ``apply_optimal_alignment``), which removes the effect of
    different face sizes when the driver is another person.

    Args:
        pred: ``(T, 68, 2)`` landmarks of the result; ref: ``(T, 68, 2)`` of the driver / ground truth.
    Returns:
        ``(T,)`` (NaN where either has no face).
    """
    p, r = _lm(pred, "pred"), _lm(ref, "ref")
    if p.shape != r.shape:
        raise ShapeError(f"pred and ref differ in shape: {p.shape} and {r.shape}")
    if align:
        p = align_scale_shift(p, r)
    io = np.clip(interocular(r), 1e-2, None)
    return np.linalg.norm(r - p, axis=-1).mean(-1) / io


__all__ = ["align_scale_shift", "interocular", "lip_opening", "pearson", "pose_error"]
