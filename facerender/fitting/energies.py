"""Energies of a face fit as residual vectors with analytic (structured) Jacobians.

An :class:`EnergyProblem` stacks the residuals of several terms (landmarks, photometric colour, priors, temporal
smoothness) over one flat parameter vector described by a :class:`~facerender.fitting.params.ParameterLayout`
(blocks ``rotation``, ``translation``, ``focal``, ``identity``, ``expression``, ``sh``). It is what the
face-agnostic solver in :mod:`facerender.fitting.solver` receives: ``residuals(x)`` and ``jacobian(x)``.

The model is linear in its coefficients, so every term builds its Jacobian from the rows of the model bases at the
points it uses: ``d X_cam / d theta = [F dR/dw X | I | F R B_id | F R B_exp]`` (:class:`Kinematics`), followed by
the term's own projection / shading derivatives. No autodiff is involved (tests compare with autograd).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from morphable_models import LinearFaceModel
from morphable_models.geometry import AXIS_FLIP

from ..errors import FittingError
from .params import ParameterLayout


def rodrigues_with_derivative(aa: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotation matrices ``R (B, 3, 3)`` and their derivatives ``dR/d aa_k`` as ``(B, 3, 3, 3)`` (last = k).

    Rodrigues' formula in the form ``R = cos t I + a K + b w w^T`` (``K = [w]x``, ``t = |w|``, ``a = sin t / t``,
    ``b = (1 - cos t) / t^2``; equal to ``I + a K + b K^2`` since ``K^2 = w w^T - t^2 I``), differentiated in
    closed form: ``dR/dw_k = w_k (-a I + a' K + b' w w^T) + a E_k + b (e_k w^T + w e_k^T)`` with
    ``a' = (da/dt)/t``, ``b' = (db/dt)/t`` and ``E_k = [e_k]x``; Taylor series near ``t = 0``.

    Every entry of ``R`` and ``dR`` is a fixed linear combination of the 53 features
    ``[cos t, a, a w, b w, b w w^T, a' w w^T, b' w w w]``, so both come out of ONE matrix product with a constant
    ``(53, 36)`` matrix: about 20 tensor operations instead of 60 (this runs once per solver iteration, where the
    per-operation overhead dominates a landmark fit).
    """
    B = aa.shape[0]
    consts = _rotation_constants(aa.dtype, aa.device)
    ww = aa.unsqueeze(-1) * aa.unsqueeze(-2)  # (B, 3, 3)
    t2 = ww.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)  # (B, 1)
    # cos t and sin t / t are exact from their closed forms; (1 - cos t) / t^2, a' and b' lose digits to
    # cancellation (eps / t^2) for small t: second-order Taylor series there (truncation ~1e-5 t^6). Below _TINY
    # every column takes the series, so the clamp only keeps the unused closed forms finite.
    t2s = t2.clamp_min(_TINY)
    t = t2s.sqrt()
    c = torch.cos(t)
    a = torch.sin(t) / t
    b = (1 - c) / t2s
    big = torch.cat([c, a, b, (c - a) / t2s, torch.addcmul(a, b, consts["minus2"]) / t2s], 1)
    T = consts["taylor"]
    taylor = torch.addcmul(T[0], t2, torch.addcmul(T[1], t2, T[2]))  # cos t, a, b, a', b'
    coef = torch.where(t2 < consts["taylor_below"], taylor, big)  # (B, 5) (cos t and a: only at t = 0)
    www = ww.unsqueeze(-1) * aa.view(B, 1, 1, 3)
    # features [cos t, a | a w, b w, b ww, a' ww, b' www]: the monomials times their coefficient (one gather)
    mono = torch.cat([aa, aa, ww.view(B, 9), ww.view(B, 9), www.view(B, 27)], 1)  # (B, 51)
    phi = torch.cat([coef[:, :2], mono * coef[:, consts["feature_coef"]]], 1)  # (B, 53)
    out = phi @ consts["features"]  # (B, 36)
    return out[:, :9].view(B, 3, 3), out[:, 9:].view(B, 3, 3, 3)


# Taylor coefficients (orders 0, 1, 2 in t^2) of [cos t, sin t / t, (1 - cos t) / t^2, a', b']
_TAYLOR = torch.tensor([[1.0, 1.0, 0.5, -1.0 / 3, -1.0 / 12],
                        [-0.5, -1.0 / 6, -1.0 / 24, 1.0 / 30, 1.0 / 180],
                        [1.0 / 24, 1.0 / 120, 1.0 / 720, -1.0 / 840, -1.0 / 6720]], dtype=torch.float64)
