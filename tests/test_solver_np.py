"""The NumPy twin of the Gauss-Newton solver (fitting/solver_np.py) against the batched torch solver, rule for rule."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facerender.fitting.solver import GaussNewtonConfig, LeastSquaresProblem, SolverStatus, solve
from facerender.fitting.solver_np import gauss_newton_dense, single_threaded_blas


def exp_jacobian(t, y):
    """r = a exp(b t) + c - y (float64, one item)."""
    def jac(p):
        e = torch.exp(p[:, 1:2] * t)
        J = torch.stack([e, p[:, :1] * t * e, torch.ones_like(e)], -1)
        return p[:, :1] * e + p[:, 2:] - y, J
    return jac


def linear_jacobian(A, b):
    def jac(x):
        return (A @ x.unsqueeze(-1)).squeeze(-1) - b, A.expand(x.shape[0], -1, -1)
    return jac


def both(jac):
    """The same problem as normal equations for the torch solver ``(B, P)`` and for the NumPy twin ``(P,)``."""
    def ne_torch(x):
        r, J = jac(x)
        return J.mT @ J, (J.mT @ r.unsqueeze(-1)).squeeze(-1), 0.5 * (r * r).sum(-1)

    def ne_np(x):
        H, g, E = ne_torch(torch.from_numpy(x)[None])
        return H[0].numpy().copy(), g[0].numpy().copy(), float(E[0])
    return ne_torch, ne_np


def compare(jac, x0, cfg, lower=None, upper=None, damping=None):
    ne_torch, ne_np = both(jac)
    lo = None if lower is None else torch.as_tensor(lower, dtype=torch.float64)
    hi = None if upper is None else torch.as_tensor(upper, dtype=torch.float64)
    ref = solve(LeastSquaresProblem(normal_equations=ne_torch, lower=lo, upper=hi), x0[None], cfg, damping=damping)
    res = gauss_newton_dense(ne_np, x0.numpy(), lower, upper, cfg, damping)
    return ref, res


@pytest.mark.parametrize("damping", ["nielsen", "classic"])
@pytest.mark.parametrize("stop_on_model", [False, True])
def test_same_iterates_as_torch_solver_exponential(damping, stop_on_model):
    """A nonlinear fit with noise: the same energies iteration by iteration, the same parameters, status, iteration
    count and final damping as the batched solver (both float64)."""
    g = torch.Generator().manual_seed(3)
    t = torch.linspace(0, 2, 30, dtype=torch.float64)
    y = 2.0 * torch.exp(-1.3 * t) + 0.5 + 0.02 * torch.randn(30, generator=g, dtype=torch.float64)
    cfg = GaussNewtonConfig(damping=damping, rtol=1e-8, linear_solver="cholesky", stop_on_model_decrease=stop_on_model,
                            initial_damping=1e-2)
    ref, res = compare(exp_jacobian(t, y[None]), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), cfg)
    np.testing.assert_allclose(res.params, ref.params[0].numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.energy_history, ref.energy_history[:, 0].numpy(), rtol=1e-10)
    assert res.status_name == ref.status_names()[0] == "converged"
    assert res.iterations == int(ref.iterations[0])
    assert res.damping == pytest.approx(float(ref.damping[0]), rel=1e-10)
    assert res.gradient_norm == pytest.approx(float(ref.gradient_norm[0]), rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("where", ["last", "middle", "scattered"])
def test_bounded_steps_equal_torch_and_scipy(where):
    """Bounds on a trailing range (Schur complement with views), on a middle range (Schur with the unbounded block
    gathered) and on scattered parameters (dense active-set rounds): the same solution as the torch solver and as
    scipy's bounded linear least squares, some bounds active, the bounds exact."""
    from scipy.optimize import lsq_linear

    g = torch.Generator().manual_seed(7)
    P, ne = 40, 12
    A = torch.randn(1, 90, P, generator=g, dtype=torch.float64)
    b = (A @ torch.randn(1, P, 1, generator=g, dtype=torch.float64)).squeeze(-1)
    lo, hi = np.full(P, -math.inf), np.full(P, math.inf)
    idx = {"last": np.arange(P - ne, P), "middle": np.arange(10, 10 + ne), "scattered": np.arange(0, 2 * ne, 2)}[where]
    lo[idx], hi[idx] = 0.0, 1.0
    cfg = GaussNewtonConfig(max_iterations=60, rtol=1e-14, linear_solver="cholesky")
    ref, res = compare(linear_jacobian(A, b), torch.full((P,), 0.5, dtype=torch.float64), cfg, lo, hi)
    np.testing.assert_allclose(res.params, ref.params[0].numpy(), atol=1e-9)
    assert res.iterations == int(ref.iterations[0])
    x = res.params
    assert np.all(x[idx] >= 0) and np.all(x[idx] <= 1) and np.any((x[idx] == 0) | (x[idx] == 1))
    sol = lsq_linear(A[0].numpy(), b[0].numpy(), bounds=(lo, hi), tol=1e-14).x
    np.testing.assert_allclose(x, sol, atol=1e-7)


