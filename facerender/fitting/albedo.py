"""Per-vertex albedo in closed form, given the geometry and the lighting.

ICT-FaceKit has no albedo model. Given the shading at every image sample (from the fitted geometry and SH light),
the albedo ``a (V, 3)`` per vertex minimises, per colour channel ``c``::

    E_c(a) = s * sum_s w_s (shade_sc * sum_k b_sk a_{v_sk} - obs_sc)^2            (data)
             + lambda_smooth * sum_{edges (i, j)} (a_i - a_j)^2                     (smoothness)
             + lambda_sym    * sum_v (a_v - a_{mirror(v)})^2                        (left/right symmetry)
             + lambda_prior  * sum_v (a_v - mean_v)^2                               (prior)

with ``v_sk`` and ``b_sk`` the corners and barycentrics of the triangle seen at sample ``s`` (so that the model
colour is ``(interpolated albedo) * shade``, ``shade = E(n) / pi`` of :mod:`facerender.render.lighting`), ``w_s``
the sample weights and ``s`` the data normalisation (below). The minimiser solves the sparse symmetric positive
definite system ``(J^T C J + lambda_smooth L + lambda_sym (I - P)^T (I - P) + lambda_prior I) a = J^T C' obs +
lambda_prior mean`` (``J (S, V)`` the barycentric matrix, ``L`` the graph Laplacian, ``P`` the mirror permutation).

Units of the weights (``AlbedoConfig``): with ``normalize_data=True`` (the default) the data term is scaled by
``s = V_obs / trace(J^T C J)`` so that the data term of an average OBSERVED vertex (one some sample touches) has
weight 1 whatever the image resolution and the number of samples; the three lambdas are in these units
(``smoothness = 1``: one edge difference costs as much as the data of an average vertex).

Solvers:

* ``"direct"`` (CPU, float64, the default there): scipy's SuperLU factorisation without pivoting (the matrix is
  SPD) with the minimum-degree ordering of ``A + A^T`` computed on the first call and reused (the pattern is the
  mesh's). Grey shading (the three channels equal) shares one factorisation for the three channels; coloured
  shading factorises the system of the channel-mean shading once and solves each channel by conjugate gradients
  preconditioned with that factorisation (a handful of iterations). Batches are solved one item at a time.
* ``"cg"`` (any device, batches of B images at once, the default on CUDA): Jacobi-preconditioned conjugate gradients
  in torch on the stacked ``(B * V, 3)`` system, with torch sparse CSR matrices (the barycentric matrix, its
  transpose, the block-diagonal regulariser), in the dtype of the inputs, started from the mean albedo. The sample
  bookkeeping (usable samples, mean albedo, normalisation) runs in numpy first.

The result is clamped to [0, 1] at the end (``AlbedoConfig.clamp``); the unconstrained minimiser rarely leaves the
box with the default weights, and the clamp is documented rather than solved as a bounded problem.

Samples carry no information, and get weight 0, where the shading is below ``min_shading`` (attached shadow: the
model predicts black whatever the albedo) or where the observed colour is saturated (any channel >=
``saturation``: clipped highlights only bound the albedo from below).
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Tuple, Union

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from torch import nn

from ..errors import ShapeError

__all__ = [
    "AlbedoConfig",
    "AlbedoSamples",
    "VertexAlbedoEstimator",
    "estimate_vertex_albedo",
    "estimate_mean_albedo",
    "albedo_samples",
    "mesh_edges",
    "mirror_vertex_map",
]

log = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor]
_SOLVERS = ("auto", "direct", "cg")


# ---------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class AlbedoConfig:
    """Weights and solver settings of :func:`estimate_vertex_albedo`.

    Attributes:
        smoothness: ``lambda_smooth``, per mesh edge (see the module docstring for the units).
        symmetry: ``lambda_sym``, per vertex; 0 disables the term (as does ``mirror=None``).
        prior: ``lambda_prior``, per vertex, towards the mean albedo; must be > 0 (it makes the system definite:
            vertices no sample sees take their value from it and from their neighbours).
        normalize_data: scale the data term so that an average observed vertex has data weight 1.
        min_shading: samples whose smallest channel of shading is below this get weight 0.
        saturation: samples with any observed channel >= this get weight 0 (clipped values); None keeps them.
        clamp: clamp the result to [0, 1].
        solver: ``"auto"`` (``"direct"`` on CPU, ``"cg"`` on other devices), ``"direct"`` or ``"cg"``.
        cg_tolerance: relative residual ``||A x - b|| / ||b||`` at which conjugate gradients stop (both paths).
        cg_max_iterations: iteration cap of conjugate gradients.
    """

    smoothness: float = 1.0
    symmetry: float = 1.0
    prior: float = 0.001
    normalize_data: bool = True
    min_shading: float = 0.02
    saturation: Optional[float] = 0.98
    clamp: bool = True
    solver: str = "auto"
    cg_tolerance: float = 1e-6
    cg_max_iterations: int = 3000

    def __post_init__(self) -> None:
        for name in ("smoothness", "symmetry", "prior", "min_shading", "cg_tolerance"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"AlbedoConfig.{name} must be a finite number >= 0, got {v!r}")
        if self.prior <= 0:
            raise ValueError(f"AlbedoConfig.prior must be > 0 (it makes the system definite), got {self.prior!r}")
        if self.saturation is not None and not (isinstance(self.saturation, (int, float))
                                                and 0 < self.saturation <= 1):
            raise ValueError(f"AlbedoConfig.saturation must be in (0, 1] or None, got {self.saturation!r}")
        if self.solver not in _SOLVERS:
            raise ValueError(f"AlbedoConfig.solver must be one of {_SOLVERS}, got {self.solver!r}")
        if not isinstance(self.cg_max_iterations, int) or self.cg_max_iterations < 1:
            raise ValueError(f"AlbedoConfig.cg_max_iterations must be an int >= 1, got {self.cg_max_iterations!r}")


# ------------------------------------------------------------------------------------------------ mesh helpers
def _faces_numpy(faces: Any, name: str = "faces", num_vertices: Optional[int] = None) -> np.ndarray:
    if isinstance(faces, torch.Tensor):
        f = faces.detach().cpu().numpy()
    elif isinstance(faces, np.ndarray):
        f = faces
    else:
        raise ShapeError(f"{name} must be a numpy array or torch tensor (F, 3), got {type(faces).__name__}")
    if f.ndim != 2 or f.shape[1] != 3:
        raise ShapeError(f"{name} must have shape (F, 3), got {tuple(f.shape)}")
    if not np.issubdtype(f.dtype, np.integer):
        raise ShapeError(f"{name} must be an integer array, got {f.dtype}")
    f = f.astype(np.int64, copy=False)
    if f.size:
        lo, hi = int(f.min()), int(f.max())
        if lo < 0 or (num_vertices is not None and hi >= num_vertices):
            bound = f"{num_vertices} vertices" if num_vertices is not None else "non-negative indices"
            raise ShapeError(f"{name} index out of range: found [{lo}, {hi}] for {bound}")
    return f


def mesh_edges(faces: ArrayLike) -> ArrayLike:
    """Unique undirected edges of a triangle mesh.

    Args:
        faces: ``(F, 3)`` integer vertex indices (numpy or torch).
    Returns:
        ``(E, 2)`` int64, each row ``(i, j)`` with ``i < j``, rows sorted lexicographically; numpy for a numpy input,
        a torch tensor on the device of ``faces`` for a torch input. Degenerate edges (``i == j``) are dropped.
    """
    f = _faces_numpy(faces)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e.sort(axis=1)
    e = e[e[:, 0] != e[:, 1]]
    if e.size == 0:
        out = np.zeros((0, 2), dtype=np.int64)
    else:
        n = int(e.max()) + 1
        key = np.unique(e[:, 0] * n + e[:, 1])
        out = np.stack([key // n, key % n], axis=1)
    if isinstance(faces, torch.Tensor):
        return torch.from_numpy(out).to(faces.device)
    return out


def mirror_vertex_map(
    template: ArrayLike,
    axis: int = 0,
    *,
    center: float = 0.0,
    max_distance: Optional[float] = None,
    return_distance: bool = False,
) -> Union[ArrayLike, Tuple[ArrayLike, ArrayLike]]:
    """For each vertex, the vertex nearest to its mirror image (left/right correspondence of a symmetric template).

    The template is reflected about the plane ``x[axis] = center`` (ICT-FaceKit model space: x to the subject's
    left, symmetric about ``x = 0``), and each reflected vertex is matched to its nearest template vertex
    (``scipy.spatial.cKDTree``).

    Args:
        template: ``(V, 3)`` neutral vertices (numpy or torch).
        axis: the coordinate that changes sign (0: x).
        center: position of the mirror plane along ``axis``.
        max_distance: largest accepted mismatch (distance between a reflected vertex and its match), in template
            units; default 1 % of the template's bounding-box diagonal. A larger mismatch raises ``ValueError``
            (the template is not symmetric, or the wrong axis / center was given).
        return_distance: also return the ``(V,)`` mismatch distances.
    Returns:
        ``mirror (V,)`` int64 (numpy, or torch on the template's device for a torch input); with
        ``return_distance``, ``(mirror, distance (V,) float64)``. For the ICT face area the largest mismatch is
        0.005 cm and the map is an involution.
    Raises:
        ShapeError: ``template`` is not ``(V, 3)`` with finite values; ValueError: bad axis or mismatch too large.
    """
    from scipy.spatial import cKDTree

    is_torch = isinstance(template, torch.Tensor)
    T = template.detach().cpu().numpy() if is_torch else np.asarray(template)
    if T.ndim != 2 or T.shape[1] != 3 or T.shape[0] == 0:
        raise ShapeError(f"template must have shape (V, 3) with V > 0, got {tuple(T.shape)}")
    if not np.issubdtype(T.dtype, np.number) or not np.isfinite(T).all():
        raise ShapeError(f"template must hold finite numbers, got dtype {T.dtype}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    T = T.astype(np.float64)
    M = T.copy()
    M[:, axis] = 2.0 * center - M[:, axis]
    dist, idx = cKDTree(T).query(M)
    diag = float(np.linalg.norm(T.max(0) - T.min(0)))
    limit = 0.01 * diag if max_distance is None else float(max_distance)
    worst = int(np.argmax(dist))
    log.debug("mirror_vertex_map: largest mismatch %.3g at vertex %d (limit %.3g)", dist[worst], worst, limit)
    if dist[worst] > limit:
        raise ValueError(
            f"template is not symmetric about {'xyz'[axis]} = {center}: vertex {worst} has no mirror partner "
            f"within {limit:.4g} (nearest at {dist[worst]:.4g}; median mismatch {np.median(dist):.4g})")
    mirror = idx.astype(np.int64)
    if is_torch:
        mirror = torch.from_numpy(mirror).to(template.device)
        dist_out: ArrayLike = torch.from_numpy(dist).to(template.device)
    else:
        dist_out = dist
    return (mirror, dist_out) if return_distance else mirror


# ---------------------------------------------------------------------------------------------- sample gathering
@dataclass
class AlbedoSamples:
    """Image samples for :func:`estimate_vertex_albedo`, padded to a common count ``S`` per batch item.

    Attributes:
        face_vertices: ``(B, S, 3)`` int64 corner vertex ids of the triangle seen by each sample (0 on padding).
        barycentrics: ``(B, S, 3)`` (0 on padding).
        observed: ``(B, S, 3)`` image colour.
        shading: ``(B, S, C)`` shading ``E(n) / pi`` (``C`` = 1 or 3).
        weights: ``(B, S)`` (0 on padding).
        pixel_index: ``(B, S)`` int64 flat pixel index ``row * W + col`` (-1 on padding).
    """

    face_vertices: torch.Tensor
    barycentrics: torch.Tensor
    observed: torch.Tensor
    shading: torch.Tensor
    weights: torch.Tensor
    pixel_index: torch.Tensor

    @property
    def counts(self) -> torch.Tensor:
        """``(B,)`` number of real (unpadded) samples per batch item."""
        return (self.pixel_index >= 0).sum(1)

    def item(self, b: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The unpadded samples of item ``b``: ``(face_vertices, barycentrics, observed, shading, weights)``."""
        n = int(self.counts[b])
        return (self.face_vertices[b, :n], self.barycentrics[b, :n], self.observed[b, :n], self.shading[b, :n],
                self.weights[b, :n])


def albedo_samples(
    fragments: Any,
    faces: torch.Tensor,
    image: torch.Tensor,
    shading: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    weights: Optional[torch.Tensor] = None,
) -> AlbedoSamples:
    """Collect the covered pixels of a rasterization as albedo samples.

    Args:
        fragments: :class:`~facerender.render.rasterize.Fragments` of the fitted mesh (``(B, H, W)``).
        faces: ``(F, 3)`` the rasterized faces.
        image: ``(B, H, W, 3)`` float photo in [0, 1] (a batch of 1 broadcasts).
        shading: ``(B, H, W, C)`` per-pixel shading ``sh_irradiance(normals, sh) / pi``, ``C`` = 1 or 3.
        mask: optional ``(B, H, W)`` bool: pixels to use (e.g. skin segmentation); default all covered pixels.
        weights: optional ``(B, H, W)`` per-pixel weights (e.g. robust weights of the photometric energy).
    Returns:
        :class:`AlbedoSamples`, padded to the largest count in the batch; dtype of ``image``.
    """
    tri_img = fragments.triangle_id
    B, H, W = tri_img.shape
    faces = _faces_numpy(faces)  # validates
    faces_t = torch.as_tensor(faces, device=tri_img.device)

    def check(x, name, last):
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1:3] != (H, W) or x.shape[0] not in (1, B) \
                or x.shape[-1] not in last:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"{name} must have shape ({B}, {H}, {W}, {'/'.join(map(str, last))}) "
                             f"(the fragments' size), got {got}")
        return x.expand(B, H, W, x.shape[-1])

    img = check(image, "image", (3,))
    shd = check(shading, "shading", (1, 3))
    covered = tri_img >= 0
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.shape not in ((B, H, W), (1, H, W)):
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ShapeError(f"mask must have shape ({B}, {H}, {W}), got {got}")
        covered = covered & mask.to(torch.bool).expand(B, H, W)
    if weights is not None and (not isinstance(weights, torch.Tensor) or weights.shape not in ((B, H, W), (1, H, W))):
        got = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ShapeError(f"weights must have shape ({B}, {H}, {W}), got {got}")
    flat = covered.reshape(B, -1)
    counts = flat.sum(1)
    S = int(counts.max()) if B else 0
    # stable sort puts the covered pixels first, in raster order
    order = torch.sort((~flat).to(torch.int8), dim=1, stable=True).indices[:, :S]  # (B, S)
    valid = torch.arange(S, device=order.device)[None] < counts[:, None]
    tri = tri_img.reshape(B, -1).gather(1, order).clamp_min(0)
    bary = fragments.barycentrics.detach().reshape(B, -1, 3).gather(1, order[..., None].expand(B, S, 3))
    dtype = img.dtype
    obs = img.reshape(B, -1, 3).gather(1, order[..., None].expand(B, S, 3))
    C = shd.shape[-1]
    sh = shd.reshape(B, -1, C).gather(1, order[..., None].expand(B, S, C))
    w = valid.to(dtype)
    if weights is not None:
        w = w * weights.expand(B, H, W).reshape(B, -1).gather(1, order).to(dtype)
    vf = valid[..., None]
    return AlbedoSamples(
        face_vertices=torch.where(vf, faces_t[tri], 0),
        barycentrics=torch.where(vf, bary.to(dtype), 0.0),
        observed=torch.where(vf, obs, 0.0),
        shading=torch.where(vf, sh.to(dtype), 0.0),
        weights=w,
        pixel_index=torch.where(valid, order, -1),
    )


