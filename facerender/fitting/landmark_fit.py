"""Landmark fitting: pose + identity + expression from 68 2-D landmarks, with a sliding jawline.

Energy (docs/fitting.md derives the weights):

    E = w_lan * (1/L) sum_i c_i rho(||pi(X_i) - l_i|| / s) + w_id * sum_k (alpha_k / sigma_k)^2
        + w_exp * sum_j (delta_j / sigma_exp)^2

with ``s`` the target's outer-eye-corner distance in pixels (so the energy does not depend on the resolution:
a landmark error of 0.03 is an NME of 3 %), ``c_i`` the detector's per-point confidence, ``rho`` Huber, and the 17
jawline points matched each iteration to the closest point of the projected jawline polyline (ICT's extended
jawlines and the chin), so their correspondence slides along the jaw with head pose. Expression weights are kept
in [0, 1] by the solver's projected Levenberg-Marquardt.

Solved by :func:`facerender.fitting.solver.solve` with the analytic Jacobian of
:class:`facerender.fitting.energies.LandmarkTerm` (the model is linear in its coefficients). Batched: B images at
once (e.g. video frames), CPU or GPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from morphable_models import LinearFaceModel

from ..errors import FittingError, ShapeError, UsageError
from .energies import EnergyProblem, LandmarkTerm, PriorTerm
from .params import Block, ParameterLayout, model_bounds
from .solver import GaussNewtonConfig, LeastSquaresProblem, SolverResult, solve

# Rigid initialisation uses these stable inner points (eyes, nose, mouth corners).
_RIGID_POINTS = [27, 28, 29, 30, 31, 33, 35, 36, 39, 42, 45, 48, 54]

#: Plausibility limits of a fit (docs/errors.md): beyond them ``status`` is ``"implausible"`` and ``flags`` say why.
#: RMS of the identity coefficients in standard deviations of the model's prior: landmark fits of the annotated photos
#: and of 50 video frames give 1.4-2.7 (single coefficients up to 9.3); shuffled, scrambled or mislabelled points
#: 5.3-9.4.
MAX_IDENTITY_RMS = 4.0
#: Mean distance of the 51 inner model landmarks to their targets, in outer-eye-corner distances (the same real fits:
#: 0.011-0.021; shuffled or scrambled points about 0.5).
MAX_LANDMARK_ERROR = 0.15


@dataclass
class LandmarkFitConfig:
    """Settings of :func:`fit_landmarks` (defaults = the shipped weights, see docs/fitting.md).

    Attributes:
        w_landmark: weight of the mean normalised landmark error (squared, Huber beyond ``huber``).
        w_identity: weight of ``sum (alpha / sigma)^2`` (ICT identity coefficients are standard-normal).
        w_expression: weight of ``sum (delta / expression_sigma)^2``.
        expression_sigma: prior standard deviation of blendshape weights (bounds [0, 1] always hold).
        huber: Huber threshold on a point's error, in eye-corner distances (None: plain least squares).
        sliding_contour: slide the 17 jawline correspondences along ICT's extended jawline.
        fit_identity, fit_expression, fit_focal: which sets are free.
        focal: focal length in pixels (None: ``focal_factor * max(H, W)``).
        rigid_iterations, max_iterations, rtol: solver budget per solve and the relative-decrease stopping rule
            (the solver also stops when its model promises less than ``rtol * E``: ``stop_on_model_decrease``).
        bound_rounds: active-set rounds per LM step for the [0, 1] expression bounds (see the solver).
        contour_rounds: solves per stage; the jawline correspondences are re-chosen between solves (stops early
            when they no longer change).
        backend: ``"auto"`` (the NumPy kernel of :mod:`~facerender.fitting.landmark_np` for models on the CPU, the
            batched torch path otherwise), ``"numpy"`` or ``"torch"``. Both minimise the same energy with the same
            solver rules; the NumPy kernel avoids PyTorch's per-operation cost, which dominates a 68-point fit on a
            CPU (docs/fitting.md: 2-3x faster), and works in float64.
    """

    w_landmark: float = 1.0
    w_identity: float = 5.0e-7
    w_expression: float = 5.0e-6
    expression_sigma: float = 1.0
    huber: Optional[float] = 0.1
    sliding_contour: bool = True
    fit_identity: bool = True
    fit_expression: bool = True
    fit_focal: bool = False
    focal: Optional[float] = None
    focal_factor: float = 1.5
    rigid_iterations: int = 0
    max_iterations: int = 8
    contour_rounds: int = 1
    rtol: float = 3e-3
    bound_rounds: int = 3
    backend: str = "auto"

    def __post_init__(self):
        if self.backend not in ("auto", "numpy", "torch"):
            raise ValueError(f"backend must be 'auto', 'numpy' or 'torch', got {self.backend!r}")


@dataclass
class LandmarkFitResult:
    """Result of :func:`fit_landmarks` (batch-first tensors).

    Attributes:
        rotation: ``(B, 3)`` axis-angle head rotation in model space; translation ``(B, 3)`` in camera space (cm).
        identity ``(B, K_id)``, expression ``(B, K_exp)``.
        focal ``(B,)``; principal_point ``(B, 2)``.
        landmarks_2d: ``(B, 68, 2)`` projected model landmarks (with the final contour correspondences).
        targets: ``(B, 68, 2)`` the landmarks that were fitted; confidence ``(B, 68)``.
        energy_history: ``(T, B)`` energies over both stages; status: per item solver status (``"converged"``,
        ``"max_iterations"``, ...), or ``"implausible"`` when the solver stopped but the result fails the
        plausibility checks (see ``flags``).
        iterations: ``(B,)`` solver iterations (both stages).
        flags: per item, why a result cannot be trusted: identity coefficients at an RMS beyond
        :data:`MAX_IDENTITY_RMS` standard deviations, inner landmarks off by more than :data:`MAX_LANDMARK_ERROR` eye
        distances.
    """

    rotation: torch.Tensor
    translation: torch.Tensor
    identity: torch.Tensor
    expression: torch.Tensor
    focal: torch.Tensor
    principal_point: torch.Tensor
    landmarks_2d: torch.Tensor
    targets: torch.Tensor
    confidence: torch.Tensor
    energy_history: torch.Tensor
    status: List[str] = field(default_factory=list)
    iterations: Optional[torch.Tensor] = None
    flags: List[List[str]] = field(default_factory=list)

    @property
    def converged(self) -> List[bool]:
        """Per item: the solver converged AND the result is plausible (no ``flags``)."""
        return [s == "converged" and not (self.flags[b] if b < len(self.flags) else []) for b, s in
                enumerate(self.status)]

    @property
    def energy(self) -> torch.Tensor:
        return self.energy_history[-1]

    def params(self) -> Dict[str, torch.Tensor]:
        return {"rotation": self.rotation, "translation": self.translation, "identity": self.identity,
                "expression": self.expression, "focal": self.focal[:, None]}


def default_focal(image_size: Tuple[int, int], factor: float = 1.5) -> float:
    """``factor * max(H, W)``: about a 37 degree field of view across the longer side with the default factor."""
    return float(factor) * float(max(image_size))


def initial_pose(model: LinearFaceModel, targets: torch.Tensor, focal: torch.Tensor, pp: torch.Tensor,
                 identity: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Closed-form pose from the inner landmarks (the "gold standard" affine camera, as eos initialises).

    Solves ``x = A [X; 1]`` for a 2x4 affine camera by linear least squares over the stable inner points, takes the
    nearest scaled rotation (SVD) as ``s * (first two rows of F R)``, and converts the weak-perspective scale to a
    depth ``t_z = f / s``. Returns ``rotation (B, 3)`` axis-angle (model space) and ``translation (B, 3)``.
    """
    from morphable_models.rotation import matrix_to_axis_angle

    B = targets.shape[0]
    dt = targets.dtype
    key = ("rigid_template_rows", dt, str(targets.device), model.template.data_ptr())
    if key not in model.extra:
        ids = torch.as_tensor(model.landmarks["ibug68"].vertex_index[_RIGID_POINTS], device=targets.device)
        model.extra[key] = (ids, model.template[ids].to(dt))
    ids, X = model.extra[key]
    if identity is not None:
        V = model.num_vertices
        X = X + torch.einsum("bk,knc->bnc", identity, model.identity_basis.view(-1, V, 3)[:, ids].to(dt))
    else:
        X = X.expand(B, -1, -1)
    T = targets[:, _RIGID_POINTS]
    mX, mT = X.mean(1, keepdim=True), T.mean(1, keepdim=True)
    Xc, Tc = X - mX, T - mT  # centred: the affine translation drops out
    # least squares by the 3 x 3 normal equations (the model points are well spread, never degenerate): a tenth of
    # torch.linalg.lstsq's call overhead
    A = torch.linalg.solve(Xc.mT @ Xc, Xc.mT @ Tc).mT  # (B, 2, 3)
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    rows = U @ Vh  # (B, 2, 3) nearest orthonormal rows
    scale = S.mean(-1)  # pixels per cm
    # degenerate targets (all points equal, collinear ...): fall back to a frontal pose at a nominal depth
    bad = ~(torch.isfinite(rows).all(-1).all(-1) & torch.isfinite(scale) & (scale > 1e-6 * focal))
    if bool(bad.any()):
        eye2 = torch.eye(3, dtype=dt, device=rows.device)[:2] * torch.tensor([[1.0], [-1.0]], dtype=dt,
                                                                                device=rows.device)
        rows = torch.where(bad[:, None, None], eye2, rows)
        scale = torch.where(bad, focal / 60.0, scale)
    r3 = torch.cross(rows[:, 0], rows[:, 1], dim=-1)
    M = torch.cat([rows, r3[:, None]], 1)  # camera-from-model rotation = F R
    R = M * torch.tensor([1.0, -1.0, -1.0], dtype=dt, device=M.device).reshape(3, 1)
    # a mirrored solution (det -1) cannot occur: r3 = r1 x r2. Depth from the weak-perspective scale:
    tz = focal / scale
    # the centroid X_m must project to the target centroid: (M X_m + t) at depth ~ tz
    MX = (M @ mX.mT).squeeze(-1)  # (B, 3)
    z = tz
    txy = (mT[:, 0] - pp) * z[:, None] / focal[:, None] - MX[:, :2]
    t = torch.cat([txy, (z - MX[:, 2])[:, None]], 1)
    return matrix_to_axis_angle(R), t


