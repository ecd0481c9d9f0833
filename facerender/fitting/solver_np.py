"""A NumPy twin of :func:`facerender.fitting.solver.gauss_newton` for ONE small dense problem on the CPU.

Why a second implementation: a landmark fit (159 parameters, 136 residuals) is too small for PyTorch. Every tensor
operation costs 3-8 us of dispatch on this CPU whatever its size, a batched LM step takes about 400 of them, and the
whole fit spends more time in dispatch than in arithmetic. NumPy's per-call cost is about 1 us, and LAPACK's
``potrf`` / ``trtrs`` called directly (through :mod:`scipy.linalg.lapack`) factor a 106 x 106 matrix in about
40 us, against about 115 us for ``torch.linalg.cholesky_ex`` on the same CPU. docs/fitting.md has the timings.

The algorithm is the same, rule for rule: Levenberg-Marquardt with Marquardt's scaling ``D = max(diag(H),
min_diagonal * max diag(H))``, Nielsen's (or the classic) damping update, projected steps with active-set rounds for
box bounds (the Schur-complement form when the bounded parameters are one trailing range, as in a landmark fit), the
same acceptance and stopping rules (``rtol``, ``gtol``, ``xtol``, ``stop_on_model_decrease``) and statuses. Only
``normal_equations`` problems (``x -> (J^T J, J^T r, 0.5 ||r||^2)``) with trial-point linearisation are covered:
that is what the structured face energies provide. Tests run both solvers on the same problems.

Everything is float64 and face-agnostic: arrays in, arrays out.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import numpy as np
from scipy.linalg import lapack

from .solver import GaussNewtonConfig, SolverStatus

__all__ = ["DenseResult", "gauss_newton_dense", "single_threaded_blas"]

NormalEquationsNp = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray, float]]

_RUN, _CONV, _MAXIT, _NAN, _SING, _STALL = (int(s) for s in SolverStatus)


@dataclass
class DenseResult:
    """Outcome of :func:`gauss_newton_dense` (one item).

    Attributes:
        params: ``(P,)`` solution (the projected ``x0`` when the start is not finite).
        energy: final energy; initial_energy: at the projected ``x0``.
        status: a :class:`~facerender.fitting.solver.SolverStatus` code; iterations: linear solves taken.
        damping: final ``lambda`` (pass it back for a warm start).
        energy_history: energy after each iteration (entry 0: initial).
        gradient_norm: infinity norm of the projected gradient at ``params``.
        rank_deficient: as :attr:`SolverResult.rank_deficient` (False unless ``config.check_rank``).
    """

    params: np.ndarray
    energy: float
    initial_energy: float
    status: int
    iterations: int
    damping: float
    energy_history: List[float] = field(default_factory=list)
    gradient_norm: float = 0.0
    rank_deficient: bool = False

    @property
    def status_name(self) -> str:
        return SolverStatus(self.status).name.lower()


_BLAS = None


def single_threaded_blas():
    """A context that holds NumPy's and SciPy's OpenBLAS at one thread (``threadpoolctl``; a no-op without it).

    For matrices of this size (136 x 159 products, 106 x 106 factorisations) a second BLAS thread costs more than it
    saves, and next to PyTorch's OpenMP workers on a 2-core CPU it is much worse: the threads wait on each other and
    a landmark fit took 40-55 ms instead of 6-10 ms (docs/fitting.md). The controller is built on first use (about
    1 ms) and reused; entering the context costs about 20 us.
    """
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS = ThreadpoolController().select(user_api="blas")
        except Exception:  # pragma: no cover - threadpoolctl is a dependency; keep working without it
            _BLAS = False
    return _BLAS.limit(limits=1) if _BLAS else contextlib.nullcontext()


def _chol(A: np.ndarray) -> Optional[np.ndarray]:
    """Upper Cholesky factor ``U`` (``A = U^T U``) of a symmetric C-ordered matrix, or None when not positive
    definite. The C-ordered ``A`` is read by LAPACK as the Fortran-ordered ``A^T = A``; its lower factor ``L`` comes
    back Fortran-ordered, so ``L.T`` is ``U`` without a copy."""
    L, info = lapack.dpotrf(A.T, lower=1, clean=1)
    if info != 0:
        return None
    return L.T


def _lower_solve(U: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``U^-T b`` (``b`` a vector or a matrix)."""
    y, _ = lapack.dtrtrs(U.T, b, lower=1, trans=0)
    return y


