"""Linear / multilinear PCA face models (Face2Face's "multi-linear PCA" model) as ``nn.Module``.

``vertices = template + sum_k identity[k] * identity_basis[k] + sum_j expression[j] * expression_basis[j]``
(and the same for an optional per-vertex albedo). The model is linear in each coefficient set; identity and
expression are separate sets with their own priors (standard deviations) and, for blendshape expressions,
value ranges. The maths lives in the stateless :func:`linear_blend`; the module holds the data in buffers
(``model.to(device, dtype)`` moves everything) and validates its inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .errors import ShapeError
from .geometry import check_faces, vertex_normals
from .landmarks import LandmarkEmbedding
from .regions import Region

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[float]]


# --------------------------------------------------------------------------------------------------------------
# functional core


def linear_blend(template: torch.Tensor, basis: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """``template + einsum('bk,kvc->bvc', coeffs, basis)``.

    Args:
        template: ``(V, C)`` or ``(B, V, C)``.
        basis: ``(K, V, C)``.
        coeffs: ``(B, K)``.
    Returns:
        ``(B, V, C)``.
    """
    K, V, C = basis.shape
    if coeffs.shape[-1] != K:
        raise ShapeError(f"coefficients have {coeffs.shape[-1]} components, the basis has {K}")
    if K == 0:
        return template.expand(coeffs.shape[0], V, C) if template.ndim == 2 else template
    # addmm on the flattened basis is what einsum would do, without its dispatch overhead.
    flat = basis.reshape(K, V * C)
    if template.ndim == 2:
        out = torch.addmm(template.reshape(1, V * C), coeffs, flat)
    else:
        out = template.reshape(-1, V * C) + coeffs @ flat
    return out.reshape(coeffs.shape[0], V, C)


# --------------------------------------------------------------------------------------------------------------
# coefficient specification


@dataclass(frozen=True)
class ComponentSpec:
    """One coefficient set of a model.

    Attributes:
        name: ``"identity"``, ``"expression"`` or ``"albedo"``.
        names: one label per coefficient (``"identity000"`` ..., or blendshape names such as ``"jawOpen"``).
        kind: ``"pca"`` (standard-normal coefficients scaled by ``std``) or ``"blendshape"`` (weights in a range).
        std: per-coefficient standard deviation used by priors, ``(K,)``.
        lower, upper: value range ``(K,)`` (``-inf``/``inf`` for PCA components).
    """

    name: str
    names: Tuple[str, ...]
    kind: str
    std: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    @property
    def size(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"{self.name} has no coefficient named {name!r}; it has {self.size} "
                           f"(e.g. {', '.join(self.names[:5])}, ...)") from None


@dataclass(frozen=True)
class CoefficientSpec:
    """The named coefficient sets of a model, and packing to / from one flat vector (no magic slices)."""

    components: Tuple[ComponentSpec, ...]

    def __getitem__(self, name: str) -> ComponentSpec:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(f"no coefficient set {name!r}; have {[c.name for c in self.components]}")

    def __contains__(self, name: str) -> bool:
        return any(c.name == name for c in self.components)

    @property
    def sizes(self) -> Dict[str, int]:
        return {c.name: c.size for c in self.components}

    @property
    def total(self) -> int:
        return sum(c.size for c in self.components)

    def slices(self) -> Dict[str, slice]:
        out, start = {}, 0
        for c in self.components:
            out[c.name] = slice(start, start + c.size)
            start += c.size
        return out

    def split(self, flat: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``(..., total) -> {name: (..., K_name)}``."""
        if flat.shape[-1] != self.total:
            raise ShapeError(f"flat coefficient vector must have {self.total} entries ({self.sizes}), "
                             f"got {flat.shape[-1]}")
        return {name: flat[..., s] for name, s in self.slices().items()}

    def join(self, coeffs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{name: (..., K_name)} -> (..., total)``; missing sets are zeros."""
        ref = next(iter(coeffs.values()))
        parts = []
        for c in self.components:
            x = coeffs.get(c.name)
            if x is None:
                x = ref.new_zeros(ref.shape[:-1] + (c.size,))
            parts.append(x)
        return torch.cat(parts, dim=-1)


# --------------------------------------------------------------------------------------------------------------
# model output


@dataclass
class FaceModelOutput:
    """Output of :class:`LinearFaceModel`.

    Attributes:
        vertices: ``(B, V, 3)`` model-space positions.
        albedo: ``(B, V, 3)`` per-vertex albedo in [0, 1] (None if the model has no albedo model).
        identity, expression: the coefficients used, ``(B, K_id)``, ``(B, K_exp)``.
        albedo_coeffs: ``(B, K_alb)`` or None.
    """

    vertices: torch.Tensor
    identity: torch.Tensor
    expression: torch.Tensor
    albedo: Optional[torch.Tensor] = None
    albedo_coeffs: Optional[torch.Tensor] = None


# --------------------------------------------------------------------------------------------------------------
# module


def _to_tensor(x, dtype=torch.float32) -> Optional[torch.Tensor]:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.detach().clone().to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def check_coefficients(x, K: int, label: str, *, dtype: torch.dtype, device: torch.device,
                       batch: Optional[int] = None) -> Optional[torch.Tensor]:
    """Validate a coefficient vector for a model with ``K`` of them; shared by every model class.

    Args:
        x: ``(K,)`` or ``(B, K)`` floating-point tensor, or None (returned as is).
        K: the number of coefficients; label: its name in error messages.
        dtype, device: the model's; batch: the other inputs' batch size (1 broadcasts), None to skip that check.
    Returns:
        ``(B, K)`` (a 1-D input gains the batch dimension; nothing is copied).
    Raises:
        ShapeError: not a floating tensor, wrong shape, dtype or device, mismatched batch, NaN or inf, saying what was
            received.
    """
    if x is None:
        return None
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{label} must be a torch.Tensor of shape (B, {K}), got {type(x).__name__}")
    if not x.is_floating_point():
        raise ShapeError(f"{label} must be floating point ({dtype}), got {x.dtype}")
    if x.ndim == 1:
        x = x.unsqueeze(0)
    if x.ndim != 2 or x.shape[1] != K:
        raise ShapeError(f"{label} must have shape (B, {K}), got {tuple(x.shape)}")
    if x.dtype != dtype:
        raise ShapeError(f"{label} has dtype {x.dtype} but the model is {dtype}; "
                         f"convert one of them (e.g. model.to({x.dtype}))")
    if x.device != device:
        raise ShapeError(f"{label} is on {x.device} but the model is on {device}; "
                         f"move one of them (e.g. model.to('{x.device}'))")
    if batch is not None and x.shape[0] != batch and x.shape[0] != 1:
        raise ShapeError(f"{label} has batch size {x.shape[0]}, other inputs have {batch}")
    if not torch.isfinite(x).all():
        raise ShapeError(f"{label} contains NaN or inf values")
    return x


class LinearFaceModel(nn.Module):
    """A linear (multilinear PCA) face model: template + identity basis + expression basis (+ albedo).

    Args:
        template: ``(V, 3)`` mean / neutral shape.
        faces: ``(F, 3)`` triangles (int).
        identity_basis: ``(K_id, V, 3)`` offsets per unit coefficient.
        expression_basis: ``(K_exp, V, 3)``.
        identity_std / expression_std: ``(K,)`` per-component standard deviations used by priors
            (1 for ICT identity: its modes are already one standard deviation).
        expression_kind: ``"blendshape"`` (weights with ``expression_lower``/``expression_upper``, default [0, 1])
            or ``"pca"``.
        albedo_mean: ``(V, 3)`` in [0, 1]; albedo_basis ``(K_alb, V, 3)``; albedo_std ``(K_alb,)``.
        uvs: ``(T, 2)`` texture coordinates; faces_uv ``(F, 3)`` indices into ``uvs`` (per-corner UVs).
        landmarks: named :class:`LandmarkEmbedding` sets.
        regions: named :class:`Region` s.
        name, license, units: descriptive metadata.

    The forward pass takes coefficients of shape ``(B, K)`` (or ``(K,)``, treated as ``B = 1``) with the model's
    dtype and device; missing sets default to zeros (the template). NaN/inf, wrong shapes, integer dtypes
    and device or dtype mismatches raise :class:`ShapeError`.
    """

    def __init__(
        self,
        template: ArrayLike,
        faces: ArrayLike,
        identity_basis: Optional[ArrayLike] = None,
        expression_basis: Optional[ArrayLike] = None,
        *,
        identity_std: Optional[ArrayLike] = None,
        expression_std: Optional[ArrayLike] = None,
        identity_names: Optional[Sequence[str]] = None,
        expression_names: Optional[Sequence[str]] = None,
        expression_kind: str = "blendshape",
        expression_lower: Optional[ArrayLike] = None,
        expression_upper: Optional[ArrayLike] = None,
        albedo_mean: Optional[ArrayLike] = None,
        albedo_basis: Optional[ArrayLike] = None,
        albedo_std: Optional[ArrayLike] = None,
        uvs: Optional[ArrayLike] = None,
        faces_uv: Optional[ArrayLike] = None,
        landmarks: Optional[Mapping[str, LandmarkEmbedding]] = None,
        regions: Optional[Mapping[str, Region]] = None,
        name: str = "linear-face-model",
        license: str = "",
        units: str = "cm",
        dtype: torch.dtype = torch.float32,
        extra: Optional[dict] = None,
    ):
        super().__init__()
        t = _to_tensor(template, dtype)
        if t is None or t.ndim != 2 or t.shape[1] != 3:
            raise ShapeError(f"template must be (V, 3), got {None if t is None else tuple(t.shape)}")
        V = t.shape[0]
        f = check_faces(torch.as_tensor(np.asarray(faces)) if not isinstance(faces, torch.Tensor) else faces, V)

        def basis(x, label):
            b = _to_tensor(x, dtype)
            if b is None:
                return torch.zeros(0, V * 3, dtype=dtype)
            if b.ndim == 2 and b.shape[1] == V * 3:
                b = b.reshape(-1, V, 3)
            if b.ndim != 3 or b.shape[1:] != (V, 3):
                raise ShapeError(f"{label} must be (K, {V}, 3), got {tuple(b.shape)}")
            return b.reshape(b.shape[0], V * 3).contiguous()

        id_b = basis(identity_basis, "identity_basis")
        ex_b = basis(expression_basis, "expression_basis")
        K_id, K_ex = id_b.shape[0], ex_b.shape[0]

        def vec(x, K, default, label):
            v = _to_tensor(x, dtype) if x is not None else torch.full((K,), float(default), dtype=dtype)
            if v.shape != (K,):
                raise ShapeError(f"{label} must have shape ({K},), got {tuple(v.shape)}")
            return v

        self.register_buffer("template", t.contiguous())
        self.register_buffer("faces", f)
        self.register_buffer("identity_basis", id_b)
        self.register_buffer("expression_basis", ex_b)
        self.register_buffer("identity_std", vec(identity_std, K_id, 1.0, "identity_std"))
        self.register_buffer("expression_std", vec(expression_std, K_ex, 1.0, "expression_std"))
        if expression_kind not in ("blendshape", "pca"):
            raise ValueError(f"expression_kind must be 'blendshape' or 'pca', got {expression_kind!r}")
        self.expression_kind = expression_kind
        lo_default, hi_default = (0.0, 1.0) if expression_kind == "blendshape" else (-float("inf"), float("inf"))
        self.register_buffer("expression_lower", vec(expression_lower, K_ex, lo_default, "expression_lower"))
        self.register_buffer("expression_upper", vec(expression_upper, K_ex, hi_default, "expression_upper"))

        am = _to_tensor(albedo_mean, dtype)
        if am is not None and am.shape != (V, 3):
            raise ShapeError(f"albedo_mean must be ({V}, 3), got {tuple(am.shape)}")
        self.register_buffer("albedo_mean", am)
        ab = basis(albedo_basis, "albedo_basis") if albedo_basis is not None else None
        if ab is not None and am is None:
            raise ShapeError("albedo_basis given without albedo_mean")
        self.register_buffer("albedo_basis", ab)
        self.register_buffer(
            "albedo_std", vec(albedo_std, ab.shape[0], 1.0, "albedo_std") if ab is not None else None
        )
        uv = _to_tensor(uvs, dtype)
        fuv = None
        if uv is not None:
            if uv.ndim != 2 or uv.shape[1] != 2:
                raise ShapeError(f"uvs must be (T, 2), got {tuple(uv.shape)}")
            if faces_uv is None:
                if uv.shape[0] != V:
                    raise ShapeError("faces_uv is required when uvs are not per vertex")
                fuv = f.clone()
            else:
                fuv = check_faces(torch.as_tensor(np.asarray(faces_uv)) if not isinstance(faces_uv, torch.Tensor)
                                  else faces_uv, uv.shape[0], "faces_uv")
                if fuv.shape != f.shape:
                    raise ShapeError(f"faces_uv must match faces {tuple(f.shape)}, got {tuple(fuv.shape)}")
        self.register_buffer("uvs", uv)
        self.register_buffer("faces_uv", fuv)

        self.identity_names = tuple(identity_names) if identity_names is not None else tuple(
            f"identity{k:03d}" for k in range(K_id))
        self.expression_names = tuple(expression_names) if expression_names is not None else tuple(
            f"expression{k:03d}" for k in range(K_ex))
        if len(self.identity_names) != K_id or len(self.expression_names) != K_ex:
            raise ShapeError(
                f"got {len(self.identity_names)} identity names for {K_id} components and "
                f"{len(self.expression_names)} expression names for {K_ex}")
        self.landmarks: Dict[str, LandmarkEmbedding] = dict(landmarks or {})
        for lname, lm in self.landmarks.items():
            if lm.vertex_ids.size and (lm.vertex_ids.min() < 0 or lm.vertex_ids.max() >= V):
                raise ShapeError(f"landmark set {lname!r} indexes vertices outside [0, {V})")
        self.regions: Dict[str, Region] = dict(regions or {})
        self.name = name
        self.license = license
        self.units = units
        self.extra = dict(extra or {})

    # ---------------------------------------------------------------------------------------------- properties
    @property
    def num_vertices(self) -> int:
        return int(self.template.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def num_identity(self) -> int:
        return int(self.identity_basis.shape[0])

    @property
    def num_expression(self) -> int:
        return int(self.expression_basis.shape[0])

    @property
    def num_albedo(self) -> int:
        return 0 if self.albedo_basis is None else int(self.albedo_basis.shape[0])

    @property
    def has_albedo(self) -> bool:
        return self.albedo_mean is not None

    @property
    def dtype(self) -> torch.dtype:
        return self.template.dtype

    @property
    def device(self) -> torch.device:
        return self.template.device

    @property
    def spec(self) -> CoefficientSpec:
        """The named coefficient sets (identity, expression and albedo when present)."""
        def np_(x):
            return x.detach().cpu().double().numpy()

        comps = [
            ComponentSpec("identity", self.identity_names, "pca", np_(self.identity_std),
                          np.full(self.num_identity, -np.inf), np.full(self.num_identity, np.inf)),
            ComponentSpec("expression", self.expression_names, self.expression_kind, np_(self.expression_std),
                          np_(self.expression_lower), np_(self.expression_upper)),
        ]
        if self.albedo_basis is not None:
            comps.append(ComponentSpec("albedo", tuple(f"albedo{k:03d}" for k in range(self.num_albedo)), "pca",
                                       np_(self.albedo_std), np.full(self.num_albedo, -np.inf),
                                       np.full(self.num_albedo, np.inf)))
        return CoefficientSpec(tuple(comps))

    def identity_basis_3d(self) -> torch.Tensor:
        """``(K_id, V, 3)`` view of the identity basis."""
        return self.identity_basis.view(self.num_identity, self.num_vertices, 3)

    def expression_basis_3d(self) -> torch.Tensor:
        """``(K_exp, V, 3)`` view of the expression basis."""
        return self.expression_basis.view(self.num_expression, self.num_vertices, 3)

    @property
    def rig(self):
        """The expression set as a :class:`~morphable_models.blendshapes.BlendshapeRig` (names, ranges, FACS)."""
        from .blendshapes import BlendshapeRig

        return BlendshapeRig.from_model(self)

    # ---------------------------------------------------------------------------------------------- validation
    def _coeffs(self, x, K: int, label: str, B: Optional[int]) -> Optional[torch.Tensor]:
        return check_coefficients(x, K, label, dtype=self.dtype, device=self.device, batch=B)

    # ---------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        identity: Optional[torch.Tensor] = None,
        expression: Optional[torch.Tensor] = None,
        albedo: Optional[torch.Tensor] = None,
        *,
        batch_size: Optional[int] = None,
    ) -> FaceModelOutput:
        """Evaluate the model.

        Args:
            identity: ``(B, K_id)`` (or ``(K_id,)``); zeros when None.
            expression: ``(B, K_exp)``; zeros when None. Not clamped: the fitter enforces the value ranges.
            albedo: ``(B, K_alb)`` albedo coefficients (only for models with an albedo basis).
            batch_size: B when no coefficients are given.
        Returns:
            :class:`FaceModelOutput` with ``vertices (B, V, 3)`` and ``albedo (B, V, 3)`` (None without albedo model).
        """
        sizes = [x.shape[0] if isinstance(x, torch.Tensor) and x.ndim == 2 else 1
                 for x in (identity, expression, albedo) if x is not None]
        B = max(sizes) if sizes else (batch_size or 1)
        identity = self._coeffs(identity, self.num_identity, "identity", B)
        expression = self._coeffs(expression, self.num_expression, "expression", B)
        if albedo is not None and self.albedo_basis is None:
            raise ShapeError(f"model {self.name!r} has no albedo basis, but albedo coefficients were given")
        albedo = self._coeffs(albedo, self.num_albedo, "albedo", B) if albedo is not None else None

        zeros = self.template.new_zeros
        identity = (zeros(B, self.num_identity) if identity is None else identity.expand(B, -1))
        expression = (zeros(B, self.num_expression) if expression is None else expression.expand(B, -1))
        V = self.num_vertices
        shape = linear_blend(self.template, self.identity_basis.view(-1, V, 3), identity)
        verts = linear_blend(shape, self.expression_basis.view(-1, V, 3), expression)
        alb = None
        if self.albedo_mean is not None:
            if self.albedo_basis is not None:
                a = zeros(B, self.num_albedo) if albedo is None else albedo.expand(B, -1)
                alb = linear_blend(self.albedo_mean, self.albedo_basis.view(-1, V, 3), a)
                albedo = a
            else:
                alb = self.albedo_mean.expand(B, V, 3)
        return FaceModelOutput(vertices=verts, identity=identity, expression=expression, albedo=alb,
                               albedo_coeffs=albedo)

    def vertex_normals(self, vertices: torch.Tensor) -> torch.Tensor:
        """Unit vertex normals ``(B, V, 3)`` of ``vertices (B, V, 3)`` with the model's faces."""
        return vertex_normals(vertices, self.faces)

    def get_landmarks(self, vertices: torch.Tensor, name: str = "ibug68") -> torch.Tensor:
        """Landmark positions ``(B, L, 3)`` of the set ``name`` from ``vertices (B, V, 3)``."""
        try:
            lm = self.landmarks[name]
        except KeyError:
            raise KeyError(f"model {self.name!r} has no landmark set {name!r}; has {sorted(self.landmarks)}") from None
        return lm.gather(vertices)

    # ---------------------------------------------------------------------------------------------- sub-models
    def submodel(self, region: Union[str, Region], name: Optional[str] = None) -> "LinearFaceModel":
        """A model restricted to a region: vertices, faces, UVs, bases and landmarks re-indexed.

        Triangles of the region whose corners are not all region vertices are dropped; landmark sets that lose a
        point are dropped; other regions are intersected with this one (empty ones dropped).
        """
        if isinstance(region, str):
            try:
                region = self.regions[region]
            except KeyError:
                raise KeyError(f"model {self.name!r} has no region {region!r}; has {sorted(self.regions)}") from None
        V = self.num_vertices
        keep = torch.as_tensor(region.vertex_ids, dtype=torch.long, device=self.device)
        if keep.numel() == 0 or int(keep.max()) >= V:
            raise ShapeError(f"region {region.name!r} has vertex ids outside [0, {V})")
        old_to_new = np.full(V, -1, dtype=np.int64)
        old_to_new[region.vertex_ids] = np.arange(region.vertex_ids.size)
        faces_np = self.faces.cpu().numpy()
        fids = region.face_ids[region.face_ids < len(faces_np)]
        fsel = faces_np[fids]
        ok = (old_to_new[fsel] >= 0).all(1)
        fids = fids[ok]
        new_faces = old_to_new[faces_np[fids]]
        uvs = faces_uv = None
        if self.uvs is not None:
            fuv = self.faces_uv.cpu().numpy()[fids]
            used = np.unique(fuv)
            uv_map = np.full(self.uvs.shape[0], -1, dtype=np.int64)
            uv_map[used] = np.arange(used.size)
            uvs = self.uvs[torch.as_tensor(used, device=self.device)]
            faces_uv = uv_map[fuv]

        def sub(b, K):
            return b.view(K, V, 3)[:, keep] if b is not None else None

        landmarks = {}
        for k, lm in self.landmarks.items():
            r = lm.reindex(old_to_new)
            if r is not None:
                landmarks[k] = r
        face_new = np.full(len(faces_np), -1, dtype=np.int64)
        face_new[fids] = np.arange(fids.size)
        regions = {}
        for k, r in self.regions.items():
            v = old_to_new[r.vertex_ids]
            v = v[v >= 0]
            f = face_new[r.face_ids[r.face_ids < len(faces_np)]]
            f = f[f >= 0]
            if v.size:
                regions[k] = Region(k, v, f, r.description)
        return LinearFaceModel(
            self.template[keep], torch.as_tensor(new_faces),
            sub(self.identity_basis, self.num_identity), sub(self.expression_basis, self.num_expression),
            identity_std=self.identity_std, expression_std=self.expression_std,
            identity_names=self.identity_names, expression_names=self.expression_names,
            expression_kind=self.expression_kind, expression_lower=self.expression_lower,
            expression_upper=self.expression_upper,
            albedo_mean=self.albedo_mean[keep] if self.albedo_mean is not None else None,
            albedo_basis=sub(self.albedo_basis, self.num_albedo),
            albedo_std=self.albedo_std, uvs=uvs, faces_uv=faces_uv, landmarks=landmarks, regions=regions,
            name=name or f"{self.name}[{region.name}]", license=self.license, units=self.units,
            dtype=self.dtype, extra={**self.extra, "parent_vertex_ids": region.vertex_ids.copy(),
                                     "parent_face_ids": fids.copy()},
        ).to(self.device)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, V={self.num_vertices}, F={self.num_faces}, identity={self.num_identity}, "
                f"expression={self.num_expression}, albedo={self.num_albedo if self.has_albedo else None}, "
                f"units={self.units!r}")