def check_landmarks(points, image_size: Optional[Tuple[int, int]] = None, confidence=None, *,
                    name: str = "landmarks") -> None:
    """Refuse landmarks that cannot be fitted, before any work: NaN / inf, points that (nearly) coincide or lie on a
    line, most points far outside the image, confidences that are negative, NaN or all zero.

    Args:
        points: ``(B, L, 2)`` or ``(L, 2)`` pixels (array or tensor).
        image_size: ``(H, W)``; with it, more than half of the points lying over half the image size outside the
            image are refused (a face partly out of frame is fine).
        confidence: ``(B, L)`` / ``(L,)`` or None.
        name: how the message names the points (e.g. the file they came from).
    Raises:
        FittingError naming ``name``, the item and what was received.
    """
    pts = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64)
    if pts.ndim == 2:
        pts = pts[None]
    if pts.ndim != 3 or pts.shape[-1] != 2:
        raise ShapeError(f"{name}: must be (B, L, 2) or (L, 2), got {pts.shape}")
    for b, p in enumerate(pts):
        item = f"{name}" + (f" (item {b})" if len(pts) > 1 else "")
        finite = np.isfinite(p).all(1)
        if not finite.all():
            raise FittingError(f"{item}: {int((~finite).sum())} of {len(p)} points are NaN or inf (first: point "
                               f"{int(np.argmin(finite))})")
        span = p.max(0) - p.min(0)
        if max(span) < 2.0:
            raise FittingError(f"{item}: the {len(p)} points span {span[0]:.3g} x {span[1]:.3g} px (all at "
                               f"({p[0, 0]:.6g}, {p[0, 1]:.6g})?): nothing to fit")
        sv = np.linalg.svd(p - p.mean(0), compute_uv=False)
        if sv[1] < 0.02 * sv[0]:
            raise FittingError(f"{item}: the {len(p)} points lie on a line (spread {sv[0]:.3g} x {sv[1]:.3g}): not a "
                               f"face")
        if image_size is not None:
            H, W = float(image_size[0]), float(image_size[1])
            inside = ((p[:, 0] > -0.5 * W) & (p[:, 0] < 1.5 * W) & (p[:, 1] > -0.5 * H) & (p[:, 1] < 1.5 * H))
            if 2 * int(inside.sum()) < len(p):
                k = int(np.argmin(inside))
                raise FittingError(f"{item}: {int((~inside).sum())} of {len(p)} points lie far outside the "
                                   f"{int(W)}x{int(H)} image (point {k} at ({p[k, 0]:.6g}, {p[k, 1]:.6g})): wrong "
                                   f"image, or coordinates in another convention?")
    if confidence is not None:
        cf = np.asarray(confidence.detach().cpu() if isinstance(confidence, torch.Tensor) else confidence,
                        dtype=np.float64)
        fin = np.isfinite(cf)
        if not fin.all() or (cf[fin] < 0).any():
            rng = f"values in [{cf[fin].min():.3g}, {cf[fin].max():.3g}]" if fin.any() else "no finite value"
            raise FittingError(f"{name}: confidence must be finite and >= 0, got {rng}"
                               + (f" and {int((~fin).sum())} NaN/inf" if not fin.all() else ""))
        per = cf.reshape(-1, cf.shape[-1]).sum(-1)
        if (per <= 0).any():
            raise FittingError(f"{name}: confidence is 0 for all {cf.shape[-1]} points"
                               + (f" of item {int(np.argmin(per))}" if per.size > 1 else "") + ": nothing to fit")


