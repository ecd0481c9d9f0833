"""A true multilinear (Tucker) face model: vertices x identity x expression, as in FaceWarehouse and Face2Face.

``vertices(w_id, w_exp) = U_v . (G x_2 w_id x_3 w_exp)`` with the core tensor ``G (R_v, R_id, R_exp)``, the vertex
factor ``U_v (3V, R_v)`` (orthonormal columns), and mode weights ``w_id (R_id,)``, ``w_exp (R_exp,)``: for a fixed
identity the model is linear in the expression and vice versa (bilinear), but not jointly linear.

**Built from ICT-FaceKit** (:func:`build_from_ict`, ``facerender model build-multilinear``) by a higher-order SVD of
the data tensor ``D[:, i, e] = mesh of identity i with expression e`` over ICT's 101 identities (the neutral face and
its 100 one-standard-deviation identity meshes) and 54 expressions (neutral and the 53 blendshapes at weight 1),
with ICT's own rule ``mesh = neutral + identity delta + expression delta``. The 5,454 meshes are never formed: they
lie in the span of the neutral, 100 identity and 53 expression deltas, so the HOSVD runs on the tensor's
coordinates in an orthonormal basis ``Q (3V, 154)`` of that span (exact) and ``U_v = Q . U_small``.

**Coefficients** seen by the rest of the package (``identity (K_id = R_id)``, ``expression (K_exp = R_exp)``) are
whitened offsets from the neutral rows: ``w_id = U_id[neutral] + sigma_id * identity``, ``w_exp = U_exp[neutral] +
sigma_exp * expression``, with ``sigma_j^2 = sum_rows (U[row, j] - U[neutral, j])^2`` (the diagonal of the mode-space
covariance of ICT's standard-normal identities; one unit per blendshape for the expression), so zeros give the
neutral face and the identity coefficients are about standard-normal.

**Fitting** (facerender.fitting.relinearize) uses :meth:`TuckerFaceModel.linearize`: for a fixed expression the
model is exactly linear in the identity (and vice versa), so the alternating fit solves exact linear problems
(``free="identity"`` / ``"expression"``); the joint variant solves the first-order expansion in both and
re-linearises (Gauss-Newton).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .errors import ShapeError
from .landmarks import LandmarkEmbedding
from .linear import LinearFaceModel, check_coefficients
from .regions import Region

log = logging.getLogger(__name__)


def mode_unfold(t: np.ndarray, mode: int) -> np.ndarray:
    """Mode-``n`` unfolding ``(I_n, prod of the other sizes)`` of a 3-way array."""
    return np.moveaxis(t, mode, 0).reshape(t.shape[mode], -1)


def mode_product(t: np.ndarray, m: np.ndarray, mode: int) -> np.ndarray:
    """``t x_n m``: multiply mode ``n`` of ``t`` by the matrix ``m (J, I_n)``."""
    return np.moveaxis(np.tensordot(m, np.moveaxis(t, mode, 0), axes=(1, 0)), 0, mode)


def hosvd(t: np.ndarray, ranks: Sequence[int], hooi_iterations: int = 0
          ) -> Tuple[np.ndarray, Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Truncated higher-order SVD of a 3-way array (optionally refined by HOOI iterations).

    Args:
        t: ``(I_1, I_2, I_3)``.
        ranks: ``(R_1, R_2, R_3)`` with ``R_n <= I_n``.
        hooi_iterations: higher-order orthogonal iterations after the HOSVD (0: plain HOSVD).
    Returns:
        ``core (R_1, R_2, R_3)`` and the factors ``U_n (I_n, R_n)`` with orthonormal columns, such that
        ``t ~ core x_1 U_1 x_2 U_2 x_3 U_3``.
    """
    if t.ndim != 3 or len(ranks) != 3:
        raise ShapeError(f"hosvd needs a 3-way array and 3 ranks, got shape {t.shape} and ranks {ranks}")
    if any(r < 1 or r > n for r, n in zip(ranks, t.shape)):
        raise ShapeError(f"ranks {tuple(ranks)} must lie in 1..{t.shape}")
    U = [np.linalg.svd(mode_unfold(t, n), full_matrices=False)[0][:, :ranks[n]] for n in range(3)]
    for _ in range(hooi_iterations):
        for n in range(3):
            y = t
            for m in range(3):
                if m != n:
                    y = mode_product(y, U[m].T, m)
            U[n] = np.linalg.svd(mode_unfold(y, n), full_matrices=False)[0][:, :ranks[n]]
    core = t
    for n in range(3):
        core = mode_product(core, U[n].T, n)
    return core, (U[0], U[1], U[2])