# ------------------------------------------------------------------------------------------------ mean albedo
def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """Weighted median (the smallest value at which the cumulative weight reaches half the total)."""
    if values.size > 4096:  # O(S) histogram on a 1/4096 grid of the range, then the exact median of one bin
        lo, hi = float(values.min()), float(values.max())
        if hi > lo:
            bins = np.minimum(((values - lo) * (4096 / (hi - lo))).astype(np.int64), 4095)
            cw = np.cumsum(np.bincount(bins, weights=weights, minlength=4096))
            k = int(np.searchsorted(cw, 0.5 * cw[-1]))
            inside = bins == k
            below = cw[k - 1] if k > 0 else 0.0
            v, w = values[inside], weights[inside]
            order = np.argsort(v)
            c = below + np.cumsum(w[order])
            return float(v[order][min(int(np.searchsorted(c, 0.5 * cw[-1])), v.size - 1)])
    order = np.argsort(values)
    v, w = values[order], weights[order]
    cw = np.cumsum(w)
    return float(v[np.searchsorted(cw, 0.5 * cw[-1])])


def estimate_mean_albedo(
    observed: ArrayLike,
    shading: ArrayLike,
    weights: Optional[ArrayLike] = None,
    *,
    min_shading: float = 0.02,
    saturation: Optional[float] = 0.98,
) -> np.ndarray:
    """A robust mean albedo from image samples: the weighted median of ``observed / shading`` per channel.

    Only the better-lit half of the usable samples counts (mean shading at least its weighted median), where the
    ratio is least sensitive to errors of the shading. The result is clipped to [0.02, 0.98].

    Args:
        observed: ``(S, 3)`` colours in [0, 1]; shading: ``(S, 3)`` or ``(S, 1)``; weights: ``(S,)`` or None.
        min_shading, saturation: see :class:`AlbedoConfig` (samples they exclude do not count).
    Returns:
        ``(3,)`` float64 numpy.
    Raises:
        ValueError: no usable sample.
    """
    obs = _as_np(observed, "observed")
    shd = _as_np(shading, "shading")
    if (obs.ndim != 2 or obs.shape[1] != 3 or shd.ndim != 2 or shd.shape[0] != obs.shape[0]
            or shd.shape[1] not in (1, 3)):
        raise ShapeError(f"observed must be (S, 3) and shading (S, 3) or (S, 1) with the same S, got "
                         f"{tuple(obs.shape)} and {tuple(shd.shape)}")
    shd = np.ascontiguousarray(np.broadcast_to(shd, obs.shape))
    w = np.ones(obs.shape[0]) if weights is None else _as_np(weights, "weights").reshape(-1)
    if w.shape[0] != obs.shape[0]:
        raise ShapeError(f"weights must have shape ({obs.shape[0]},), got {tuple(np.shape(weights))}")
    w = _usable(w, obs, shd, min_shading, saturation)
    if not (w > 0).any():
        raise ValueError(f"estimate_mean_albedo: none of the {obs.shape[0]} samples is usable (weight > 0, "
                         f"shading >= {min_shading}, not saturated)")
    m = shd.mean(1)
    keep = w > 0
    keep &= m >= _weighted_median(m[keep], w[keep])
    ratio = obs[keep] / shd[keep]
    out = np.array([_weighted_median(ratio[:, c], w[keep]) for c in range(3)])
    return np.clip(out, 0.02, 0.98)