def _fit_flags(model, targets: torch.Tensor, conf: torch.Tensor, uv: torch.Tensor, identity: torch.Tensor,
               identity_fitted: bool) -> List[List[str]]:
    """Per item, why the fit cannot be trusted (the limits :data:`MAX_IDENTITY_RMS`, :data:`MAX_LANDMARK_ERROR`)."""
    out: List[List[str]] = []
    t = targets.detach().double().cpu()
    u = uv.detach().double().cpu()
    w = (conf.detach().double().cpu()[:, 17:] > 0).double()
    iod = (t[:, 36] - t[:, 45]).norm(dim=-1).clamp_min(1e-9)
    err = (((u[:, 17:] - t[:, 17:]).norm(dim=-1) * w).sum(-1) / w.sum(-1).clamp_min(1)) / iod
    sd = None
    if identity_fitted and identity.numel():
        std = model.identity_std.detach().double().cpu().clamp_min(1e-12)
        sd = (identity.detach().double().cpu() / std).abs()
    for b in range(t.shape[0]):
        f = []
        if not bool(torch.isfinite(err[b])) or float(err[b]) > MAX_LANDMARK_ERROR:
            f.append(f"inner landmarks off by {float(err[b]):.2f} eye distances on average (limit "
                     f"{MAX_LANDMARK_ERROR}): the face model does not match these points")
        if sd is not None:
            k = int(sd[b].argmax())
            rms = float(sd[b].pow(2).mean().sqrt())
            if not rms <= MAX_IDENTITY_RMS:
                f.append(f"identity coefficients at an RMS of {rms:.1f} standard deviations (limit "
                         f"{MAX_IDENTITY_RMS}; coefficient {k} at {float(sd[b, k]):.1f}): an implausible face shape")
        out.append(f)
    return out


