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
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from morphable_models import LinearFaceModel
from morphable_models.geometry import AXIS_FLIP
from morphable_models.rotation import axis_angle_to_matrix, skew

from ..errors import FittingError
from .params import ParameterLayout


def rodrigues_with_derivative(aa: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotation matrices ``R (B, 3, 3)`` and their derivatives ``dR/d aa_k`` as ``(B, 3, 3, 3)`` (last = k).

    Differentiates Rodrigues' formula ``R = I + a K + b K^2`` (``K = [w]x``, ``a = sin t / t``,
    ``b = (1 - cos t) / t^2``) in closed form: ``dR/dw_k = a' w_k/t K + a E_k + b' w_k/t K^2 + b (E_k K + K E_k)``
    with ``E_k = [e_k]x``; Taylor series near ``t = 0``.
    """
    B = aa.shape[0]
    t2 = (aa * aa).sum(-1)
    small = t2 < 1e-8
    t2s = torch.where(small, torch.ones_like(t2), t2)
    t = t2s.sqrt()
    s, c = torch.sin(t), torch.cos(t)
    a = torch.where(small, 1 - t2 / 6, s / t)
    b = torch.where(small, 0.5 - t2 / 24, (1 - c) / t2s)
    # (da/dt)/t and (db/dt)/t
    da = torch.where(small, -1.0 / 3 + t2 / 30, (c - a) / t2s)
    db = torch.where(small, -1.0 / 12 + t2 / 180, (a - 2 * b) / t2s)
    K = skew(aa)
    K2 = K @ K
    E = _SKEW_BASIS.to(aa)  # (k, 3, 3)
    EK = E[None] @ K[:, None]  # (B, k, 3, 3)
    dR = ((da[:, None] * aa)[..., None, None] * K[:, None] + a[:, None, None, None] * E[None]
          + (db[:, None] * aa)[..., None, None] * K2[:, None] + b[:, None, None, None] * (EK + EK.transpose(-1, -2)))
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device)
    R = eye + a[:, None, None] * K + b[:, None, None] * K2
    return R, dR.permute(0, 2, 3, 1)


# [e_k]x for k = 0, 1, 2 (note [e_k]x [w]x + ([e_k]x [w]x)^T = E_k K + K E_k since both are skew)
_SKEW_BASIS = torch.tensor([[[0, 0, 0], [0, 0, -1], [0, 1, 0]],
                            [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
                            [[0, -1, 0], [1, 0, 0], [0, 0, 0]]], dtype=torch.float64)


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
            self.R, self.dR = axis_angle_to_matrix(self.p["rotation"]), None
        self.flip = torch.tensor(AXIS_FLIP, dtype=x.dtype, device=x.device).reshape(3, 1)
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
        """``(J^T J (B, P, P), J^T r (B, P), 0.5 ||r||^2 (B,))`` of this term."""
        r, J = self.evaluate(kin)
        return J.mT @ J, (J.mT @ r.unsqueeze(-1)).squeeze(-1), 0.5 * r.square().sum(1)


def robust_point_residuals(d: torch.Tensor, kind: Optional[str], c) -> Tuple[torch.Tensor, torch.Tensor]:
    """Robust loss on per-point residual vectors ``d (..., k)``: the energy of a point is ``0.5 * phi(||d||)``.

    Returns the square-root residual ``r = d * sqrt(phi(n)) / n`` (differentiable: ``0.5 ||r||^2`` IS the energy, so
    autodiff of it gives the exact gradient) and the IRLS weight ``omega = phi'(n) / (2 n)`` ``(..., 1)`` (no
    gradient): the Gauss-Newton system uses ``J^T omega J`` and ``J^T omega d``, which is the exact gradient.

    kind: None (``phi = n^2``), ``"huber"`` (``n^2`` up to ``c``, then ``2 c n - c^2``) or ``"l21"`` (smoothed l2,1:
    ``phi = 2 (sqrt(n^2 + c^2) - c)``, i.e. ``0.5 phi ~ n``). ``c``: scalar or broadcastable to ``(..., 1)``.
    """
    if kind is None:
        return d, torch.ones_like(d[..., :1])
    n2 = (d * d).sum(-1, keepdim=True)
    n = n2.clamp_min(1e-30).sqrt()
    if kind == "huber":
        big = n > c
        phi = torch.where(big, 2 * c * n - c * c, n2)
        omega = torch.where(big, c / n, torch.ones_like(n))
    elif kind == "l21":
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

    def normal_equations(self, kin: Kinematics):
        lay = kin.layout
        B, P = kin.B, lay.P
        H = kin.x.new_zeros(B, P, P)
        g = kin.x.new_zeros(B, P)
        v = kin.p[self.block]
        if self.mean is not None:
            v = v - self.mean
        d = (self.sqrt_w / self.sigma) ** 2  # diagonal of J^T J
        if self.block not in lay:
            return H, g, 0.5 * (d * v * v).sum(1)
        s = lay.slices[self.block]
        H[:, s, s] = torch.diag_embed(d.expand(B, v.shape[1]))
        g[:, s] = d * v
        return H, g, 0.5 * (d * v * v).sum(1)


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
        out.update(lines=torch.as_tensor(pool_lines, device=dev),  # (Np, C) indices into the pool
                   lines_valid=torch.as_tensor(valid, device=dev),
                   side=torch.as_tensor(side, dtype=dt, device=dev),  # +1 subject's left, -1 right, 0 chin
                   n_right=n_right)
    ids = torch.as_tensor(lm if pool is None else np.concatenate([lm, pool]), device=model.device)
    V = model.num_vertices
    basis = torch.cat([model.identity_basis.view(-1, V, 3)[:, ids], model.expression_basis.view(-1, V, 3)[:, ids]])
    out["template"] = model.template[ids].to(device=dev, dtype=dt)
    out["basis"] = basis.permute(1, 2, 0).contiguous().to(device=dev, dtype=dt)
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
        self.targets = targets
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
        if sliding:
            self.lines, self.lines_valid, self.side = data["lines"], data["lines_valid"], data["side"]
            self.n_right = data["n_right"]
        self.sqrt_w = math.sqrt(weight / self.L)
        self.huber = huber
        self.frozen_contour = None
        self._allowed = None
        self.last_uv: Optional[torch.Tensor] = None

    def allowed_segments(self) -> torch.Tensor:
        if self._allowed is None:
            S = self.lines.shape[0] - 1
            seg = torch.arange(S, device=self.targets.device)[None]
            nr = self.n_right
            j = torch.arange(17, device=self.targets.device)[:, None]
            self._allowed = torch.where(j < 8, seg < nr + 1,
                                        torch.where(j > 8, seg >= nr - 1, (seg >= nr - 2) & (seg <= nr + 1)))
        return self._allowed

    def contour_correspondences(self, poly_uv: torch.Tensor):
        """Segment index ``(B, 17)`` and position ``t`` on the projected jawline polyline ``(B, Np, 2)``."""
        a, b = poly_uv[:, :-1], poly_uv[:, 1:]
        tgt = self.targets[:, :17]
        ab = b - a
        denom = (ab * ab).sum(-1).clamp_min(1e-12)
        t = (((tgt[:, :, None] - a[:, None]) * ab[:, None]).sum(-1) / denom[:, None]).clamp(0, 1)
        d2 = ((a[:, None] + t[..., None] * ab[:, None] - tgt[:, :, None]) ** 2).sum(-1)
        d2 = d2.masked_fill(~self.allowed_segments(), float("inf"))
        idx = d2.argmin(-1)
        return idx, torch.gather(t, 2, idx[..., None]).squeeze(-1)

    def points(self, kin: Kinematics):
        """Model points ``(B, L, 3)`` and their basis rows ``(B, L, 3, K)`` (contour correspondences resolved)."""
        B, L = kin.B, self.L
        c = kin.coeffs
        if not self.sliding:
            Bs = self.basis[:L].unsqueeze(0)
            return self.template[:L] + torch.einsum("nck,bk->bnc", self.basis[:L], c), Bs
        if self.frozen_contour is not None:
            ia, ib, tt = self.frozen_contour
        else:
            ia, ib, tt = self.contour(kin)
        wa = (1 - tt)[..., None]
        T_j = wa * self.template[ia] + (1 - wa) * self.template[ib]
        Bs_j = wa[..., None] * self.basis[ia] + (1 - wa[..., None]) * self.basis[ib]
        T = torch.cat([T_j, self.template[17:L].expand(B, -1, -1)], 1)
        Bs = torch.cat([Bs_j, self.basis[17:L].expand(B, -1, -1, -1)], 1)
        return T + (Bs @ c[:, None, :, None]).squeeze(-1), Bs

    def freeze_contour(self, kin: Optional[Kinematics]) -> bool:
        """Hold the contour correspondences of the parameters in ``kin`` fixed (None: let them slide again at every
        evaluation). Returns True when they differ from the previously frozen ones. Holding them fixed inside a
        solve keeps the energy smooth (ICP style); the caller re-freezes between solves."""
        if kin is None or not self.sliding:
            self.frozen_contour = None
            return False
        new = self.contour(kin)
        old = self.frozen_contour
        self.frozen_contour = new
        return old is None or not (torch.equal(old[0], new[0]) and torch.equal(old[1], new[1]))

    def contour(self, kin: Kinematics):
        """Row indices ``ia, ib (B, 17)`` and weights ``t`` of the 17 contour correspondences at ``kin``'s params."""
        B, L = kin.B, self.L
        c = kin.coeffs
        with torch.no_grad():
            Xp = self.template[L:] + torch.einsum("nck,bk->bnc", self.basis[L:], c)
            uvp = kin.project(kin.camera_points(Xp))  # (B, Npool, 2)
            # dynamic contour: on each candidate line, the point furthest out along the head's projected x-axis
            # (towards the line's side) lies on the occluding contour
            axis = torch.nn.functional.normalize(kin.M[:, :2, 0], dim=-1)  # (B, 2) model +x in the image
            out = (uvp @ axis[:, :, None]).squeeze(-1)  # (B, Npool)
            score = out[:, self.lines] * self.side[:, None]  # (B, Np, C)
            score = score.masked_fill(~self.lines_valid, -float("inf"))
            chosen = torch.gather(self.lines.expand(B, -1, -1), 2, score.argmax(-1, keepdim=True)).squeeze(-1)
            poly_uv = torch.gather(uvp, 1, chosen[..., None].expand(-1, -1, 2))
            seg, tt = self.contour_correspondences(poly_uv)
            self.last_contour = chosen
        ia = L + torch.gather(chosen, 1, seg)
        ib = L + torch.gather(chosen, 1, seg + 1)
        return ia, ib, tt

    def evaluate(self, kin: Kinematics):
        X, Bs = self.points(kin)
        Xc = kin.camera_points(X)
        uv = kin.project(Xc)
        self.last_uv = uv.detach()
        B = kin.B
        w = self.sqrt_w * self.conf.sqrt()[..., None] / self.scale[:, None, None]  # (B, L, 1)
        d = w * (uv - self.targets)
        # Huber on each point's normalised error (threshold ``huber`` eye-corner distances), see
        # robust_point_residuals: r is the square-root residual, omega the IRLS weight
        r, omega = robust_point_residuals(d, "huber" if self.huber is not None else None,
                                          None if self.huber is None else w * self.scale[:, None, None] * self.huber)
        r = r.reshape(B, -1)
        if not kin.need_jacobian:
            return r, None
        sw = omega.sqrt() * w  # (B, L, 1)
        Jp = kin.projection_jacobian(Xc) * sw[..., None]
        J = kin.image_jacobian(X, Xc, Bs, Jp)
        if "focal" in kin.layout:
            z = Xc[..., 2:3].clamp_min(1e-6)
            J[..., kin.layout.slices["focal"]] = (sw * Xc[..., :2] / z)[..., None]
        self._rw = (omega.sqrt() * d.detach()).reshape(B, -1)  # J^T rw is the exact gradient
        return r, J.reshape(B, -1, kin.layout.P)

    def normal_equations(self, kin: Kinematics):
        r, J = self.evaluate(kin)
        return J.mT @ J, (J.mT @ self._rw.unsqueeze(-1)).squeeze(-1), 0.5 * r.square().sum(1)


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
        H, g, E = self.terms[0].normal_equations(kin)
        for t in self.terms[1:]:
            h2, g2, e2 = t.normal_equations(kin)
            H, g, E = H + h2, g + g2, E + e2
        return H, g, E

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """``0.5 ||r||^2`` ``(B,)``."""
        return 0.5 * self.residuals(x).square().sum(1)

    def term_energies(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{term name: 0.5 * ||r||^2 (B,)}`` (unweighted by robust losses)."""
        kin = self.kinematics(x, False)
        return {t.name: 0.5 * t.evaluate(kin)[0].square().sum(1) for t in self.terms}
