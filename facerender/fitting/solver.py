"""Face-agnostic batched nonlinear least squares: Gauss-Newton / Levenberg-Marquardt, and an Adam baseline.

The solver knows nothing about faces: residual functions in, parameters out. Shape letters: ``B`` batch items
(independent problems solved together, e.g. video frames), ``P`` parameters per item, ``N`` residuals per item.

Energy of one item (the same for every method)::

    E(x) = 0.5 * sum_g phi(||w_g * r_g(x)||)

with ``r`` the residuals, ``w`` the optional per-residual weights (they multiply the residuals, so a weight of 2
counts a squared residual 4 times), ``g`` groups of ``loss.group`` consecutive residuals (1: every residual alone)
and ``phi`` the robust loss (``phi(n) = n**2`` for the plain least-squares loss), see :class:`RobustLoss`.

A problem is given in one of three ways (:class:`LeastSquaresProblem`):

* ``residuals(x (B, P)) -> r (B, N)``: the Jacobian comes from autodiff (``torch.func.jvp`` or ``vjp`` under
  ``vmap``, :func:`jacobian_autodiff`);
* ``jacobian(x) -> (r (B, N), J (B, N, P))``: an analytic / structured Jacobian;
* ``normal_equations(x) -> (JtJ (B, P, P), Jtr (B, P), energy (B,))``: structured problems that assemble ``J^T J``
  without materialising ``J`` (the energy is ``0.5 * ||r||^2`` and its gradient ``Jtr``; weights and robust losses are
  then the caller's business).

Items must be independent: residuals of item ``b`` depend only on ``x[b]`` (the autodiff Jacobian relies on it).

Levenberg-Marquardt step, per item: ``(J^T W J + lambda * D) h = -J^T W r`` with ``W`` the IRLS weights of the robust
loss at the current point and ``D`` Marquardt's scaling ``diag(J^T W J)`` (clamped from below so that parameters the
residuals ignore stay put). ``lambda`` adapts per item (Nielsen's rule or the classic x10 / /10) from the gain ratio
``(E(x) - E(x + h)) / (model decrease)``; a step is accepted only when the energy decreases, so a step that produces a
NaN / inf energy is rejected and the damping grows. Box bounds use projected LM with an active set: parameters at a
bound whose gradient points outward are frozen for the step, the others take the reduced step, and the result is
clamped onto the box, so bounds hold exactly.

The solver does not differentiate through itself: ``x0`` is detached, and Gauss-Newton evaluates the user functions
under ``torch.no_grad()`` (forward-mode autodiff still works there).

Example::

    problem = LeastSquaresProblem(residuals=lambda x: x @ A.T - b)      # A (N, P), b (B, N)
    result = solve(problem, torch.zeros(B, P))
    result.params, result.status_names()
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import ShapeError

__all__ = [
    "SolverStatus",
    "RobustLoss",
    "LeastSquaresProblem",
    "GaussNewtonConfig",
    "AdamConfig",
    "SolverResult",
    "solve",
    "gauss_newton",
    "adam",
    "jacobian_autodiff",
    "evaluate_energy",
]

ResidualFn = Callable[[Tensor], Tensor]
JacobianFn = Callable[[Tensor], Tuple[Tensor, Tensor]]
NormalEquationsFn = Callable[[Tensor], Tuple[Tensor, Tensor, Tensor]]
EnergyFn = Callable[[Tensor], Tensor]


class SolverStatus(enum.IntEnum):
    """Why an item stopped (``SolverResult.status`` holds these codes)."""

    RUNNING = 0  #: internal: still iterating (never in a returned result)
    CONVERGED = 1  #: a relative-decrease, gradient or step tolerance was met
    MAX_ITERATIONS = 2  #: the iteration (or step) budget ran out first
    FAILED_NAN = 3  #: NaN / inf energy or derivatives at the start (params = projected x0) or at an accepted point
    SINGULAR = 4  #: the damped system could not be solved, even with more damping and least squares
    STALLED = 5  #: no decrease found although the damping reached ``max_damping``


_STATUS_NAMES = {s.value: s.name.lower() for s in SolverStatus}


# --------------------------------------------------------------------------------------------------------------
# configuration and problem


@dataclass(frozen=True)
class RobustLoss:
    """Robust loss ``phi`` of a group norm ``n = ||w_g * r_g||``; the energy is ``0.5 * sum_g phi(n_g)``.

    Attributes:
        kind: ``"l2"`` (``phi = n^2``), ``"huber"`` (``n^2`` for ``n <= c``, else ``2 c n - c^2``),
            ``"cauchy"`` (Lorentzian, ``c^2 log(1 + n^2 / c^2)``) or ``"l21"`` (``2 (sqrt(n^2 + c^2) - c)``: the
            smoothed l2,1 norm of Face2Face's colour term, ``0.5 * phi ~ n``).
        scale: ``c``; ``None`` picks 1.0 for huber / cauchy and 1e-3 for l21 (its smoothing epsilon).
        group: residuals per group (consecutive); ``3`` with ``"l21"`` gives per-pixel colour norms. ``N`` must be a
            multiple of it.

    The IRLS weight of a group is ``phi'(n) / (2 n)``: 1, ``min(1, c / n)``, ``1 / (1 + n^2 / c^2)`` and
    ``1 / sqrt(n^2 + c^2)`` respectively.
    """

    kind: str = "l2"
    scale: Optional[float] = None
    group: int = 1

    def __post_init__(self):
        if self.kind not in ("l2", "huber", "cauchy", "l21"):
            raise ValueError(f"RobustLoss.kind must be 'l2', 'huber', 'cauchy' or 'l21', got {self.kind!r}")
        if self.scale is not None and not (self.scale > 0 and math.isfinite(self.scale)):
            raise ValueError(f"RobustLoss.scale must be a positive finite number, got {self.scale!r}")
        if int(self.group) != self.group or self.group < 1:
            raise ValueError(f"RobustLoss.group must be a positive integer, got {self.group!r}")

    @property
    def c(self) -> float:
        if self.scale is not None:
            return float(self.scale)
        return 1e-3 if self.kind == "l21" else 1.0


@dataclass
class LeastSquaresProblem:
    """A batched least-squares problem. Give ``residuals``, ``jacobian`` or ``normal_equations`` (at least one).

    Attributes:
        residuals: ``x (B, P) -> r (B, N)``. Used for trial points when present, and with autodiff when no
            ``jacobian`` / ``normal_equations`` is given (must then be composable with ``torch.func``: no ``.item()``,
            no in-place writes into inputs). Needed by Adam unless ``normal_equations`` is given.
        jacobian: ``x (B, P) -> (r (B, N), J (B, N, P))`` analytic Jacobian.
        normal_equations: ``x (B, P) -> (JtJ (B, P, P), Jtr (B, P), energy (B,))`` with ``energy = 0.5 ||r||^2``.
            Incompatible with ``weights`` and a robust ``loss`` (apply them when assembling).
        energy: optional cheap ``x (B, P) -> (B,)`` energy for trial points of a ``normal_equations`` problem.
        weights: per-residual weights ``(N,)`` or ``(B, N)`` multiplying the residuals.
        loss: robust loss (default plain least squares).
        lower, upper: box bounds ``(P,)`` or ``(B, P)``, ``-inf`` / ``inf`` allowed.
    """

    residuals: Optional[ResidualFn] = None
    jacobian: Optional[JacobianFn] = None
    normal_equations: Optional[NormalEquationsFn] = None
    energy: Optional[EnergyFn] = None
    weights: Optional[Tensor] = None
    loss: RobustLoss = RobustLoss()
    lower: Optional[Tensor] = None
    upper: Optional[Tensor] = None


@dataclass(frozen=True)
class GaussNewtonConfig:
    """Settings of :func:`gauss_newton` (Levenberg-Marquardt).

    Attributes:
        max_iterations: linear solves per item at most (accepted + rejected steps).
        damping: ``"nielsen"`` (``lambda *= max(1/3, 1 - (2 rho - 1)^3)`` on success, ``*= nu, nu *= 2`` on
            failure) or ``"classic"`` (``/ 10`` on success, ``* 10`` on failure).
        initial_damping: ``lambda`` at the start (dimensionless: ``D`` is ``diag(J^T J)``); overridden per item by
            the ``damping`` argument of :func:`gauss_newton` for warm starts.
        min_damping, max_damping: ``lambda`` is kept above ``min_damping``; an item whose ``lambda`` exceeds
            ``max_damping`` without a decrease stops as ``STALLED``.
        accept_ratio: a step is accepted when the energy decreases and the gain ratio is ``>= accept_ratio``.
        rtol: stop an item when an accepted step decreases the energy by less than ``rtol * E_prev``, or when a
            rejected step's model decrease was below ``rtol * E`` (round-off level near the optimum).
        stop_on_model_decrease: also stop when the Gauss-Newton model promises less than ``rtol * E`` for the next
            step, without taking it (saves the trial linearisation that would only confirm convergence; the
            parameters then stop short of that last step, by about ``sqrt(rtol)`` relative, so it suits a loose
            ``rtol``). Cholesky steps only, and not steps cut short by the bounds.
        gtol: stop when the infinity norm of the projected gradient is ``<= gtol`` (absolute).
        xtol: stop when a step is shorter than ``xtol * (||x|| + xtol)``.
        linear_solver: ``"cholesky"`` (normal equations, ``cholesky_ex``; on failure a growing diagonal jitter,
            then ``lstsq``),
            ``"pcg"`` (matrix-free Jacobi-preconditioned CG with ``pcg_iterations`` steps, using only ``J^T (J v)``)
            or ``"auto"`` (PCG when ``P > auto_pcg_parameters``; on a 2-core CPU with N = 50k the two cost the
            same per iteration near P = 200-400, see docs/fitting.md).
        pcg_iterations: inner CG steps per LM iteration (Face2Face uses 4).
        auto_pcg_parameters: parameter count above which ``"auto"`` picks PCG.
        cholesky_retries: factorisations retried with a diagonal jitter of ``1e-7, 1e-5, 1e-3, ...`` times the
            largest diagonal entry before falling back to ``lstsq``.
        min_diagonal: ``D = max(diag(J^T J), min_diagonal * max(diag(J^T J)))``.
        autodiff: Jacobian of a ``residuals``-only problem: ``"forward"`` (P Jacobian-vector products) or
            ``"reverse"`` (N vector-Jacobian products), or ``"auto"`` (forward unless ``N < P``).
        jacobian_chunk_size: products per ``vmap`` call (memory cap for autodiff; ``None``: all at once).
        linearize_at_trial: evaluate the Jacobian together with the residuals at every trial point (saves a
            residual evaluation per accepted step, wastes a Jacobian per rejected one). ``None``: yes for
            ``jacobian`` / ``normal_equations`` problems (unless ``energy`` is given), no for autodiff.
        check_rank: flag items whose final ``J^T J`` is numerically rank-deficient (``SolverResult.rank_deficient``).
        bound_rounds: with bounds and Cholesky, rounds of active-set expansion per step (parameters whose step would
            leave the box are fixed at the bound and the rest re-solved); 1 = plain projection.
    """

    max_iterations: int = 20
    damping: str = "nielsen"
    initial_damping: float = 1e-5
    min_damping: float = 1e-12
    max_damping: float = 1e12
    accept_ratio: float = 0.0
    rtol: float = 1e-6
    gtol: float = 1e-10
    xtol: float = 1e-8
    linear_solver: str = "auto"
    pcg_iterations: int = 4
    auto_pcg_parameters: int = 512
    cholesky_retries: int = 3
    min_diagonal: float = 1e-6
    autodiff: str = "auto"
    jacobian_chunk_size: Optional[int] = None
    linearize_at_trial: Optional[bool] = None
    check_rank: bool = True
    bound_rounds: int = 4
    stop_on_model_decrease: bool = False

    def __post_init__(self):
        if int(self.max_iterations) != self.max_iterations or self.max_iterations < 0:
            raise ValueError(f"max_iterations must be a non-negative integer, got {self.max_iterations!r}")
        if self.damping not in ("nielsen", "classic"):
            raise ValueError(f"damping must be 'nielsen' or 'classic', got {self.damping!r}")
        if self.linear_solver not in ("auto", "cholesky", "pcg"):
            raise ValueError(f"linear_solver must be 'auto', 'cholesky' or 'pcg', got {self.linear_solver!r}")
        if self.autodiff not in ("auto", "forward", "reverse"):
            raise ValueError(f"autodiff must be 'auto', 'forward' or 'reverse', got {self.autodiff!r}")
        if not (0 < self.min_damping <= self.initial_damping <= self.max_damping):
            raise ValueError("need 0 < min_damping <= initial_damping <= max_damping, got "
                             f"{self.min_damping}, {self.initial_damping}, {self.max_damping}")
        for name in ("rtol", "gtol", "xtol", "min_diagonal"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.pcg_iterations < 1 or self.cholesky_retries < 0:
            raise ValueError(f"need pcg_iterations >= 1 and cholesky_retries >= 0, got {self.pcg_iterations}, "
                             f"{self.cholesky_retries}")
        if self.jacobian_chunk_size is not None and self.jacobian_chunk_size < 1:
            raise ValueError(f"jacobian_chunk_size must be None or >= 1, got {self.jacobian_chunk_size}")


@dataclass(frozen=True)
class AdamConfig:
    """Settings of the :func:`adam` baseline (same energy, bounds by projection).

    Attributes:
        lr: step size. steps: number of steps. betas, eps: Adam's constants.
        gtol: stop an item when the projected-gradient infinity norm is ``<= gtol`` (0: run all steps).
    """

    lr: float = 1e-2
    steps: int = 1000
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    gtol: float = 0.0

    def __post_init__(self):
        if not self.lr > 0 or int(self.steps) != self.steps or self.steps < 0:
            raise ValueError(f"need lr > 0 and an integer steps >= 0, got lr={self.lr!r}, steps={self.steps!r}")
        if not (0 <= self.betas[0] < 1 and 0 <= self.betas[1] < 1):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas!r}")


@dataclass
class SolverResult:
    """Outcome of a solve, per batch item.

    Attributes:
        params: ``(B, P)`` solution (never NaN: failed items keep their projected initial parameters; Adam returns
            the best iterate).
        energy: ``(B,)`` final energy (NaN only for items that failed at the start).
        initial_energy: ``(B,)`` energy at the (projected) initial parameters.
        status: ``(B,)`` int64 :class:`SolverStatus` codes; :meth:`status_names` gives strings.
        iterations: ``(B,)`` int64 LM iterations (linear solves) or Adam steps each item took.
        damping: ``(B,)`` final ``lambda`` (pass it back for a warm start); ``None`` for Adam.
        energy_history: ``(T + 1, B)`` energy after each iteration (row 0: initial); finished items repeat theirs.
        gradient_norm: ``(B,)`` infinity norm of the projected gradient at ``params``.
        rank_deficient: ``(B,)`` bool, ``J^T W J`` singular to working precision over the free parameters at the
            solution (a parameter the residuals ignore, or Jacobi-scaled condition number beyond ~``1 / (100 eps)``):
            the solution is then not unique in some direction.
        method: ``"gauss_newton"`` or ``"adam"``.
        linear_solver: ``"cholesky"``, ``"pcg"`` or ``""`` (Adam).
    """

    params: Tensor
    energy: Tensor
    initial_energy: Tensor
    status: Tensor
    iterations: Tensor
    damping: Optional[Tensor]
    energy_history: Tensor
    gradient_norm: Tensor
    rank_deficient: Tensor
    method: str
    linear_solver: str = ""

    def status_names(self) -> List[str]:
        """Per-item status as strings (``"converged"``, ``"max_iterations"``, ``"failed_nan"``, ...)."""
        return [_STATUS_NAMES[int(s)] for s in self.status.tolist()]

    @property
    def converged(self) -> Tensor:
        """``(B,)`` bool, ``status == CONVERGED``."""
        return self.status == int(SolverStatus.CONVERGED)


# --------------------------------------------------------------------------------------------------------------
# Jacobians and energies


def jacobian_autodiff(residuals: ResidualFn, x: Tensor, mode: str = "forward",
                      chunk_size: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Residuals and their Jacobian by autodiff, using that batch items are independent.

    ``"forward"``: one Jacobian-vector product per parameter ``p``, with the tangent ``e_p`` shared by all items
    (``vmap`` of ``torch.func.jvp`` over the ``P`` basis vectors; each call runs the batched function once), i.e. the
    cost of ``P`` batched forward passes. ``"reverse"``: one vector-Jacobian product per residual index ``n`` with the
    cotangent ``e_n`` for every item (``vmap`` of ``torch.func.vjp``), i.e. ``N`` batched backward passes. This is
    ``B`` times cheaper than ``jacfwd`` / ``jacrev`` of the whole batched function (which would build the mostly-zero
    ``(B, N, B, P)`` Jacobian) and cheaper than ``vmap(jacfwd(f_single))``; see docs/fitting.md for timings.

    Args:
        residuals: ``x (B, P) -> r (B, N)``, composable with ``torch.func``.
        x: ``(B, P)``.
        mode: ``"forward"`` or ``"reverse"``.
        chunk_size: products per ``vmap`` call (``None``: all at once; smaller saves memory).
    Returns:
        ``r (B, N)`` and ``J (B, N, P)``.
    """
    if x.ndim != 2:
        raise ShapeError(f"x must be (B, P), got shape {tuple(x.shape)}")
    B, P = x.shape

    def checked(r):
        if not isinstance(r, Tensor) or r.ndim != 2 or r.shape[0] != B:
            got = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
            raise ShapeError(f"residuals must return (B, N) = ({B}, N), got {got}")
        return r

    if mode == "forward":
        basis = torch.eye(P, dtype=x.dtype, device=x.device)

        def jvp_p(t):
            return torch.func.jvp(lambda v: checked(residuals(v)), (x,), (t.expand(B, P),))

        fn = torch.func.vmap(jvp_p, out_dims=(None, 0))
        if chunk_size is None or chunk_size >= P:
            r, jt = fn(basis)
        else:
            parts = [fn(c) for c in basis.split(chunk_size)]
            r, jt = parts[0][0], torch.cat([p[1] for p in parts])
        return r, jt.permute(1, 2, 0)  # (P, B, N) -> (B, N, P)
    if mode == "reverse":
        r, vjp_fn = torch.func.vjp(lambda v: checked(residuals(v)), x)
        N = r.shape[-1]
        cot = torch.eye(N, dtype=r.dtype, device=r.device).unsqueeze(1)

        def vjp_n(c):
            return vjp_fn(c.expand(B, N))[0]

        fn = torch.func.vmap(vjp_n)
        if chunk_size is None or chunk_size >= N:
            jt = fn(cot)
        else:
            jt = torch.cat([fn(c) for c in cot.split(chunk_size)])
        return r, jt.permute(1, 0, 2)  # (N, B, P) -> (B, N, P)
    raise ValueError(f"mode must be 'forward' or 'reverse', got {mode!r}")


def _robust(rw: Tensor, loss: RobustLoss, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """Energy ``(B,)`` of weighted residuals ``rw (B, N)`` and, if asked, the sqrt IRLS weights ``(B, N)``.

    Differentiable (Adam uses autograd through it) and free of inf * 0 in unselected branches.
    """
    if loss.kind == "l2":
        return 0.5 * (rw * rw).sum(-1), None
    B, N = rw.shape
    k = loss.group
    sq = rw * rw
    n2 = sq if k == 1 else sq.view(B, N // k, k).sum(-1)
    c = loss.c
    c2 = c * c
    if loss.kind == "huber":
        n = torch.sqrt(torch.clamp(n2, min=c2))  # only used where n > c
        inlier = n2 <= c2
        phi = torch.where(inlier, n2, 2 * c * n - c2)
        omega = (c / n) if need_weights else None  # == 1 on inliers (n == c there)
    elif loss.kind == "cauchy":
        phi = c2 * torch.log1p(n2 / c2)
        omega = 1.0 / (1.0 + n2 / c2) if need_weights else None
    else:  # l21
        s = torch.sqrt(n2 + c2)
        phi = 2.0 * (s - c)
        omega = 1.0 / s if need_weights else None
    E = 0.5 * phi.sum(-1)
    if omega is None:
        return E, None
    sw = torch.sqrt(omega)
    if k > 1:
        sw = sw.unsqueeze(-1).expand(B, N // k, k).reshape(B, N)
    return E, sw


def _float_check(name: str, t: Tensor, shape: Tuple[int, ...], x: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise ShapeError(f"{name} must be a tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ShapeError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.dtype != x.dtype or t.device != x.device:
        raise ShapeError(f"{name} must have the dtype and device of x ({x.dtype}, {x.device}), "
                         f"got {t.dtype} on {t.device}")


class _Lin:
    """A linearisation at x: energy ``E``, gradient ``g``, Marquardt scale ``D``, ``diag(J^T W J)``, and either the
    Gauss-Newton matrix ``H = J^T W J`` or the weighted Jacobian ``J = sqrt(W) J``. ``chk`` is finite iff E, g and
    diag are (one reduction instead of three ``isfinite``)."""

    __slots__ = ("E", "g", "D", "diag", "H", "J", "chk")

    def __init__(self, E, g, diag, H, J, min_diagonal):
        self.E, self.g, self.diag, self.H, self.J = E, g, diag, H, J
        self.D = torch.maximum(diag, diag.amax(-1, keepdim=True) * min_diagonal)
        self.chk = E + g.sum(-1) + diag.sum(-1)

    def decrease(self, h: Tensor) -> Tensor:
        """Decrease of the Gauss-Newton model for step ``h``: ``-(g.h + 0.5 h^T J^T W J h)`` per item."""
        if self.H is not None:
            Hh = torch.matmul(self.H, h.unsqueeze(-1)).squeeze(-1)
            return -(h * (self.g + 0.5 * Hh)).sum(-1)
        Jh = _jvp(self.J, h)
        return -((self.g * h).sum(-1) + 0.5 * (Jh * Jh).sum(-1))


def _merge(mask: Tensor, new: _Lin, old: _Lin) -> _Lin:
    """Per item: ``new`` where ``mask (B,)`` else ``old``."""
    out = _Lin.__new__(_Lin)
    m1 = mask.unsqueeze(-1)
    out.E = torch.where(mask, new.E, old.E)
    out.chk = torch.where(mask, new.chk, old.chk)
    out.g = torch.where(m1, new.g, old.g)
    out.D = torch.where(m1, new.D, old.D)
    out.diag = torch.where(m1, new.diag, old.diag)
    m2 = mask.view(-1, 1, 1)
    out.H = torch.where(m2, new.H, old.H) if new.H is not None else None
    out.J = torch.where(m2, new.J, old.J) if new.J is not None else None
    return out


def _trivial_like(lin: _Lin) -> _Lin:
    """A harmless linearisation (zero gradient, identity matrix) of the same shapes."""
    out = _Lin.__new__(_Lin)
    out.E = torch.zeros_like(lin.E)
    out.chk = torch.zeros_like(lin.chk)
    out.g = torch.zeros_like(lin.g)
    out.D = torch.ones_like(lin.D)
    out.diag = torch.ones_like(lin.diag)
    if lin.H is not None:
        eye = torch.eye(lin.H.shape[-1], dtype=lin.H.dtype, device=lin.H.device)
        out.H = eye.expand_as(lin.H)
    else:
        out.H = None
    out.J = torch.zeros_like(lin.J) if lin.J is not None else None
    return out


def _jvp(J: Tensor, v: Tensor) -> Tensor:
    """``J v`` for ``J (B, N, P)``, ``v (B, P)`` -> ``(B, N)``. Written as ``v^T J^T``: on CPU the batched
    matrix-vector product takes twice as long as this form for B = 16, N = 50k, P = 200."""
    return torch.matmul(v.unsqueeze(1), J.transpose(1, 2)).squeeze(1)


def _column_sq_norms(J: Tensor, block: int = 1 << 19) -> Tensor:
    """``(J * J).sum(1)`` for ``J (B, N, P)``, in row blocks of about ``block`` elements: a cache-sized temporary
    instead of one of J's size (8x faster on CPU for N = 50k, P = 200)."""
    B, N, P = J.shape
    rows = max(1, block // max(1, B * P))
    if N <= rows:
        return (J * J).sum(1)
    out = None
    for c in J.split(rows, dim=1):
        s = (c * c).sum(1)
        out = s if out is None else out + s
    return out


class _Evaluator:
    """Calls the user's functions, applies weights and robust loss, validates shapes on the first call."""

    def __init__(self, problem: LeastSquaresProblem, x0: Tensor, *, keep_jacobian: bool = False,
                 autodiff: str = "auto", chunk_size: Optional[int] = None, min_diagonal: float = 1e-6):
        p = problem
        if p.residuals is None and p.jacobian is None and p.normal_equations is None:
            raise ValueError("the problem needs residuals, jacobian or normal_equations; all three are None")
        for name in ("residuals", "jacobian", "normal_equations", "energy"):
            f = getattr(p, name)
            if f is not None and not callable(f):
                raise ValueError(f"problem.{name} must be callable, got {type(f).__name__}")
        if not isinstance(p.loss, RobustLoss):
            raise ValueError(f"problem.loss must be a RobustLoss, got {type(p.loss).__name__}")
        self.use_ne = p.normal_equations is not None and p.jacobian is None
        if self.use_ne:
            if p.weights is not None or p.loss.kind != "l2":
                raise ValueError("weights and robust losses need residuals: a normal_equations problem must apply "
                                 f"them itself (got weights={'set' if p.weights is not None else None}, "
                                 f"loss={p.loss.kind!r})")
        self.p = p
        self.B, self.P = x0.shape
        self.x0 = x0
        self.keep_jacobian = keep_jacobian
        self.autodiff = autodiff
        self.chunk_size = chunk_size
        self.min_diagonal = min_diagonal
        self.loss = p.loss
        self.l2 = p.loss.kind == "l2"
        self.w = None
        self.N: Optional[int] = None
        self._checked_r = self._checked_J = self._checked_ne = self._checked_E = False

    # ---- validation of user outputs (first call only)
    def _check_r(self, r: Tensor) -> None:
        x = self.x0
        if not isinstance(r, Tensor) or r.ndim != 2 or r.shape[0] != self.B:
            got = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
            raise ShapeError(f"residuals must return (B, N) = ({self.B}, N), got {got}")
        _float_check("residuals", r, tuple(r.shape), x)
        N = r.shape[1]
        if self.N is not None and N != self.N:
            raise ShapeError(f"residuals returned N = {N}, an earlier call returned N = {self.N}")
        self.N = N
        if N % self.loss.group:
            raise ShapeError(f"N = {N} residuals is not a multiple of the loss group size {self.loss.group}")
        w = self.p.weights
        if w is not None:
            if not isinstance(w, Tensor) or w.dtype != x.dtype or w.device != x.device:
                raise ShapeError(f"weights must be a tensor with the dtype and device of x ({x.dtype}, {x.device}), "
                                 f"got {getattr(w, 'dtype', type(w).__name__)}")
            if w.shape not in ((N,), (1, N), (self.B, N)):
                raise ShapeError(f"weights must be (N,), (1, N) or (B, N) with B={self.B}, N={N}, "
                                 f"got {tuple(w.shape)}")
            self.w = w if w.ndim == 2 else w.unsqueeze(0)
        self._checked_r = True

    def _residuals(self, x: Tensor) -> Tensor:
        r = self.p.residuals(x)
        if not self._checked_r:
            self._check_r(r)
        return r

    # ---- energies
    def energy(self, x: Tensor) -> Tensor:
        """``(B,)`` energy at x (no derivatives)."""
        p = self.p
        if p.energy is not None and self.use_ne:
            E = p.energy(x)
            if not self._checked_E:
                _float_check("energy", E, (self.B,), self.x0)
                self._checked_E = True
            return E
        if p.residuals is not None:
            r = self._residuals(x)
        elif p.jacobian is not None:
            r = self._jacobian(x)[0]
        else:
            return self._normal_equations(x)[2]
        rw = r if self.w is None else r * self.w
        return _robust(rw, self.loss, False)[0]

    def energy_and_gradient(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Energy and its gradient by autograd (Adam). ``normal_equations`` problems return their ``Jtr``."""
        if self.use_ne:
            _, g, E = self._normal_equations(x)
            return E, g
        if self.p.residuals is None:  # jacobian only: gradient J^T W r from it
            lin = self.linearize(x, need_H=False)
            return lin.E, lin.g
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            r = self._residuals(xg)
            rw = r if self.w is None else r * self.w
            E = _robust(rw, self.loss, False)[0]
            (g,) = torch.autograd.grad(E.sum(), xg)
        return E.detach(), g

    # ---- derivatives
    def _jacobian(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        if self.p.jacobian is not None:
            out = self.p.jacobian(x)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ShapeError(f"jacobian must return a tuple (r, J), got {type(out).__name__}")
            r, J = out
        else:
            mode = self.autodiff
            if mode == "auto":
                if self.N is None:  # learn N once (one residual evaluation) to pick the cheaper direction
                    self._residuals(x)
                mode = "reverse" if self.N < self.P else "forward"
                self.autodiff = mode
            r, J = jacobian_autodiff(self.p.residuals, x, mode, self.chunk_size)
        if not self._checked_J:
            if not self._checked_r:
                self._check_r(r)
            _float_check("J", J, (self.B, self.N, self.P), self.x0)
            self._checked_J = True
        return r, J

    def _normal_equations(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        out = self.p.normal_equations(x)
        if not (isinstance(out, tuple) and len(out) == 3):
            raise ShapeError(f"normal_equations must return a tuple (JtJ, Jtr, energy), got {type(out).__name__}")
        if not self._checked_ne:
            H, g, E = out
            _float_check("JtJ", H, (self.B, self.P, self.P), self.x0)
            _float_check("Jtr", g, (self.B, self.P), self.x0)
            _float_check("energy", E, (self.B,), self.x0)
            self._checked_ne = True
        return out

    def linearize(self, x: Tensor, need_H: bool = True) -> _Lin:
        """Energy, gradient and Gauss-Newton matrix (``H``) or weighted Jacobian (``J``, when keep_jacobian)."""
        if self.use_ne:
            H, g, E = self._normal_equations(x)
            diag = H.diagonal(dim1=-2, dim2=-1)
            J = None
        else:
            r, J = self._jacobian(x)
            rw, Jw = r, J
            if self.w is not None:
                rw = r * self.w
                Jw = J * self.w.unsqueeze(-1)
            E, sw = _robust(rw, self.loss, True)
            if sw is not None:
                rw = rw * sw
                Jw = Jw * sw.unsqueeze(-1)
            g = torch.matmul(rw.unsqueeze(1), Jw).squeeze(1)
            if self.keep_jacobian or not need_H:
                H = None
                diag = _column_sq_norms(Jw)
                J = Jw
            else:
                H = torch.matmul(Jw.transpose(1, 2), Jw)
                diag = H.diagonal(dim1=-2, dim2=-1)
                J = None
        return _Lin(E, g, diag, H, J, self.min_diagonal)


def evaluate_energy(problem: LeastSquaresProblem, x: Tensor) -> Tensor:
    """The energy ``0.5 * sum_g phi(||w_g r_g||)`` of ``problem`` at ``x (B, P)``, shape ``(B,)``."""
    x = _check_x(x)
    with torch.no_grad():
        return _Evaluator(problem, x).energy(x)


# --------------------------------------------------------------------------------------------------------------
# helpers of the Gauss-Newton loop


def _check_x(x0: Tensor) -> Tensor:
    if not isinstance(x0, Tensor):
        raise ShapeError(f"x0 must be a tensor (B, P), got {type(x0).__name__}")
    if x0.ndim != 2 or x0.shape[0] < 1 or x0.shape[1] < 1:
        raise ShapeError(f"x0 must have shape (B, P) with B, P >= 1, got {tuple(x0.shape)}")
    if x0.dtype not in (torch.float32, torch.float64):
        raise ShapeError(f"x0 must be float32 or float64 (batched Cholesky needs them), got {x0.dtype}")
    if not bool(torch.isfinite(x0).all()):
        bad = (~torch.isfinite(x0)).any(-1).nonzero().flatten().tolist()
        raise ShapeError(f"x0 holds NaN/inf values (batch items {bad[:10]})")
    return x0.detach()


def _bounds(problem: LeastSquaresProblem, x0: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Bounds broadcast to ``(B, P)``, or ``(None, None)`` when there are none (all infinite)."""
    B, P = x0.shape
    out = []
    for name in ("lower", "upper"):
        t = getattr(problem, name)
        if t is None:
            out.append(None)
            continue
        if not isinstance(t, Tensor):
            t = torch.as_tensor(t, dtype=x0.dtype, device=x0.device)
        if t.shape not in ((P,), (1, P), (B, P)):
            raise ShapeError(f"{name} bounds must be (P,), (1, P) or (B, P) with B={B}, P={P}, got {tuple(t.shape)}")
        if t.dtype != x0.dtype or t.device != x0.device:
            raise ShapeError(f"{name} bounds must have the dtype and device of x0 ({x0.dtype}, {x0.device}), "
                             f"got {t.dtype} on {t.device}")
        if torch.isnan(t).any():
            raise ShapeError(f"{name} bounds hold NaN")
        out.append(t.expand(B, P))
    lo, hi = out
    if lo is not None and hi is not None and bool((lo > hi).any()):
        idx = (lo > hi).nonzero()[0].tolist()
        raise ValueError(f"lower > upper at (item, parameter) {tuple(idx)}: {lo[tuple(idx)].item()} > "
                         f"{hi[tuple(idx)].item()}")
    if lo is not None and not bool(torch.isfinite(lo).any()):
        lo = None
    if hi is not None and not bool(torch.isfinite(hi).any()):
        hi = None
    if lo is None and hi is None:
        return None, None
    if lo is None:
        lo = torch.full_like(hi, -math.inf)
    if hi is None:
        hi = torch.full_like(lo, math.inf)
    return lo, hi


def _frozen(x: Tensor, g: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Parameters at a bound whose gradient points outward (``-g`` leaves the box)."""
    return ((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0))


def _damped(H: Tensor, D: Tensor, lam: Tensor, keep: Optional[Tensor], frozen: Optional[Tensor]) -> Tensor:
    A = H.clone()
    A.diagonal(dim1=-2, dim2=-1).add_(lam.unsqueeze(-1) * D)
    if keep is not None:
        A.mul_(keep.unsqueeze(-1) * keep.unsqueeze(-2))
        A.diagonal(dim1=-2, dim2=-1).add_(frozen.to(A.dtype))
    return A


def _chol_upper(A: Tensor) -> Tuple[Tensor, Tensor]:
    """``A = U^T U`` for ``A (B, n, n)``: ``(U, info)``. The upper factor of a row-major matrix is LAPACK's lower
    one without a transpose: 20-25 % faster than the lower factor for n = 100-160 on this CPU."""
    return torch.linalg.cholesky_ex(A, upper=True)


def _cho_solve(U: Tensor, rhs: Tensor) -> Tensor:
    """``(U^T U)^-1 rhs`` for ``U (B, P, P)`` from :func:`_chol_upper`, ``rhs (B, P)`` (two triangular solves: faster
    on CPU than ``cholesky_solve``, which copies its inputs)."""
    y = torch.linalg.solve_triangular(U.mT, rhs.unsqueeze(-1), upper=False)
    return torch.linalg.solve_triangular(U, y, upper=True).squeeze(-1)


def _solve_cholesky(lin: _Lin, lam: Tensor, rhs: Tensor, keep: Optional[Tensor], frozen: Optional[Tensor],
                    retries: int) -> Tuple[Tensor, Optional[Tensor]]:
    """``(H + lam D) h = rhs`` per item by Cholesky. Returns h and a mask of items that could not be solved (or None).

    Items whose factorisation fails (a user matrix that is indefinite or NaN) get a growing diagonal jitter
    ``1e-7, 1e-5, 1e-3 ... x max|diag|`` (``retries`` times), then least squares; their damping is left alone.
    """
    A = _damped(lin.H, lin.D, lam, keep, frozen)
    U, info = _chol_upper(A)
    h = _cho_solve(U, rhs)
    if not bool(info.any()):
        return h, None
    idx = (info != 0).nonzero().flatten()
    A_b, rhs_b = A[idx], rhs[idx]
    A_b = torch.where(torch.isfinite(A_b), A_b, torch.zeros_like(A_b))
    scale = A_b.diagonal(dim1=-2, dim2=-1).abs().amax(-1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    h_b = torch.zeros_like(rhs_b)
    todo = torch.ones_like(idx, dtype=torch.bool)
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    for k in range(retries):
        jitter = (1e-7 * 100.0 ** k) * scale
        U_b, info_b = _chol_upper(A_b + jitter.view(-1, 1, 1) * eye)
        fixed = todo & (info_b == 0)
        h_b = torch.where(fixed.unsqueeze(-1), _cho_solve(U_b, rhs_b), h_b)
        todo = todo & ~fixed
        if not bool(todo.any()):
            break
    if bool(todo.any()):
        sol = torch.linalg.lstsq(A_b, rhs_b.unsqueeze(-1)).solution.squeeze(-1)
        h_b = torch.where(todo.unsqueeze(-1), sol, h_b)
    finite = torch.isfinite(h_b).all(-1)
    h_b = torch.where(finite.unsqueeze(-1), h_b, torch.zeros_like(h_b))
    h = h.index_copy(0, idx, h_b)
    singular = torch.zeros_like(info, dtype=torch.bool).index_copy(0, idx, ~finite)
    return h, singular


def _solve_cholesky_bounded(lin: _Lin, lam: Tensor, rhs: Tensor, frozen: Tensor, x: Tensor, lo: Tensor, hi: Tensor,
                            retries: int, rounds: int) -> Tuple[Tensor, Optional[Tensor]]:
    """The damped step with box bounds by active-set expansion: solve on the free parameters; parameters whose step
    would leave the box are fixed AT their bound (their step becomes ``bound - x``) and the others are re-solved with
    the right-hand side corrected for the fixed steps; at most ``rounds`` rounds (then the caller's projection
    clamps what is left). Without this, a clamped full step is often a poor descent direction and LM only makes
    progress by growing the damping (many rejected steps)."""
    fixed = frozen.clone()
    h_fix = torch.zeros_like(rhs)
    A_full = lin.H.clone()
    A_full.diagonal(dim1=-2, dim2=-1).add_(lam.unsqueeze(-1) * lin.D)
    h, singular = rhs, None
    for r in range(max(1, rounds)):
        keep = (~fixed).to(rhs.dtype)
        rhs_r = rhs if r == 0 else (rhs - (A_full @ h_fix.unsqueeze(-1)).squeeze(-1)) * keep
        h_free, singular = _solve_cholesky(lin, lam, rhs_r, keep, fixed, retries)
        h = h_free * keep + h_fix
        xf = x + h
        viol = ~fixed & ((xf < lo) | (xf > hi))
        if r == rounds - 1 or not bool(viol.any()):
            break
        h_fix = torch.where(viol, torch.maximum(torch.minimum(xf, hi), lo) - x, h_fix)
        fixed = fixed | viol
    return h, singular


def _bound_split(lo: Tensor, hi: Tensor) -> Optional[Tuple[int, int]]:
    """``(a, b)`` when the bounded parameters are the contiguous range ``[a, b)`` and a Schur-complement step pays
    (a large unbounded block and a smaller bounded one, e.g. pose + identity vs expression weights), else None."""
    has = (torch.isfinite(lo) | torch.isfinite(hi)).any(0)
    idx = has.nonzero().flatten()
    P, ne = has.numel(), int(idx.numel())
    if ne == 0 or P - ne < 16 or ne > 0.75 * P:
        return None
    a, b = int(idx[0]), int(idx[-1]) + 1
    return (a, b) if b - a == ne else None


def _solve_schur_bounded(lin: _Lin, lam: Tensor, rhs: Tensor, frozen: Tensor, x: Tensor, lo: Tensor, hi: Tensor,
                         rounds: int, split: Tuple[int, int]) -> Optional[Tensor]:
    """:func:`_solve_cholesky_bounded` for problems whose bounds sit on one range ``e = [a, b)`` of the parameters.

    The unbounded rest ``u`` is eliminated once per step (Cholesky of ``A_uu``, Schur complement
    ``S = A_ee - A_eu A_uu^-1 A_ue``); the active-set rounds then only refactor ``S`` restricted to the free bounded
    parameters (53 x 53 instead of 159 x 159 for a landmark fit: about 15 us instead of 100 us per round on this
    CPU). The same step as the dense rounds up to round-off. Returns None when a factorisation fails (the caller
    falls back to the dense path with its jitter retries).
    """
    a, b = split
    P = rhs.shape[1]
    A = lin.H.clone()
    A.diagonal(dim1=-2, dim2=-1).add_(lam.unsqueeze(-1) * lin.D)
    if b == P:  # bounded block last (fit_landmarks' layout): views, no copies
        A_uu, A_ue, rhs_u = A[:, :a, :a], A[:, :a, a:], rhs[:, :a]
    else:
        u = torch.cat([torch.arange(a, device=A.device), torch.arange(b, P, device=A.device)])
        A_u = A.index_select(1, u)
        A_uu, A_ue, rhs_u = A_u.index_select(2, u), A_u[:, :, a:b], rhs.index_select(1, u)
    A_ee = A[:, a:b, a:b]
    U_u, info = _chol_upper(A_uu)
    W = torch.linalg.solve_triangular(U_u.mT, torch.cat([A_ue, rhs_u.unsqueeze(-1)], -1), upper=False)
    W, y_u = W[..., :-1], W[..., -1:]
    S = A_ee - W.mT @ W
    b_e = rhs[:, a:b] - (W.mT @ y_u).squeeze(-1)
    x_e, lo_e, hi_e = x[:, a:b], lo[:, a:b], hi[:, a:b]
    fx = frozen[:, a:b].to(S.dtype)  # 1: held (at its bound or at the value it was clipped to)
    h_fix = torch.zeros_like(b_e)
    b_r = b_e
    for r in range(max(1, rounds)):
        keep = 1 - fx
        S_r = torch.diag_embed(fx).addcmul_(S, keep.unsqueeze(-1) * keep.unsqueeze(-2))
        U_e, info_e = _chol_upper(S_r)
        info = info | info_e
        h_e = torch.addcmul(h_fix, _cho_solve(U_e, b_r * keep), keep)
        xf = x_e + h_e
        viol = ((xf < lo_e) | (xf > hi_e)).to(S.dtype) * keep
        if r == rounds - 1 or not bool(viol.any()):
            break
        h_fix = torch.where(viol > 0, xf.clamp(lo_e, hi_e) - x_e, h_fix)
        fx = fx + viol
        b_r = torch.baddbmm(b_e.unsqueeze(-1), S, h_fix.unsqueeze(-1), alpha=-1).squeeze(-1)
    if bool(info.any()):
        return None
    h_u = torch.linalg.solve_triangular(U_u, torch.baddbmm(y_u, W, h_e.unsqueeze(-1), alpha=-1),
                                        upper=True).squeeze(-1)
    if b == P:
        return torch.cat([h_u, h_e], 1)
    return torch.cat([h_u[:, :a], h_e, h_u[:, a:]], 1)


def _solve_pcg(lin: _Lin, lam: Tensor, rhs: Tensor, keep: Optional[Tensor], iterations: int
               ) -> Tuple[Tensor, Optional[Tensor]]:
    """Jacobi-preconditioned CG for ``(J^T W J + lam D) h = rhs``, a fixed number of steps from ``h = 0``.

    Matrix-free when the linearisation holds ``J``: two Jacobian products per step. Frozen parameters have
    ``rhs = 0`` and ``keep = 0``, so every iterate keeps them at 0. Returns ``h`` and, in the matrix-free case,
    ``J h`` (accumulated from the products CG computes anyway, to spare a pass over ``J`` for the model decrease).
    """
    lamD = lam.unsqueeze(-1) * lin.D
    minv = 1.0 / (lin.diag + lamD)
    J = lin.J
    h = torch.zeros_like(rhs)
    Jh = None if J is None else torch.zeros(J.shape[:2], dtype=J.dtype, device=J.device)
    r = rhs
    z = minv * r
    p = z
    rz = (r * z).sum(-1)
    for k in range(iterations):
        if J is None:
            Ap = torch.matmul(lin.H, p.unsqueeze(-1)).squeeze(-1)
        else:
            Jp = _jvp(J, p)
            Ap = torch.matmul(Jp.unsqueeze(1), J).squeeze(1)
        Ap = Ap + lamD * p
        if keep is not None:
            Ap = Ap * keep
        pAp = (p * Ap).sum(-1)
        alpha = torch.where(pAp > 0, rz / pAp, torch.zeros_like(rz)).unsqueeze(-1)
        h = h + alpha * p
        if Jh is not None:
            Jh = Jh + alpha * Jp
        if k + 1 == iterations:
            break
        r = r - alpha * Ap
        z = minv * r
        rz_new = (r * z).sum(-1)
        beta = torch.where(rz > 0, rz_new / rz, torch.zeros_like(rz)).unsqueeze(-1)
        p = z + beta * p
        rz = rz_new
    return h, Jh


def _rank_deficient(lin: _Lin, keep: Optional[Tensor], eps: float) -> Tensor:
    """Numerical rank deficiency of ``J^T W J`` over the free parameters.

    A column whose norm is below ``eps`` times the largest (a parameter the residuals ignore) counts, and so does a
    Cholesky pivot below ``100 eps`` of the Jacobi-scaled matrix ``H_ij / sqrt(H_ii H_jj)`` (unit diagonal, so the
    test does not depend on the parameters' units; condition numbers beyond about ``1 / (100 eps)``). Without ``H``
    (PCG) only the first test is made.
    """
    diag = lin.diag
    scale = diag.amax(-1, keepdim=True)
    free = torch.ones_like(diag, dtype=torch.bool) if keep is None else keep > 0
    dead = (diag <= (eps * eps) * scale) & free
    out = dead.any(-1)
    if lin.H is not None:
        live = free & ~dead
        s = torch.where(live, diag, torch.ones_like(diag)).rsqrt()
        Hs = lin.H * (s.unsqueeze(-1) * s.unsqueeze(-2))
        m = live.to(Hs.dtype)
        Hs = Hs * (m.unsqueeze(-1) * m.unsqueeze(-2)) + torch.diag_embed(1 - m)  # drop frozen / dead parameters
        jitter = 10 * eps
        L, info = torch.linalg.cholesky_ex(Hs + jitter * torch.eye(Hs.shape[-1], dtype=Hs.dtype, device=Hs.device))
        piv = L.diagonal(dim1=-2, dim2=-1) ** 2
        out = out | (info != 0) | (piv.amin(-1) <= 10 * jitter)
    return out & (scale.squeeze(-1) > 0)


def _initial_damping(damping, B: int, x: Tensor, cfg: GaussNewtonConfig) -> Tensor:
    if damping is None:
        return torch.full((B,), cfg.initial_damping, dtype=x.dtype, device=x.device)
    lam = torch.as_tensor(damping, dtype=x.dtype, device=x.device)
    if lam.ndim == 0:
        lam = lam.expand(B)
    if lam.shape != (B,):
        raise ShapeError(f"damping must be a number or a (B,) = ({B},) tensor, got shape {tuple(lam.shape)}")
    if not bool((torch.isfinite(lam) & (lam > 0)).all()):
        raise ValueError(f"damping must be positive and finite, got {lam.tolist()}")
    return torch.clamp(lam, cfg.min_damping, cfg.max_damping).clone()


# --------------------------------------------------------------------------------------------------------------
# solvers


def gauss_newton(problem: LeastSquaresProblem, x0: Tensor, config: Optional[GaussNewtonConfig] = None,
                 damping: Union[None, float, Tensor] = None) -> SolverResult:
    """Batched Levenberg-Marquardt (damped Gauss-Newton) with IRLS robust losses and box bounds.

    Args:
        problem: the residuals / Jacobian / normal equations, weights, loss and bounds.
        x0: ``(B, P)`` initial parameters (finite; projected onto the bounds; not modified).
        config: settings (default :class:`GaussNewtonConfig()`).
        damping: initial ``lambda``, a number or ``(B,)`` (e.g. ``previous_result.damping`` for a warm start).
    Returns:
        :class:`SolverResult` with ``method="gauss_newton"``.
    """
    cfg = config if config is not None else GaussNewtonConfig()
    if not isinstance(cfg, GaussNewtonConfig):
        raise ValueError(f"config must be a GaussNewtonConfig, got {type(cfg).__name__}")
    x0 = _check_x(x0)
    B, P = x0.shape
    if cfg.linear_solver == "auto":
        solver = "pcg" if P > cfg.auto_pcg_parameters else "cholesky"
    else:
        solver = cfg.linear_solver
    use_pcg = solver == "pcg"
    ev = _Evaluator(problem, x0, keep_jacobian=use_pcg, autodiff=cfg.autodiff, chunk_size=cfg.jacobian_chunk_size,
                    min_diagonal=cfg.min_diagonal)
    trial_lin = cfg.linearize_at_trial
    if trial_lin is None:
        trial_lin = problem.jacobian is not None or (ev.use_ne and problem.energy is None)
    lo, hi = _bounds(problem, x0)
    bounded = lo is not None
    dev, dt = x0.device, x0.dtype
    lam = _initial_damping(damping, B, x0, cfg).to(device="cpu", dtype=torch.float64).numpy().copy()
    with torch.no_grad(), np.errstate(all="ignore"):
        split = _bound_split(lo, hi) if bounded and not use_pcg else None
        return _lm_loop(ev, cfg, x0, lo, hi, bounded, lam, trial_lin, use_pcg, solver, dev, dt, split)


def _to_np(*ts: Tensor) -> np.ndarray:
    """Stack per-item ``(B,)`` tensors and bring them to the host as float64 (one transfer)."""
    return torch.stack(ts).detach().to("cpu", torch.float64).numpy()


def _lm_loop(ev, cfg, x0, lo, hi, bounded, lam, trial_lin, use_pcg, solver, dev, dt, split=None) -> SolverResult:
    """The LM iterations. Per-item bookkeeping (damping, acceptance, stopping rules) runs in NumPy on ``(B,)``
    vectors: a few microseconds instead of ~100 small tensor ops per iteration (one host transfer per iteration on
    GPUs, which the early exit needs anyway)."""
    B, P = x0.shape
    RUN, CONV, MAXIT, NAN, SING, STALL = (int(s) for s in SolverStatus)
    nielsen = cfg.damping == "nielsen"

    x = torch.maximum(torch.minimum(x0, hi), lo) if bounded else x0
    lin = ev.linearize(x)
    frozen = _frozen(x, lin.g, lo, hi) if bounded else None
    pg = lin.g.masked_fill(frozen, 0) if bounded else lin.g
    E0, chk, gn = _to_np(lin.E, lin.chk, pg.abs().amax(-1))
    ok0 = np.isfinite(E0) & np.isfinite(chk)
    if not ok0.all():  # failed items: a harmless linearisation so that they cannot disturb the others
        lin = _merge(torch.from_numpy(ok0).to(dev), lin, _trivial_like(lin))
        if bounded:
            frozen = _frozen(x, lin.g, lo, hi)
    E = np.where(ok0, E0, 0.0)
    nu = np.full(B, 2.0)
    status = np.where(ok0, RUN, NAN)
    status[ok0 & ((gn <= cfg.gtol) | (E == 0))] = CONV
    active = status == RUN
    iterations = np.zeros(B, dtype=np.int64)
    history = [E0]

    for _ in range(cfg.max_iterations):
        if not active.any():
            break
        # ---- step
        # damping and -1 / 0 for active / finished items (finished items take a zero step), in one transfer
        ctl = torch.from_numpy(np.stack([lam, -active.astype(np.float64)])).to(device=dev, dtype=dt)
        lam_t = ctl[0]
        if bounded:
            keep = (~frozen).to(dt) if use_pcg else None
            rhs = lin.g.masked_fill(frozen, 0.0) * ctl[1].unsqueeze(-1)
        else:
            keep = None
            rhs = lin.g * ctl[1].unsqueeze(-1)
        singular = None
        Jh = None
        if use_pcg:
            h, Jh = _solve_pcg(lin, lam_t, rhs, keep, cfg.pcg_iterations)
        elif bounded:
            h = None if split is None else _solve_schur_bounded(lin, lam_t, rhs, frozen, x, lo, hi,
                                                                cfg.bound_rounds, split)
            if h is None:
                h, singular = _solve_cholesky_bounded(lin, lam_t, rhs, frozen, x, lo, hi, cfg.cholesky_retries,
                                                      cfg.bound_rounds)
            if singular is not None:
                singular = singular.cpu().numpy()
        else:
            h, singular = _solve_cholesky(lin, lam_t, rhs, keep, frozen, cfg.cholesky_retries)
            if singular is not None:
                singular = singular.cpu().numpy()
        clamped = None
        if bounded:
            xf = x + h
            xt = torch.maximum(torch.minimum(xf, hi), lo)
            clamped = (xt != xf).any(-1)
            h = xt - x
            pred = lin.decrease(h)
        else:
            xt = x + h
            if Jh is not None:  # matrix-free PCG: J h came with the step
                pred = -((lin.g * h).sum(-1) + 0.5 * (Jh * Jh).sum(-1))
            elif use_pcg:
                pred = lin.decrease(h)
            else:  # exact solve of (H + lam D) h = -g: the model decrease is 0.5 h.(lam D h - g)
                pred = 0.5 * (h * (lam_t.unsqueeze(-1) * lin.D * h - lin.g)).sum(-1)
        # ---- the model promises a decrease below rtol * E: converged, the step is not worth a trial evaluation
        # (saves the last linearisation of a solve; exact linear solves only, and not for a step the box projection
        # cut short, see below)
        if use_pcg or not cfg.stop_on_model_decrease:
            done = np.zeros(B, dtype=bool)
        else:
            pr0 = _to_np(pred if clamped is None else pred.masked_fill(clamped, math.inf))[0]
            done = active & (pr0 < cfg.rtol * E)
        if done.any():
            status[done] = CONV
            iterations += done
            active = active & ~done
            if not active.any():
                history.append(np.where(ok0, E, E0))
                break
            go = torch.from_numpy(active).to(dev)
            xt = torch.where(go.unsqueeze(-1), xt, x)
            h = xt - x
            pred = pred.masked_fill(~go, 0.0)
            if clamped is not None:
                clamped = clamped & go
        # ---- trial point
        if trial_lin:
            lin_t = ev.linearize(xt)
            frozen_t = _frozen(xt, lin_t.g, lo, hi) if bounded else None
            pg_t = lin_t.g.masked_fill(frozen_t, 0) if bounded else lin_t.g
            Et, chk_t, pr, hh, xx, gn_t = _to_np(lin_t.E, lin_t.chk, pred, (h * h).sum(-1), (xt * xt).sum(-1),
                                                 pg_t.abs().amax(-1))
            ok_t = np.isfinite(Et) & np.isfinite(chk_t)
        else:
            Et, pr, hh, xx = _to_np(ev.energy(xt), pred, (h * h).sum(-1), (xt * xt).sum(-1))
            ok_t = np.isfinite(Et)
        actual = E - Et
        rho = np.where(pr > 0, actual / pr, 0.0)
        accept = active & ok_t & (actual > 0) & (rho >= cfg.accept_ratio)
        # ---- damping
        rejected = active & ~accept
        if nielsen:
            t = 2.0 * rho - 1.0
            lam = np.where(accept, lam * np.maximum(1.0 / 3.0, 1.0 - t * t * t), np.where(rejected, lam * nu, lam))
            nu = np.where(accept, 2.0, np.where(rejected, 2.0 * nu, nu))
        else:
            lam = np.where(accept, lam * 0.1, np.where(rejected, lam * 10.0, lam))
        lam = np.maximum(lam, cfg.min_damping)
        # ---- update
        n_acc = int(accept.sum())
        # a short step, or a failed step whose model promised less than rtol (float round-off at the optimum)
        short = np.sqrt(hh) <= cfg.xtol * (np.sqrt(xx) + cfg.xtol)
        # (not for a step that the box projection cut short: its model decrease says nothing about optimality, and
        # a larger damping gives a shorter step that the projection alters less)
        tiny = rejected & ok_t & (pr < cfg.rtol * E)
        if clamped is not None:
            tiny &= ~clamped.cpu().numpy()
        conv = active & (short | tiny)
        if n_acc:
            all_acc = n_acc == B
            acc_t = None if all_acc else torch.from_numpy(accept).to(dev)
            x = xt if all_acc else torch.where(acc_t.unsqueeze(-1), xt, x)
            E_prev = E
            E = np.where(accept, Et, E)
            if not trial_lin:
                lin_t = ev.linearize(x)
                frozen_t = _frozen(x, lin_t.g, lo, hi) if bounded else None
                pg_t = lin_t.g.masked_fill(frozen_t, 0) if bounded else lin_t.g
                chk_t, gn_t = _to_np(lin_t.chk, pg_t.abs().amax(-1))
                bad = accept & ~np.isfinite(chk_t)
                if bad.any():  # finite energy but NaN / inf derivatives at an accepted point
                    status[bad] = NAN
                    accept = accept & ~bad
                    all_acc = False
                    acc_t = torch.from_numpy(accept).to(dev)
            if all_acc:
                lin, frozen = lin_t, frozen_t
            else:
                lin = _merge(acc_t, lin_t, lin)
                if bounded:
                    frozen = torch.where(acc_t.unsqueeze(-1), frozen_t, frozen)
            rel = actual / np.where(E_prev > 0, E_prev, 1.0)
            conv |= accept & ((rel < cfg.rtol) | (E == 0) | (gn_t <= cfg.gtol))
        # ---- stopping rules
        iterations += active
        running = status == RUN
        status[active & conv & running] = CONV
        status[rejected & (lam > cfg.max_damping) & (status == RUN)] = STALL
        if singular is not None:
            status[active & singular & (status == RUN)] = SING
        active = status == RUN
        history.append(np.where(ok0, E, E0))

    status[status == RUN] = MAXIT
    if bounded:
        pg = lin.g.masked_fill(frozen, 0)
        keep = (~frozen).to(dt)
    else:
        pg, keep = lin.g, None
    if cfg.check_rank:
        rank_def = _rank_deficient(lin, keep, torch.finfo(dt).eps) & torch.from_numpy(ok0).to(dev)
    else:
        rank_def = torch.zeros(B, dtype=torch.bool, device=dev)

    def T(a, dtype=dt):
        return torch.as_tensor(np.asarray(a), dtype=dtype).to(dev)

    return SolverResult(
        params=x.clone() if x is x0 else x,
        energy=T(np.where(ok0, E, E0)),
        initial_energy=T(E0),
        status=T(status, torch.int64),
        iterations=T(iterations, torch.int64),
        damping=T(lam),
        energy_history=T(np.stack(history)),
        gradient_norm=pg.abs().amax(-1),
        rank_deficient=rank_def,
        method="gauss_newton",
        linear_solver=solver,
    )


def adam(problem: LeastSquaresProblem, x0: Tensor, config: Optional[AdamConfig] = None) -> SolverResult:
    """Adam on the same energy (autograd through ``residuals``), bounds by projection: a baseline for comparisons.

    Items are independent (Adam acts per coordinate). The best iterate per item is returned; NaN / inf energies
    or gradients at a step send that item back to its best iterate.

    Args:
        problem: as for :func:`gauss_newton` (``residuals``, or ``normal_equations`` whose ``Jtr`` is the gradient).
        x0: ``(B, P)`` initial parameters.
        config: settings (default :class:`AdamConfig()`).
    Returns:
        :class:`SolverResult` with ``method="adam"`` and ``damping=None``.
    """
    cfg = config if config is not None else AdamConfig()
    if not isinstance(cfg, AdamConfig):
        raise ValueError(f"config must be an AdamConfig, got {type(cfg).__name__}")
    x0 = _check_x(x0)
    B, P = x0.shape
    ev = _Evaluator(problem, x0)
    lo, hi = _bounds(problem, x0)
    bounded = lo is not None
    b1, b2 = cfg.betas
    RUN, CONV, MAXIT, NAN = int(SolverStatus.RUNNING), int(SolverStatus.CONVERGED), \
        int(SolverStatus.MAX_ITERATIONS), int(SolverStatus.FAILED_NAN)

    def proj_grad(x, g):
        return g.masked_fill(_frozen(x, g, lo, hi), 0) if bounded else g

    x = torch.maximum(torch.minimum(x0, hi), lo) if bounded else x0.clone()
    E, g = ev.energy_and_gradient(x)
    ok = torch.isfinite(E) & torch.isfinite(g).all(-1)
    E0 = E
    g = torch.where(ok.unsqueeze(-1), g, torch.zeros_like(g))
    status = torch.where(ok, RUN, NAN).to(device=x.device, dtype=torch.int64)
    if cfg.gtol > 0:
        status = torch.where(ok & (proj_grad(x, g).abs().amax(-1) <= cfg.gtol), CONV, status)
    active = status == RUN
    best_x, best_E, best_g = x, torch.where(ok, E, torch.full_like(E, math.inf)), g
    m = torch.zeros_like(x)
    v = torch.zeros_like(x)
    iterations = torch.zeros(B, dtype=torch.int64, device=x.device)
    history = [E0]
    for t in range(1, cfg.steps + 1):
        if not bool(active.any()):
            break
        a1 = active.unsqueeze(-1)
        g = torch.where(a1, g, torch.zeros_like(g))
        m = torch.where(a1, b1 * m + (1 - b1) * g, m)
        v = torch.where(a1, b2 * v + (1 - b2) * g * g, v)
        step = cfg.lr * (m / (1 - b1 ** t)) / (torch.sqrt(v / (1 - b2 ** t)) + cfg.eps)
        xn = x - torch.where(a1, step, torch.zeros_like(step))
        if bounded:
            xn = torch.maximum(torch.minimum(xn, hi), lo)
        En, gn = ev.energy_and_gradient(xn)
        fin = torch.isfinite(En) & torch.isfinite(gn).all(-1)
        fin1 = fin.unsqueeze(-1)
        x = torch.where(fin1, xn, best_x)
        g = torch.where(fin1, gn, best_g)
        better = active & fin & (En < best_E)
        best_x = torch.where(better.unsqueeze(-1), xn, best_x)
        best_g = torch.where(better.unsqueeze(-1), gn, best_g)
        best_E = torch.where(better, En, best_E)
        iterations = iterations + active.to(torch.int64)
        if cfg.gtol > 0:
            status = torch.where(active & fin & (proj_grad(x, g).abs().amax(-1) <= cfg.gtol), CONV, status)
        active = status == RUN
        history.append(torch.where(ok, torch.where(fin, En, best_E), E0))
    status = torch.where(status == RUN, MAXIT, status)
    energy = torch.where(ok, best_E, E0)
    return SolverResult(
        params=best_x.clone() if best_x is x0 else best_x,
        energy=energy,
        initial_energy=E0,
        status=status,
        iterations=iterations,
        damping=None,
        energy_history=torch.stack(history),
        gradient_norm=proj_grad(best_x, best_g).abs().amax(-1),
        rank_deficient=torch.zeros(B, dtype=torch.bool, device=x.device),
        method="adam",
    )


def solve(problem: LeastSquaresProblem, x0: Tensor, config: Union[GaussNewtonConfig, AdamConfig, None] = None, *,
          method: str = "gauss_newton", damping: Union[None, float, Tensor] = None, lr: Optional[float] = None,
          steps: Optional[int] = None) -> SolverResult:
    """Solve ``problem`` from ``x0 (B, P)`` with Levenberg-Marquardt (default) or the Adam baseline.

    Args:
        problem: :class:`LeastSquaresProblem`.
        x0: ``(B, P)`` initial parameters.
        config: :class:`GaussNewtonConfig` or :class:`AdamConfig` matching ``method`` (``None``: defaults).
        method: ``"gauss_newton"`` (alias ``"lm"``) or ``"adam"``.
        damping: warm-start damping for Gauss-Newton (number or ``(B,)``).
        lr, steps: shortcuts overriding the Adam config's fields.
    Returns:
        :class:`SolverResult`.
    """
    if method in ("gauss_newton", "lm"):
        if lr is not None or steps is not None:
            raise ValueError(f"lr and steps are Adam settings; method={method!r} uses GaussNewtonConfig")
        return gauss_newton(problem, x0, config, damping)
    if method == "adam":
        if damping is not None:
            raise ValueError("damping is a Gauss-Newton setting, not used by method='adam'")
        cfg = config if config is not None else AdamConfig()
        if not isinstance(cfg, AdamConfig):
            raise ValueError(f"method='adam' needs an AdamConfig, got {type(cfg).__name__}")
        if lr is not None or steps is not None:
            cfg = AdamConfig(lr=cfg.lr if lr is None else lr, steps=cfg.steps if steps is None else steps,
                             betas=cfg.betas, eps=cfg.eps, gtol=cfg.gtol)
        return adam(problem, x0, cfg)
    raise ValueError(f"method must be 'gauss_newton' (or 'lm') or 'adam', got {method!r}")
