"""Identity metrics on 128-d face descriptors (dlib's ResNet, :mod:`facerender.identity`)."""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError


def _desc(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] < 1:
        raise ShapeError(f"{name} must be (N, D) descriptors, got shape {a.shape}")
    return a


def csim(descriptors, reference) -> np.ndarray:
    """Cosine similarity of each descriptor to the identity of ``reference`` (CSIM of MarioNETte / LPD).

    The reference identity is the mean of the reference descriptors (one or several frames of the person), as
    Latent Pose Descriptors average their target descriptors.

    Args:
        descriptors: ``(N, D)``; reference: ``(M, D)`` or ``(D,)``.
    Returns:
        ``(N,)`` in [-1, 1] (1: same direction). ``1 - csim`` is LPD's identity error.
    """
    d, r = _desc(descriptors, "descriptors"), _desc(reference, "reference")
    if d.shape[1] != r.shape[1]:
        raise ShapeError(f"descriptor lengths differ: {d.shape} and {r.shape}")
    m = r.mean(0)
    den = np.linalg.norm(d, axis=1) * np.linalg.norm(m)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (d @ m) / den


def identity_distance(a, b) -> float:
    """Mean Euclidean distance over all pairs of ``(N, D)`` and ``(M, D)`` descriptors (dlib: same person < 0.6).

    Returns NaN when either set is empty.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size == 0 or y.size == 0:
        return float("nan")
    x, y = _desc(x, "a"), _desc(y, "b")
    if x.shape[1] != y.shape[1]:
        raise ShapeError(f"descriptor lengths differ: {x.shape} and {y.shape}")
    return float(np.linalg.norm(x[:, None] - y[None], axis=-1).mean())


__all__ = ["csim", "identity_distance"]