class TuckerFaceModel(nn.Module):
    """A multilinear (Tucker) face model (see the module docstring).

    Args:
        vertex_factor: ``(3V, R_v)``; core: ``(R_v, R_id, R_exp)``.
        identity_mean ``(R_id,)``, identity_scale ``(R_id,)``, expression_mean ``(R_exp,)``, expression_scale
        ``(R_exp,)``: ``w = mean + scale * coefficients``.
        faces ``(F, 3)``; uvs, faces_uv, landmarks, regions: as :class:`LinearFaceModel`.
        identity_rows ``(N_id, R_id)``, expression_rows ``(N_exp, R_exp)``: the data's mode weights (kept for
        :meth:`expression_from_blendshapes` and reconstruction checks), expression_row_names: their names.
        expression_lower, expression_upper ``(R_exp,)``: the fitter's bounds on the expression coefficients
        (default +-``expression_bound``).
    """

    def __init__(self, vertex_factor, core, identity_mean, identity_scale, expression_mean, expression_scale, faces,
                 *, uvs=None, faces_uv=None, landmarks: Optional[Mapping[str, LandmarkEmbedding]] = None,
                 regions: Optional[Mapping[str, Region]] = None, identity_rows=None, expression_rows=None,
                 expression_row_names: Sequence[str] = (), name: str = "multilinear", license: str = "",
                 dtype: torch.dtype = torch.float32, expression_bound: float = 4.0, expression_lower=None,
                 expression_upper=None, extra: Optional[dict] = None):
        super().__init__()

        def T(x):
            return None if x is None else torch.as_tensor(np.asarray(x), dtype=dtype)

        Uv, G = T(vertex_factor), T(core)
        if Uv.ndim != 2 or Uv.shape[0] % 3 or G.ndim != 3 or G.shape[0] != Uv.shape[1]:
            raise ShapeError(f"vertex_factor must be (3V, R_v) and core (R_v, R_id, R_exp), got {tuple(Uv.shape)} "
                             f"and {tuple(G.shape)}")
        R_v, R_id, R_ex = G.shape
        for x, n, label in ((identity_mean, R_id, "identity_mean"), (identity_scale, R_id, "identity_scale"),
                            (expression_mean, R_ex, "expression_mean"), (expression_scale, R_ex, "expression_scale")):
            if np.asarray(x).shape != (n,):
                raise ShapeError(f"{label} must be ({n},), got {np.asarray(x).shape}")
        self.register_buffer("vertex_factor", Uv.contiguous())
        self.register_buffer("core", G.contiguous())
        self.register_buffer("identity_mean", T(identity_mean))
        self.register_buffer("identity_scale", T(identity_scale))
        self.register_buffer("expression_mean", T(expression_mean))
        self.register_buffer("expression_scale", T(expression_scale))
        self.register_buffer("faces", torch.as_tensor(np.asarray(faces, dtype=np.int64)))
        self.register_buffer("uvs", T(uvs))
        self.register_buffer("faces_uv", None if faces_uv is None else torch.as_tensor(np.asarray(faces_uv,
                                                                                                  dtype=np.int64)))
        self.register_buffer("identity_rows", T(identity_rows))
        self.register_buffer("expression_rows", T(expression_rows))
        lo = np.full(R_ex, -float(expression_bound)) if expression_lower is None else np.asarray(expression_lower)
        hi = np.full(R_ex, float(expression_bound)) if expression_upper is None else np.asarray(expression_upper)
        if lo.shape != (R_ex,) or hi.shape != (R_ex,):
            raise ShapeError(f"expression_lower/upper must be ({R_ex},), got {lo.shape} and {hi.shape}")
        self.register_buffer("expression_lower", T(lo))
        self.register_buffer("expression_upper", T(hi))
        self.expression_row_names = tuple(expression_row_names)
        self.landmarks: Dict[str, LandmarkEmbedding] = dict(landmarks or {})
        self.regions: Dict[str, Region] = dict(regions or {})
        self.name, self.license, self.units = name, license, "cm"
        self.expression_bound = float(expression_bound)
        self.extra = dict(extra or {})

    # -------------------------------------------------------------------------------------------- properties
    @property
    def num_vertices(self) -> int:
        return int(self.vertex_factor.shape[0] // 3)

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def num_identity(self) -> int:
        return int(self.core.shape[1])

    @property
    def num_expression(self) -> int:
        return int(self.core.shape[2])

    @property
    def ranks(self) -> Tuple[int, int, int]:
        return tuple(int(r) for r in self.core.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.core.dtype

    @property
    def device(self) -> torch.device:
        return self.core.device

    @property
    def identity_names(self) -> Tuple[str, ...]:
        return tuple(f"identity_mode{k:03d}" for k in range(self.num_identity))

    @property
    def expression_names(self) -> Tuple[str, ...]:
        return tuple(f"expression_mode{k:03d}" for k in range(self.num_expression))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, V={self.num_vertices}, ranks(v, id, exp)={self.ranks}, units='cm'"

    # -------------------------------------------------------------------------------------------- evaluation
    def _coeffs(self, x, K, B, label):
        if x is None:
            return self.core.new_zeros(B, K)
        return check_coefficients(x, K, label, dtype=self.dtype, device=self.device, batch=B).expand(B, K)

    def mode_weights(self, identity=None, expression=None, batch_size: Optional[int] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Coefficients -> mode weights ``w_id (B, R_id)``, ``w_exp (B, R_exp)``."""
        sizes = [x.shape[0] if x.ndim == 2 else 1 for x in (identity, expression) if x is not None]
        B = max(sizes) if sizes else (batch_size or 1)
        a = self._coeffs(identity, self.num_identity, B, "identity")
        d = self._coeffs(expression, self.num_expression, B, "expression")
        return self.identity_mean + self.identity_scale * a, self.expression_mean + self.expression_scale * d

    def vertices_from_weights(self, w_id: torch.Tensor, w_exp: torch.Tensor) -> torch.Tensor:
        """``(B, R_id)``, ``(B, R_exp)`` mode weights -> vertices ``(B, V, 3)``."""
        c = torch.einsum("rie,bi,be->br", self.core, w_id, w_exp)
        return (c @ self.vertex_factor.T).reshape(c.shape[0], -1, 3)

    def forward(self, identity: Optional[torch.Tensor] = None, expression: Optional[torch.Tensor] = None, *,
                batch_size: Optional[int] = None):
        """Vertices ``(B, V, 3)`` (in a :class:`~morphable_models.linear.FaceModelOutput`) of ``identity (B, R_id)``
        and ``expression (B, R_exp)`` coefficients (zeros: the neutral face)."""
        from .linear import FaceModelOutput

        w_id, w_exp = self.mode_weights(identity, expression, batch_size)
        a = (w_id - self.identity_mean) / self.identity_scale
        d = (w_exp - self.expression_mean) / self.expression_scale
        return FaceModelOutput(vertices=self.vertices_from_weights(w_id, w_exp), identity=a, expression=d)

    def evaluate_linear_coefficients(self, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """Exact vertices ``(B, V, 3)`` at the coefficients of a linearised model (the same coordinates)."""
        return self(identity, expression).vertices

    # -------------------------------------------------------------------------------------------- expressions
    def expression_from_blendshapes(self, weights: torch.Tensor) -> torch.Tensor:
        """ICT blendshape weights ``(B, 53)`` -> expression coefficients ``(B, R_exp)``: the expression mode weights
        interpolate the data rows (``w_exp = row[neutral] + sum_e weight_e (row[e] - row[neutral])``), exact at
        full rank for ICT's additive data."""
        if self.expression_rows is None:
            raise ShapeError("this model keeps no expression data rows")
        rows = self.expression_rows
        if weights.ndim != 2 or weights.shape[1] != rows.shape[0] - 1:
            raise ShapeError(f"weights must be (B, {rows.shape[0] - 1}), got {tuple(weights.shape)}")
        w = rows[0] + weights.to(rows) @ (rows[1:] - rows[0])
        return (w - self.expression_mean) / self.expression_scale

    # -------------------------------------------------------------------------------------------- linearisation
    def linearize(self, identity: Optional[torch.Tensor] = None, expression: Optional[torch.Tensor] = None, *,
                  dtype: Optional[torch.dtype] = None) -> LinearFaceModel:
        """The model around ``(identity, expression)`` as a :class:`LinearFaceModel` in absolute coordinates:
        ``V ~ V0 + B_id (a - a0) + B_exp (d - d0)`` with ``B_id = dV/da`` at ``d0`` and ``B_exp = dV/dd`` at ``a0``.

        Exact whenever only one of the two sets moves (bilinearity): a fit with the expression fixed is an exact
        identity fit and vice versa; moving both is first order (the interaction term is left out).
        """
        dt = dtype or self.dtype
        a0 = self.core.new_zeros(1, self.num_identity) if identity is None else identity.detach().to(self.core)
        d0 = self.core.new_zeros(1, self.num_expression) if expression is None else expression.detach().to(self.core)
        a0, d0 = a0.reshape(1, -1), d0.reshape(1, -1)
        w_id, w_exp = self.mode_weights(a0, d0)
        with torch.no_grad():
            M_id = torch.einsum("rie,e->ri", self.core, w_exp[0]) * self.identity_scale  # (R_v, R_id)
            M_ex = torch.einsum("rie,i->re", self.core, w_id[0]) * self.expression_scale  # (R_v, R_exp)
            Uv = self.vertex_factor
            B_id = (Uv @ M_id).T.reshape(self.num_identity, -1, 3)
            B_ex = (Uv @ M_ex).T.reshape(self.num_expression, -1, 3)
            V0 = self.vertices_from_weights(w_id, w_exp)[0]
            template = V0 - torch.einsum("k,kvc->vc", a0[0], B_id) - torch.einsum("k,kvc->vc", d0[0], B_ex)
        return LinearFaceModel(
            template.to(dt), self.faces, B_id.to(dt), B_ex.to(dt), identity_names=self.identity_names,
            expression_names=self.expression_names, expression_kind="pca",
            expression_lower=self.expression_lower, expression_upper=self.expression_upper,
            uvs=self.uvs, faces_uv=self.faces_uv, landmarks=self.landmarks, regions=self.regions,
            name=self.name + "[linearized]", license=self.license, units="cm", dtype=dt,
            extra={**{k: v for k, v in self.extra.items() if isinstance(k, str)},
                   "linearized_at": {"identity": a0[0].cpu().numpy(), "expression": d0[0].cpu().numpy()},
                   "nonlinear_model": "multilinear"},
        ).to(self.device)

    def submodel(self, region: Union[str, Region]) -> "TuckerFaceModel":
        """The model restricted to a region (vertex-factor rows, faces, landmarks and regions re-indexed)."""
        probe = LinearFaceModel(torch.zeros(self.num_vertices, 3), self.faces, uvs=self.uvs, faces_uv=self.faces_uv,
                                landmarks=self.landmarks, regions=self.regions, expression_kind="pca")
        sub = probe.submodel(region)
        keep = torch.as_tensor(sub.extra["parent_vertex_ids"], device=self.device)
        rows = (keep[:, None] * 3 + torch.arange(3, device=self.device)).reshape(-1)
        return TuckerFaceModel(
            self.vertex_factor[rows], self.core, self.identity_mean, self.identity_scale, self.expression_mean,
            self.expression_scale, sub.faces, uvs=sub.uvs, faces_uv=sub.faces_uv, landmarks=sub.landmarks,
            regions=sub.regions, identity_rows=self.identity_rows, expression_rows=self.expression_rows,
            expression_row_names=self.expression_row_names, name=f"{self.name}[{sub.name.split('[')[-1]}",
            license=self.license, dtype=self.dtype, expression_bound=self.expression_bound,
            expression_lower=self.expression_lower.cpu().numpy(), expression_upper=self.expression_upper.cpu().numpy(),
            extra={**self.extra, "parent_vertex_ids": sub.extra["parent_vertex_ids"]})


# ------------------------------------------------------------------------------------------------------------------
# building from ICT-FaceKit


@dataclass
class IctTensorData:
    """ICT's identity x expression data in an orthonormal basis of its span.

    Attributes:
        Q: ``(3V, S)`` orthonormal basis of span{neutral, identity deltas, expression deltas}.
        coords: ``(S, N_id, N_exp)`` the data tensor's coordinates (``D = Q . coords`` exactly).
        identity_names ``(N_id,)``, expression_names ``(N_exp,)``: data rows (index 0 = neutral).
    """

    Q: np.ndarray
    coords: np.ndarray
    identity_names: Tuple[str, ...]
    expression_names: Tuple[str, ...]


def ict_tensor_data(ict_model: LinearFaceModel) -> IctTensorData:
    """The 101 x 54 ICT meshes ``neutral + I_i + E_e`` (i = 0 / e = 0: none) in coordinates of their span."""
    V = ict_model.num_vertices
    T = ict_model.template.detach().cpu().double().numpy().reshape(-1)
    I = ict_model.identity_basis.detach().cpu().double().numpy().reshape(-1, 3 * V)
    E = ict_model.expression_basis.detach().cpu().double().numpy().reshape(-1, 3 * V)
    A = np.concatenate([T[None], I, E]).T  # (3V, 1 + K_id + K_exp)
    Q, Rm = np.linalg.qr(A)
    t, i, e = Rm[:, 0], Rm[:, 1:1 + I.shape[0]], Rm[:, 1 + I.shape[0]:]
    i = np.concatenate([np.zeros((len(t), 1)), i], axis=1)  # (S, N_id)
    e = np.concatenate([np.zeros((len(t), 1)), e], axis=1)  # (S, N_exp)
    coords = t[:, None, None] + i[:, :, None] + e[:, None, :]
    return IctTensorData(Q, coords, ("neutral",) + tuple(ict_model.identity_names),
                         ("neutral",) + tuple(ict_model.expression_names))


def build_from_ict(ict_model: LinearFaceModel, ranks: Tuple[Optional[int], int, int] = (None, 60, 30), *,
                   hooi_iterations: int = 0, data: Optional[IctTensorData] = None, dtype: torch.dtype = torch.float32,
                   name: str = "ict-multilinear") -> TuckerFaceModel:
    """Build a :class:`TuckerFaceModel` from ICT-FaceKit by a (truncated) higher-order SVD.

    Args:
        ict_model: ICT-FaceKit (``load_ict()``; its region, landmarks, UVs are kept).
        ranks: ``(R_v, R_id, R_exp)``; ``R_v`` None keeps the whole span (154 for ICT: exact in the vertex mode).
        hooi_iterations: HOOI refinement after the HOSVD.
    """
    d = data or ict_tensor_data(ict_model)
    S, N_id, N_exp = d.coords.shape
    R_v = S if ranks[0] is None else int(ranks[0])
    core, (Us, Ui, Ue) = hosvd(d.coords, (R_v, int(ranks[1]), int(ranks[2])), hooi_iterations)
    Uv = d.Q @ Us
    # whitening around the neutral rows: ICT's identity coefficients are standard-normal, alpha -> w_id = row[0] +
    # sum_k alpha_k (row[k] - row[0]) has covariance sum_k d_k d_k^T, whose diagonal sets the scale (likewise one unit
    # per blendshape for the expression)
    i_mean, e_mean = Ui[0].copy(), Ue[0].copy()
    i_scale = np.sqrt(((Ui - i_mean) ** 2).sum(0))
    e_scale = np.sqrt(((Ue - e_mean) ** 2).sum(0))
    i_scale[i_scale < 1e-12] = 1.0
    e_scale[e_scale < 1e-12] = 1.0
    # the fitter's expression bounds: the bounding box of the image of ICT's blendshape box [0, 1]^53 under
    # w_exp = row[neutral] + sum_e weight_e (row[e] - row[neutral]) (so ICT's own expression space fits inside)
    delta = (Ue[1:] - e_mean) / e_scale
    lower, upper = np.minimum(delta, 0).sum(0), np.maximum(delta, 0).sum(0)
    return TuckerFaceModel(
        Uv, core, i_mean, i_scale, e_mean, e_scale, ict_model.faces.cpu().numpy(), uvs=ict_model.uvs,
        faces_uv=ict_model.faces_uv, landmarks=ict_model.landmarks, regions=ict_model.regions, identity_rows=Ui,
        expression_rows=Ue, expression_row_names=d.expression_names, name=name, license=ict_model.license,
        dtype=dtype, expression_lower=lower, expression_upper=upper,
        extra={"format": "multilinear", "built_from": ict_model.name, "ranks": [R_v, int(ranks[1]), int(ranks[2])],
               "hooi_iterations": hooi_iterations, "data_shape": [3 * ict_model.num_vertices, N_id, N_exp]})


def reconstruction_error(data: IctTensorData, ranks: Tuple[Optional[int], int, int], hooi_iterations: int = 0,
                         vertex_mask: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Error of the truncated Tucker model on ICT's 101 x 54 meshes.

    Returns ``rms_cm`` (over all vertices and meshes, exact via the orthonormal span basis) and, with
    ``vertex_mask (V,)``, ``max_cm``: the largest vertex distance over the masked vertices of all meshes.
    """
    S = data.coords.shape[0]
    R_v = S if ranks[0] is None else int(ranks[0])
    core, (Us, Ui, Ue) = hosvd(data.coords, (R_v, int(ranks[1]), int(ranks[2])), hooi_iterations)
    approx = mode_product(mode_product(mode_product(core, Us, 0), Ui, 1), Ue, 2)
    diff = data.coords - approx
    V = data.Q.shape[0] // 3
    n_mesh = data.coords.shape[1] * data.coords.shape[2]
    out = {"rms_cm": float(np.sqrt((diff ** 2).sum() / (n_mesh * V)))}
    if vertex_mask is not None:
        rows = (np.nonzero(vertex_mask)[0][:, None] * 3 + np.arange(3)).reshape(-1)
        Qm = data.Q[rows]
        worst = 0.0
        for i in range(diff.shape[1]):
            err = (Qm @ diff[:, i, :]).reshape(-1, 3, diff.shape[2])
            worst = max(worst, float(np.sqrt((err ** 2).sum(1)).max()))
        out["max_cm"] = worst
    return out
