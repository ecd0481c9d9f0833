"""The CPU kernel of :func:`facerender.fitting.landmark_fit.fit_landmarks`: the same fit in NumPy, one image at a time.

Same energy as :class:`~facerender.fitting.energies.LandmarkTerm` + the identity / expression
:class:`~facerender.fitting.energies.PriorTerm` s (Huber on each point's normalised error, confidence weights, the
sliding jawline re-chosen between solves), the same closed-form rigid start as
:func:`~facerender.fitting.landmark_fit.initial_pose`, and the same Levenberg-Marquardt rules through
:func:`facerender.fitting.solver_np.gauss_newton_dense`. Why it exists: a 68-point fit is dominated by PyTorch's
per-operation dispatch on a CPU (module docstring of :mod:`~facerender.fitting.solver_np`); this kernel makes the
same arithmetic with about a tenth of the call overhead. Computed in float64 whatever the model's dtype.

``fit_landmarks`` uses it for models on the CPU (``LandmarkFitConfig.backend="auto"``); the batched torch path
stays for GPUs and as the reference the tests compare with.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from morphable_models import LinearFaceModel
from morphable_models.geometry import AXIS_FLIP

from .energies import _TAYLOR, _TINY, _TAYLOR_SWITCH, _landmark_rows
from .solver import GaussNewtonConfig
from .solver_np import _gauss_newton_dense

_FLIP = np.asarray(AXIS_FLIP, dtype=np.float64).reshape(3, 1)
_EYE = np.eye(3)
# E[i, j, k] = ([e_k]x)_ij
_SKEW_K = np.array([[[0, 0, 0], [0, 0, -1], [0, 1, 0]], [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
                    [[0, -1, 0], [1, 0, 0], [0, 0, 0]]], dtype=np.float64).transpose(1, 2, 0)
# Taylor coefficients (orders 0, 1, 2 in t^2) of [cos t, sin t / t, (1 - cos t) / t^2, a', b'] (energies._TAYLOR)
_TAYLOR_NP = _TAYLOR.numpy().T.tolist()


def rodrigues_np(w: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``R (3, 3)`` and ``dR/dw_k (3, 3, 3)`` (last = k) of one axis-angle vector.

    The closed form of :func:`~facerender.fitting.energies.rodrigues_with_derivative`: ``R = cos t I + a K + b w w^T``
    and ``dR/dw_k = w_k (-a I + a' K + b' w w^T) + a E_k + b (e_k w^T + w e_k^T)``, with the same Taylor series
    below the same switch points (float64). Scalars in Python floats: about 15 small NumPy calls.
    """
    x, y, zz = float(w[0]), float(w[1]), float(w[2])
    t2 = x * x + y * y + zz * zz
    t2s = max(t2, _TINY)
    t = math.sqrt(t2s)
    coef = []
    for k, (c0, c1, c2) in enumerate(_TAYLOR_NP):
        if t2 < (_TINY if k < 2 else _TAYLOR_SWITCH[1]):
            coef.append(c0 + t2 * (c1 + t2 * c2))
        else:
            coef.append(None)
    c = coef[0] if coef[0] is not None else math.cos(t)
    a = coef[1] if coef[1] is not None else math.sin(t) / t
    b = coef[2] if coef[2] is not None else (1.0 - math.cos(t)) / t2s
    a1 = coef[3] if coef[3] is not None else (math.cos(t) - math.sin(t) / t) / t2s
    b1 = coef[4] if coef[4] is not None else (math.sin(t) / t - 2.0 * (1.0 - math.cos(t)) / t2s) / t2s
    K = np.array([[0.0, -zz, y], [zz, 0.0, -x], [-y, x, 0.0]])
    ww = np.outer(w, w)
    R = c * _EYE + a * K + b * ww
    inner = b1 * ww + a1 * K - a * _EYE  # (3, 3)
    ew = _EYE[:, None, :] * w[None, :, None]  # e_k w^T: [i, j, k] = d_ik w_j
    dR = inner[:, :, None] * w + a * _SKEW_K + b * (ew + ew.transpose(1, 0, 2))
    return R, dR


