"""Tests of the face-agnostic batched least-squares solver (facerender.fitting.solver)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facerender.errors import ShapeError
from facerender.fitting.solver import (
    AdamConfig,
    GaussNewtonConfig,
    LeastSquaresProblem,
    RobustLoss,
    SolverStatus,
    evaluate_energy,
    jacobian_autodiff,
    solve,
)

# torch warns once, from its own forward-AD set-up, that torch.jit.script is deprecated: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

# Solution tolerances per dtype (a converged nonlinear solve, not a single op: looser than conftest.TOL).
SOL_TOL = {torch.float32: dict(rtol=2e-3, atol=2e-3), torch.float64: dict(rtol=1e-7, atol=1e-7)}


# --------------------------------------------------------------------------------------------------------------
# standard problems


def rosenbrock_problem(a: torch.Tensor) -> LeastSquaresProblem:
    """r = (a - x0, 10 (x1 - x0^2)); minimum at (a, a^2). ``a (B,)``."""

    def residuals(x):
        return torch.stack([a - x[:, 0], 10.0 * (x[:, 1] - x[:, 0] ** 2)], -1)

    def jacobian(x):
        z, o = torch.zeros_like(x[:, 0]), torch.ones_like(x[:, 0])
        J = torch.stack([torch.stack([-o, z], -1), torch.stack([-20.0 * x[:, 0], 10.0 * o], -1)], 1)
        return residuals(x), J

    return LeastSquaresProblem(residuals=residuals, jacobian=jacobian)


def exp_data(dtype, device, B=3, n=40):
    t = torch.linspace(0, 4, n, dtype=dtype, device=device)
    p_true = torch.tensor([[2.0, -1.3, 0.5], [1.0, -0.3, -0.2], [-1.5, -0.7, 1.0]], dtype=dtype, device=device)[:B]
    y = p_true[:, :1] * torch.exp(p_true[:, 1:2] * t) + p_true[:, 2:]
    return t, y, p_true


EXP_X0 = [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-1.0, -0.5, 0.0]]  # item 2 needs the sign of its amplitude


def exp_problem(t, y, analytic=True) -> LeastSquaresProblem:
    """y = p0 exp(p1 t) + p2."""

    def residuals(p):
        return p[:, :1] * torch.exp(p[:, 1:2] * t) + p[:, 2:] - y

    def jacobian(p):
        e = torch.exp(p[:, 1:2] * t)
        J = torch.stack([e, p[:, :1] * t * e, torch.ones_like(e)], -1)
        return p[:, :1] * e + p[:, 2:] - y, J

    return LeastSquaresProblem(residuals=residuals, jacobian=jacobian if analytic else None)


def linear_problem(A, b, **kw) -> LeastSquaresProblem:
    """r = A x - b with ``A (B, N, P)``, ``b (B, N)``."""
    return LeastSquaresProblem(residuals=lambda x: (A @ x.unsqueeze(-1)).squeeze(-1) - b,
                               jacobian=lambda x: ((A @ x.unsqueeze(-1)).squeeze(-1) - b, A), **kw)


def euler_projection_problem(B, dtype, seed=0):
    """Perspective projection of points rotated by Euler angles: a small nonlinear problem with an analytic J."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(10, 3, generator=g, dtype=dtype)
    target = torch.randn(B, 20, generator=g, dtype=dtype) * 0.1

    def rot(ang):
        a, b, c = ang.unbind(-1)
        o, z = torch.ones_like(a), torch.zeros_like(a)
        Rx = torch.stack([o, z, z, z, a.cos(), -a.sin(), z, a.sin(), a.cos()], -1).view(-1, 3, 3)
        dRx = torch.stack([z, z, z, z, -a.sin(), -a.cos(), z, a.cos(), -a.sin()], -1).view(-1, 3, 3)
        Ry = torch.stack([b.cos(), z, b.sin(), z, o, z, -b.sin(), z, b.cos()], -1).view(-1, 3, 3)
        dRy = torch.stack([-b.sin(), z, b.cos(), z, z, z, -b.cos(), z, -b.sin()], -1).view(-1, 3, 3)
        Rz = torch.stack([c.cos(), -c.sin(), z, c.sin(), c.cos(), z, z, z, o], -1).view(-1, 3, 3)
        dRz = torch.stack([-c.sin(), -c.cos(), z, c.cos(), -c.sin(), z, z, z, z], -1).view(-1, 3, 3)
        return Rz @ Ry @ Rx, (Rz @ Ry @ dRx, Rz @ dRy @ Rx, dRz @ Ry @ Rx)

    def residuals(x):
        R, _ = rot(x[:, :3])
        c = pts @ R.transpose(1, 2) + x[:, None, 3:6] + torch.tensor([0.0, 0.0, 8.0], dtype=dtype)
        return (c[..., :2] / c[..., 2:]).reshape(x.shape[0], -1) - target

    def jacobian(x):
        R, dR = rot(x[:, :3])
        c = pts @ R.transpose(1, 2) + x[:, None, 3:6] + torch.tensor([0.0, 0.0, 8.0], dtype=dtype)
        iz = 1 / c[..., 2]
        dp_dc = torch.zeros(x.shape[0], 10, 2, 3, dtype=dtype)
        dp_dc[..., 0, 0] = iz
        dp_dc[..., 1, 1] = iz
        dp_dc[..., :, 2] = -c[..., :2] * (iz * iz).unsqueeze(-1)
        dc = torch.cat([torch.stack([pts @ d.transpose(1, 2) for d in dR], -1),
                        torch.eye(3, dtype=dtype).expand(x.shape[0], 10, 3, 3)], -1)   # (B, 10, 3, 6)
        J = (dp_dc @ dc).reshape(x.shape[0], 20, 6)
        return residuals(x), J

    return LeastSquaresProblem(residuals=residuals, jacobian=jacobian)


