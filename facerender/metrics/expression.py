"""Expression error through our own 3DMM fit: blendshape-weight distance and FACS action-unit agreement.

Every video's landmarks are fitted with ICT-FaceKit (:func:`facerender.fitting.landmark_fit.fit_landmarks`): an
identity per video (the mean over up to ``identity_frames`` frames fitted freely), then every frame with that
identity fixed, giving ``(T, 53)`` blendshape weights in [0, 1]. Two videos of different people are compared
relative to each actor's neutral (the 5th percentile of each weight over the video, as Face2Face transfers
expressions), the same person (a ground truth) directly.

FACS action units come from ICT's table (:data:`morphable_models.blendshapes.ICT_FACS_TABLE`: an AU's intensity
is the mean of its blendshapes' weights); :func:`au_agreement` is an AUCON-like score (MarioNETte): the fraction of
(frame, AU) pairs whose binary activation (intensity above a threshold) agrees.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from ..errors import ShapeError


@dataclass
class ExpressionFit:
    """Per-frame expression of a video from the landmark fit.

    Attributes:
        expression: ``(T, K)`` blendshape weights (rows of NaN where the frame had no face).
        names: the ``K`` blendshape names.
        identity: ``(K_id,)`` the identity held fixed for the video.
        rotation: ``(T, 3)`` axis-angle head rotation (NaN rows where no face).
    """

    expression: np.ndarray
    names: Tuple[str, ...]
    identity: np.ndarray
    rotation: np.ndarray


def fit_expressions(landmarks, image_size: Tuple[int, int], model=None, *, identity_frames: int = 30,
                    batch_size: int = 64) -> ExpressionFit:
    """Fit ICT-FaceKit to every frame's 68 landmarks (identity fixed per video).

    Args:
        landmarks: ``(T, 68, 2)`` in the package convention, NaN rows for frames without a face.
        image_size: ``(H, W)`` of the frames.
        model: a face model with the ibug68 landmarks (default ``morphable_models.load_ict()``).
        identity_frames: frames (evenly spread) whose free fits give the video's identity.
    Returns:
        :class:`ExpressionFit`.
    """
    import torch

    from ..fitting.landmark_fit import fit_landmarks

    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (68, 2):
        raise ShapeError(f"landmarks must be (T, 68, 2), got shape {lm.shape}")
    if model is None:
        from morphable_models import load_ict

        model = load_ict()
    T = lm.shape[0]
    ok = np.isfinite(lm).all(axis=(1, 2))
    names = tuple(model.expression_names)
    expr = np.full((T, len(names)), np.nan)
    rot = np.full((T, 3), np.nan)
    idx = np.nonzero(ok)[0]
    if len(idx) == 0:
        return ExpressionFit(expr, names, np.zeros(model.num_identity), rot)
    pick = idx[np.unique(np.linspace(0, len(idx) - 1, min(identity_frames, len(idx))).round().astype(int))]
    first = fit_landmarks(model, torch.as_tensor(lm[pick]), image_size)
    identity = first.identity.mean(0, keepdim=True)
    for s in range(0, len(idx), batch_size):
        sel = idx[s:s + batch_size]
        res = fit_landmarks(model, torch.as_tensor(lm[sel]), image_size,
                            fixed_identity=identity.expand(len(sel), -1))
        expr[sel] = res.expression.detach().double().cpu().numpy()
        rot[sel] = res.rotation.detach().double().cpu().numpy()
    return ExpressionFit(expr, names, identity[0].double().cpu().numpy(), rot)


def _w(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ShapeError(f"{name} must be (T, K) blendshape weights, got shape {a.shape}")
    return a


def neutral_relative(weights, percentile: float = 5.0) -> np.ndarray:
    """Weights minus the actor's neutral (the ``percentile``-th percentile per blendshape over the frames).

    ``(T, K)`` -> ``(T, K)`` (NaN rows stay NaN).
    """
    w = _w(weights, "weights")
    ok = np.isfinite(w).all(1)
    if not ok.any():
        return w.copy()
    return w - np.percentile(w[ok], percentile, axis=0)


def blendshape_distance(a, b, relative: bool = True, percentile: float = 5.0) -> np.ndarray:
    """Mean absolute blendshape-weight difference per frame.

    Args:
        a, b: ``(T, K)`` weights of the same frames (NaN rows: no face).
        relative: compare each relative to its own neutral (different people); False for a ground truth.
    Returns:
        ``(T,)`` (NaN where either has no face).
    """
    x, y = _w(a, "a"), _w(b, "b")
    if x.shape != y.shape:
        raise ShapeError(f"weights differ in shape: {x.shape} and {y.shape}")
    if relative:
        x, y = neutral_relative(x, percentile), neutral_relative(y, percentile)
    return np.abs(x - y).mean(1)


def action_units(weights, names: Sequence[str], table=None) -> Tuple[np.ndarray, List[str]]:
    """FACS action-unit intensities from blendshape weights through ICT's table.

    Args:
        weights: ``(T, K)``; names: the ``K`` blendshape names; table: ``{AU: (description, (shapes, ...))}``
            (default ICT's, :data:`morphable_models.blendshapes.ICT_FACS_TABLE`).
    Returns:
        ``(T, A)`` intensities (mean of each AU's shapes) and the ``A`` AU names (those whose shapes all exist).
    """
    from morphable_models.blendshapes import ICT_FACS_TABLE

    w = _w(weights, "weights")
    names = list(names)
    if w.shape[1] != len(names):
        raise ShapeError(f"{w.shape[1]} weights per frame but {len(names)} names")
    table = ICT_FACS_TABLE if table is None else table
    aus, cols = [], []
    for au, (_, shapes) in table.items():
        if all(s in names for s in shapes):
            aus.append(au)
            cols.append(w[:, [names.index(s) for s in shapes]].mean(1))
    if not aus:
        raise ValueError("no action unit of the table has all its blendshapes among the names given")
    return np.stack(cols, 1), aus


def au_agreement(a, b, threshold: float = 0.2) -> float:
    """AUCON-like agreement: the fraction of (frame, AU) pairs whose activation (intensity > ``threshold``)
    is the same in ``a`` and ``b`` (``(T, A)`` each; frames with NaN in either are left out; NaN if none)."""
    x, y = _w(a, "a"), _w(b, "b")
    if x.shape != y.shape:
        raise ShapeError(f"action units differ in shape: {x.shape} and {y.shape}")
    ok = np.isfinite(x).all(1) & np.isfinite(y).all(1)
    if not ok.any():
        return float("nan")
    return float(((x[ok] > threshold) == (y[ok] > threshold)).mean())


__all__ = ["ExpressionFit", "action_units", "au_agreement", "blendshape_distance", "fit_expressions",
           "neutral_relative"]