def _rows_np(model: LinearFaceModel, sliding: bool) -> Dict[str, np.ndarray]:
    """:func:`energies._landmark_rows` as float64 NumPy arrays (cached on the model)."""
    key = ("landmark_rows_np", sliding, model.template.data_ptr())
    if key in model.extra:
        return model.extra[key]
    d = _landmark_rows(model, sliding, torch.float64, torch.device("cpu"))
    out = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in d.items()}
    out["basis_T"] = np.ascontiguousarray(out["basis_T"])
    out["template_flat"] = out["template_flat"].reshape(-1)
    model.extra[key] = out
    return out


def initial_pose_np(model: LinearFaceModel, targets: np.ndarray, focal: float, pp: np.ndarray,
                    identity: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`~facerender.fitting.landmark_fit.initial_pose` for one image: ``rotation (3,)``, ``translation (3,)``."""
    from .landmark_fit import _RIGID_POINTS

    key = ("rigid_rows_np", model.template.data_ptr())
    if key not in model.extra:
        ids = model.landmarks["ibug68"].vertex_index[_RIGID_POINTS]
        idt = torch.as_tensor(ids, device=model.device)
        V = model.num_vertices
        model.extra[key] = (model.template[idt].detach().cpu().double().numpy(),
                            model.identity_basis.view(-1, V, 3)[:, idt].detach().cpu().double().numpy())
    X, Bid = model.extra[key]
    if identity is not None:
        X = X + np.einsum("k,knc->nc", identity, Bid)
    T = targets[_RIGID_POINTS]
    mX, mT = X.mean(0), T.mean(0)
    Xc, Tc = X - mX, T - mT
    with np.errstate(all="ignore"):
        try:
            A = np.linalg.solve(Xc.T @ Xc, Xc.T @ Tc).T  # (2, 3)
            U, S, Vh = np.linalg.svd(A, full_matrices=False)
            rows, scale = U @ Vh, float(S.mean())
        except np.linalg.LinAlgError:
            rows, scale = np.full((2, 3), np.nan), math.nan
    if not (np.isfinite(rows).all() and math.isfinite(scale) and scale > 1e-6 * focal):
        rows, scale = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]), focal / 60.0
    (a1, a2, a3), (b1, b2, b3) = rows.tolist()
    M = np.array([[a1, a2, a3], [b1, b2, b3],  # camera-from-model rotation F R, third row r1 x r2
                  [a2 * b3 - a3 * b2, a3 * b1 - a1 * b3, a1 * b2 - a2 * b1]])
    R = M * _FLIP
    z = focal / scale
    MX = M @ mX
    txy = (mT - pp) * z / focal - MX[:2]
    return matrix_to_rotvec(R), np.array([txy[0], txy[1], z - MX[2]])


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a rotation matrix: ``theta / (2 sin theta) * vee(R - R^T)``, first order below 1e-6 rad,
    and SciPy's quaternion method near pi (where the skew part vanishes). 10x cheaper than building a SciPy
    ``Rotation`` for one matrix."""
    v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    cos = min(1.0, max(-1.0, 0.5 * (R[0, 0] + R[1, 1] + R[2, 2] - 1.0)))
    theta = math.acos(cos)
    if theta < 1e-6:
        return 0.5 * v
    if theta > math.pi - 1e-3:
        from scipy.spatial.transform import Rotation

        return Rotation.from_matrix(R).as_rotvec()
    return v * (theta / (2.0 * math.sin(theta)))


class LandmarkEnergyNp:
    """Normal equations of the landmark fit of ONE image over a block layout (see the module docstring).

    Args:
        model: the face model (``ibug68`` landmarks).
        targets: ``(68, 2)`` pixels; confidence ``(68,)``; weight, huber, sliding: as :class:`LandmarkTerm`.
        priors: ``{block: (weight, sigma (size,))}`` for identity / expression.
    """

    def __init__(self, model: LinearFaceModel, targets: np.ndarray, confidence: np.ndarray, weight: float,
                 sliding: bool, huber: Optional[float], priors: Dict[str, Tuple[float, np.ndarray]]):
        sliding = sliding and "jawline_right_extended" in model.landmarks
        self.data = d = _rows_np(model, sliding)
        self.sliding = sliding
        self.L = L = d["L"]
        self.K_id = model.num_identity
        self.targets = targets
        eye = float(np.hypot(*(targets[45] - targets[36])))
        box = float(np.hypot(*(targets.max(0) - targets.min(0)))) / 3.0
        self.scale = max(eye if eye > 1e-3 else box, 1e-3)
        self.w = math.sqrt(weight / L) * np.sqrt(np.maximum(confidence, 0.0)) / self.scale  # (L,)
        self.cth = None if huber is None else self.w * (self.scale * huber)
        self.tgt_t = np.ascontiguousarray(targets.T)  # (2, L)
        self.tgt17 = targets[:17, None]  # (17, 1, 2)
        self.priors = {k: (w / np.asarray(s, np.float64) ** 2) for k, (w, s) in priors.items()}
        self.frozen = None  # (ia, ib, t) of the contour held fixed during a solve
        self._rows = None
        if not sliding:
            self._set_rows(d["template"][:L], d["basis"][:L])

    def _set_rows(self, T: np.ndarray, Bs: np.ndarray) -> None:
        """Rows of the fitted points: template ``(L, 3)`` and basis ``(L, 3, K)``, kept as the coordinate-major
        template ``(3, L)``, the flat coordinate-major basis ``(3 L, K)`` (for ``X = T + B c``) and the point-major
        basis ``(L, 3, K)`` (for the Jacobian's per-point products)."""
        L, K = Bs.shape[0], Bs.shape[-1]
        self._rows = (np.ascontiguousarray(T.T), np.ascontiguousarray(Bs.transpose(1, 0, 2)).reshape(3 * L, K),
                      np.ascontiguousarray(Bs))

    # ---- contour
    def _contour(self, R: np.ndarray, t: np.ndarray, c: np.ndarray, f: float, pp: np.ndarray):
        d, L = self.data, self.L
        X = (d["template_flat"] + c @ d["basis_T"]).reshape(-1, 3)
        Xc = X @ (R * _FLIP).T + t
        z = np.maximum(Xc[L:, 2:3], 1e-6)
        uvp = Xc[L:, :2] / z * f + pp
        out = uvp @ (R * _FLIP)[:2, 0]
        lines = d["lines"]
        score = d["lines_bias"] + out[lines] * d["side"][:, None]
        chosen = lines[np.arange(lines.shape[0]), score.argmax(1)]
        poly = uvp[chosen]
        a = poly[None, :-1]
        ab = poly[None, 1:] - a
        da = self.tgt17 - a  # (17, S, 2)
        tt = np.clip((da * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
        d2 = np.square(da - tt[..., None] * ab).sum(-1)
        d2[d["not_allowed"]] = math.inf
        seg = d2.argmin(1)
        j = np.arange(17)
        return L + chosen[seg], L + chosen[seg + 1], tt[j, seg], Xc

    def freeze(self, R, t, c, f, pp) -> bool:
        """Hold the contour correspondences at these parameters; True when they changed (as
        :meth:`LandmarkTerm.freeze_contour`)."""
        if not self.sliding:
            return False
        ia, ib, tt, _ = self._contour(R, t, c, f, pp)
        old = self.frozen
        self.frozen = (ia, ib, tt)
        d, L = self.data, self.L
        wa = (1.0 - tt)[:, None]
        T_j = wa * d["template"][ia] + (1.0 - wa) * d["template"][ib]
        B_j = wa[..., None] * d["basis"][ia] + (1.0 - wa[..., None]) * d["basis"][ib]
        self._set_rows(np.concatenate([T_j, d["template"][17:L]]), np.concatenate([B_j, d["basis"][17:L]]))
        return old is None or not (np.array_equal(old[0], ia) and np.array_equal(old[1], ib))

    def project(self, R, t, c, f, pp) -> np.ndarray:
        """``(68, 2)`` projected model landmarks with freshly chosen contour correspondences."""
        if not self.sliding:
            T, BcF, _ = self._rows
            X = T + (BcF @ c).reshape(3, self.L)
            Xc = (R * _FLIP) @ X + t[:, None]
            return (Xc[:2] / np.maximum(Xc[2], 1e-6) * f + pp[:, None]).T
        ia, ib, tt, Xc = self._contour(R, t, c, f, pp)
        Xj = Xc[ia] + tt[:, None] * (Xc[ib] - Xc[ia])
        P = np.concatenate([Xj, Xc[17:self.L]])
        return P[:, :2] / np.maximum(P[:, 2:], 1e-6) * f + pp

    # ---- normal equations
    def normal_equations(self, x: np.ndarray, layout, fixed: Dict[str, np.ndarray], pp: np.ndarray
                         ) -> Tuple[np.ndarray, np.ndarray, float]:
        """``(J^T J (P, P), J^T r (P,), 0.5 ||r||^2)`` at ``x (P,)`` with the contour frozen (IRLS-weighted for
        Huber, as :meth:`LandmarkTerm.normal_equations`, plus the diagonal priors of the free blocks)."""
        sl = layout.slices
        v = {k: (x[sl[k]] if k in sl else fixed[k]) for k in ("rotation", "translation", "identity", "expression",
                                                               "focal")}
        L, P = self.L, x.size
        R, dR = rodrigues_np(v["rotation"])
        M = R * _FLIP
        t, f = v["translation"], float(v["focal"][0])
        c = np.concatenate([v["identity"], v["expression"]])
        T, BcF, BcL = self._rows
        X = T + (BcF @ c).reshape(3, L)
        Xc = M @ X + t[:, None]
        z = np.maximum(Xc[2], 1e-6)
        q = Xc[:2] / z
        uv = q * f + pp[:, None]
        w = self.w
        dd = w * (uv - self.tgt_t)  # (2, L)
        n2 = (dd * dd).sum(0)
        if self.cth is None:
            E = 0.5 * float(n2.sum())
            sw, rw = w, dd
        else:
            omega = np.minimum(self.cth / np.sqrt(np.maximum(n2, 1e-30)), 1.0)
            E = 0.5 * float((n2 * omega * (2.0 - omega)).sum())
            so = np.sqrt(omega)
            sw, rw = so * w, so * dd
        # per point, d (u, v) / d X_cam = a [[1, 0, -q_x], [0, 1, -q_y]] with a = sqrt(weight) f / z: G (L, 2, 3);
        # each block's d X_cam / d theta then enters by one batched product. Rows point-major (x_l, y_l).
        a = sw * f / z
        G = np.zeros((L, 2, 3))
        G[:, 0, 0] = a
        G[:, 1, 1] = a
        G[:, :, 2] = -(a * q).T
        J = np.empty((L, 2, P))
        if "rotation" in sl:
            dRf = dR * _FLIP[:, :, None]  # d(F R)/dw_k (3, 3, k)
            Drot = (X.T @ dRf.transpose(1, 0, 2).reshape(3, 9)).reshape(L, 3, 3)  # [l, i, k] = dRf[i, :, k] . X_l
            J[:, :, sl["rotation"]] = G @ Drot
        if "translation" in sl:
            J[:, :, sl["translation"]] = G
        if "identity" in sl or "expression" in sl:
            GM = G @ M  # (L, 2, 3): d (u, v) / d X_model
            if "identity" in sl and "expression" in sl and sl["expression"].start == sl["identity"].stop:
                J[:, :, sl["identity"].start:sl["expression"].stop] = GM @ BcL
            else:
                if "identity" in sl:
                    J[:, :, sl["identity"]] = GM @ BcL[..., :self.K_id]
                if "expression" in sl:
                    J[:, :, sl["expression"]] = GM @ BcL[..., self.K_id:]
        if "focal" in sl:
            J[:, :, sl["focal"].start] = (sw * q).T  # d (u, v) / d f = (u - pp) / f = q
        for blk in layout.blocks:
            if blk.name not in ("rotation", "translation", "identity", "expression", "focal"):
                J[:, :, sl[blk.name]] = 0.0  # blocks that do not move the points (sh)
        J = J.reshape(2 * L, P)
        H = J.T @ J
        g = J.T @ rw.T.reshape(-1)
        for name, dp in self.priors.items():
            if name in sl:
                s, val = sl[name], v[name]
                Hd = H.reshape(-1)[s.start * (P + 1):s.stop * (P + 1):P + 1]  # a view of the diagonal
                Hd += dp
                dv = dp * val
                g[s] += dv
                E += 0.5 * float(dv @ val)
        return H, g, E


def fit_one(model: LinearFaceModel, cfg, targets: np.ndarray, conf: np.ndarray, focal: float, pp: np.ndarray,
            identity: np.ndarray, expression: np.ndarray, rotation: Optional[np.ndarray],
            translation: Optional[np.ndarray], fixed_identity: bool):
    """Fit one image (float64 arrays; ``rotation`` / ``translation`` None: the closed-form start).

    Returns ``(values {block: array}, landmarks_2d (68, 2), energy histories (one list per solve), iterations,
    status of the last solve)``. Call it inside :func:`~facerender.fitting.solver_np.single_threaded_blas` (as
    ``fit_landmarks`` does, once per batch): the solves here do not enter it themselves.
    """
    from .params import Block, ParameterLayout, model_bounds

    K_id, K_ex = identity.size, expression.size
    warm = rotation is not None
    if not warm:
        rotation, translation = initial_pose_np(model, targets, focal, pp, identity if fixed_identity else None)
    values = {"rotation": rotation, "translation": translation, "identity": identity, "expression": expression,
              "focal": np.array([focal])}
    priors = {"identity": (cfg.w_identity, model.identity_std.detach().cpu().double().numpy()),
              "expression": (cfg.w_expression, np.full(K_ex, cfg.expression_sigma))}
    histories: List[List[float]] = []
    iters, status = 0, "converged"

    def run(blocks, iterations, term: LandmarkEnergyNp, rounds):
        nonlocal values, iters, status
        layout = ParameterLayout(blocks)
        lo, hi = (t.numpy() for t in model_bounds(layout, torch.zeros(1, dtype=torch.float64), model))
        fixed = {k: val for k, val in values.items() if k not in layout}
        gcfg = GaussNewtonConfig(max_iterations=iterations, rtol=cfg.rtol, linear_solver="cholesky",
                                 check_rank=False, bound_rounds=cfg.bound_rounds, stop_on_model_decrease=True)

        def ne(x):
            return term.normal_equations(x, layout, fixed, pp)

        damping = None
        for k in range(max(1, rounds)):
            x0 = np.concatenate([values[b.name] for b in layout.blocks])
            R = rodrigues_np(values["rotation"])[0]
            changed = term.freeze(R, values["translation"],
                                  np.concatenate([values["identity"], values["expression"]]),
                                  float(values["focal"][0]), pp)
            if k > 0 and not changed:
                break
            res = _gauss_newton_dense(ne, x0, lo, hi, gcfg, damping)
            damping = res.damping
            values = {**values, **{name: res.params[s] for name, s in layout.slices.items()}}
            histories.append(res.energy_history)
            iters += res.iterations
            status = res.status_name

    rigid = [Block("rotation", 3), Block("translation", 3)]
    if cfg.rigid_iterations > 0 and not warm:
        inner_conf = conf.copy()
        inner_conf[:17] = 0
        inner = LandmarkEnergyNp(model, targets, inner_conf, cfg.w_landmark, False, cfg.huber, priors)
        run(rigid, cfg.rigid_iterations, inner, 1)
    blocks = list(rigid)
    if cfg.fit_focal:
        blocks.append(Block("focal", 1, 1.0, float("inf")))
    if cfg.fit_identity and not fixed_identity:
        blocks.append(Block("identity", K_id))
    if cfg.fit_expression:
        blocks.append(Block("expression", K_ex, 0.0, 1.0))
    term = LandmarkEnergyNp(model, targets, conf, cfg.w_landmark, cfg.sliding_contour, cfg.huber, priors)
    run(blocks, cfg.max_iterations, term, cfg.contour_rounds)
    R = rodrigues_np(values["rotation"])[0]
    uv = term.project(R, values["translation"], np.concatenate([values["identity"], values["expression"]]),
                      float(values["focal"][0]), pp)
    return values, uv, histories, iters, status
