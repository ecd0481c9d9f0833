"""Fitting models that are not linear in their coefficients: FLAME (articulated jaw and eyes) and the multilinear
(Tucker) model, through the package's linear Gauss-Newton fitter.

Both models provide ``linearize(identity, expression) -> LinearFaceModel``: the exact first-order expansion at a
point, in ABSOLUTE coordinates (``V(p) ~ [V(p0) - J p0] + J p``), exact at ``p0``. So:

* **joint** (default): solve the landmark energy on the linearisation at ``p_k`` (several LM iterations), move to
  the solution ``p_{k+1}``, re-linearise, repeat until the point stops moving. Each round is a Gauss-Newton step of
  the exact model's energy (with the inner solve's damping), so the fixed point is a stationary point of the exact
  energy. For FLAME this is how jaw opening and eye rotation reach the fitter: the seven pose coefficients are extra
  expression coefficients of the linearisation, with their Jacobian columns from forward-mode autodiff of LBS.
* **alternating** (multilinear): identity with the expression fixed, then expression with the identity fixed; each
  sub-problem is exactly linear (bilinear model), as FaceWarehouse / Face2Face fit their core tensors.

The photometric stage of :func:`~facerender.fitting.fit_image.fit_image` then runs once on the final linearisation.
:class:`RelinearizedFit` reports how far the linearisation is from the exact model at the result
(``linearization_error_cm``, ``linearization_error_px``).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from morphable_models import LinearFaceModel

from ..errors import FittingError
from .fit_image import FitConfig, FitResult, fit_image
from .landmark_fit import LandmarkFitConfig, LandmarkFitResult, default_focal, fit_landmarks


def is_nonlinear(model) -> bool:
    """True for models fitted through :func:`fit_image_relinearized` (FLAME, multilinear)."""
    return not isinstance(model, LinearFaceModel) and hasattr(model, "linearize")


@dataclass
class RelinearizedFit:
    """Result of :func:`fit_landmarks_relinearized` / :func:`fit_image_relinearized`.

    Attributes:
        result: the :class:`FitResult` (or :class:`LandmarkFitResult`) of the last linear solve; its identity and
            expression are the nonlinear model's own coefficients (absolute coordinates).
        linear_model: the final linearisation (use it wherever a LinearFaceModel is needed); for the landmark-only
            :func:`fit_landmarks_relinearized` of a restrictable model (Tucker), of the vertices the fit reads.
        rounds: linearisations solved; history: per round ``{"step": largest landmark-vertex move (cm), "energy"}``.
        linearization_error_cm: max vertex distance between the linearisation and the exact model at the result;
        linearization_error_px: max distance of the 68 projected landmarks (when the camera is known).
        native: the model's own parameters at the result (FLAME: shape, expression, jaw, eyes).
        seconds: wall time.
    """

    result: object
    linear_model: LinearFaceModel
    rounds: int
    history: List[Dict[str, float]] = field(default_factory=list)
    linearization_error_cm: float = float("nan")
    linearization_error_px: float = float("nan")
    native: Dict[str, list] = field(default_factory=dict)
    seconds: float = 0.0


def _landmark_submodel(model):
    """For models that can be restricted (the Tucker model), the model on the vertices a landmark fit reads: the 68
    points, the jaw polylines and the sliding contour's candidates (found on the neutral face). Restricting does not
    change the landmark energy; it makes each re-linearisation cost hundreds of rows instead of the whole head."""
    if not hasattr(model, "submodel") or getattr(model, "num_vertices", 0) < 2000:
        return model
    cached = model.extra.get("landmark_submodel")
    if cached is not None and cached.dtype == model.dtype and cached.device == model.device:
        return cached
    from morphable_models import Region

    from .energies import contour_candidate_lines

    with torch.no_grad():
        neutral = LinearFaceModel(model().vertices[0], model.faces, landmarks=model.landmarks, regions=model.regions,
                                  expression_kind="pca")
    lines, valid, _, _ = contour_candidate_lines(neutral)
    ids = np.unique(np.concatenate([lines[valid]] + [model.landmarks[k].vertex_index for k in
                                                     ("ibug68", "jawline_right_extended", "jawline_left_extended")]))
    sub = model.submodel(Region.from_vertices("landmark_fit", ids, model.faces.cpu().numpy()))
    model.extra["landmark_submodel"] = sub  # model data do not change after construction
    return sub


def _native(model, identity: torch.Tensor, expression: torch.Tensor) -> Dict[str, list]:
    if hasattr(model, "split_expression"):
        parts = model.split_expression(expression.to(model.dtype))
        out = {"shape": identity[0].tolist(), **{k: v[0].tolist() for k, v in parts.items()}}
        return out
    return {"identity": identity[0].tolist(), "expression": expression[0].tolist()}


def _errors(model, lin: LinearFaceModel, identity, expression, rotation=None, translation=None, focal=None,
            pp=None):
    from morphable_models.geometry import model_to_camera

    with torch.no_grad():
        dt = model.dtype
        exact = model.evaluate_linear_coefficients(identity.to(dt), expression.to(dt))
        approx = lin(identity.to(lin.dtype), expression.to(lin.dtype)).vertices.to(dt)
        cm = float((exact - approx).norm(dim=-1).max())
        px = float("nan")
        if rotation is not None:
            ids = torch.as_tensor(lin.landmarks["ibug68"].vertex_index)

            def proj(v):
                X = model_to_camera(v[:, ids].double(), rotation.double(), translation.double())
                return X[..., :2] / X[..., 2:] * focal.double().reshape(-1, 1, 1) + pp.double()[:, None]

            px = float((proj(exact) - proj(approx)).norm(dim=-1).max())
    return cm, px


def fit_landmarks_relinearized(model, landmarks: torch.Tensor, image_size, confidence=None,
                               config: Optional[LandmarkFitConfig] = None, *, focal=None, rounds: int = 6,
                               mode: str = "joint", tol: float = 0.01, rtol: float = 0.01,
                               identity: Optional[torch.Tensor] = None,
                               expression: Optional[torch.Tensor] = None) -> RelinearizedFit:
    """Fit pose and coefficients of a nonlinear model to 68 landmarks of ONE image by re-linearisation.

    Args:
        model: a FlameModel or TuckerFaceModel (anything with ``linearize`` and ``evaluate_linear_coefficients``).
        landmarks: ``(68, 2)`` or ``(1, 68, 2)`` pixels; image_size ``(H, W)``; confidence ``(68,)``.
        mode: ``"joint"`` (first-order in all coefficients, re-linearised) or ``"alternating"`` (identity, then
            expression, each exact for a bilinear model).
        rounds: maximum linearisations (an alternating round counts as one); tol: stop when no landmark vertex of
            the exact model moved more than ``tol`` cm in the last round, or when the landmark energy fell by less than
            ``rtol`` (relative) in it: the weakly regularised identity/expression valley lets the point drift without
            improving the fit.
        identity, expression: starting point (zeros).
    Returns:
        :class:`RelinearizedFit` with a :class:`LandmarkFitResult` in ``result``.
    """
    if mode not in ("joint", "alternating"):
        raise ValueError(f"mode must be 'joint' or 'alternating', got {mode!r}")
    t0 = time.perf_counter()
    cfg = config or LandmarkFitConfig()
    full = model
    model = _landmark_submodel(model)
    lin = model.linearize(identity, expression)
    dt = lin.dtype
    a = torch.zeros(1, lin.num_identity, dtype=dt) if identity is None else identity.to(dt).reshape(1, -1)
    d = torch.zeros(1, lin.num_expression, dtype=dt) if expression is None else expression.to(dt).reshape(1, -1)
    f = focal if focal is not None else (cfg.focal or default_focal(image_size, cfg.focal_factor))
    history: List[Dict[str, float]] = []
    res: Optional[LandmarkFitResult] = None
    n = 0
    lm_ids = torch.as_tensor(lin.landmarks["ibug68"].vertex_index)
    with torch.no_grad():
        pts = model.evaluate_linear_coefficients(a.to(model.dtype), d.to(model.dtype))[0, lm_ids]
    for n in range(1, max(1, rounds) + 1):
        warm = None if res is None else {"rotation": res.rotation, "translation": res.translation}
        if mode == "joint":
            res = fit_landmarks(lin, landmarks, image_size, confidence, cfg, focal=f,
                                init=None if warm is None else {**warm, "identity": a, "expression": d})
        else:
            res = fit_landmarks(lin, landmarks, image_size, confidence, dataclasses.replace(cfg, fit_expression=False),
                                focal=f, init={**(warm or {}), "identity": a, "expression": d})
            lin = model.linearize(res.identity, d)
            res = fit_landmarks(lin, landmarks, image_size, confidence, dataclasses.replace(cfg, fit_identity=False),
                                focal=f, fixed_identity=res.identity,
                                init={"rotation": res.rotation, "translation": res.translation,
                                      "expression": d})
        with torch.no_grad():
            new_pts = model.evaluate_linear_coefficients(res.identity.to(model.dtype),
                                                         res.expression.to(model.dtype))[0, lm_ids]
        step = float((new_pts - pts).norm(dim=-1).max())
        pts = new_pts
        a, d = res.identity.to(dt), res.expression.to(dt)
        energy = float(res.energy[0])
        history.append({"step": step, "energy": energy})
        lin = model.linearize(a, d)
        if step < tol or (len(history) > 1 and history[-2]["energy"] - energy < rtol * history[-2]["energy"]):
            break
    cm, px = _errors(model, lin, a, d, res.rotation, res.translation, res.focal, res.principal_point)
    return RelinearizedFit(res, lin, n, history, cm, px, _native(full, a, d), time.perf_counter() - t0)


def fit_image_relinearized(model, image, *, landmarks=None, box: Optional[Sequence[float]] = None,
                           face_index: Optional[int] = None, config: Optional[FitConfig] = None,
                           focal: Optional[float] = None, detector: str = "dlib", rounds: int = 6,
                           mode: str = "joint") -> RelinearizedFit:
    """:func:`~facerender.fitting.fit_image.fit_image` for a nonlinear model: landmarks, re-linearised landmark
    fits (:func:`fit_landmarks_relinearized`), then the full fit (landmarks + photometric) on the final
    linearisation. Returns :class:`RelinearizedFit` with a :class:`FitResult` in ``result``."""
    from ..landmarks.detect import Landmarks, as_landmarks, detect_landmarks
    from .fit_image import _as_image_tensor

    t0 = time.perf_counter()
    cfg = config or FitConfig()
    arr, _ = _as_image_tensor(image, torch.float32)
    H, W = arr.shape[:2]
    if landmarks is None:
        lm = detect_landmarks(arr, box=box, index=face_index, detector=detector)
    else:
        lm = as_landmarks(landmarks, image_size=(H, W)) if not isinstance(landmarks, Landmarks) else landmarks
    pts = np.array(lm.points, dtype=np.float64)
    if pts.shape != (68, 2):
        raise FittingError(f"the fit needs 68 landmarks, got an array of shape {pts.shape}")
    conf = np.array(lm.confidence, dtype=np.float64) if lm.confidence is not None else np.ones(68)
    f = float(focal) if focal is not None else (cfg.landmark.focal or default_focal((H, W), cfg.landmark.focal_factor))
    pre = fit_landmarks_relinearized(model, torch.as_tensor(pts), (H, W), torch.as_tensor(conf)[None], cfg.landmark,
                                     focal=f, rounds=rounds, mode=mode)
    lin = model.linearize(pre.result.identity, pre.result.expression)  # the whole model (the landmark rounds may
    res: FitResult = fit_image(lin, arr, landmarks=lm, config=cfg, focal=f)  # have used the fit's vertices only)
    cm, px = _errors(model, lin, res.identity, res.expression, res.rotation, res.translation, res.focal,
                     res.principal_point)
    res.timings["relinearized_landmark_fits"] = pre.seconds
    res.timings["total"] = time.perf_counter() - t0
    if px > 1.0:
        res.flags.append(f"linearisation error {px:.2f} px at the result (exact model vs its linearisation)")
    return RelinearizedFit(res, lin, pre.rounds, pre.history, cm, px, _native(model, res.identity, res.expression),
                           time.perf_counter() - t0)