def _upper_solve(U: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``U^-1 b``."""
    y, _ = lapack.dtrtrs(U.T, b, lower=1, trans=1)
    return y


def _cho_solve(U: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _upper_solve(U, _lower_solve(U, b))


def _solve_spd(A: np.ndarray, rhs: np.ndarray, retries: int) -> Tuple[np.ndarray, bool]:
    """``A^-1 rhs`` by Cholesky; on failure a growing diagonal jitter (``1e-7, 1e-5, ...`` times the largest
    diagonal entry, ``retries`` times), then least squares, as :func:`solver._solve_cholesky`. Returns the step and
    whether it could not be solved (non-finite; the step is then 0)."""
    U = _chol(A)
    if U is not None:
        return _cho_solve(U, rhs), False
    A = np.where(np.isfinite(A), A, 0.0)
    scale = float(np.abs(np.diagonal(A)).max()) if A.size else 1.0
    scale = scale if scale > 0 else 1.0
    n = A.shape[0]
    for k in range(retries):
        U = _chol(A + (1e-7 * 100.0 ** k) * scale * np.eye(n))
        if U is not None:
            h = _cho_solve(U, rhs)
            break
    else:
        h = np.linalg.lstsq(A, rhs, rcond=None)[0]
    if not np.isfinite(h).all():
        return np.zeros_like(rhs), True
    return h, False


def _bound_split(lo: np.ndarray, hi: np.ndarray) -> Optional[Tuple[int, int]]:
    """As :func:`solver._bound_split`: ``(a, b)`` when the bounded parameters are one contiguous range and a
    Schur-complement step pays."""
    has = np.isfinite(lo) | np.isfinite(hi)
    idx = np.flatnonzero(has)
    P, ne = has.size, idx.size
    if ne == 0 or P - ne < 16 or ne > 0.75 * P:
        return None
    a, b = int(idx[0]), int(idx[-1]) + 1
    return (a, b) if b - a == ne else None


def _active_set(solve, M: np.ndarray, rhs: np.ndarray, fixed: np.ndarray, x: np.ndarray, lo: np.ndarray,
                hi: np.ndarray, rounds: int) -> Optional[np.ndarray]:
    """Active-set rounds of a bounded step (:func:`solver._solve_cholesky_bounded`): solve ``M h = rhs`` on the free
    parameters, fix the ones whose step would leave the box AT their bound (``fixed`` holds those already held at
    zero step), re-solve the rest with the right-hand side corrected for the fixed steps. ``solve(free, rhs_free)``
    solves the system restricted to the indices ``free`` (None: all of them) and returns None on failure, which
    ends the rounds with None."""
    fixed = fixed.copy()
    h_fix = np.zeros_like(rhs)
    rhs_r = rhs
    h = h_fix
    for r in range(max(1, rounds)):
        if not fixed.any():  # nothing held: the whole system (no gathers)
            h = solve(None, rhs_r)
            if h is None:
                return None
        else:
            free = np.flatnonzero(~fixed)
            h = h_fix.copy()
            if free.size:
                hf = solve(free, rhs_r[free])
                if hf is None:
                    return None
                h[free] = hf
        xf = x + h
        viol = ~fixed & ((xf < lo) | (xf > hi))
        if r == rounds - 1 or not viol.any():
            break
        h_fix = np.where(viol, np.clip(xf, lo, hi) - x, h_fix)
        fixed |= viol
        rhs_r = rhs - M @ h_fix
    return h


def _step_bounded(A: np.ndarray, rhs: np.ndarray, frozen: np.ndarray, x: np.ndarray, lo: np.ndarray,
                  hi: np.ndarray, rounds: int, retries: int) -> Tuple[np.ndarray, bool]:
    """The damped step with box bounds on the whole system (:func:`_active_set` with :func:`_solve_spd`, which
    never fails: jitter, then least squares). Returns the step and whether a round could not be solved."""
    singular = [False]

    def solve(free, r):
        h, singular[0] = _solve_spd(A if free is None else A[np.ix_(free, free)], r, retries)
        return h

    return _active_set(solve, A, rhs, frozen, x, lo, hi, rounds), singular[0]


def _step_schur(A: np.ndarray, rhs: np.ndarray, frozen: np.ndarray, x: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                rounds: int, split: Tuple[int, int]) -> Optional[np.ndarray]:
    """:func:`_step_bounded` for bounds on one range ``e = [a, b)`` (:func:`solver._solve_schur_bounded`): the
    unbounded rest is eliminated once (Cholesky of ``A_uu``, Schur complement ``S``), the active-set rounds refactor
    ``S`` restricted to the free bounded parameters. None when a factorisation fails (the caller falls back)."""
    a, b = split
    P = rhs.size
    u = np.r_[0:a, b:P] if b < P else None
    if u is None:
        A_uu, A_ue, rhs_u = A[:a, :a], A[:a, a:], rhs[:a]
    else:
        A_u = A[u]
        A_uu, A_ue, rhs_u = A_u[:, u], A_u[:, a:b], rhs[u]
    U_u = _chol(A_uu)
    if U_u is None:
        return None
    W = _lower_solve(U_u, np.column_stack([A_ue, rhs_u]))
    W, y_u = W[:, :-1], W[:, -1]
    S = A[a:b, a:b] - W.T @ W

    def solve(free, r):
        U_e = _chol(S if free is None else S[np.ix_(free, free)])
        return None if U_e is None else _cho_solve(U_e, r)

    h_e = _active_set(solve, S, rhs[a:b] - W.T @ y_u, frozen[a:b], x[a:b], lo[a:b], hi[a:b], rounds)
    if h_e is None:
        return None
    h_u = _upper_solve(U_u, y_u - W @ h_e)
    if u is None:
        return np.concatenate([h_u, h_e])
    h = np.empty(P)
    h[u] = h_u
    h[a:b] = h_e
    return h


def _rank_deficient(H: np.ndarray, diag: np.ndarray, free: np.ndarray) -> bool:
    """As :func:`solver._rank_deficient` (float64): a column the residuals ignore, or a tiny pivot of the
    Jacobi-scaled matrix over the free parameters."""
    eps = np.finfo(np.float64).eps
    scale = float(diag.max()) if diag.size else 0.0
    if scale <= 0:
        return False
    dead = (diag <= eps * eps * scale) & free
    if dead.any():
        return True
    live = np.flatnonzero(free)
    if live.size == 0:
        return False
    s = 1.0 / np.sqrt(diag[live])
    Hs = H[np.ix_(live, live)] * np.outer(s, s)
    jitter = 10 * eps
    U = _chol(Hs + jitter * np.eye(live.size))
    if U is None:
        return True
    return bool((np.diagonal(U) ** 2).min() <= 10 * jitter)


class _Lin:
    __slots__ = ("H", "g", "E", "diag", "D", "ok")

    def __init__(self, out, min_diagonal: float):
        H, g, E = out
        self.H, self.g, self.E = H, g, float(E)
        self.diag = np.diagonal(H)
        self.D = np.maximum(self.diag, self.diag.max() * min_diagonal) if self.diag.size else self.diag
        self.ok = bool(np.isfinite(self.E + g.sum() + self.diag.sum()))


def gauss_newton_dense(normal_equations: NormalEquationsNp, x0: np.ndarray, lower: Optional[np.ndarray] = None,
                       upper: Optional[np.ndarray] = None, config: Optional[GaussNewtonConfig] = None,
                       damping: Optional[float] = None) -> DenseResult:
    """Levenberg-Marquardt on one problem given by its normal equations (see the module docstring).

    Args:
        normal_equations: ``x (P,) -> (J^T J (P, P), J^T r (P,), 0.5 ||r||^2)``, float64, fresh arrays.
        x0: ``(P,)`` start (projected onto the bounds; not modified).
        lower, upper: ``(P,)`` bounds (``-inf`` / ``inf`` allowed) or None.
        config: :class:`~facerender.fitting.solver.GaussNewtonConfig` (``linear_solver`` is ignored: Cholesky;
            trial points are always linearised).
        damping: initial ``lambda`` (a warm start), default ``config.initial_damping``.
    Returns:
        :class:`DenseResult`. Parameters are never NaN.
    """
    with single_threaded_blas():
        return _gauss_newton_dense(normal_equations, x0, lower, upper, config, damping)


def _gauss_newton_dense(normal_equations, x0, lower, upper, config, damping) -> DenseResult:
    cfg = config if config is not None else GaussNewtonConfig()
    x = np.array(x0, dtype=np.float64, copy=True).reshape(-1)
    P = x.size
    lo = np.full(P, -math.inf) if lower is None else np.broadcast_to(np.asarray(lower, np.float64), (P,))
    hi = np.full(P, math.inf) if upper is None else np.broadcast_to(np.asarray(upper, np.float64), (P,))
    if np.isnan(lo).any() or np.isnan(hi).any():
        raise ValueError("bounds hold NaN")
    if (lo > hi).any():
        i = int(np.flatnonzero(lo > hi)[0])
        raise ValueError(f"lower > upper at parameter {i}: {lo[i]} > {hi[i]}")
    if not np.isfinite(x).all():
        raise ValueError(f"x0 holds NaN/inf values at {np.flatnonzero(~np.isfinite(x))[:10].tolist()}")
    bounded = bool(np.isfinite(lo).any() or np.isfinite(hi).any())
    split = _bound_split(lo, hi) if bounded else None
    if bounded:
        x = np.clip(x, lo, hi)
    lam = float(cfg.initial_damping if damping is None else damping)
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"damping must be positive and finite, got {lam}")
    lam = min(max(lam, cfg.min_damping), cfg.max_damping)
    nielsen = cfg.damping == "nielsen"

    def frozen_of(x, g):
        return ((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0))

    lin = _Lin(normal_equations(x), cfg.min_diagonal)
    frozen = frozen_of(x, lin.g) if bounded else np.zeros(P, dtype=bool)
    E0 = lin.E
    if not lin.ok:
        return DenseResult(x, E0, E0, _NAN, 0, lam, [E0], math.nan, False)
    pg = np.where(frozen, 0.0, lin.g)
    E = E0
    nu = 2.0
    status = _CONV if (np.abs(pg).max(initial=0.0) <= cfg.gtol or E == 0) else _RUN
    iterations = 0
    history = [E0]

    for _ in range(cfg.max_iterations):
        if status != _RUN:
            break
        # ---- step: (H + lam D) h = -g on the free parameters
        A = lin.H.copy()
        A[np.diag_indices(P)] += lam * lin.D
        rhs = -pg
        singular = False
        clamped = False
        if bounded:
            h = _step_schur(A, rhs, frozen, x, lo, hi, cfg.bound_rounds, split) if split is not None else None
            if h is None:
                h, singular = _step_bounded(A, rhs, frozen, x, lo, hi, cfg.bound_rounds, cfg.cholesky_retries)
            xf = x + h
            xt = np.clip(xf, lo, hi)
            clamped = bool((xt != xf).any())
            h = xt - x
            pred = -float(h @ (lin.g + 0.5 * (lin.H @ h)))
        else:
            h, singular = _solve_spd(A, rhs, cfg.cholesky_retries)
            xt = x + h
            pred = 0.5 * float(h @ (lam * lin.D * h - lin.g))
        # ---- the model promises less than rtol * E: converged without a trial evaluation
        if cfg.stop_on_model_decrease and not clamped and pred < cfg.rtol * E:
            status = _CONV
            iterations += 1
            history.append(E)
            break
        # ---- trial point
        lin_t = _Lin(normal_equations(xt), cfg.min_diagonal)
        Et = lin_t.E
        frozen_t = frozen_of(xt, lin_t.g) if bounded else frozen
        pg_t = np.where(frozen_t, 0.0, lin_t.g)
        ok_t = lin_t.ok
        actual = E - Et
        rho = actual / pred if pred > 0 else 0.0
        accept = ok_t and actual > 0 and rho >= cfg.accept_ratio
        # ---- damping
        if nielsen:
            if accept:
                t = 2.0 * rho - 1.0
                lam *= max(1.0 / 3.0, 1.0 - t * t * t)
                nu = 2.0
            else:
                lam *= nu
                nu *= 2.0
        else:
            lam = lam * 0.1 if accept else lam * 10.0
        lam = max(lam, cfg.min_damping)
        # ---- update and stopping rules
        hh, xx = float(h @ h), float(xt @ xt)
        conv = math.sqrt(hh) <= cfg.xtol * (math.sqrt(xx) + cfg.xtol)
        conv |= (not accept) and ok_t and pred < cfg.rtol * E and not clamped
        if accept:
            E_prev = E
            x, E, lin, frozen, pg = xt, Et, lin_t, frozen_t, pg_t
            rel = actual / (E_prev if E_prev > 0 else 1.0)
            conv |= rel < cfg.rtol or E == 0 or np.abs(pg).max(initial=0.0) <= cfg.gtol
        iterations += 1
        if conv:
            status = _CONV
        elif not accept and lam > cfg.max_damping:
            status = _STALL
        elif singular:
            status = _SING
        history.append(E)
    if status == _RUN:
        status = _MAXIT
    rank_def = _rank_deficient(lin.H, lin.diag, ~frozen) if cfg.check_rank else False
    return DenseResult(x, E, E0, status, iterations, lam, history, float(np.abs(pg).max(initial=0.0)), rank_def)