# --------------------------------------------------------------------------------------------------------------
# recovery of known parameters


@pytest.mark.parametrize("damping", ["nielsen", "classic"])
def test_rosenbrock_batched(device, dtype, damping):
    a = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=dtype, device=device)
    x0 = torch.tensor([[-1.2, 1.0], [0.0, 0.0], [2.0, 2.0], [-3.0, 5.0]], dtype=dtype, device=device)
    res = solve(rosenbrock_problem(a), x0, GaussNewtonConfig(max_iterations=150, damping=damping, rtol=1e-10))
    expected = torch.stack([a, a * a], -1)
    torch.testing.assert_close(res.params, expected, **SOL_TOL[dtype])
    assert res.status_names() == ["converged"] * 4
    assert res.params.dtype == dtype and res.params.device.type == device.type
    assert torch.all(res.energy <= res.initial_energy)


@pytest.mark.parametrize("analytic", [True, False], ids=["analytic", "autodiff"])
def test_exponential_fit(device, dtype, analytic):
    t, y, p_true = exp_data(dtype, device)
    x0 = torch.tensor(EXP_X0, dtype=dtype, device=device)
    res = solve(exp_problem(t, y, analytic), x0, GaussNewtonConfig(max_iterations=60, rtol=1e-12))
    torch.testing.assert_close(res.params, p_true, **SOL_TOL[dtype])
    assert res.converged.all()
    assert float(res.energy.max()) < (1e-6 if dtype == torch.float32 else 1e-16)