def _with_flags(res: "LandmarkFitResult", model, identity_fitted: bool) -> "LandmarkFitResult":
    res.flags = _fit_flags(model, res.targets, res.confidence, res.landmarks_2d, res.identity, identity_fitted)
    res.status = ["implausible" if fl and st in ("converged", "max_iterations") else st
                  for st, fl in zip(res.status, res.flags)]
    return res


def _check_camera_args(f: torch.Tensor, pp: torch.Tensor) -> None:
    if not bool(torch.isfinite(f).all()) or bool((f <= 0).any()):
        raise UsageError(f"focal must be a finite number of pixels > 0, got {f.tolist()}")
    if not bool(torch.isfinite(pp).all()):
        raise UsageError(f"principal_point must be finite pixels, got {pp.tolist()}")


def _check_targets(targets: torch.Tensor) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor):
        targets = torch.as_tensor(targets)
    if targets.ndim == 2:
        targets = targets[None]
    if targets.ndim != 3 or targets.shape[1:] != (68, 2):
        raise ShapeError(f"landmarks must be (B, 68, 2) or (68, 2), got {tuple(targets.shape)}")
    if not targets.is_floating_point():
        targets = targets.double()
    if not torch.isfinite(targets).all():
        raise FittingError("landmarks contain NaN or inf values")
    return targets


