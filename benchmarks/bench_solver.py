"""Benchmark of the batched Gauss-Newton solver (facerender.fitting.solver).

Prints a table of per-iteration times (median and minimum of repeats) and can write JSON:

1. landmark-sized problem (P = 159 = pose 6 + identity 100 + expression 53, N = 295 = 68 2-D landmarks + 159 prior
   residuals), Cholesky, with the analytic Jacobian and with the forward / reverse autodiff Jacobian; plus the
   autodiff alternatives (``vmap(jacfwd)`` per item, ``torch.autograd.functional.jacobian``) as the baseline;
2. photometric-sized problem (P = 200, N = 50,000 residuals, a dense J given, cond(J^T J) ~ 1e3, noise-free so
   that x_true is the solution), Cholesky vs PCG (4 inner steps), batch 1 and 16;
3. full landmark fit (time to convergence) and Adam on the same problem as the baseline.

Usage::

    python benchmarks/bench_solver.py [--threads 2] [--repeats 20] [--json out.json] [--quick]

Per-iteration time = (time of a solve with ``max_iterations = k``  - time with ``max_iterations = 0``) / k with all
tolerances off, so it includes the Jacobian / normal equations, the linear solve, the trial energy and the
bookkeeping of one LM iteration but not the set-up.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from typing import Tuple

import torch

from _timing import wall_times
from facerender.fitting.solver import (AdamConfig, GaussNewtonConfig, LeastSquaresProblem, jacobian_autodiff,
                                       solve)


# --------------------------------------------------------------------------------------------------------------
# problems


def euler_rotation(angles: torch.Tensor):
    """``R = Rz(c) Ry(b) Rx(a)`` and its three derivatives, each ``(B, 3, 3)``, for ``angles (B, 3) = (a, b, c)``."""
    a, b, c = angles.unbind(-1)
    ca, sa, cb, sb, cc, sc = a.cos(), a.sin(), b.cos(), b.sin(), c.cos(), c.sin()
    o, z = torch.ones_like(a), torch.zeros_like(a)

    def m(*e):
        return torch.stack(e, -1).view(-1, 3, 3)

    Rx, dRx = m(o, z, z, z, ca, -sa, z, sa, ca), m(z, z, z, z, -sa, -ca, z, ca, -sa)
    Ry, dRy = m(cb, z, sb, z, o, z, -sb, z, cb), m(-sb, z, cb, z, z, z, -cb, z, -sb)
    Rz, dRz = m(cc, -sc, z, sc, cc, z, z, z, o), m(-sc, -cc, z, cc, -sc, z, z, z, z)
    RzRy = Rz @ Ry
    return RzRy @ Rx, (RzRy @ dRx, Rz @ dRy @ Rx, dRz @ Ry @ Rx)


class LandmarkProblem:
    """A synthetic landmark fit of the size of the real one: perspective projection of a linear face model.

    Parameters ``x (B, 159)``: Euler angles (3), translation (3, cm), identity (100) and expression (53)
    coefficients; residuals: 68 x 2 pixel errors and 159 prior terms ``prior_weight * x`` on the coefficients
    (and a weak one on the pose).
    """

    def __init__(self, B: int = 1, dtype=torch.float32, seed: int = 0, n_landmarks: int = 68, n_id: int = 100,
                 n_expr: int = 53):
        g = torch.Generator().manual_seed(seed)
        self.L, self.K = n_landmarks, n_id + n_expr
        self.P = 6 + self.K
        self.mean = (torch.randn(self.L, 3, generator=g) * 5).to(dtype)
        self.basis = (torch.randn(self.K, self.L * 3, generator=g) * 0.3).to(dtype)  # (K, L*3)
        self.focal = 800.0
        self.offset = torch.tensor([0.0, 0.0, 60.0], dtype=dtype)
        self.prior = torch.full((self.P,), 0.1, dtype=dtype)
        self.prior[:6] = 1e-3
        self.x_true = torch.cat([torch.randn(B, 3, generator=g) * 0.2, torch.randn(B, 3, generator=g),
                                 torch.randn(B, self.K, generator=g)], 1).to(dtype)
        self.target = torch.zeros(B, self.L * 2, dtype=dtype)
        self.target = self.project(self.x_true)

    def project(self, x):
        B = x.shape[0]
        R, _ = euler_rotation(x[:, :3])
        v = torch.addmm(self.mean.reshape(1, -1), x[:, 6:], self.basis).view(B, self.L, 3)
        c = v @ R.transpose(1, 2) + (x[:, 3:6] + self.offset).unsqueeze(1)
        return (self.focal * c[..., :2] / c[..., 2:]).reshape(B, -1)

    def residuals(self, x, target=None):
        target = self.target if target is None else target
        return torch.cat([self.project(x) - target, x * self.prior], 1)

    def jacobian(self, x):
        r, J = self.jacobian_projection(x)
        B = x.shape[0]
        J_prior = torch.diag(self.prior).expand(B, self.P, self.P)
        return torch.cat([r, x * self.prior], 1), torch.cat([J, J_prior], 1)

    def jacobian_projection(self, x):
        """Residuals and Jacobian of the 2L landmark terms only."""
        B, L, K = x.shape[0], self.L, self.K
        R, dR = euler_rotation(x[:, :3])
        v = torch.addmm(self.mean.reshape(1, -1), x[:, 6:], self.basis).view(B, L, 3)
        c = v @ R.transpose(1, 2) + (x[:, 3:6] + self.offset).unsqueeze(1)          # (B, L, 3)
        iz = 1.0 / c[..., 2]
        p = self.focal * c[..., :2] * iz.unsqueeze(-1)                               # (B, L, 2)
        # d p / d c = focal / z [[1, 0, -x/z], [0, 1, -y/z]]                           (B, L, 2, 3)
        f_iz = (self.focal * iz).unsqueeze(-1)
        dp_dc = torch.zeros(B, L, 2, 3, dtype=x.dtype)
        dp_dc[..., 0, 0] = f_iz[..., 0]
        dp_dc[..., 1, 1] = f_iz[..., 0]
        dp_dc[..., :, 2] = -p * iz.unsqueeze(-1)
        # d c / d angles = dR_i v;  d c / d t = I;  d c / d coeffs = R basis_k
        dc_dang = torch.stack([v @ d.transpose(1, 2) for d in dR], -1)                # (B, L, 3, 3)
        J_ang = dp_dc @ dc_dang                                                      # (B, L, 2, 3)
        J_t = dp_dc                                                                  # (B, L, 2, 3)
        A = dp_dc @ R.unsqueeze(1)                                                   # (B, L, 2, 3)
        basis = self.basis.view(K, L, 3)
        J_k = torch.einsum("blij,klj->blik", A, basis)                               # (B, L, 2, K)
        J_proj = torch.cat([J_ang, J_t, J_k], -1).reshape(B, 2 * L, self.P)
        return p.reshape(B, -1) - self.target, J_proj

    def normal_equations(self, x):
        """Structured normal equations: the prior block of J is diagonal, so J^T J = J_proj^T J_proj + diag(w^2)."""
        r, J = self.jacobian_projection(x)
        prior_r = x * self.prior
        H = torch.matmul(J.transpose(1, 2), J)
        H.diagonal(dim1=-2, dim2=-1).add_(self.prior * self.prior)
        g = torch.matmul(r.unsqueeze(1), J).squeeze(1) + prior_r * self.prior
        return H, g, 0.5 * ((r * r).sum(-1) + (prior_r * prior_r).sum(-1))

    def energy(self, x):
        r = self.residuals(x)
        return 0.5 * (r * r).sum(-1)

    def x0(self):
        x0 = torch.zeros_like(self.x_true)
        x0[:, :6] = self.x_true[:, :6] + 0.05  # a rough pose, neutral face
        return x0


class LinearPhotometricProblem:
    """A stand-in of the size of a photometric fit: ``r = A x - b`` with a dense ``(B, N, P)`` Jacobian.

    ``A = G diag(s) Q^T / sqrt(N)`` with ``G`` Gaussian, ``Q`` a random rotation and ``s`` from 1 to 0.03, so that
    ``cond(J^T J) ~ 1e3`` and the Jacobi preconditioner cannot undo it (correlated columns, as in a PCA basis seen
    through a renderer).
    """

    def __init__(self, B: int, N: int = 50_000, P: int = 200, dtype=torch.float32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(P, P, generator=g, dtype=torch.float64))
        mix = (torch.logspace(0, -1.5, P, dtype=torch.float64).unsqueeze(1) * q.T).to(dtype)  # diag(s) Q^T
        self.A = torch.empty(B, N, P, dtype=dtype)
        for b in range(B):  # per item, to keep the float64 temporaries small
            self.A[b] = (torch.randn(N, P, generator=g).to(dtype) @ mix) / math.sqrt(N)
        self.x_true = torch.randn(B, P, generator=g).to(dtype)
        self.b = (self.A @ self.x_true.unsqueeze(-1)).squeeze(-1)  # noise-free: the solution is x_true

    def residuals(self, x):
        # x^T A^T rather than A x: the same product, 2x faster on CPU for a batch of tall matrices
        return torch.matmul(x.unsqueeze(1), self.A.transpose(1, 2)).squeeze(1) - self.b

    def jacobian(self, x):
        return self.residuals(x), self.A


# --------------------------------------------------------------------------------------------------------------
# timing


def median_time(fn, repeats: int, warmup: int = 2) -> Tuple[float, float]:
    """(median, minimum) wall time of ``fn()`` in seconds over ``repeats`` runs.

    The minimum is printed next to the median: on a shared machine it shows what the code costs without
    interference from other processes (2-thread BLAS calls stall when another process holds a core).
    """
    ts = wall_times(fn, repeats, warmup)
    return statistics.median(ts), min(ts)


def per_iteration(problem, x0, cfg: GaussNewtonConfig, k: int, repeats: int) -> Tuple[float, float]:
    """Seconds per LM iteration (tolerances off; ``(t(k) - t(0)) / k``), from medians and from minima."""
    base = dict(rtol=0.0, gtol=0.0, xtol=0.0, check_rank=False)
    c0 = GaussNewtonConfig(**{**cfg.__dict__, **base, "max_iterations": 0})
    ck = GaussNewtonConfig(**{**cfg.__dict__, **base, "max_iterations": k})
    t0 = median_time(lambda: solve(problem, x0, c0), repeats)
    tk = median_time(lambda: solve(problem, x0, ck), repeats)
    return max(tk[0] - t0[0], 0.0) / k, max(tk[1] - t0[1], 0.0) / k


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", type=str, default=None, help="also write the rows to this JSON file")
    ap.add_argument("--quick", action="store_true", help="fewer repeats, skip batch 16 of the large problem")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    reps = 5 if args.quick else args.repeats
    rows = []

    def row(name, B, N, P, seconds, note=""):
        med, best = seconds if isinstance(seconds, tuple) else (seconds, float("nan"))
        rows.append(dict(case=name, B=B, N=N, P=P, median_ms=med * 1e3, min_ms=best * 1e3, note=note))
        print(f"{name:<46} {B:>3} {N:>7} {P:>4} {med * 1e3:>10.3f} {best * 1e3:>10.3f}  {note}", flush=True)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'case':<46} {'B':>3} {'N':>7} {'P':>4} {'median ms':>10} {'min ms':>10}  note")

    # ---- 1. landmark-sized problem: one LM iteration, and the Jacobian alone
    for B in (1, 16):
        lp = LandmarkProblem(B=B)
        x0 = lp.x0()
        N = lp.L * 2 + lp.P
        analytic = LeastSquaresProblem(residuals=lp.residuals, jacobian=lp.jacobian)
        autodiff = LeastSquaresProblem(residuals=lp.residuals)
        chol = GaussNewtonConfig(linear_solver="cholesky")
        row("GN iter, cholesky, analytic J", B, N, lp.P, per_iteration(analytic, x0, chol, 10, reps),
            "J at trial points")
        row("GN iter, cholesky, analytic J, lazy", B, N, lp.P,
            per_iteration(analytic, x0, GaussNewtonConfig(linear_solver="cholesky", linearize_at_trial=False), 10,
                          reps), "r at trial, J after accept")
        structured = LeastSquaresProblem(normal_equations=lp.normal_equations)
        row("GN iter, cholesky, structured normal eqs", B, N, lp.P, per_iteration(structured, x0, chol, 10, reps),
            "JtJ = Jp^T Jp + diag(prior^2)")
        for mode in ("forward", "reverse"):
            row(f"GN iter, cholesky, autodiff {mode}", B, N, lp.P,
                per_iteration(autodiff, x0, GaussNewtonConfig(linear_solver="cholesky", autodiff=mode), 5, reps))
        with torch.no_grad():
            row("  Jacobian: analytic", B, N, lp.P, median_time(lambda: lp.jacobian(x0), reps))
            row("  normal equations: structured", B, N, lp.P, median_time(lambda: lp.normal_equations(x0), reps))
            row("  Jacobian: jvp x vmap, shared tangent", B, N, lp.P,
                median_time(lambda: jacobian_autodiff(lp.residuals, x0, "forward"), reps), "= solver 'forward'")
            row("  Jacobian: vjp x vmap, shared cotangent", B, N, lp.P,
                median_time(lambda: jacobian_autodiff(lp.residuals, x0, "reverse"), reps), "= solver 'reverse'")

            def per_item():
                f_item = torch.func.jacfwd(lambda xi, ti: lp.residuals(xi[None], ti[None])[0])
                return torch.func.vmap(f_item)(x0, lp.target)

            row("  Jacobian: vmap(jacfwd(f_item))", B, N, lp.P, median_time(per_item, reps))

            def functional_fwd():
                return torch.autograd.functional.jacobian(lambda d: lp.residuals(x0 + d), x0.new_zeros(lp.P),
                                                          vectorize=True, strategy="forward-mode")

            row("  Jacobian: autograd.functional fwd, vectorize", B, N, lp.P, median_time(functional_fwd, reps))
            if B == 1:
                def functional_rev():
                    return torch.autograd.functional.jacobian(lambda x: lp.residuals(x), x0)

                row("  Jacobian: autograd.functional reverse, loop", B, N, lp.P,
                    median_time(functional_rev, max(3, reps // 4)))

    # ---- 2. photometric-sized problem: Cholesky vs PCG
    for B in ((1,) if args.quick else (1, 16)):
        pp = LinearPhotometricProblem(B)
        prob = LeastSquaresProblem(jacobian=pp.jacobian)
        x0 = torch.zeros(B, 200)
        r_reps = max(3, reps // 4)
        for solver in ("cholesky", "pcg"):
            cfg = GaussNewtonConfig(linear_solver=solver, pcg_iterations=4)
            res = solve(prob, x0, GaussNewtonConfig(linear_solver=solver, pcg_iterations=4, max_iterations=20,
                                                    rtol=0.0, xtol=0.0))
            hist = res.energy_history.max(1).values  # worst item
            n_above = int((hist > 1e-6 * hist[0]).sum())
            its = str(n_above) if n_above < len(hist) else f"> {len(hist) - 1}"
            err = (res.params - pp.x_true).abs().max().item()
            row(f"GN iter, {solver}{' (4 steps)' if solver == 'pcg' else ''}", B, 50_000, 200,
                per_iteration(prob, x0, cfg, 3, r_reps),
                f"{its} its to E < 1e-6 E0; after 20: max|x - x_true| {err:.0e}")
        del pp, prob

    # ---- 3. a whole landmark fit, and Adam on it
    lp = LandmarkProblem(B=1)
    x0 = lp.x0()
    prob = LeastSquaresProblem(residuals=lp.residuals, jacobian=lp.jacobian)
    cfg = GaussNewtonConfig(max_iterations=30, rtol=1e-4)
    res = solve(prob, x0, cfg)
    t = median_time(lambda: solve(prob, x0, cfg), reps)
    row("whole landmark fit, cholesky, analytic J", 1, lp.L * 2 + lp.P, lp.P, t,
        f"{res.iterations.item()} its, {res.status_names()[0]}, E {res.initial_energy.item():.3g} -> "
        f"{res.energy.item():.3g}")
    sprob = LeastSquaresProblem(normal_equations=lp.normal_equations)
    res = solve(sprob, x0, cfg)
    t = median_time(lambda: solve(sprob, x0, cfg), reps)
    row("whole landmark fit, cholesky, structured NE", 1, lp.L * 2 + lp.P, lp.P, t,
        f"{res.iterations.item()} its, {res.status_names()[0]}, E -> {res.energy.item():.3g}")
    t0 = time.perf_counter()
    ra = solve(prob, x0, AdamConfig(lr=0.02, steps=500), method="adam")
    row("whole landmark fit, Adam (baseline, 1 run)", 1, lp.L * 2 + lp.P, lp.P, time.perf_counter() - t0,
        f"500 steps, E -> {ra.energy.item():.3g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(torch=torch.__version__, threads=torch.get_num_threads(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