# ----------------------------------------------------------------------------------------------- input checks
def _as_np(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    elif not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception:  # pragma: no cover - exotic inputs
            raise ShapeError(f"{name} must be an array, got {type(x).__name__}") from None
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ShapeError(f"{name} must hold numbers, got dtype {x.dtype}")
    return x.astype(np.float64, copy=False)


def _usable(w: np.ndarray, obs: np.ndarray, shd: np.ndarray, min_shading: float,
            saturation: Optional[float]) -> np.ndarray:
    """Weights with the samples that carry no information set to 0."""
    ok = np.minimum(np.minimum(shd[:, 0], shd[:, 1]), shd[:, 2]) >= min_shading
    if saturation is not None:
        ok &= np.maximum(np.maximum(obs[:, 0], obs[:, 1]), obs[:, 2]) < saturation
    return np.where(ok, w, 0.0)


@dataclass
class _Inputs:
    """Validated samples of one or B problems (numpy float64 or torch), batch-first."""

    fv: Any  # (B, S, 3) int64
    bary: Any  # (B, S, 3)
    obs: Any  # (B, S, 3)
    shade: Any  # (B, S, 3)
    w: Any  # (B, S)
    batched: bool


def _check_samples(V: int, fv, bary, obs, shade, weights) -> None:
    """Shape / range checks shared by both paths (raise stating what was received)."""
    def shape(x):
        return tuple(x.shape) if isinstance(x, (np.ndarray, torch.Tensor)) else type(x).__name__

    for name, x in (("samples_face_vertices", fv), ("samples_bary", bary), ("observed", obs), ("shading", shade)):
        if not isinstance(x, (np.ndarray, torch.Tensor)):
            raise ShapeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if fv.ndim not in (2, 3) or fv.shape[-1] != 3:
        raise ShapeError(f"samples_face_vertices must have shape (S, 3) or (B, S, 3), got {shape(fv)}")
    lead = tuple(fv.shape[:-1])
    if (fv.dtype == torch.bool if isinstance(fv, torch.Tensor) else fv.dtype == np.bool_) or \
            (fv.is_floating_point() if isinstance(fv, torch.Tensor) else not np.issubdtype(fv.dtype, np.integer)):
        raise ShapeError(f"samples_face_vertices must be an integer array, got {fv.dtype}")
    if lead[-1] == 0:
        raise ValueError(f"no samples: samples_face_vertices has shape {shape(fv)}")
    if tuple(bary.shape) != lead + (3,):
        raise ShapeError(f"samples_bary must have shape {lead + (3,)} like samples_face_vertices, got {shape(bary)}")
    if tuple(obs.shape) != lead + (3,):
        raise ShapeError(f"observed must have shape {lead + (3,)}, got {shape(obs)}")
    if tuple(shade.shape) not in (lead + (3,), lead + (1,), lead):
        raise ShapeError(f"shading must have shape {lead + (3,)}, {lead + (1,)} or {lead}, got {shape(shade)}")
    if weights is not None and tuple(weights.shape) != lead:
        raise ShapeError(f"weights must have shape {lead}, got {shape(weights)}")
    lo, hi = int(fv.min()), int(fv.max())
    if lo < 0 or hi >= V:
        raise ShapeError(f"samples_face_vertices index out of range: found [{lo}, {hi}] for {V} vertices")


def _mean_array(mean_albedo, V: int, B: int) -> Optional[np.ndarray]:
    """``(B, V, 3)`` float64 from ``(3,)``, ``(V, 3)`` or ``(B, V, 3)``; None stays None."""
    if mean_albedo is None:
        return None
    m = _as_np(mean_albedo, "mean_albedo")
    if m.shape == (3,):
        m = np.broadcast_to(m, (B, V, 3))
    elif m.shape == (V, 3):
        m = np.broadcast_to(m, (B, V, 3))
    elif m.shape != (B, V, 3):
        raise ShapeError(f"mean_albedo must have shape (3,), ({V}, 3) or ({B}, {V}, 3), got {tuple(m.shape)}")
    if not np.isfinite(m).all():
        raise ShapeError("mean_albedo holds NaN or inf")
    return m


# --------------------------------------------------------------------------------------------------- estimator
class VertexAlbedoEstimator(nn.Module):
    """Module form of :func:`estimate_vertex_albedo`: holds the mesh, the mirror map and the config, and caches what
    depends only on them (edges, the regulariser matrix, the fill-reducing ordering), so that repeated calls in a
    fitting loop only assemble the data term.

    ``forward(samples_face_vertices, samples_bary, observed, shading, weights=None, *, mean_albedo=None)``, see
    :func:`estimate_vertex_albedo`.

    Args:
        num_vertices: ``V``.
        faces: ``(F, 3)`` integer triangles (numpy or torch).
        mirror: ``(V,)`` mirror vertex map (:func:`mirror_vertex_map`) or None (no symmetry term).
        config: :class:`AlbedoConfig` (default weights).
    """

    def __init__(self, num_vertices: int, faces: ArrayLike, *, mirror: Optional[ArrayLike] = None,
                 config: Optional[AlbedoConfig] = None) -> None:
        super().__init__()
        if isinstance(num_vertices, bool) or not isinstance(num_vertices, (int, np.integer)) or num_vertices <= 0:
            raise ValueError(f"num_vertices must be a positive int, got {num_vertices!r}")
        self.num_vertices = V = int(num_vertices)
        self.config = AlbedoConfig() if config is None else config
        if not isinstance(self.config, AlbedoConfig):
            raise ValueError(f"config must be an AlbedoConfig, got {type(self.config).__name__}")
        f = _faces_numpy(faces, "faces", V)
        edges = mesh_edges(f)
        m = None
        if mirror is not None:
            m = mirror.detach().cpu().numpy() if isinstance(mirror, torch.Tensor) else np.asarray(mirror)
            if m.shape != (V,) or not np.issubdtype(m.dtype, np.integer):
                raise ShapeError(f"mirror must be a (V,) = ({V},) integer array, got {tuple(m.shape)} {m.dtype}")
            if m.min() < 0 or m.max() >= V:
                raise ShapeError(f"mirror index out of range: found [{int(m.min())}, {int(m.max())}] for {V} vertices")
            m = m.astype(np.int64)
        self._edges_np = edges
        self._mirror_np = m
        self.register_buffer("edges", torch.from_numpy(edges), persistent=False)
        self.register_buffer("mirror", torch.from_numpy(m) if m is not None else None, persistent=False)
        cfg = self.config
        # regulariser diagonal (for the Jacobi preconditioner of the CG path), per vertex
        deg = np.bincount(edges.reshape(-1), minlength=V).astype(np.float64)
        diag = cfg.smoothness * deg + cfg.prior
        if m is not None and cfg.symmetry > 0:
            moved = m != np.arange(V)
            diag = diag + cfg.symmetry * (moved + np.bincount(m[moved], minlength=V))
        self.register_buffer("reg_diag", torch.from_numpy(diag), persistent=False)
        self._reg: Optional[sp.csc_matrix] = None
        self._perm: Optional[np.ndarray] = None

    # -------------------------------------------------------------------------------------------- direct path
    def _regulariser(self) -> sp.csc_matrix:
        if self._reg is None:
            V, cfg, e = self.num_vertices, self.config, self._edges_np
            R = cfg.prior * sp.identity(V, format="csc")
            if cfg.smoothness > 0 and e.size:
                A = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(V, V))
                A = (A + A.T).tocsr()
                L = sp.diags(np.asarray(A.sum(1)).ravel()) - A
                R = R + cfg.smoothness * L
            if self._mirror_np is not None and cfg.symmetry > 0:
                D = sp.identity(V, format="csr") - sp.csr_matrix(
                    (np.ones(V), (np.arange(V), self._mirror_np)), shape=(V, V))
                R = R + cfg.symmetry * (D.T @ D)
            self._reg = sp.csc_matrix(R)
        return self._reg

    def _solve_direct(self, fv, bary, obs, shade, w, mean) -> np.ndarray:
        """One problem in float64 numpy: ``fv (S, 3)``, ``bary (S, 3)``, ``obs (S, 3)``, ``shade (S, 3)``,
        ``w (S,)``, ``mean (V, 3)`` -> ``(V, 3)``."""
        V, cfg = self.num_vertices, self.config
        R = self._regulariser()
        S = fv.shape[0]
        J = sp.csr_matrix((bary.reshape(-1), fv.reshape(-1), np.arange(0, 3 * S + 1, 3)), shape=(S, V))
        rhs = np.asarray(J.T @ (w[:, None] * shade * obs)) + cfg.prior * mean
        spread = np.maximum(np.abs(shade[:, 0] - shade[:, 1]), np.abs(shade[:, 0] - shade[:, 2])).max()
        grey = spread <= 1e-12 * max(1.0, float(np.abs(shade).max()))
        coef = w[:, None] * shade * shade  # (S, 3)
        A0 = (J.T @ sp.diags(coef.mean(1)) @ J + R).tocsc()
        lu = _factorize(A0, self._perm)
        if self._perm is None:
            # the minimum-degree ordering of the first system is reused: the data term only couples vertices of one
            # triangle (mesh edges), so later systems have (nearly) the same pattern; any ordering is exact here
            self._perm = lu.perm_c
        x = lu.solve(rhs)
        if grey:
            return x
        # coloured shading: PCG per channel, preconditioned by the factorisation of the channel-mean system
        def matvec(X):
            return np.asarray(J.T @ (coef * np.asarray(J @ X))) + R @ X

        x, iters, res = _pcg(matvec, rhs, x, lu.solve, cfg.cg_tolerance, cfg.cg_max_iterations)
        log.debug("albedo PCG: %d iterations, relative residual %.2e", iters, res)
        return x

    # ------------------------------------------------------------------------------------------------ CG path
    def _regulariser_torch(self, B: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``kron(I_B, R)`` as a torch sparse CSR ``(B * V, B * V)`` (the regulariser of every batch item)."""
        R = self._regulariser().tocsr()
        V, nnz = self.num_vertices, R.nnz
        crow = torch.from_numpy(R.indptr.astype(np.int64))
        col = torch.from_numpy(R.indices.astype(np.int64))
        val = torch.from_numpy(R.data)
        off = torch.arange(B, dtype=torch.int64)
        crow_b = torch.cat([(crow[:-1][None] + (off * nnz)[:, None]).reshape(-1), torch.tensor([B * nnz])])
        col_b = (col[None] + (off * V)[:, None]).reshape(-1)
        val_b = val.repeat(B)
        return torch.sparse_csr_tensor(crow_b.to(device), col_b.to(device), val_b.to(device=device, dtype=dtype),
                                       (B * V, B * V), check_invariants=False)

    def _solve_cg(self, fv, bary, obs, shade, w, mean) -> torch.Tensor:
        """B problems in torch: ``(B, S, ...)`` -> ``(B, V, 3)``: Jacobi-preconditioned CG on the stacked system
        ``(B * V, 3)`` with sparse CSR matrices (the barycentric matrix ``J``, its transpose, ``kron(I_B, R)``)."""
        B, S, _ = fv.shape
        V, cfg = self.num_vertices, self.config
        dtype, device = obs.dtype, obs.device
        tiny = torch.finfo(dtype).tiny
        flat = (fv + (torch.arange(B, device=device) * V)[:, None, None]).reshape(-1)  # (B * S * 3,) columns
        rows = torch.arange(B * S, device=device).repeat_interleave(3)
        vals = bary.reshape(-1)
        with warnings.catch_warnings():  # torch: "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            J = torch.sparse_coo_tensor(torch.stack([rows, flat]), vals, (B * S, B * V),
                                        check_invariants=False).coalesce().to_sparse_csr()
            Jt = torch.sparse_coo_tensor(torch.stack([flat, rows]), vals, (B * V, B * S),
                                         check_invariants=False).coalesce().to_sparse_csr()
            R = self._regulariser_torch(B, dtype, device)
        coef = (w[..., None] * shade * shade).reshape(B * S, 3)

        def apply(x):  # (B * V, 3)
            return Jt @ (coef * (J @ x)) + R @ x

        rhs = Jt @ (w[..., None] * shade * obs).reshape(B * S, 3) + cfg.prior * mean.reshape(B * V, 3)
        dd = (coef.reshape(B, S, 1, 3) * (bary * bary)[..., None]).reshape(-1, 3)
        diag = torch.zeros(B * V, 3, dtype=dtype, device=device).index_add_(0, flat, dd)
        diag = (diag.reshape(B, V, 3) + self.reg_diag.to(device=device, dtype=dtype)[None, :, None]).reshape(B * V, 3)

        def norms(v):  # per batch item and channel: (B, 3)
            return v.reshape(B, V, 3).norm(dim=1)

        def dots(a, b):
            return (a * b).reshape(B, V, 3).sum(1)

        def per_item(c):  # (B, 3) -> (B * V, 3)
            return c[:, None, :].expand(B, V, 3).reshape(B * V, 3)

        x = mean.reshape(B * V, 3).clone()
        r = rhs - apply(x)
        z = r / diag
        p = z.clone()
        rz = dots(r, z)
        bnorm = norms(rhs).clamp_min(tiny)
        tol = cfg.cg_tolerance
        it = 0
        for it in range(1, cfg.cg_max_iterations + 1):
            Ap = apply(p)
            alpha = per_item(rz / dots(p, Ap).clamp_min(tiny))
            x = x + alpha * p
            r = r - alpha * Ap
            if it % 10 == 0 and bool((norms(r) <= tol * bnorm).all()):
                break
            z = r / diag
            rz_new = dots(r, z)
            p = z + per_item(rz_new / rz.clamp_min(tiny)) * p
            rz = rz_new
        res = float((norms(r) / bnorm).max())
        log.debug("albedo CG: %d iterations, relative residual %.2e", it, res)
        if res > tol and it >= cfg.cg_max_iterations:
            log.info("albedo CG stopped at cg_max_iterations=%d with relative residual %.2e (tolerance %.1e)",
                     it, res, tol)
        return x.reshape(B, V, 3)

    # ------------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        samples_face_vertices: ArrayLike,
        samples_bary: ArrayLike,
        observed: ArrayLike,
        shading: ArrayLike,
        weights: Optional[ArrayLike] = None,
        *,
        mean_albedo: Optional[ArrayLike] = None,
    ) -> ArrayLike:
        V, cfg = self.num_vertices, self.config
        fv_in, bary_in, obs_in, shade_in = samples_face_vertices, samples_bary, observed, shading
        _check_samples(V, fv_in, bary_in, obs_in, shade_in, weights)
        batched = fv_in.ndim == 3
        is_torch = isinstance(obs_in, torch.Tensor)
        device = obs_in.device if is_torch else torch.device("cpu")
        solver = cfg.solver
        if solver == "auto":
            solver = "direct" if device.type == "cpu" else "cg"

        # everything as float64 numpy first for the checks and the weights (cheap: O(S))
        fv = (fv_in.detach().cpu().numpy() if isinstance(fv_in, torch.Tensor) else np.asarray(fv_in)).astype(np.int64)
        bary = _as_np(bary_in, "samples_bary")
        obs = _as_np(obs_in, "observed")
        shade = _as_np(shade_in, "shading")
        if shade.ndim == fv.ndim - 1:
            shade = shade[..., None]
        if not batched:
            fv, bary, obs, shade = fv[None], bary[None], obs[None], shade[None]
        B, S = fv.shape[:2]
        shade = np.ascontiguousarray(np.broadcast_to(shade, (B, S, 3)))
        w = np.ones((B, S)) if weights is None else _as_np(weights, "weights").reshape(B, S)
        for name, x in (("samples_bary", bary), ("observed", obs), ("shading", shade), ("weights", w)):
            if not np.isfinite(x).all():
                raise ShapeError(f"{name} holds NaN or inf values")
        if (w < 0).any():
            raise ValueError(f"weights must be >= 0, got a minimum of {w.min():.4g}")
        w = np.stack([_usable(w[b], obs[b], shade[b], cfg.min_shading, cfg.saturation) for b in range(B)])
        empty = [b for b in range(B) if not (w[b] > 0).any()]
        if empty:
            raise ValueError(f"no usable samples for batch item(s) {empty}: every weight is 0 after excluding "
                             f"samples with shading < {cfg.min_shading} or a channel >= {cfg.saturation}")
        mean = _mean_array(mean_albedo, V, B)
        if mean is None:
            mean = np.stack([estimate_mean_albedo(obs[b], shade[b], w[b], min_shading=cfg.min_shading,
                                                  saturation=cfg.saturation) for b in range(B)])[:, None, :]
            mean = np.broadcast_to(mean, (B, V, 3))
        if cfg.normalize_data:
            scale = np.empty(B)
            for b in range(B):
                sq = shade[b] * shade[b]
                d = np.bincount(fv[b].reshape(-1), minlength=V, weights=(
                    (w[b] * (sq[:, 0] + sq[:, 1] + sq[:, 2]) / 3)[:, None] * bary[b] * bary[b]).reshape(-1))
                if not d.sum() > 0:
                    raise ValueError(f"batch item {b}: the usable samples have zero barycentrics or shading")
                scale[b] = (d > 0).sum() / d.sum()
            w = w * scale[:, None]

        if solver == "direct":
            out = np.stack([self._solve_direct(fv[b], bary[b], obs[b], np.ascontiguousarray(shade[b]), w[b],
                                               np.ascontiguousarray(mean[b])) for b in range(B)])
            if cfg.clamp:
                out = np.clip(out, 0.0, 1.0)
            if is_torch:
                res = torch.from_numpy(out).to(device=device, dtype=obs_in.dtype)
            else:
                res = out
        else:
            dtype = obs_in.dtype if is_torch and obs_in.is_floating_point() else torch.float64
            def T(x, dt=dtype):
                return torch.from_numpy(np.array(x, copy=True)).to(device=device, dtype=dt)
            with torch.no_grad():
                out_t = self._solve_cg(T(fv, torch.int64), T(bary), T(obs), T(shade), T(w), T(mean))
                if cfg.clamp:
                    out_t = out_t.clamp(0.0, 1.0)
            res = out_t if is_torch else out_t.cpu().numpy()
        if not batched:
            res = res[0]
        return res

    def extra_repr(self) -> str:
        return (f"num_vertices={self.num_vertices}, edges={len(self._edges_np)}, "
                f"mirror={'yes' if self._mirror_np is not None else 'no'}, config={self.config}")


def _factorize(A: sp.csc_matrix, perm: Optional[np.ndarray]):
    """SuperLU of an SPD matrix without pivoting, with a given (or minimum-degree) symmetric ordering."""
    opts = dict(diag_pivot_thresh=0.0, options=dict(SymmetricMode=True))
    if perm is None:
        return spla.splu(A, permc_spec="MMD_AT_PLUS_A", **opts)
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size)
    # SuperLU's perm_c maps old column j to position perm[j]; reorder so that position k holds column inv[k]
    Ap = A[inv][:, inv].tocsc()
    lu = spla.splu(Ap, permc_spec="NATURAL", **opts)
    return _PermutedLU(lu, inv, perm)


class _PermutedLU:
    """``solve`` of ``A`` from the factorisation of ``A[inv][:, inv]``; exposes ``perm_c`` like SuperLU."""

    def __init__(self, lu, inv: np.ndarray, perm: np.ndarray) -> None:
        self.lu, self.inv, self.perm_c = lu, inv, perm

    def solve(self, b: np.ndarray) -> np.ndarray:
        out = np.empty_like(b)
        out[self.inv] = self.lu.solve(np.ascontiguousarray(b[self.inv]))
        return out


def _pcg(matvec, b: np.ndarray, x: np.ndarray, precond, tol: float, max_iter: int) -> Tuple[np.ndarray, int, float]:
    """Preconditioned CG on the columns of ``b (V, C)`` at once (each column its own step sizes)."""
    r = b - matvec(x)
    bn = np.maximum(np.linalg.norm(b, axis=0), np.finfo(np.float64).tiny)
    if (np.linalg.norm(r, axis=0) <= tol * bn).all():
        return x, 0, float((np.linalg.norm(r, axis=0) / bn).max())
    z = precond(r)
    p = z.copy()
    rz = (r * z).sum(0)
    it = 0
    for it in range(1, max_iter + 1):
        Ap = matvec(p)
        alpha = rz / np.maximum((p * Ap).sum(0), np.finfo(np.float64).tiny)
        x = x + alpha * p
        r = r - alpha * Ap
        if (np.linalg.norm(r, axis=0) <= tol * bn).all():
            break
        z = precond(r)
        rz_new = (r * z).sum(0)
        p = z + (rz_new / np.maximum(rz, np.finfo(np.float64).tiny)) * p
        rz = rz_new
    return x, it, float((np.linalg.norm(r, axis=0) / bn).max())


def estimate_vertex_albedo(
    num_vertices: int,
    faces: ArrayLike,
    samples_face_vertices: ArrayLike,
    samples_bary: ArrayLike,
    observed: ArrayLike,
    shading: ArrayLike,
    weights: Optional[ArrayLike] = None,
    *,
    config: Optional[AlbedoConfig] = None,
    mirror: Optional[ArrayLike] = None,
    mean_albedo: Optional[ArrayLike] = None,
) -> ArrayLike:
    """Per-vertex albedo minimising the energy of the module docstring (closed form, sparse SPD solve).

    Args:
        num_vertices: ``V``.
        faces: ``(F, 3)`` integer triangles (smoothness is over their edges).
        samples_face_vertices: ``(S, 3)`` or ``(B, S, 3)`` integer: the corner vertices of the triangle each sample
            sees (``faces[triangle_id]``, see :func:`albedo_samples`).
        samples_bary: ``(S, 3)`` / ``(B, S, 3)`` barycentrics of each sample.
        observed: ``(S, 3)`` / ``(B, S, 3)`` image colours in [0, 1].
        shading: ``(S, 3)``, ``(S, 1)`` or ``(S,)`` (batched likewise): the SH irradiance over pi at each sample,
            so that ``colour = albedo * shading`` (``sh_irradiance(normals, sh) / pi``). Grey shading (one channel,
            or three equal channels) is cheapest.
        weights: ``(S,)`` / ``(B, S)`` non-negative sample weights, or None (all 1).
        config: :class:`AlbedoConfig`.
        mirror: ``(V,)`` mirror vertex map (:func:`mirror_vertex_map`) or None (no symmetry term).
        mean_albedo: ``(3,)``, ``(V, 3)`` (or ``(B, V, 3)``) prior mean; None: estimated from the samples
            (:func:`estimate_mean_albedo`, the weighted median of ``observed / shading``).
    Returns:
        ``(V, 3)`` (``(B, V, 3)`` for batched samples) in [0, 1]: float64 numpy for numpy ``observed``; a torch
        tensor with the dtype and device of ``observed`` otherwise. No gradient flows through the solve.
    Raises:
        ShapeError / ValueError stating what was received: mismatched shapes, indices out of range, NaN / inf,
        negative weights, no samples, or no usable sample.

    Build a :class:`VertexAlbedoEstimator` once to call it repeatedly on the same mesh (it caches the regulariser).
    """
    est = VertexAlbedoEstimator(num_vertices, faces, mirror=mirror, config=config)
    return est(samples_face_vertices, samples_bary, observed, shading, weights, mean_albedo=mean_albedo)