def fit_landmarks(
    model: LinearFaceModel,
    landmarks: torch.Tensor,
    image_size: Tuple[int, int],
    confidence: Optional[torch.Tensor] = None,
    config: Optional[LandmarkFitConfig] = None,
    *,
    focal: Optional[Union[float, torch.Tensor]] = None,
    principal_point: Optional[torch.Tensor] = None,
    init: Optional[Dict[str, torch.Tensor]] = None,
    fixed_identity: Optional[torch.Tensor] = None,
) -> LandmarkFitResult:
    """Fit pose, identity and expression to 68 landmarks per image.

    Args:
        model: a model with the ``ibug68`` landmark set (ICT-FaceKit). Its dtype is used for the fit.
        landmarks: ``(B, 68, 2)`` pixel positions in the package convention (centres at +0.5).
        image_size: ``(H, W)``.
        confidence: ``(B, 68)`` per-point confidence (default 1).
        config: :class:`LandmarkFitConfig`.
        focal: pixels (scalar or ``(B,)``); default ``config.focal`` or ``focal_factor * max(H, W)``.
        principal_point: ``(B, 2)``; default the image centre.
        init: warm start ``{rotation, translation, identity, expression}`` (skips the rigid initialisation).
        fixed_identity: ``(B, K_id)`` identity held fixed (e.g. from video bundling).
    Returns:
        :class:`LandmarkFitResult`. Numerical trouble is reported in ``status``; parameters are never NaN.
    """
    cfg = config or LandmarkFitConfig()
    dt, dev = model.dtype, model.device
    targets = _check_targets(landmarks).to(dtype=dt, device=dev)
    B = targets.shape[0]
    H, W = int(image_size[0]), int(image_size[1])
    if H <= 0 or W <= 0:
        raise ShapeError(f"image_size must be positive, got {image_size}")
    if confidence is None:
        conf = torch.ones(B, 68, dtype=dt, device=dev)
    else:
        conf = torch.as_tensor(confidence, dtype=dt, device=dev).reshape(-1, 68).expand(B, 68)
    check_landmarks(targets, (H, W), conf if confidence is not None else None)
    f = focal if focal is not None else (cfg.focal if cfg.focal is not None else default_focal((H, W), cfg.focal_factor))
    f = torch.as_tensor(f, dtype=dt, device=dev).reshape(-1).expand(B).clone()
    pp = (torch.as_tensor(principal_point, dtype=dt, device=dev).reshape(-1, 2).expand(B, 2)
          if principal_point is not None else torch.tensor([[W / 2.0, H / 2.0]], dtype=dt, device=dev).expand(B, 2))
    _check_camera_args(f, pp)
    identity_fitted = cfg.fit_identity and fixed_identity is None
    K_id, K_ex = model.num_identity, model.num_expression
    ident = (fixed_identity.to(dt) if fixed_identity is not None else
             (init["identity"].to(dt) if init is not None and "identity" in init else
              torch.zeros(B, K_id, dtype=dt, device=dev)))
    expr = init["expression"].to(dt) if init is not None and "expression" in init else torch.zeros(
        B, K_ex, dtype=dt, device=dev)
    backend = cfg.backend if cfg.backend != "auto" else ("numpy" if dev.type == "cpu" else "torch")
    if backend == "numpy":
        return _with_flags(_fit_numpy(model, cfg, targets, conf, f, pp, ident, expr, init, fixed_identity is not None),
                           model, identity_fitted)
    if init is not None and "rotation" in init:
        rot, trans = init["rotation"].to(dt), init["translation"].to(dt)
    else:
        rot, trans = initial_pose(model, targets, f, pp, ident if fixed_identity is not None else None)

    term = LandmarkTerm(model, targets, conf, cfg.w_landmark, cfg.sliding_contour, huber=cfg.huber)
    priors = [PriorTerm("identity", cfg.w_identity, model.identity_std.to(dt)),
              PriorTerm("expression", cfg.w_expression,
                        torch.full((K_ex,), cfg.expression_sigma, dtype=dt, device=dev))]
    histories, iters, status = [], torch.zeros(B, dtype=torch.long, device=dev), None
    values = {"rotation": rot, "translation": trans, "identity": ident, "expression": expr, "focal": f[:, None]}

    def run(blocks, iterations, term, rounds):
        nonlocal values, iters, status
        layout = ParameterLayout(blocks)
        fixed = {k: v for k, v in values.items() if k not in layout}
        problem = EnergyProblem(layout, [term] + priors, fixed, pp)
        lo, hi = model_bounds(layout, targets, model)
        damping = None
        for k in range(max(1, rounds)):
            x0 = layout.join(values)
            # contour correspondences held fixed during a solve (smooth energy), re-chosen between solves
            changed = term.freeze_contour(problem.kinematics(x0, False))
            if k > 0 and not changed:
                break
            res: SolverResult = solve(
                LeastSquaresProblem(normal_equations=problem.normal_equations, lower=lo,
                                    upper=hi),
                x0, GaussNewtonConfig(max_iterations=iterations, rtol=cfg.rtol, linear_solver="cholesky",
                                      check_rank=False, bound_rounds=cfg.bound_rounds,
                                      stop_on_model_decrease=True), damping=damping)
            damping = res.damping
            values = {**values, **layout.split(res.params)}
            histories.append(res.energy_history)
            iters = iters + res.iterations
            status = res.status_names()

    rigid = [Block("rotation", 3), Block("translation", 3)]
    if (init is None or "rotation" not in init) and cfg.rigid_iterations > 0:
        # rigid alignment on the inner points only (the jawline correspondences need a pose first)
        inner_conf = conf.clone()
        inner_conf[:, :17] = 0
        inner = LandmarkTerm(model, targets, inner_conf, cfg.w_landmark, sliding_contour=False, huber=cfg.huber)
        run(rigid, cfg.rigid_iterations, inner, 1)
    blocks = list(rigid)
    if cfg.fit_focal:
        blocks.append(Block("focal", 1, 1.0, float("inf")))
    if cfg.fit_identity and fixed_identity is None:
        blocks.append(Block("identity", K_id))
    if cfg.fit_expression:
        blocks.append(Block("expression", K_ex, 0.0, 1.0))
    run(blocks, cfg.max_iterations, term, cfg.contour_rounds)
    # final projected landmarks with the final (re-chosen) correspondences
    layout = ParameterLayout(blocks)
    problem = EnergyProblem(layout, [term], {k: v for k, v in values.items() if k not in layout}, pp)
    term.freeze_contour(None)
    term.project_landmarks(problem.kinematics(layout.join(values), False))
    return _with_flags(LandmarkFitResult(
        rotation=values["rotation"], translation=values["translation"], identity=values["identity"],
        expression=values["expression"], focal=values["focal"].reshape(-1), principal_point=pp,
        landmarks_2d=term.last_uv, targets=targets, confidence=conf,
        energy_history=torch.cat(histories, 0), status=status, iterations=iters,
    ), model, identity_fitted)