def test_warm_start_damping_and_budget():
    """A warm-start damping is used as given; the iteration budget is honoured and reported as max_iterations."""
    g = torch.Generator().manual_seed(5)
    t = torch.linspace(0, 2, 30, dtype=torch.float64)
    y = 2.0 * torch.exp(-1.3 * t) + 0.5 + 0.02 * torch.randn(30, generator=g, dtype=torch.float64)
    cfg = GaussNewtonConfig(max_iterations=2, rtol=1e-12, linear_solver="cholesky")
    ref, res = compare(exp_jacobian(t, y[None]), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), cfg,
                       damping=10.0)
    assert res.status_name == ref.status_names()[0] == "max_iterations"
    assert res.iterations == 2 and len(res.energy_history) == 3
    np.testing.assert_allclose(res.params, ref.params[0].numpy(), rtol=1e-10)
    assert res.energy_history[-1] < res.energy_history[0]


def test_bad_input_and_numerical_trouble():
    """NaN at the start: flagged, x0 (projected) returned. NaN at a trial point: rejected, damping grows, the
    solve goes on. A parameter the residuals ignore: finite, flagged rank-deficient. Bad bounds / x0: ValueError."""
    A = torch.randn(1, 20, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b = torch.ones(1, 20, dtype=torch.float64)

    def ne_nan(x):
        return np.eye(4), np.ones(4), math.nan

    res = gauss_newton_dense(ne_nan, np.array([2.0, 0, 0, 0]), np.zeros(4), np.ones(4))
    assert res.status == int(SolverStatus.FAILED_NAN) and np.array_equal(res.params, [1.0, 0, 0, 0])
    _, ne = both(linear_jacobian(A, b))
    calls = {"n": 0}

    def ne_first_trial_nan(x):
        calls["n"] += 1
        H, g, E = ne(x)
        return (H, g, math.nan) if calls["n"] == 2 else (H, g, E)

    res = gauss_newton_dense(ne_first_trial_nan, np.zeros(4), config=GaussNewtonConfig(rtol=1e-12))
    assert res.status_name == "converged" and np.isfinite(res.params).all()
    assert res.energy_history[1] == res.energy_history[0]  # the NaN step was rejected
    A0 = A.clone()
    A0[..., 3] = 0  # x3 is ignored by the residuals
    _, ne0 = both(linear_jacobian(A0, b))
    res = gauss_newton_dense(ne0, np.zeros(4), config=GaussNewtonConfig(rtol=1e-12, check_rank=True))
    assert np.isfinite(res.params).all() and res.params[3] == 0 and res.rank_deficient
    with pytest.raises(ValueError, match="lower > upper"):
        gauss_newton_dense(ne, np.zeros(4), np.ones(4), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        gauss_newton_dense(ne, np.array([0, math.nan, 0, 0]))


def test_single_threaded_blas_is_scoped():
    """Inside the context the OpenBLAS pools run one thread; afterwards they are back to what they were."""
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    with single_threaded_blas():
        inside = blas_threads()
    assert all(n == 1 for n in inside)
    assert blas_threads() == before