def test_linear_one_step_equals_lstsq(dtype):
    g = torch.Generator().manual_seed(1)
    A = torch.randn(4, 30, 6, generator=g, dtype=dtype)
    b = torch.randn(4, 30, generator=g, dtype=dtype)
    ref = torch.linalg.lstsq(A.double(), b.double().unsqueeze(-1)).solution.squeeze(-1).to(dtype)
    cfg = GaussNewtonConfig(max_iterations=1, initial_damping=1e-14, min_damping=1e-14, linear_solver="cholesky")
    x0 = torch.zeros(4, 6, dtype=dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    res = solve(linear_problem(A, b), x0, cfg)
    torch.testing.assert_close(res.params, ref, **tol)
    assert res.iterations.tolist() == [1] * 4
    # the same through normal equations
    H = A.transpose(1, 2) @ A

    def normal_equations(x):
        r = (A @ x.unsqueeze(-1)).squeeze(-1) - b
        return H, (A.transpose(1, 2) @ r.unsqueeze(-1)).squeeze(-1), 0.5 * (r * r).sum(-1)

    res_ne = solve(LeastSquaresProblem(normal_equations=normal_equations), x0, cfg)
    torch.testing.assert_close(res_ne.params, ref, **tol)


def test_bounds_solution_on_bound_with_kkt():
    dtype = torch.float64
    g = torch.Generator().manual_seed(2)
    A = torch.randn(3, 25, 5, generator=g, dtype=dtype)
    x_unc = torch.tensor([[0.3, 1.7, -0.4, 0.6, 0.2], [1.2, 0.5, 0.5, -2.0, 0.9], [0.1, 0.2, 0.3, 0.4, 0.5]],
                         dtype=dtype)
    b = (A @ x_unc.unsqueeze(-1)).squeeze(-1)
    lower, upper = torch.zeros(5, dtype=dtype), torch.ones(5, dtype=dtype)
    prob = linear_problem(A, b, lower=lower, upper=upper)
    res = solve(prob, torch.full((3, 5), 0.5, dtype=dtype), GaussNewtonConfig(max_iterations=50, rtol=1e-14))
    x = res.params
    assert torch.all((x >= lower) & (x <= upper))
    # reference: scipy's bounded linear least squares
    from scipy.optimize import lsq_linear

    for i in range(3):
        ref = lsq_linear(A[i].numpy(), b[i].numpy(), bounds=(0.0, 1.0), tol=1e-14, lsmr_tol="auto").x
        np.testing.assert_allclose(x[i].numpy(), ref, atol=1e-7)
    # items 0 and 1 have their unconstrained optimum outside: some parameters sit EXACTLY on a bound
    at_lo, at_hi = x == 0.0, x == 1.0
    assert at_lo[:2].any(-1).all() or at_hi[:2].any(-1).all()
    assert (at_lo | at_hi)[2].sum() == 0  # item 2 is feasible: interior optimum == x_unc
    torch.testing.assert_close(x[2], x_unc[2], rtol=1e-8, atol=1e-8)
    # KKT: gradient zero on free parameters, pointing outward on active ones
    grad = (A.transpose(1, 2) @ ((A @ x.unsqueeze(-1)).squeeze(-1) - b).unsqueeze(-1)).squeeze(-1)
    free = ~(at_lo | at_hi)
    assert grad[free].abs().max() < 1e-8
    assert torch.all(grad[at_lo] >= -1e-10) and torch.all(grad[at_hi] <= 1e-10)
    assert float(res.gradient_norm.max()) < 1e-8


def test_bounds_blendshape_weights_in_unit_interval(dtype):
    """Weights pushed beyond [0, 1] by the data stay exactly in [0, 1]; x0 outside the box is projected."""
    g = torch.Generator().manual_seed(3)
    basis = torch.randn(2, 40, 8, generator=g, dtype=dtype)
    w_true = torch.tensor([[1.4, -0.3, 0.5, 0.2, 1.0, 0.0, 0.7, 2.0]] * 2, dtype=dtype)
    target = (basis @ w_true.unsqueeze(-1)).squeeze(-1)
    prob = linear_problem(basis, target, lower=torch.zeros(8, dtype=dtype), upper=torch.ones(8, dtype=dtype))
    x0 = torch.full((2, 8), 3.0, dtype=dtype)
    res = solve(prob, x0, GaussNewtonConfig(max_iterations=100))
    assert res.params.min() >= 0 and res.params.max() <= 1
    assert (res.params == 1).any() and (res.params == 0).any()
    assert torch.equal(x0, torch.full((2, 8), 3.0, dtype=dtype))  # caller's tensor untouched


@pytest.mark.parametrize("where", ["last", "middle"])
def test_schur_bounded_step_equals_dense_rounds(where):
    """With a large unbounded block and the bounds on one range (pose + identity | expression), the solver eliminates
    the unbounded block (Schur complement) and refactors only the bounded one per active-set round: the same steps
    as the dense rounds, so the same solution, which scipy's bounded least squares confirms."""
    import facerender.fitting.solver as S

    dtype = torch.float64
    g = torch.Generator().manual_seed(11)
    P, ne = 40, 12
    A = torch.randn(2, 90, P, generator=g, dtype=dtype)
    x_unc = torch.randn(2, P, generator=g, dtype=dtype)
    b = (A @ x_unc.unsqueeze(-1)).squeeze(-1)
    a0 = P - ne if where == "last" else 10
    lo = torch.full((P,), -math.inf, dtype=dtype)
    hi = torch.full((P,), math.inf, dtype=dtype)
    lo[a0:a0 + ne], hi[a0:a0 + ne] = 0.0, 1.0
    assert S._bound_split(lo.expand(2, P), hi.expand(2, P)) == (a0, a0 + ne)
    cfg = GaussNewtonConfig(max_iterations=60, rtol=1e-14, linear_solver="cholesky")
    x0 = torch.full((2, P), 0.5, dtype=dtype)
    res = solve(linear_problem(A, b, lower=lo, upper=hi), x0, cfg)
    orig = S._bound_split
    try:
        S._bound_split = lambda lo, hi: None  # dense active-set rounds
        dense = solve(linear_problem(A, b, lower=lo, upper=hi), x0, cfg)
    finally:
        S._bound_split = orig
    torch.testing.assert_close(res.params, dense.params, rtol=1e-9, atol=1e-9)
    x = res.params
    assert torch.all(x[:, a0:a0 + ne] >= 0) and torch.all(x[:, a0:a0 + ne] <= 1)
    assert bool(((x[:, a0:a0 + ne] == 0) | (x[:, a0:a0 + ne] == 1)).any())  # some bounds are active
    from scipy.optimize import lsq_linear

    for i in range(2):
        ref = lsq_linear(A[i].numpy(), b[i].numpy(), bounds=(lo.numpy(), hi.numpy()), tol=1e-14).x
        np.testing.assert_allclose(x[i].numpy(), ref, atol=1e-7)
    # one split step equals one dense step, round for round
    lin = S._Lin(torch.zeros(2, dtype=dtype), torch.randn(2, P, generator=g, dtype=dtype),
                 torch.ones(2, P, dtype=dtype), A.mT @ A, None, 1e-6)
    lin.diag = lin.H.diagonal(dim1=-2, dim2=-1)
    lin.D = lin.diag.clone()
    lam = torch.full((2,), 1e-3, dtype=dtype)
    xs = torch.rand(2, P, generator=g, dtype=dtype)
    xs[:, a0:a0 + 3] = 0.0
    frozen = S._frozen(xs, lin.g, lo.expand(2, P), hi.expand(2, P))
    for rounds in (1, 2, 4):
        h1 = S._solve_schur_bounded(lin, lam, -lin.g.masked_fill(frozen, 0), frozen, xs, lo.expand(2, P),
                                    hi.expand(2, P), rounds, (a0, a0 + ne))
        h2, _ = S._solve_cholesky_bounded(lin, lam, -lin.g.masked_fill(frozen, 0), frozen, xs, lo.expand(2, P),
                                          hi.expand(2, P), 3, rounds)
        torch.testing.assert_close(h1, h2, rtol=1e-9, atol=1e-9)


def test_stop_on_model_decrease_saves_the_confirming_step():
    """``stop_on_model_decrease`` stops when the model promises less than rtol * E: fewer linearisations, an energy
    within rtol of the default rule's."""
    dtype = torch.float64
    t, y, _ = exp_data(dtype, "cpu")
    y = y + 0.05 * torch.randn(y.shape, generator=torch.Generator().manual_seed(4), dtype=dtype)  # a noise floor
    calls = {"n": 0}
    base = exp_problem(t, y)

    def jac(p):
        calls["n"] += 1
        return base.jacobian(p)

    prob = LeastSquaresProblem(residuals=base.residuals, jacobian=jac)
    x0 = torch.tensor(EXP_X0, dtype=dtype)
    ref = solve(prob, x0, GaussNewtonConfig(rtol=1e-3, linear_solver="cholesky"))
    n_ref = calls["n"]
    calls["n"] = 0
    res = solve(prob, x0, GaussNewtonConfig(rtol=1e-3, linear_solver="cholesky", stop_on_model_decrease=True))
    assert calls["n"] < n_ref
    assert res.status_names() == ["converged"] * 3
    assert torch.all(res.energy <= ref.energy * (1 + 1e-3) + 1e-12)


# --------------------------------------------------------------------------------------------------------------
# Jacobians


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_analytic_jacobian_equals_autodiff(mode):
    dtype = torch.float64
    t, y, _ = exp_data(dtype, "cpu")
    x = torch.tensor([[1.0, -0.5, 0.1], [0.3, 0.2, -1.0], [2.0, -1.0, 0.0]], dtype=dtype)
    cases = [(exp_problem(t, y), x), (euler_projection_problem(3, dtype), torch.cat([x * 0.2, x * 0.3], 1))]
    for prob, xx in cases:
        r_a, J_a = prob.jacobian(xx)
        for chunk in (None, 2):
            r_d, J_d = jacobian_autodiff(prob.residuals, xx, mode, chunk)
            torch.testing.assert_close(r_d, r_a, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(J_d, J_a, rtol=1e-10, atol=1e-10)
        # item by item with torch.autograd.functional.jacobian as the independent reference
        for i in range(xx.shape[0]):
            def item_i(v, i=i):
                return prob.residuals(torch.cat([xx[:i], v[None], xx[i + 1:]]))[i]

            J_ref = torch.autograd.functional.jacobian(item_i, xx[i])
            torch.testing.assert_close(J_a[i], J_ref, rtol=1e-10, atol=1e-10)


def test_autodiff_and_analytic_solves_agree():
    dtype = torch.float64
    prob = euler_projection_problem(2, dtype)
    x0 = torch.zeros(2, 6, dtype=dtype)
    cfg = GaussNewtonConfig(max_iterations=50, rtol=1e-14)
    r1 = solve(prob, x0, cfg)
    r2 = solve(LeastSquaresProblem(residuals=prob.residuals), x0, cfg)
    r3 = solve(LeastSquaresProblem(residuals=prob.residuals), x0, GaussNewtonConfig(max_iterations=50, rtol=1e-14,
                                                                                      autodiff="reverse"))
    torch.testing.assert_close(r2.params, r1.params, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(r3.params, r1.params, rtol=1e-8, atol=1e-8)


def test_linearize_at_trial_same_result():
    dtype = torch.float64
    t, y, p_true = exp_data(dtype, "cpu")
    x0 = torch.tensor(EXP_X0, dtype=dtype)
    res = [solve(exp_problem(t, y), x0, GaussNewtonConfig(max_iterations=60, rtol=1e-12, linearize_at_trial=v))
           for v in (True, False)]
    torch.testing.assert_close(res[0].params, res[1].params, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(res[0].energy_history, res[1].energy_history, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------------------------
# linear solvers


def test_pcg_close_to_cholesky(device):
    dtype = torch.float64
    g = torch.Generator().manual_seed(4)
    P = 40
    A = (torch.randn(2, 200, P, generator=g, dtype=dtype) / math.sqrt(200) + torch.eye(200, P, dtype=dtype) * 2).to(
        device)
    b = torch.randn(2, 200, generator=g, dtype=dtype).to(device)
    x0 = torch.zeros(2, P, dtype=dtype, device=device)
    chol = solve(linear_problem(A, b), x0, GaussNewtonConfig(linear_solver="cholesky", rtol=1e-14))
    # one outer step with enough inner steps equals the Cholesky step
    one = GaussNewtonConfig(linear_solver="pcg", pcg_iterations=25, max_iterations=1, initial_damping=1e-14,
                            min_damping=1e-14)
    pcg1 = solve(linear_problem(A, b), x0, one)
    torch.testing.assert_close(pcg1.params, chol.params, rtol=1e-8, atol=1e-8)
    # Face2Face's 4 inner steps: more outer iterations, same solution
    pcg4 = solve(linear_problem(A, b), x0, GaussNewtonConfig(linear_solver="pcg", pcg_iterations=4, rtol=1e-14,
                                                             max_iterations=50))
    torch.testing.assert_close(pcg4.params, chol.params, rtol=1e-6, atol=1e-6)
    assert pcg4.linear_solver == "pcg" and chol.linear_solver == "cholesky"


def test_pcg_on_normal_equations_and_auto_choice():
    dtype = torch.float64
    g = torch.Generator().manual_seed(5)
    P = 30
    A = torch.randn(1, 100, P, generator=g, dtype=dtype) + torch.eye(100, P, dtype=dtype) * 5
    b = torch.randn(1, 100, generator=g, dtype=dtype)
    H = A.transpose(1, 2) @ A

    def normal_equations(x):
        r = (A @ x.unsqueeze(-1)).squeeze(-1) - b
        return H, (A.transpose(1, 2) @ r.unsqueeze(-1)).squeeze(-1), 0.5 * (r * r).sum(-1)

    prob = LeastSquaresProblem(normal_equations=normal_equations)
    x0 = torch.zeros(1, P, dtype=dtype)
    ref = torch.linalg.lstsq(A, b.unsqueeze(-1)).solution.squeeze(-1)
    res = solve(prob, x0, GaussNewtonConfig(linear_solver="auto", auto_pcg_parameters=10, rtol=1e-15,
                                            max_iterations=100))
    assert res.linear_solver == "pcg"
    torch.testing.assert_close(res.params, ref, rtol=1e-7, atol=1e-7)
    assert solve(prob, x0).linear_solver == "cholesky"


def test_pcg_with_bounds(dtype):
    g = torch.Generator().manual_seed(6)
    A = torch.randn(2, 60, 10, generator=g, dtype=dtype) + torch.eye(60, 10, dtype=dtype) * 3
    x_true = torch.linspace(-1, 2, 10, dtype=dtype).expand(2, 10)
    b = (A @ x_true.unsqueeze(-1)).squeeze(-1)
    kw = dict(lower=torch.zeros(10, dtype=dtype), upper=torch.ones(10, dtype=dtype))
    x0 = torch.full((2, 10), 0.5, dtype=dtype)
    chol = solve(linear_problem(A, b, **kw), x0, GaussNewtonConfig(linear_solver="cholesky", max_iterations=60))
    pcg = solve(linear_problem(A, b, **kw), x0, GaussNewtonConfig(linear_solver="pcg", max_iterations=200,
                                                                   pcg_iterations=4, rtol=1e-12))
    assert pcg.params.min() >= 0 and pcg.params.max() <= 1
    torch.testing.assert_close(pcg.params, chol.params, **SOL_TOL[dtype])


# --------------------------------------------------------------------------------------------------------------
# robust losses and weights


def _line_with_outliers(dtype, seed=7, n=50):
    g = torch.Generator().manual_seed(seed)
    xs = torch.linspace(-1, 1, n, dtype=dtype)
    ys = 2.0 * xs + 1.0 + 0.01 * torch.randn(n, generator=g, dtype=dtype)
    out = torch.randperm(n, generator=g)[: n // 5]  # 20 % gross outliers
    ys[out] += 5.0 + 10.0 * torch.rand(len(out), generator=g, dtype=dtype)
    return xs, ys


@pytest.mark.parametrize("kind,scale", [("huber", 0.05), ("cauchy", 0.05)])
def test_robust_line_fit_rejects_outliers(dtype, kind, scale):
    xs, ys = _line_with_outliers(dtype)

    def residuals(p):
        return p[:, :1] * xs + p[:, 1:] - ys

    x0 = torch.zeros(1, 2, dtype=dtype)
    l2 = solve(LeastSquaresProblem(residuals=residuals), x0)
    rob = solve(LeastSquaresProblem(residuals=residuals, loss=RobustLoss(kind, scale)), x0,
                GaussNewtonConfig(max_iterations=100))
    truth = torch.tensor([[2.0, 1.0]], dtype=dtype)
    assert (l2.params - truth).abs().max() > 0.5  # plain least squares is ruined
    torch.testing.assert_close(rob.params, truth, rtol=0, atol=0.02)
    assert rob.converged.all()
    # the IRLS gradient is the gradient of the robust energy: Adam on the same energy finds the same point
    ad = solve(LeastSquaresProblem(residuals=residuals, loss=RobustLoss(kind, scale)), rob.params + 0.05,
               method="adam", lr=0.002, steps=2000)
    assert float(ad.energy) >= float(rob.energy) - 1e-4
    torch.testing.assert_close(ad.params, rob.params, rtol=0, atol=0.01)


def test_l21_group_loss_is_robust():
    """Colour-like 3-vectors with 20 % outliers: the l2,1 norm (weight 1 / ||r_group||) finds the inlier value."""
    dtype = torch.float64
    g = torch.Generator().manual_seed(8)
    truth = torch.tensor([0.2, 0.5, 0.7], dtype=dtype)
    samples = truth + 0.005 * torch.randn(60, 3, generator=g, dtype=dtype)
    samples[:12] = torch.rand(12, 3, generator=g, dtype=dtype) * 3 + 1  # outlier pixels

    def residuals(c):  # (1, 3) -> (1, 60 * 3), grouped by pixel
        return (c[:, None, :] - samples).reshape(1, -1)

    x0 = torch.zeros(1, 3, dtype=dtype)
    l2 = solve(LeastSquaresProblem(residuals=residuals), x0)
    l21 = solve(LeastSquaresProblem(residuals=residuals, loss=RobustLoss("l21", 1e-4, group=3)), x0,
                GaussNewtonConfig(max_iterations=100))
    assert (l2.params - truth).abs().max() > 0.2
    torch.testing.assert_close(l21.params[0], truth, rtol=0, atol=0.01)
    # energy definition: 0.5 * sum 2 (sqrt(n^2 + c^2) - c) ~ sum of per-pixel norms
    n = (l21.params[:, None, :] - samples).norm(dim=-1)
    torch.testing.assert_close(l21.energy, (torch.sqrt(n * n + 1e-8) - 1e-4).sum(-1, keepdim=True).squeeze(-1))


def test_per_residual_weights_match_closed_form():
    dtype = torch.float64
    g = torch.Generator().manual_seed(9)
    A = torch.randn(2, 30, 4, generator=g, dtype=dtype)
    b = torch.randn(2, 30, generator=g, dtype=dtype)
    w = torch.rand(2, 30, generator=g, dtype=dtype) + 0.1
    res = solve(linear_problem(A, b, weights=w), torch.zeros(2, 4, dtype=dtype),
                GaussNewtonConfig(rtol=1e-15, max_iterations=20))
    Aw, bw = A * w.unsqueeze(-1), b * w
    ref = torch.linalg.lstsq(Aw, bw.unsqueeze(-1)).solution.squeeze(-1)
    torch.testing.assert_close(res.params, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(res.energy, evaluate_energy(linear_problem(A, b, weights=w), res.params))
    r = (Aw @ res.params.unsqueeze(-1)).squeeze(-1) - bw
    torch.testing.assert_close(res.energy, 0.5 * (r * r).sum(-1))


# --------------------------------------------------------------------------------------------------------------
# numerical trouble


def test_singular_parameter_finite_and_flagged(dtype):
    """Parameter 2 does not affect the residuals: finite result, it stays put, the item is flagged."""

    def residuals(x):
        return torch.stack([x[:, 0] - 1.0, 2.0 * (x[:, 1] + 3.0), x[:, 0] + x[:, 1] + 0.0 * x[:, 2]], -1)

    x0 = torch.tensor([[0.0, 0.0, 0.7]], dtype=dtype)
    res = solve(LeastSquaresProblem(residuals=residuals), x0)
    assert torch.isfinite(res.params).all()
    assert float(res.params[0, 2]) == pytest.approx(0.7)
    assert res.rank_deficient.tolist() == [True]
    assert res.status_names() == ["converged"]
    ok = solve(LeastSquaresProblem(residuals=lambda x: x[:, :2] - 1.0), torch.zeros(1, 2, dtype=dtype))
    assert ok.rank_deficient.tolist() == [False]
    # collinear parameters (only x0 + x1 is observed): flagged; very different units: not flagged
    coll = solve(LeastSquaresProblem(residuals=lambda x: torch.stack([x[:, 0] + x[:, 1] - 1, x[:, 0] + x[:, 1]], -1)),
                 torch.zeros(1, 2, dtype=dtype))
    assert coll.rank_deficient.tolist() == [True] and torch.isfinite(coll.params).all()
    units = solve(LeastSquaresProblem(residuals=lambda x: torch.stack([1e3 * x[:, 0] - 1, 1e-3 * x[:, 1] - 1,
                                                                       x[:, 0] + 1e-6 * x[:, 1]], -1)),
                  torch.zeros(1, 2, dtype=dtype))
    assert units.rank_deficient.tolist() == [False]


def test_singular_normal_equations_without_damping_floor():
    """An exactly singular, even indefinite, JtJ: Cholesky fails, the fallback keeps the result finite."""
    dtype = torch.float64
    H = torch.tensor([[[1.0, 0.0], [0.0, -1e-3]]], dtype=dtype)  # broken user matrix: indefinite

    def normal_equations(x):
        return H, torch.tensor([[1.0, 0.0]], dtype=dtype) * (x[:, :1] - 2.0), 0.5 * (x[:, 0] - 2.0) ** 2

    res = solve(LeastSquaresProblem(normal_equations=normal_equations), torch.zeros(1, 2, dtype=dtype),
                GaussNewtonConfig(initial_damping=1e-12, min_damping=1e-12))
    assert torch.isfinite(res.params).all()
    assert float(res.params[0, 0]) == pytest.approx(2.0, abs=1e-6)
    assert float(res.params[0, 1]) == 0.0


def test_nan_at_start_is_flagged_and_returns_x0(device, dtype):
    def residuals(x):
        r = x - 1.0
        bad = x[:, :1] > 5.0
        return torch.where(bad, torch.full_like(r, float("nan")), r)

    x0 = torch.tensor([[0.0, 0.0], [6.0, 0.0], [2.0, 3.0]], dtype=dtype, device=device)
    for linear_solver in ("cholesky", "pcg"):
        res = solve(LeastSquaresProblem(residuals=residuals), x0, GaussNewtonConfig(linear_solver=linear_solver))
        assert res.status.tolist() == [SolverStatus.CONVERGED, SolverStatus.FAILED_NAN, SolverStatus.CONVERGED]
        assert torch.isfinite(res.params).all()
        torch.testing.assert_close(res.params[1], x0[1], rtol=0, atol=0)
        torch.testing.assert_close(res.params[[0, 2]], torch.ones(2, 2, dtype=dtype, device=device),
                                   **SOL_TOL[dtype])
        assert torch.isnan(res.energy[1]) and torch.isfinite(res.energy[[0, 2]]).all()


def test_nan_step_is_rejected_and_damping_grows():
    """log(x) residuals: the first Gauss-Newton step lands at x < 0 (NaN) and must be rejected."""
    dtype = torch.float64
    target = torch.tensor([[0.1], [2.0]], dtype=dtype)
    calls = []

    def residuals(x):
        calls.append(x.clone())
        return torch.log(x) - torch.log(target)

    x0 = torch.tensor([[10.0], [2.5]], dtype=dtype)
    res = solve(LeastSquaresProblem(residuals=residuals), x0, GaussNewtonConfig(max_iterations=50))
    assert any(bool((c[0] < 0).any()) for c in calls)  # a NaN trial point was visited ...
    assert torch.isfinite(res.params).all()  # ... and rejected
    torch.testing.assert_close(res.params, target, rtol=1e-8, atol=1e-10)
    assert res.converged.all()
    assert torch.all(res.energy_history[1:] <= res.energy_history[:-1])


def test_energy_history_monotone_and_statuses():
    dtype = torch.float64
    a = torch.tensor([1.0, 2.0], dtype=dtype)
    x0 = torch.tensor([[-1.2, 1.0], [0.0, 0.0]], dtype=dtype)
    res = solve(rosenbrock_problem(a), x0, GaussNewtonConfig(max_iterations=3))
    assert res.status_names() == ["max_iterations"] * 2
    assert res.energy_history.shape == (4, 2)
    torch.testing.assert_close(res.energy_history[0], res.initial_energy)
    torch.testing.assert_close(res.energy_history[-1], res.energy)
    assert torch.all(res.energy_history[1:] <= res.energy_history[:-1])
    assert res.iterations.tolist() == [3, 3]
    # already at the optimum: converged without iterating
    at = solve(rosenbrock_problem(a), torch.stack([a, a * a], -1))
    assert at.status_names() == ["converged"] * 2 and at.iterations.tolist() == [0, 0]


def test_batch_equals_loop():
    dtype = torch.float64
    t, y, _ = exp_data(dtype, "cpu")
    x0 = torch.tensor([[1.0, 0.0, 0.0], [0.5, -0.1, 0.0], [-1.0, -1.0, 0.5]], dtype=dtype)
    cfg = GaussNewtonConfig(max_iterations=40, rtol=1e-12)
    batch = solve(exp_problem(t, y), x0, cfg)
    for i in range(3):
        one = solve(exp_problem(t, y[i:i + 1]), x0[i:i + 1], cfg)
        torch.testing.assert_close(one.params[0], batch.params[i], rtol=1e-12, atol=1e-12)
        assert int(one.iterations) == int(batch.iterations[i])
        assert one.status_names()[0] == batch.status_names()[i]
        n = int(one.iterations) + 1
        torch.testing.assert_close(one.energy_history[:n, 0], batch.energy_history[:n, i])
        torch.testing.assert_close(one.damping[0], batch.damping[i])


def test_converged_items_stop_changing():
    """Items finishing early keep their parameters while the others iterate."""
    dtype = torch.float64
    a = torch.tensor([1.0, 1.0], dtype=dtype)
    x0 = torch.tensor([[0.9, 0.8], [-3.0, 5.0]], dtype=dtype)
    seen = []
    jac = rosenbrock_problem(a).jacobian

    def jacobian(x):
        seen.append(x.clone())
        return jac(x)

    res = solve(LeastSquaresProblem(jacobian=jacobian), x0, GaussNewtonConfig(max_iterations=100))
    assert res.converged.all()
    assert int(res.iterations[0]) < int(res.iterations[1])
    first = next(i for i, s in enumerate(seen) if torch.equal(s[0], res.params[0]))
    assert first < len(seen) - 3
    assert all(torch.equal(s[0], res.params[0]) for s in seen[first:])  # item 0 never moves again
    assert not all(torch.equal(s[1], res.params[1]) for s in seen[first:])  # while item 1 still does


def test_warm_start_damping():
    dtype = torch.float64
    t, y, p_true = exp_data(dtype, "cpu")
    x0 = torch.tensor(EXP_X0, dtype=dtype)
    first = solve(exp_problem(t, y), x0, GaussNewtonConfig(max_iterations=4))
    assert first.damping.shape == (3,) and torch.all(first.damping > 0)
    second = solve(exp_problem(t, y), first.params, GaussNewtonConfig(max_iterations=60, rtol=1e-12),
                   damping=first.damping)
    torch.testing.assert_close(second.params, p_true, rtol=1e-7, atol=1e-7)
    with pytest.raises(ShapeError, match=r"damping must be a number or a \(B,\)"):
        solve(exp_problem(t, y), x0, damping=torch.ones(2, dtype=dtype))


# --------------------------------------------------------------------------------------------------------------
# Adam baseline


def test_adam_reaches_same_optimum_more_slowly():
    dtype = torch.float64
    g = torch.Generator().manual_seed(10)
    A = torch.randn(2, 20, 3, generator=g, dtype=dtype)
    x_true = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], dtype=dtype)
    b = (A @ x_true.unsqueeze(-1)).squeeze(-1)
    prob = LeastSquaresProblem(residuals=lambda x: (A @ x.unsqueeze(-1)).squeeze(-1) - b)
    x0 = torch.zeros(2, 3, dtype=dtype)
    gn = solve(prob, x0)
    ad = solve(prob, x0, method="adam", lr=0.05, steps=3000)
    torch.testing.assert_close(gn.params, x_true, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(ad.params, x_true, rtol=0, atol=1e-3)
    assert ad.method == "adam" and ad.damping is None
    assert int(gn.iterations.max()) <= 5 < 100 < int(ad.iterations.min())
    assert ad.energy_history.shape == (3001, 2)
    # with bounds: projection keeps Adam feasible
    lo = torch.zeros(3, dtype=dtype)
    adb = solve(LeastSquaresProblem(residuals=prob.residuals, lower=lo), x0, AdamConfig(lr=0.05, steps=500),
                method="adam")
    gnb = solve(LeastSquaresProblem(residuals=prob.residuals, lower=lo), x0)
    assert adb.params.min() >= 0
    torch.testing.assert_close(adb.params, gnb.params, rtol=0, atol=2e-3)


def test_adam_nan_start_flagged():
    def residuals(x):
        return torch.where(x > 5, torch.full_like(x, float("nan")), x - 1)

    x0 = torch.tensor([[0.0], [6.0]])
    res = solve(LeastSquaresProblem(residuals=residuals), x0, method="adam", lr=0.1, steps=200)
    assert res.status_names() == ["max_iterations", "failed_nan"]
    assert torch.isfinite(res.params).all() and float(res.params[1]) == 6.0


# --------------------------------------------------------------------------------------------------------------
# interface


def test_input_validation_messages():
    prob = LeastSquaresProblem(residuals=lambda x: x - 1)
    with pytest.raises(ShapeError, match=r"x0 must have shape \(B, P\).*\(3,\)"):
        solve(prob, torch.zeros(3))
    with pytest.raises(ShapeError, match="NaN/inf"):
        solve(prob, torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ShapeError, match=r"residuals must return \(B, N\) = \(2, N\), got \(3,\)"):
        solve(LeastSquaresProblem(residuals=lambda x: torch.zeros(3)), torch.zeros(2, 2))
    with pytest.raises(ShapeError, match=r"weights must be \(N,\).*got \(5,\)"):
        solve(LeastSquaresProblem(residuals=lambda x: x - 1, weights=torch.ones(5)), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="lower > upper"):
        solve(LeastSquaresProblem(residuals=lambda x: x - 1, lower=torch.ones(2), upper=torch.zeros(2)),
              torch.zeros(1, 2))
    with pytest.raises(ShapeError, match=r"lower bounds must be \(P,\)"):
        solve(LeastSquaresProblem(residuals=lambda x: x - 1, lower=torch.ones(3)), torch.zeros(1, 2))
    with pytest.raises(ShapeError, match=r"J must have shape \(1, 2, 2\), got \(1, 2, 3\)"):
        solve(LeastSquaresProblem(jacobian=lambda x: (x - 1, torch.zeros(1, 2, 3))), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="needs residuals, jacobian or normal_equations"):
        solve(LeastSquaresProblem(), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="normal_equations problem must apply them itself"):
        solve(LeastSquaresProblem(normal_equations=lambda x: None, weights=torch.ones(2)), torch.zeros(1, 2))
    with pytest.raises(ShapeError, match=r"N = 4 residuals is not a multiple of the loss group size 3"):
        solve(LeastSquaresProblem(residuals=lambda x: torch.zeros(1, 4), loss=RobustLoss("l21", group=3)),
              torch.zeros(1, 2))
    with pytest.raises(ValueError, match="damping must be 'nielsen' or 'classic', got 'x'"):
        GaussNewtonConfig(damping="x")
    with pytest.raises(ValueError, match="RobustLoss.kind"):
        RobustLoss("tukey")
    with pytest.raises(ValueError, match="method must be"):
        solve(prob, torch.zeros(1, 2), method="bfgs")
    with pytest.raises(ValueError, match="lr and steps are Adam settings"):
        solve(prob, torch.zeros(1, 2), lr=0.1)
    with pytest.raises(ShapeError, match="dtype and device of x"):
        solve(LeastSquaresProblem(residuals=lambda x: (x - 1).double()), torch.zeros(1, 2))


def test_noncontiguous_input_and_no_aliasing():
    dtype = torch.float64
    t, y, p_true = exp_data(dtype, "cpu")
    x0 = torch.tensor(EXP_X0, dtype=dtype).t().contiguous().t()  # non-contiguous (B, P)
    assert not x0.is_contiguous()
    before = x0.clone()
    res = solve(exp_problem(t, y), x0, GaussNewtonConfig(max_iterations=60, rtol=1e-12))
    torch.testing.assert_close(res.params, p_true, rtol=1e-7, atol=1e-7)
    assert torch.equal(x0, before)
    done = solve(exp_problem(t, y), p_true)  # converged at once: params must still be a new tensor
    assert done.params.data_ptr() != p_true.data_ptr()


def test_requires_grad_inputs_are_detached():
    dtype = torch.float64
    w = torch.tensor([2.0, 3.0], dtype=dtype, requires_grad=True)  # a captured parameter with grad
    prob = LeastSquaresProblem(residuals=lambda x: x * w - 1.0)
    x0 = torch.zeros(1, 2, dtype=dtype, requires_grad=True)
    res = solve(prob, x0)
    assert not res.params.requires_grad
    torch.testing.assert_close(res.params, torch.tensor([[0.5, 1 / 3]], dtype=dtype))