def _fit_numpy(model, cfg, targets, conf, f, pp, ident, expr, init, fixed_identity: bool) -> LandmarkFitResult:
    """:func:`fit_landmarks` through the NumPy kernel, item by item (see :mod:`.landmark_np`)."""
    from .landmark_np import fit_one
    from .solver_np import single_threaded_blas

    dt, dev = model.dtype, model.device
    B = targets.shape[0]

    def host(t):
        return t.detach().to("cpu", torch.float64).numpy()

    T, C, F, PP, ID, EX = (host(t) for t in (targets, conf, f, pp, ident.expand(B, -1), expr.expand(B, -1)))
    warm = init is not None and "rotation" in init
    if warm:
        RO, TR = host(init["rotation"].expand(B, 3)), host(init["translation"].expand(B, 3))
    out = {k: [] for k in ("rotation", "translation", "identity", "expression", "focal")}
    uvs, hists, iters, status = [], [], [], []
    with single_threaded_blas():  # once for the batch: the kernel's solves run inside it
        for b in range(B):
            values, uv, h, it, st = fit_one(model, cfg, T[b], C[b], float(F[b]), PP[b], ID[b], EX[b],
                                            RO[b] if warm else None, TR[b] if warm else None, fixed_identity)
            for k in out:
                out[k].append(values[k])
            uvs.append(uv)
            hists.append(np.concatenate([np.asarray(x) for x in h]))
            iters.append(it)
            status.append(st)
    n = max(len(h) for h in hists)
    hist = np.stack([np.pad(h, (0, n - len(h)), mode="edge") for h in hists], 1)  # finished items repeat theirs

    def tt(a, dtype=dt):
        return torch.as_tensor(np.asarray(a), dtype=dtype).to(dev)

    return LandmarkFitResult(
        rotation=tt(np.stack(out["rotation"])), translation=tt(np.stack(out["translation"])),
        identity=tt(np.stack(out["identity"])), expression=tt(np.stack(out["expression"])),
        focal=tt(np.concatenate(out["focal"])), principal_point=pp, landmarks_2d=tt(np.stack(uvs)),
        targets=targets, confidence=conf, energy_history=tt(hist), status=status,
        iterations=tt(iters, torch.long),
    )