_TINY = 1e-20
# t^2 below which (1 - cos t) / t^2, a' and b' take their series, (float32, float64): where cancellation (eps / t^2)
# exceeds the series' truncation
_TAYLOR_SWITCH = (3e-2, 1e-3)
_SKEW_BASIS = torch.tensor([[[0, 0, 0], [0, 0, -1], [0, 1, 0]],
                            [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
                            [[0, -1, 0], [1, 0, 0], [0, 0, 0]]], dtype=torch.float64)  # [e_k]x for k = 0, 1, 2
_CONSTANTS: Dict[tuple, Dict[str, torch.Tensor]] = {}


def _rodrigues_feature_matrix() -> torch.Tensor:
    """``(53, 36)``: ``[R (9) | dR (27, order i, j, k)] = features @ C`` (see :func:`rodrigues_with_derivative`)."""
    E = _SKEW_BASIS  # E[m, i, j] = ([e_m]x)_ij, so ([w]x)_ij = sum_m w_m E[m, i, j]
    I = torch.eye(3, dtype=torch.float64)
    C = torch.zeros(53, 36, dtype=torch.float64)
    R, dR = C[:, :9].view(53, 3, 3), C[:, 9:].view(53, 3, 3, 3)
    # features: 0 cos t | 1 a | 2:5 a w_m | 5:8 b w_m | 8:17 b w_m w_n | 17:26 a' w_m w_n | 26:53 b' w_m w_n w_p
    R[0] += I
    R[2:5] += E  # a [w]x
    R[8:17] += torch.einsum("mi,nj->mnij", I, I).reshape(9, 3, 3)  # b w_i w_j
    # dR_ijk = -a w_k d_ij + a' w_k [w]x_ij + b' w_i w_j w_k + a E[k, i, j] + b (d_ik w_j + w_i d_jk)
    dR[2:5] -= torch.einsum("ij,mk->mijk", I, I)
    dR[17:26] += torch.einsum("mij,nk->mnijk", E, I).reshape(9, 3, 3, 3)
    dR[26:53] += torch.einsum("mi,nj,pk->mnpijk", I, I, I).reshape(27, 3, 3, 3)
    dR[1] += E.permute(1, 2, 0)
    dR[5:8] += torch.einsum("ik,mj->mijk", I, I) + torch.einsum("mi,jk->mijk", I, I)
    return C


def _rotation_constants(dtype: torch.dtype, device: torch.device) -> Dict[str, torch.Tensor]:
    """Constant tensors of :func:`rodrigues_with_derivative` and :class:`Kinematics`, per dtype and device."""
    key = (dtype, str(device))
    out = _CONSTANTS.get(key)
    if out is None:
        thr = _TAYLOR_SWITCH[dtype == torch.float64]
        out = {"features": _rodrigues_feature_matrix(), "eye": torch.eye(3, dtype=torch.float64),
               "flip": torch.tensor(AXIS_FLIP, dtype=torch.float64).reshape(3, 1), "taylor": _TAYLOR,
               "taylor_below": torch.tensor([_TINY, _TINY, thr, thr, thr], dtype=torch.float64),
               "minus2": torch.tensor(-2.0, dtype=torch.float64)}
        out = {k: v.to(dtype=dtype, device=device) for k, v in out.items()}
        # coefficient column of each monomial feature: a (1) x3, b (2) x3, b (2) x9, a' (3) x9, b' (4) x27
        out["feature_coef"] = torch.tensor([1] * 3 + [2] * 3 + [2] * 9 + [3] * 9 + [4] * 27, device=device)
        _CONSTANTS[key] = out
    return out


class Kinematics:
    """Shared per-evaluation quantities: named parameters, rotation and its derivative, camera intrinsics.

    Args:
        layout: the free parameter blocks.
        x: ``(B, P)`` parameters.
        fixed: values of blocks that are not free (``(B, size)`` each): must include whatever the terms need among
            ``rotation``, ``translation``, ``identity``, ``expression``, ``sh``, ``focal``.
        principal_point: ``(B, 2)`` in pixels.
    """

    def __init__(self, layout: ParameterLayout, x: torch.Tensor, fixed: Dict[str, torch.Tensor],
                 principal_point: torch.Tensor, need_jacobian: bool = True):
        self.layout = layout
        self.x = x
        self.B = x.shape[0]
        self.p = layout.split(x, fixed)
        self.need_jacobian = need_jacobian
        if need_jacobian:
            self.R, self.dR = rodrigues_with_derivative(self.p["rotation"])
        else:
            # R alone: the same feature product (fewer tensor ops than axis_angle_to_matrix)
            self.R, self.dR = rodrigues_with_derivative(self.p["rotation"])[0], None
        self.flip = _rotation_constants(x.dtype, x.device)["flip"]
        self.M = self.R * self.flip  # F R
        self.t = self.p["translation"]
        self.focal = self.p["focal"].reshape(-1)
        self.pp = principal_point
        self.coeffs = torch.cat([self.p["identity"], self.p["expression"]], 1)
        self.K_id = self.p["identity"].shape[1]

    def camera_points(self, X: torch.Tensor) -> torch.Tensor:
        return X @ self.M.transpose(1, 2) + self.t[:, None]

    def project(self, Xc: torch.Tensor) -> torch.Tensor:
        z = Xc[..., 2:3].clamp_min(1e-6)
        return Xc[..., :2] / z * self.focal[:, None, None] + self.pp[:, None]

    def projection_jacobian(self, Xc: torch.Tensor) -> torch.Tensor:
        """``d (u, v) / d X_cam`` as ``(B, N, 2, 3)``."""
        z = Xc[..., 2].clamp_min(1e-6)
        fz = self.focal[:, None] / z
        J = Xc.new_zeros(Xc.shape[:-1] + (2, 3))
        J[..., 0, 0] = fz
        J[..., 1, 1] = fz
        J[..., 0, 2] = -fz * Xc[..., 0] / z
        J[..., 1, 2] = -fz * Xc[..., 1] / z
        return J

    def image_jacobian(self, X: torch.Tensor, Xc: torch.Tensor, Bs: torch.Tensor, left: torch.Tensor
                       ) -> torch.Tensor:
        """``left @ d X_cam / d theta`` for model points ``X (B, N, 3)`` with basis rows ``Bs (B|1, N, 3, K)``.

        ``left`` is ``(B, N, R, 3)`` (e.g. weighted projection Jacobian rows, R = 2); returns ``(B, N, R, P)``.
        Columns of blocks that do not move the points (sh) are zero; the focal column is NOT added here.
        """
        lay = self.layout
        B, N, Rr = left.shape[0], left.shape[1], left.shape[2]
        out = left.new_zeros(B, N, Rr, lay.P)
        if "rotation" in lay:
            dRf = self.dR * self.flip[None, :, :, None]  # d(F R)/dw_k  (B, 3, 3, 3)
            dX = torch.einsum("bijk,bnj->bnik", dRf, X)  # (B, N, 3, 3)
            out[..., lay.slices["rotation"]] = left @ dX
        if "translation" in lay:
            out[..., lay.slices["translation"]] = left
        if "identity" in lay or "expression" in lay:
            LM = left @ self.M[:, None]  # (B, N, R, 3)
            if "identity" in lay and "expression" in lay and \
                    lay.slices["expression"].start == lay.slices["identity"].stop:
                s = slice(lay.slices["identity"].start, lay.slices["expression"].stop)
                out[..., s] = LM @ Bs
            else:
                if "identity" in lay:
                    out[..., lay.slices["identity"]] = LM @ Bs[..., :self.K_id]
                if "expression" in lay:
                    out[..., lay.slices["expression"]] = LM @ Bs[..., self.K_id:]
        return out


# ------------------------------------------------------------------------------------------------------------------


class Term:
    """A block of residuals. Subclasses implement :meth:`evaluate` (and may specialise :meth:`normal_equations`)."""

    name = "term"

    def evaluate(self, kin: Kinematics) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Return residuals ``(B, n)`` and, when ``kin.need_jacobian``, the Jacobian ``(B, n, P)``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def normal_equations(self, kin: Kinematics) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(J^T J (B, P, P), J^T r (B, P), 0.5 ||r||^2 (B,))`` of this term: fresh tensors (the caller may add to
        them in place)."""
        r, J = self.evaluate(kin)
        return J.mT @ J, (J.mT @ r.unsqueeze(-1)).squeeze(-1), 0.5 * r.square().sum(1)


def robust_point_residuals(d: torch.Tensor, kind: Optional[str], c, dim: int = -1
                           ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Robust loss on per-point residual vectors ``d (..., k)`` (the vector along ``dim``): the energy of a point is
    ``0.5 * phi(||d||)``.

    Returns the square-root residual ``r = d * sqrt(phi(n)) / n`` (differentiable: ``0.5 ||r||^2`` IS the energy, so
    autodiff of it gives the exact gradient) and the IRLS weight ``omega = phi'(n) / (2 n)`` ``(..., 1)`` (no
    gradient): the Gauss-Newton system uses ``J^T omega J`` and ``J^T omega d``, which is the exact gradient.

    kind: None (``phi = n^2``), ``"huber"`` (``n^2`` up to ``c``, then ``2 c n - c^2``) or ``"l21"`` (smoothed l2,1:
    ``phi = 2 (sqrt(n^2 + c^2) - c)``, i.e. ``0.5 phi ~ n``). ``c``: scalar or broadcastable to ``(..., 1)`` (size 1
    along ``dim``).
    """
    if kind is None:
        return d, torch.ones_like(d.narrow(dim, 0, 1))
    n2 = (d * d).sum(dim, keepdim=True)
    n = n2.clamp_min(1e-30).sqrt()
    if kind == "huber":
        # omega = min(1, c / n); phi / n^2 = omega (2 - omega) (1 inside the threshold, 2 c / n - c^2 / n^2 beyond)
        omega = (c / n).clamp(max=1.0)
        return d * (omega * (2 - omega)).sqrt(), omega.detach()
    if kind == "l21":
        root = (n2 + c * c).sqrt()
        phi = 2 * (root - c)
        omega = 1.0 / root
    else:
        raise ValueError(f"robust kind must be None, 'huber' or 'l21', got {kind!r}")
    scale = torch.where(n2 > 0, (phi / n2.clamp_min(1e-30)).clamp_min(0).sqrt(), omega.sqrt())
    return d * scale, omega.detach()


class PriorTerm(Term):
    """``sqrt(w) * (value - mean) / sigma`` for one parameter block (free or not: no rows when fixed)."""

    def __init__(self, block: str, weight: float, sigma: torch.Tensor, mean: Optional[torch.Tensor] = None):
        self.name = f"prior_{block}"
        self.block = block
        self.sqrt_w = math.sqrt(weight)
        self.sigma = sigma
        self.mean = mean
        self._diag = None

    def evaluate(self, kin: Kinematics):
        lay = kin.layout
        if self.block not in lay:
            z = kin.x.new_zeros(kin.B, 0)
            return z, (kin.x.new_zeros(kin.B, 0, lay.P) if kin.need_jacobian else None)
        v = kin.p[self.block]
        if self.mean is not None:
            v = v - self.mean
        r = self.sqrt_w * v / self.sigma
        if not kin.need_jacobian:
            return r, None
        n = v.shape[1]
        J = kin.x.new_zeros(n, lay.P)
        s = lay.slices[self.block]
        J[:, s] = torch.diag((self.sqrt_w / self.sigma).expand(n))
        return r, J.expand(kin.B, n, lay.P)

    def diagonal_normal_equations(self, kin: Kinematics):
        """``(diag(J^T J) (size,) or None, slice, J^T r (B, size), 0.5 ||r||^2 (B,))``: the term's normal equations
        are diagonal, so :class:`EnergyProblem` adds them to the dense system's diagonal without a ``(P, P)`` matrix."""
        if self.block not in kin.layout:  # a fixed block has no residuals (as in evaluate)
            return None, None, None, kin.x.new_zeros(kin.B)
        v = kin.p[self.block]
        if self.mean is not None:
            v = v - self.mean
        d = self._diag
        if d is None or d.dtype != v.dtype or d.device != v.device:
            d = self._diag = ((self.sqrt_w / self.sigma) ** 2).to(v).expand(v.shape[1]).contiguous()
        dv = d * v
        return d, kin.layout.slices[self.block], dv, 0.5 * (dv * v).sum(1)

    def normal_equations(self, kin: Kinematics):
        lay = kin.layout
        B, P = kin.B, lay.P
        H = kin.x.new_zeros(B, P, P)
        g = kin.x.new_zeros(B, P)
        d, s, dv, E = self.diagonal_normal_equations(kin)
        if d is not None:
            H[:, s, s] = torch.diag_embed(d.expand(B, dv.shape[1]))
            g[:, s] = dv
        return H, g, E


def contour_candidate_lines(model: LinearFaceModel, band: float = 0.3, min_abs_x: float = 0.6,
                            chin_abs_x: float = 1.6, bin_width: float = 0.2):
    """Candidate vertices of the occluding face contour, one horizontal line per jawline vertex.

    The jawline polyline is ICT's right extended jawline, the chin (iBUG point 8) and the left extended jawline. For a
    polyline vertex ``k`` at model height ``y_k``, its line holds the face-area vertices on the same side with
    ``|y - y_k| < band``, between the jaw (``|x| <= |x_k|``) and ``min_abs_x`` from the midline, and not behind the jaw
    vertex (``z >= z_k``): when the head turns away, the occluding contour moves from the jawline forward along these
    lines onto the cheek. Vertices near the chin (``|x_k| < chin_abs_x``) keep only themselves.

    Returns ``lines (Np, C)`` vertex ids, ``valid (Np, C)``, ``side (Np,)`` (+1 subject's left, -1 right, 0 chin) and the
    number of right-side polyline vertices. Cached on the model (``model.extra``).
    """
    key = ("contour_lines", band, min_abs_x, chin_abs_x, bin_width)
    if key in model.extra:
        return model.extra[key]
    lm = model.landmarks["ibug68"].vertex_index
    right = model.landmarks["jawline_right_extended"].vertex_index
    left = model.landmarks["jawline_left_extended"].vertex_index
    poly = np.concatenate([right, lm[8:9], left])
    T = model.template.detach().cpu().double().numpy()
    face = model.regions["face"].vertex_ids if "face" in model.regions else np.arange(T.shape[0])
    P = T[poly]
    F = T[face]
    lines = []
    for k, (x, y, z) in enumerate(P):
        if abs(x) < chin_abs_x:
            lines.append(np.array([poly[k]]))
            continue
        sel = ((np.abs(F[:, 1] - y) < band) & (np.sign(F[:, 0]) == np.sign(x)) & (np.abs(F[:, 0]) >= min_abs_x)
               & (np.abs(F[:, 0]) <= abs(x) + 1e-6) & (F[:, 2] >= z - 1e-6))
        cand = face[sel]
        # one candidate per bin of |x| (the vertex closest to the line's height): the contour search needs the
        # spread across the cheek, not every vertex (keeps the per-iteration projection cheap)
        if cand.size:
            bins = np.floor(np.abs(T[cand, 0]) / bin_width).astype(np.int64)
            order = np.lexsort((np.abs(T[cand, 1] - y), bins))
            first = np.ones(order.size, dtype=bool)
            first[1:] = bins[order][1:] != bins[order][:-1]
            cand = cand[order][first]
        ids = np.union1d(cand, [poly[k]])
        lines.append(ids)
    C = max(len(ln) for ln in lines)
    out = np.zeros((len(lines), C), dtype=np.int64)
    valid = np.zeros((len(lines), C), dtype=bool)
    for k, ln in enumerate(lines):
        out[k, :len(ln)] = ln
        valid[k, :len(ln)] = True
    side = np.where(np.abs(P[:, 0]) < chin_abs_x, 0.0, np.sign(P[:, 0]))
    res = (out, valid, side, len(right))
    model.extra[key] = res
    return res


def _landmark_rows(model: LinearFaceModel, sliding: bool, dt: torch.dtype, dev: torch.device) -> dict:
    """Template and basis rows of the 68 landmarks (+ the contour candidate pool), cached on the model."""
    key = ("landmark_rows", sliding, dt, str(dev), model.template.data_ptr())
    if key in model.extra:
        return model.extra[key]
    lm = model.landmarks["ibug68"].vertex_index
    out = {"L": len(lm)}
    pool = None
    if sliding:
        lines, valid, side, n_right = contour_candidate_lines(model)
        pool, inv = np.unique(lines[valid], return_inverse=True)
        pool_lines = np.zeros_like(lines)
        pool_lines[valid] = inv
        # polyline segments each jawline point may slide onto: points 0-7 on the right side (up to the chin's first
        # segment), 9-16 on the left, the chin (8) on the segments around it
        seg = np.arange(lines.shape[0] - 1)[None]
        j = np.arange(17)[:, None]
        allowed = np.where(j < 8, seg < n_right + 1,
                           np.where(j > 8, seg >= n_right - 1, (seg >= n_right - 2) & (seg <= n_right + 1)))
        out.update(lines=torch.as_tensor(pool_lines, device=dev),  # (Np, C) indices into the pool
                   lines_valid=torch.as_tensor(valid, device=dev),
                   side=torch.as_tensor(side, dtype=dt, device=dev),  # +1 subject's left, -1 right, 0 chin
                   n_right=n_right,
                   allowed=torch.as_tensor(allowed, device=dev),  # (17, Np - 1)
                   not_allowed=torch.as_tensor(~allowed, device=dev))
    ids = torch.as_tensor(lm if pool is None else np.concatenate([lm, pool]), device=model.device)
    V = model.num_vertices
    basis = torch.cat([model.identity_basis.view(-1, V, 3)[:, ids], model.expression_basis.view(-1, V, 3)[:, ids]])
    out["template"] = model.template[ids].to(device=dev, dtype=dt)
    out["basis"] = basis.permute(1, 2, 0).contiguous().to(device=dev, dtype=dt)
    # the contour search evaluates every row at once: X (B, N * 3) = template + c @ basis_T (one addmm; the
    # contiguous transpose is 1.5x faster than a transposed view of ``basis``)
    out["template_flat"] = out["template"].reshape(1, -1)
    out["basis_T"] = basis.reshape(basis.shape[0], -1).to(device=dev, dtype=dt).contiguous()
    if sliding:
        # additive score mask of the candidate lines (0 valid, -inf padding) for one addcmul in the search
        out["lines_bias"] = torch.zeros(valid.shape, dtype=dt, device=dev).masked_fill(
            ~torch.as_tensor(valid, device=dev), -math.inf)
    model.extra[key] = out
    return out


class LandmarkTerm(Term):
    """68 landmarks with a sliding jawline (see :mod:`facerender.fitting.landmark_fit` for the definition).

    Residual: ``sqrt(w * c_i / L) * (pi(X_i) - l_i) / scale`` with ``scale`` the target's outer-eye-corner distance.
    """

    name = "landmarks"

    def __init__(self, model: LinearFaceModel, targets: torch.Tensor, confidence: Optional[torch.Tensor],
                 weight: float, sliding_contour: bool = True, scale: Optional[torch.Tensor] = None,
                 huber: Optional[float] = None):
        if "ibug68" not in model.landmarks:
            raise FittingError(f"model {model.name!r} has no 'ibug68' landmark set")
        dev, dt = targets.device, targets.dtype
        if targets.ndim != 3 or targets.shape[1:] != (68, 2):
            raise FittingError(f"landmark targets must be (B, 68, 2), got {tuple(targets.shape)}")
        self.targets = targets  # (setter: also resets the target-derived caches)
        conf = confidence if confidence is not None else torch.ones(targets.shape[:2], dtype=dt, device=dev)
        self.conf = conf.to(dt).clamp_min(0)
        if scale is None:
            eye = (targets[:, 45] - targets[:, 36]).norm(dim=-1)
            box = (targets.amax(1) - targets.amin(1)).norm(dim=-1) / 3.0
            scale = torch.where(eye > 1e-3, eye, box)
        self.scale = scale.clamp_min(1e-3)
        sliding = sliding_contour and "jawline_right_extended" in model.landmarks
        data = _landmark_rows(model, sliding, dt, dev)
        self.sliding = sliding
        self.L = data["L"]
        self.template, self.basis = data["template"], data["basis"]  # (N, 3), (N, 3, K)
        self._template_flat, self._basis_T = data["template_flat"], data["basis_T"]  # (1, N * 3), (K, N * 3)
        if sliding:
            self.lines, self.lines_valid, self.side = data["lines"], data["lines_valid"], data["side"]
            self.n_right = data["n_right"]
            self._allowed, self._not_allowed = data["allowed"], data["not_allowed"]
            self._lines_bias, self._side_col = data["lines_bias"], data["side"][:, None]
        self.sqrt_w = math.sqrt(weight / self.L)
        self.huber = huber
        self.frozen_contour = None
        self._fixed_rows = None  # cached coordinate-major rows (see _rows)
        self.last_uv: Optional[torch.Tensor] = None

    @property
    def targets(self) -> torch.Tensor:
        """``(B, 68, 2)`` target landmarks (pixels). Assigning new targets keeps the weights (confidence, scale)."""
        return self._targets

    @targets.setter
    def targets(self, value: torch.Tensor) -> None:
        self._targets = value
        self._tgt_t = None  # (B, 2, L) coordinate-major copy, made by _evaluate
        self._tgt17 = value[:, :17, None]  # (B, 17, 1, 2) for the contour search

    def allowed_segments(self) -> torch.Tensor:
        """``(17, S)`` bool: the projected-jawline segments each of the 17 contour points may slide onto."""
        return self._allowed

    def contour_correspondences(self, poly_uv: torch.Tensor):
        """Segment index ``(B, 17)`` and position ``t`` on the projected jawline polyline ``(B, Np, 2)``."""
        a = poly_uv[:, None, :-1]  # (B, 1, S, 2)
        ab = poly_uv[:, None, 1:] - a
        da = self._tgt17 - a  # (B, 17, S, 2) from the segment starts to the targets
        t = ((da * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
        d2 = torch.addcmul(da, t.unsqueeze(-1), ab, value=-1).square().sum(-1)  # |a + t ab - target|^2
        idx = d2.masked_fill(self._not_allowed, math.inf).argmin(-1)
        return idx, torch.gather(t, 2, idx[..., None]).squeeze(-1)

    def points(self, kin: Kinematics):
        """Model points ``(B, L, 3)`` and their basis rows ``(B, L, 3, K)`` (contour correspondences resolved)."""
        X, Bc = self._model_points(kin)
        return X.transpose(1, 2), Bc.permute(0, 2, 1, 3)

    def _model_points(self, kin: Kinematics):
        """Coordinate-major model points ``X (B, 3, L) = T + B c`` and the rows ``B (B|1, 3, L, K)``."""
        T, Bc = self._rows(kin)
        return T + (Bc.flatten(1, 2) @ kin.coeffs.unsqueeze(-1)).view(kin.B, 3, self.L), Bc

    def _assemble(self, ia: torch.Tensor, ib: torch.Tensor, tt: torch.Tensor):
        """Template ``(B, 3, L)`` and basis ``(B, 3, L, K)`` rows, coordinate-major, for contour rows ia/ib/t."""
        B, L = ia.shape[0], self.L
        wa = (1 - tt)[..., None]
        T_j = wa * self.template[ia] + (1 - wa) * self.template[ib]
        Bs_j = wa[..., None] * self.basis[ia] + (1 - wa[..., None]) * self.basis[ib]
        T = torch.cat([T_j, self.template[17:L].expand(B, -1, -1)], 1)
        Bs = torch.cat([Bs_j, self.basis[17:L].expand(B, -1, -1, -1)], 1)
        return T.transpose(1, 2).contiguous(), Bs.permute(0, 2, 1, 3).contiguous()

    def _rows(self, kin: Kinematics):
        """``(T (B|1, 3, L), B (B|1, 3, L, K))``: the landmark rows in coordinate-major order (one matrix product per
        evaluation: ``X = T + B c``). Fixed for the non-sliding term and while the contour is frozen (cached)."""
        if not self.sliding:
            if self._fixed_rows is None:
                self._fixed_rows = (self.template[:self.L].T.unsqueeze(0).contiguous(),
                                    self.basis[:self.L].permute(1, 0, 2).unsqueeze(0).contiguous())
            return self._fixed_rows
        if self.frozen_contour is not None:
            if self._fixed_rows is None:
                self._fixed_rows = self._assemble(*self.frozen_contour)
            return self._fixed_rows
        return self._assemble(*self.contour(kin))

    def freeze_contour(self, kin: Optional[Kinematics]) -> bool:
        """Hold the contour correspondences of the parameters in ``kin`` fixed (None: let them slide again at every
        evaluation). Returns True when they differ from the previously frozen ones. Holding them fixed inside a
        solve keeps the energy smooth (ICP style); the caller re-freezes between solves."""
        if kin is None or not self.sliding:
            self.frozen_contour = None
            if self.sliding:
                self._fixed_rows = None
            return False
        new = self.contour(kin)
        old = self.frozen_contour
        self.frozen_contour = new
        self._fixed_rows = None
        return old is None or not (torch.equal(old[0], new[0]) and torch.equal(old[1], new[1]))

    def contour(self, kin: Kinematics):
        """Row indices ``ia, ib (B, 17)`` and weights ``t`` of the 17 contour correspondences at ``kin``'s params."""
        return self._contour(kin)[:3]

    def _contour(self, kin: Kinematics):
        """:meth:`contour` and the camera-space points of all rows ``(B, L + Npool, 3)``."""
        B, L = kin.B, self.L
        c = kin.coeffs
        with torch.no_grad():
            N = self.template.shape[0]
            X = torch.addmm(self._template_flat, c, self._basis_T).view(-1, N, 3)
            Xc = torch.baddbmm(kin.t.unsqueeze(1), X, kin.M.mT)  # (B, N, 3) camera space
            uvp = kin.project(Xc[:, L:])  # (B, Npool, 2)
            # dynamic contour: on each candidate line, the point furthest out along the head's projected x-axis
            # (towards the line's side) lies on the occluding contour. The axis is left unnormalised: only the
            # arg max per line is used.
            out = (uvp @ kin.M[:, :2, :1]).squeeze(-1)  # (B, Npool)
            score = torch.addcmul(self._lines_bias, out[:, self.lines], self._side_col)  # (B, Np, C)
            chosen = torch.gather(self.lines.expand(B, -1, -1), 2, score.argmax(-1, keepdim=True)).squeeze(-1)
            poly_uv = torch.gather(uvp, 1, chosen[..., None].expand(-1, -1, 2))
            seg, tt = self.contour_correspondences(poly_uv)
            self.last_contour = chosen
        ia = L + torch.gather(chosen, 1, seg)
        ib = L + torch.gather(chosen, 1, seg + 1)
        return ia, ib, tt, Xc

    @torch.no_grad()
    def project_landmarks(self, kin: Kinematics) -> torch.Tensor:
        """The 68 projected model landmarks ``(B, 68, 2)`` at ``kin``'s parameters with freshly chosen contour
        correspondences (what :meth:`evaluate` gives after ``freeze_contour(None)``, without the residuals); also
        stored in ``last_uv``."""
        if not self.sliding:
            X, _ = self.points(kin)
            self.last_uv = kin.project(kin.camera_points(X))
            return self.last_uv
        ia, ib, tt, Xc = self._contour(kin)
        idx = torch.cat([ia, ib], 1)
        Xab = torch.gather(Xc, 1, idx.unsqueeze(-1).expand(-1, -1, 3))
        t = tt.unsqueeze(-1)
        Xj = torch.lerp(Xab[:, :17], Xab[:, 17:], t)
        self.last_uv = kin.project(torch.cat([Xj, Xc[:, 17:self.L]], 1))
        return self.last_uv

    def _evaluate(self, kin: Kinematics):
        """Residuals and (IRLS-weighted) Jacobian in coordinate-major row order ``(B, 2, L[, P])``.

        The Jacobian of a projected point ``u_r = f X_r / Z + pp_r`` (r = x, y) is ``f/Z (dX_r - u'_r dZ)`` with
        ``u'_r = X_r / Z``: every parameter block supplies ``d X_cam / d theta`` as a ``(B, 3, L, size)`` slab
        (rotation ``d(F R)/dw X``, translation ``I``, coefficients ``F R B``, focal ``X / f`` in the image rows), and
        one fused expression projects them all. Few, large tensor operations: this runs once per solver iteration
        and dominates a landmark fit (docs/fitting.md, speed).
        """
        B, L = kin.B, self.L
        X, Bc = self._model_points(kin)  # (B, 3, L) model space
        M, t = kin.M, kin.t
        Xc = M @ X + t.unsqueeze(-1)  # (B, 3, L) camera space
        z = Xc[:, 2:3].clamp_min(1e-6)
        q = Xc[:, :2] / z  # (B, 2, L)
        f = kin.focal.view(B, 1, 1)
        uv = q * f + kin.pp.unsqueeze(-1)
        self.last_uv = uv.detach().transpose(1, 2)
        if self._tgt_t is None:
            self._tgt_t = self.targets.transpose(1, 2).contiguous()
            self._w = (self.sqrt_w * self.conf.sqrt() / self.scale[:, None]).unsqueeze(1)  # (B, 1, L)
            if self.huber is not None:
                self._cth = self._w * (self.scale.view(-1, 1, 1) * self.huber)  # threshold on |d|
        w = self._w
        d = w * (uv - self._tgt_t)  # (B, 2, L)
        # Huber on each point's normalised error (threshold ``huber`` eye-corner distances), see
        # robust_point_residuals: r is the square-root residual, omega the IRLS weight
        if self.huber is None:
            r, omega = d, None
        else:
            r, omega = robust_point_residuals(d, "huber", self._cth, dim=1)
        if not kin.need_jacobian:
            return r, None, None
        lay = kin.layout
        sw = w if omega is None else omega.sqrt() * w  # (B, 1, L)
        rw = d if omega is None else omega.sqrt() * d
        K, K_id = Bc.shape[-1], kin.K_id
        # identity and expression next to each other: one product for both
        joint = "identity" in lay and "expression" in lay and \
            lay.slices["expression"].start == lay.slices["identity"].stop
        slabs = []
        for blk in lay.blocks:
            name = blk.name
            if name == "rotation":
                dRf = kin.dR * kin.flip.view(1, 3, 1, 1)  # d(F R)/dw_k  (B, 3, 3, k)
                slabs.append(torch.einsum("bijk,bjn->bink", dRf, X))
            elif name == "translation":
                eye = _rotation_constants(X.dtype, X.device)["eye"]
                slabs.append(eye.view(1, 3, 1, 3).expand(1, 3, L, 3))
            elif name == "identity" and not joint:
                slabs.append((M @ Bc[..., :K_id].flatten(2)).view(-1, 3, L, K_id))
            elif name == "expression":
                if joint:
                    slabs.append((M @ Bc.flatten(2)).view(-1, 3, L, K))
                else:
                    slabs.append((M @ Bc[..., K_id:].flatten(2)).view(-1, 3, L, K - K_id))
            elif name == "identity":
                continue  # in the joint product
            elif name == "focal":
                slabs.append(torch.cat([Xc[:, :2] / kin.focal.view(B, 1, 1), torch.zeros_like(Xc[:, 2:])],
                                       1).unsqueeze(-1))
            else:  # blocks that do not move the points (sh)
                slabs.append(Xc.new_zeros(B, 3, L, blk.size))
        slabs = [sl.expand(B, -1, -1, -1) for sl in slabs]
        D = torch.cat(slabs, -1) if len(slabs) > 1 else slabs[0]
        J = (sw * f / z).unsqueeze(-1) * (D[:, :2] - q.unsqueeze(-1) * D[:, 2:3])  # (B, 2, L, P)
        return r, J.reshape(B, 2 * L, lay.P), rw.reshape(B, 2 * L)

    def evaluate(self, kin: Kinematics):
        r, J, _ = self._evaluate(kin)
        B, L = kin.B, self.L
        r = r.transpose(1, 2).reshape(B, -1)  # point-major: (x0, y0, x1, y1, ...)
        if J is None:
            return r, None
        return r, J.view(B, 2, L, -1).transpose(1, 2).reshape(B, 2 * L, -1)

    def normal_equations(self, kin: Kinematics):
        r, J, rw = self._evaluate(kin)  # row order does not matter for J^T J and J^T r
        return J.mT @ J, (J.mT @ rw.unsqueeze(-1)).squeeze(-1), 0.5 * r.square().flatten(1).sum(1)


class EnergyProblem:
    """Stack of terms over one parameter layout: ``residuals(x)``, ``jacobian(x) -> (r, J)`` for the solver."""

    def __init__(self, layout: ParameterLayout, terms: Sequence[Term], fixed: Dict[str, torch.Tensor],
                 principal_point: torch.Tensor):
        self.layout = layout
        self.terms = list(terms)
        self.fixed = fixed
        self.pp = principal_point

    def kinematics(self, x: torch.Tensor, need_jacobian: bool) -> Kinematics:
        return Kinematics(self.layout, x, self.fixed, self.pp, need_jacobian)

    def residuals(self, x: torch.Tensor) -> torch.Tensor:
        kin = self.kinematics(x, False)
        return torch.cat([t.evaluate(kin)[0] for t in self.terms], 1)

    def jacobian(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(r, J)``: square-root residuals and IRLS-weighted Jacobians. For robust terms ``J^T r`` is NOT the exact
        gradient (use :meth:`normal_equations`, which is); fine for plain least-squares terms."""
        kin = self.kinematics(x, True)
        rs, Js = zip(*(t.evaluate(kin) for t in self.terms))
        return torch.cat(rs, 1), torch.cat(Js, 1)

    def normal_equations(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(J^T J, J^T r, 0.5 ||r||^2)`` summed over the terms (priors add their diagonal directly)."""
        kin = self.kinematics(x, True)
        diagonal = [t for t in self.terms if hasattr(t, "diagonal_normal_equations")]
        dense = [t for t in self.terms if not hasattr(t, "diagonal_normal_equations")]
        if dense:
            H, g, E = dense[0].normal_equations(kin)
            for t in dense[1:]:
                h2, g2, e2 = t.normal_equations(kin)
                H, g, E = H + h2, g + g2, E + e2
        else:
            P = self.layout.P
            H, g, E = x.new_zeros(kin.B, P, P), x.new_zeros(kin.B, P), x.new_zeros(kin.B)
        if diagonal:
            # terms return fresh tensors (Term.normal_equations): add the diagonal ones in place
            H = H if H.is_contiguous() else H.clone()
            g = g if g.is_contiguous() else g.clone()
            Hd = H.diagonal(dim1=-2, dim2=-1)
            for t in diagonal:
                d, s, dv, e2 = t.diagonal_normal_equations(kin)
                E = E + e2
                if d is not None:
                    Hd[:, s] += d
                    g[:, s] += dv
        return H, g, E

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """``0.5 ||r||^2`` ``(B,)``."""
        return 0.5 * self.residuals(x).square().sum(1)

    def term_energies(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{term name: 0.5 * ||r||^2 (B,)}`` (unweighted by robust losses)."""
        kin = self.kinematics(x, False)
        return {t.name: 0.5 * t.evaluate(kin)[0].square().sum(1) for t in self.terms}
