"""Rasterization: screen-space triangles -> per-pixel triangle ids, barycentrics and depth.

The contract (see ``docs/architecture.md`` "Screen space" and ``docs/rendering.md`` "Rasterization"):

* **Input** ``screen_vertices (B, V, 3)`` holds ``(x_px, y_px, z)``: pixel coordinates (x right, y down; pixel
  (col ``i``, row ``j``) has its centre at ``(i + 0.5, j + 0.5)``) and the camera depth ``z``; ``faces (F, 3)``
  integer vertex indices (int64 in the API; int32 and non-contiguous tensors are accepted and converted, the
  caller's tensor is never modified); ``image_size (H, W)``.
* **Coverage**: a pixel is covered by a triangle when its CENTRE is inside the triangle.
* **Tie rule** (centre exactly on an edge): the pixel belongs to the triangle that lies to the RIGHT of the edge
  (+x side); for an exactly horizontal edge, to the triangle BELOW it (+y side). In terms of the edge function
  ``e(p) = A x + B y + C`` of a triangle, normalised to be positive inside, an edge with ``e == 0`` at the centre
  counts as inside iff ``A > 0 or (A == 0 and B > 0)`` (a "top-left" rule for our y-down frame). The coefficients
  of an edge are computed from its two endpoints so that swapping them negates ``A``, ``B`` and ``C`` exactly, and
  the evaluation negates exactly too. For the coverage test (only) vertex x, y are snapped to 1/256 pixel, as GPU
  rasterizers do, which makes every edge-function value exact in float64 (for |x|, |y| < 65536 px): a pixel centre
  on an edge shared by two triangles, or on a vertex shared by a fan of triangles, is covered exactly once, and a
  mesh without holes renders without cracks or double-covered pixels. The coverage test runs in float64 whatever
  the input dtype; barycentrics use the unsnapped vertices.
* **Front faces** have NEGATIVE signed area ``(x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0) < 0`` (counter-clockwise
  seen from outside with y up, as in the OBJ files); with ``cull_backfaces`` (the default) only those are drawn.
* **Dropped triangles**: a triangle is not drawn when any of its vertices has ``z <= near`` or ``z >= far``
  (e.g. behind the camera; such vertices may hold any x, y, even inf / NaN), when its signed area is zero
  (degenerate) or when no pixel centre lies in its bounding box (off screen). Nothing is clipped: a triangle that
  crosses the near plane disappears as a whole. Vertices that are not finite while ``near < z < far`` are an error.
* **Depth test**: the nearest surface wins (smallest interpolated ``z``, compared as float32); exact depth ties go
  to the lower triangle index.
* **Output** :class:`Fragments`: ``triangle_id (B, H, W)`` int64 (-1 = background), ``barycentrics (B, H, W, 3)``
  (perspective-correct with ``1 / z`` when ``settings.perspective_correct``) and ``depth (B, H, W)`` (the
  interpolated camera ``z``; 0 for background), both differentiable w.r.t. ``screen_vertices`` (visibility itself
  is piecewise constant: silhouette gradients come from :func:`facerender.render.antialias.antialias`).

Backends (registry: :func:`available_backends`, :func:`get_rasterizer`, :func:`register_backend`):
``"torch"`` (default; pure PyTorch, CPU and CUDA), ``"reference"`` (slow and simple, the test oracle),
``"pytorch3d"`` and ``"nvdiffrast"`` (optional, imported on first use). Every backend only decides visibility
(the triangle id per pixel); barycentrics and depth are recomputed from ``screen_vertices`` by the shared
differentiable :func:`fragments_from_triangle_ids` (the reference backend computes its own, as a check), so all
backends have the same gradient semantics.
"""
from __future__ import annotations

import importlib
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import BackendUnavailableError, ShapeError

__all__ = [
    "RasterSettings",
    "Fragments",
    "Rasterizer",
    "rasterize",
    "available_backends",
    "get_rasterizer",
    "register_backend",
    "fragments_from_triangle_ids",
    "check_raster_inputs",
    "TriangleSetup",
    "signed_area",
    "snap",
    "SUBPIXEL",
    "drawable_triangles",
    "pixel_bbox",
    "triangle_setup",
    "edge_values",
    "tie_biased_offsets",
    "TIE_BIAS",
    "covers",
    "key_depth",
    "depth_key",
    "decode_key",
]

_INT64_MAX = torch.iinfo(torch.int64).max


# ------------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class RasterSettings:
    """Settings shared by every rasterizer backend.

    Attributes:
        cull_backfaces: draw only front faces (negative signed area in screen space, see the module docstring).
        perspective_correct: interpolate with ``1 / z`` (perspective cameras). Set False for orthographic /
            weak-perspective screen space, where attributes are affine in screen space; the depth is then
            interpolated linearly as well.
        near: triangles with any vertex at ``z <= near`` are dropped (not clipped). Must be >= 0 when
            ``perspective_correct`` (1 / z must exist); in the units of ``z`` (cm for ICT-FaceKit).
        far: triangles with any vertex at ``z >= far`` are dropped.
    """

    cull_backfaces: bool = True
    perspective_correct: bool = True
    near: float = 1e-3
    far: float = math.inf

    def __post_init__(self) -> None:
        if not isinstance(self.near, (int, float)) or not isinstance(self.far, (int, float)):
            raise ValueError(f"near and far must be numbers, got near={self.near!r}, far={self.far!r}")
        if math.isnan(self.near) or math.isnan(self.far) or not self.near < self.far:
            raise ValueError(f"need near < far, got near={self.near}, far={self.far}")
        if self.perspective_correct and self.near < 0:
            raise ValueError(f"perspective_correct needs near >= 0 (1/z must exist), got near={self.near}")


# ----------------------------------------------------------------------------------------------------- fragments
@dataclass
class Fragments:
    """What a rasterizer returns (shared by every backend).

    Attributes:
        triangle_id: ``(B, H, W)`` int64, the index into ``faces`` of the visible triangle, -1 for background.
        barycentrics: ``(B, H, W, 3)`` weights of the triangle's three corners (perspective-correct when
            ``settings.perspective_correct``), summing to 1 on covered pixels, 0 on background. Differentiable
            w.r.t. ``screen_vertices``; dtype of ``screen_vertices``.
        depth: ``(B, H, W)`` interpolated camera ``z`` (background: 0), differentiable.
        screen_vertices: ``(B, V, 3)`` the screen-space vertices that were rasterized (kept for
            :func:`~facerender.render.antialias.antialias`).
        faces: ``(F, 3)`` int64 contiguous faces that were rasterized.
        settings: the :class:`RasterSettings` used.
        pixel_index: ``(P,)`` int64 flat indices ``b * H * W + y * W + x`` of the covered pixels (ascending):
            the packed view used by :func:`~facerender.render.interpolate.interpolate`.
        pixel_triangle: ``(P,)`` int64 triangle id of each covered pixel.
        pixel_barycentrics: ``(P, 3)`` barycentrics of each covered pixel; ``barycentrics`` is this tensor
            scattered into the image (same autograd graph). If you edit ``barycentrics`` by hand, set the three
            ``pixel_*`` fields to None so that consumers rebuild them from the dense tensors.
        face_area: optional ``(B, F)`` float64 doubled signed screen area of every face (of the snapped corners),
            NaN for faces dropped by the near/far rule; a by-product of the torch backend that
            :func:`~facerender.render.antialias.antialias` reuses (no gradient).
    """

    triangle_id: torch.Tensor
    barycentrics: torch.Tensor
    depth: torch.Tensor
    screen_vertices: Optional[torch.Tensor] = None
    faces: Optional[torch.Tensor] = None
    settings: RasterSettings = field(default_factory=RasterSettings)
    pixel_index: Optional[torch.Tensor] = None
    pixel_triangle: Optional[torch.Tensor] = None
    pixel_barycentrics: Optional[torch.Tensor] = None
    face_area: Optional[torch.Tensor] = None

    @property
    def mask(self) -> torch.Tensor:
        """``(B, H, W)`` bool: True where a triangle covers the pixel."""
        return self.triangle_id >= 0

    @property
    def image_size(self) -> Tuple[int, int]:
        return int(self.triangle_id.shape[1]), int(self.triangle_id.shape[2])

    @property
    def batch_size(self) -> int:
        return int(self.triangle_id.shape[0])

    def packed(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(pixel_index (P,), pixel_triangle (P,), pixel_barycentrics (P, 3))`` of the covered pixels.

        Uses the stored packed tensors when present, else gathers them from the dense fields.
        """
        if self.pixel_index is not None and self.pixel_triangle is not None and self.pixel_barycentrics is not None:
            return self.pixel_index, self.pixel_triangle, self.pixel_barycentrics
        flat = self.triangle_id.reshape(-1)
        pix = (flat >= 0).nonzero().squeeze(1)
        return pix, flat[pix], self.barycentrics.reshape(-1, 3)[pix]


# ------------------------------------------------------------------------------------------------------- inputs
def _image_size(image_size: Any) -> Tuple[int, int]:
    if isinstance(image_size, torch.Size):
        image_size = tuple(image_size)
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    ok = (isinstance(image_size, (tuple, list)) and len(image_size) == 2
          and all(isinstance(s, int) and not isinstance(s, bool) for s in image_size))
    if not ok:
        raise ValueError(f"image_size must be (H, W) with two positive ints, got {image_size!r}")
    H, W = int(image_size[0]), int(image_size[1])
    if H <= 0 or W <= 0:
        raise ValueError(f"image_size must be positive, got (H, W) = ({H}, {W})")
    return H, W


def check_raster_inputs(
    screen_vertices: Any, faces: Any, image_size: Any, settings: Optional[RasterSettings] = None
) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, int], RasterSettings]:
    """Validate rasterizer inputs; return ``(screen_vertices, faces int64 contiguous, (H, W), settings)``.

    Raises :class:`~morphable_models.errors.ShapeError` (a ``ValueError``) for wrong shapes / dtypes, faces out of
    range, or non-finite vertices that are not dropped by the near/far rule, and ``ValueError`` for a bad image
    size or settings. Faces are moved to the device of ``screen_vertices``.
    """
    settings = RasterSettings() if settings is None else settings
    if not isinstance(settings, RasterSettings):
        raise ValueError(f"settings must be a RasterSettings, got {type(settings).__name__}")
    if not isinstance(screen_vertices, torch.Tensor):
        raise ShapeError(f"screen_vertices must be a torch.Tensor, got {type(screen_vertices).__name__}")
    if screen_vertices.ndim != 3 or screen_vertices.shape[-1] != 3:
        raise ShapeError(f"screen_vertices must have shape (B, V, 3), got {tuple(screen_vertices.shape)}")
    if not screen_vertices.is_floating_point():
        raise ShapeError(f"screen_vertices must be a floating tensor, got {screen_vertices.dtype}")
    if not isinstance(faces, torch.Tensor):
        raise ShapeError(f"faces must be a torch.Tensor, got {type(faces).__name__}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ShapeError(f"faces must have shape (F, 3), got {tuple(faces.shape)}")
    if faces.is_floating_point() or faces.is_complex() or faces.dtype == torch.bool:
        raise ShapeError(f"faces must be an integer tensor, got {faces.dtype}")
    H, W = _image_size(image_size)
    V = screen_vertices.shape[1]
    faces = faces.to(device=screen_vertices.device, dtype=torch.int64).contiguous()
    if faces.numel():
        lo, hi = torch.aminmax(faces)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= V:
            raise ShapeError(f"faces index out of range: found [{lo}, {hi}] for V = {V} vertices")
    with torch.no_grad():
        sv = screen_vertices.detach()
        if bool(torch.isfinite(sv).all()):
            return screen_vertices, faces, (H, W), settings
        z = sv[..., 2]
        dropped = (z <= settings.near) | (z >= settings.far)
        bad = ~torch.isfinite(sv).all(-1) & ~dropped
        if bool(bad.any()):
            n = int(bad.sum())
            raise ShapeError(f"screen_vertices holds NaN or inf at {n} vertices with near < z < far "
                             f"(vertices with z <= near or z >= far may hold anything: their triangles are dropped)")
    return screen_vertices, faces, (H, W), settings


# ------------------------------------------------------------------------------------- coverage rule (shared)
class TriangleSetup(NamedTuple):
    """Per-triangle quantities of the coverage rule (float64, no gradient) for N triangles.

    Attributes:
        coef: ``(12, N)`` rows ``A0 A1 A2 B0 B1 B2 C0 C1 C2 P Q R``. Edge ``k`` (opposite corner ``k``) has the edge
            function ``e_k = A_k * x + B_k * y + C_k``, positive inside. The depth plane gives the key depth:
            ``1 / (P x + Q y + R)`` when perspective-correct, else ``P x + Q y + R``.
        top_left: ``(3, N)`` bool, edge ``k`` owns centres with ``e_k == 0`` (the tie rule).
    """

    coef: torch.Tensor
    top_left: torch.Tensor


#: Vertex x, y are snapped to multiples of 1 / SUBPIXEL pixel for the coverage test (as GPU rasterizers do).
SUBPIXEL = 256.0


def snap(coord: torch.Tensor) -> torch.Tensor:
    """Snap float64 pixel coordinates to the 1 / :data:`SUBPIXEL` grid used by the coverage test.

    With snapped corners every edge-function value below is computed exactly in float64 (for coordinates within
    +-65536 px), so the tie rule decides every centre lying exactly on an edge or a vertex consistently.
    """
    return torch.round(coord * SUBPIXEL) / SUBPIXEL


def signed_area(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Twice the signed area ``(x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)`` of corners ``x, y (3, ...)``."""
    return (x[1] - x[0]) * (y[2] - y[0]) - (x[2] - x[0]) * (y[1] - y[0])


def drawable_triangles(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, settings: RasterSettings
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Which triangles may be drawn (near/far rule, degenerate, culling) and their doubled signed area.

    Args:
        x, y, z: ``(3, ...)`` float64 corner coordinates (corner index first).
    Returns:
        ``keep (...)`` bool and ``area2 (...)``.
    """
    zlo = torch.minimum(torch.minimum(z[0], z[1]), z[2])
    zhi = torch.maximum(torch.maximum(z[0], z[1]), z[2])
    area2 = signed_area(x, y)
    keep = (zlo > settings.near) & (zhi < settings.far)
    keep &= area2 < 0 if settings.cull_backfaces else area2 != 0
    return keep, area2


def pixel_bbox(x: torch.Tensor, y: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
    """``(4, ...)`` int64 ``x_first, x_last, y_first, y_last``: the pixel columns / rows whose centres lie in the
    bounding box of corners ``x, y (3, ...)`` (finite), clamped to the image; empty when last < first."""
    H, W = image_size
    # pixel i has its centre inside [lo, hi] iff ceil(lo - 0.5) <= i <= floor(hi - 0.5)
    out = []
    for c, n in ((x, W), (y, H)):
        lo = torch.minimum(torch.minimum(c[0], c[1]), c[2])
        hi = torch.maximum(torch.maximum(c[0], c[1]), c[2])
        out.append(torch.ceil(lo - 0.5).clamp(0, n))
        out.append(torch.floor(hi - 0.5).clamp(-1, n - 1))
    return torch.stack(out).to(torch.int64)


def triangle_setup(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, area2: torch.Tensor,
                   perspective_correct: bool) -> TriangleSetup:
    """Edge functions, tie flags and depth plane of triangles with corners ``x, y, z (3, N)`` (float64).

    Edge ``k`` runs between corners ``a = k+1`` and ``b = k+2`` (mod 3): ``A = a.y - b.y``, ``B = b.x - a.x``,
    ``C = a.x * b.y - a.y * b.x``; swapping ``a`` and ``b`` negates all three exactly in floating point. The sign is
    then flipped where ``area2 < 0`` so that the inside is positive (an exact operation).
    """
    xa, xb = x.roll(-1, 0), x.roll(-2, 0)
    ya, yb = y.roll(-1, 0), y.roll(-2, 0)
    A = ya - yb
    B = xb - xa
    C = xa * yb - ya * xb
    # depth plane from the unnormalised edge functions: sum_k e_k(p) / area2 = 1
    wk = 1.0 / (z * area2) if perspective_correct else z / area2
    aw, bw, cw = A * wk, B * wk, C * wk
    plane = torch.stack([aw[0] + aw[1] + aw[2], bw[0] + bw[1] + bw[2], cw[0] + cw[1] + cw[2]])
    s = torch.where(area2 < 0, -1.0, 1.0).to(x.dtype)
    A, B, C = A * s, B * s, C * s
    top_left = (A > 0) | ((A == 0) & (B > 0))
    return TriangleSetup(torch.cat([A, B, C, plane]), top_left)


#: Edge-function values of snapped corners at pixel centres are exact multiples of 1 / SUBPIXEL**2; adding half of
#: that to ``C`` of the edges that own their ties turns the tie rule into a plain ``e > 0`` test (exact while the
#: coordinates stay within +-65536 px).
TIE_BIAS = 0.5 / SUBPIXEL ** 2


def tie_biased_offsets(coef: torch.Tensor, top_left: torch.Tensor) -> torch.Tensor:
    """``C_k + TIE_BIAS * top_left_k`` (``(3, N)``) from a setup's ``coef (12, N)`` and ``top_left (3, N)``.

    With snapped corners, ``A x + B y + C' > 0`` equals the tie rule ``e > 0 or (e == 0 and top-left)``.
    """
    return coef[6:9] + top_left.to(coef.dtype) * TIE_BIAS


def edge_values(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``A * x + B * y + C`` evaluated exactly in this order (part of the coverage rule: every backend uses it)."""
    return A * x + B * y + C


def covers(e: Sequence[torch.Tensor], top_left: Sequence[torch.Tensor]) -> torch.Tensor:
    """The inside test with the tie rule: all ``e_k > 0`` or (``e_k == 0`` and edge ``k`` is top-left)."""
    out = None
    for ek, tk in zip(e, top_left):
        ok = (ek > 0) | ((ek == 0) & tk)
        out = ok if out is None else out & ok
    return out


def key_depth(P: torch.Tensor, Q: torch.Tensor, R: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
              perspective_correct: bool) -> torch.Tensor:
    """Depth used by the depth test at ``(x, y)`` from the plane ``P, Q, R`` (float64)."""
    d = P * x + Q * y + R
    return 1.0 / d if perspective_correct else d


def depth_key(z: torch.Tensor, triangle: torch.Tensor) -> torch.Tensor:
    """Pack ``z`` (compared as float32) and a triangle index (< 2**31) into int64 keys ordered like ``(z, index)``."""
    bits = z.to(torch.float32).view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)  # monotonic in z, also for z < 0
    return (ordered << 32) | triangle


def decode_key(key: torch.Tensor) -> torch.Tensor:
    """Triangle index of packed keys, -1 where the key is the empty marker (int64 max)."""
    return torch.where(key == _INT64_MAX, -1, key & 0xFFFFFFFF)


# ------------------------------------------------------------------------ differentiable step shared by backends
def _corner_coordinates(screen_vertices: torch.Tensor, corner: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """x, y, z ``(3, P)`` of flat vertex indices ``corner (3, P)`` into ``screen_vertices (B, V, 3)`` (differentiable).

    Gathers from contiguous coordinate planes so that everything downstream works on contiguous rows.
    """
    planes = screen_vertices.reshape(-1, 3).t().contiguous()  # (3, B * V)
    flat = corner.reshape(-1)
    P = corner.shape[1]
    return tuple(planes[c].index_select(0, flat).view(3, P) for c in range(3))


def _pixel_barycentrics(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, px: torch.Tensor, py: torch.Tensor,
                        perspective_correct: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Barycentrics ``(3, P)`` and depth ``(P,)`` at the centres of pixels ``(px, py)``, corners ``x, y, z (3, P)``."""
    x = x - (px.to(x.dtype) + 0.5)
    y = y - (py.to(y.dtype) + 0.5)
    x1, x2 = x.roll(-1, 0), x.roll(-2, 0)
    y1, y2 = y.roll(-1, 0), y.roll(-2, 0)
    lam = x1 * y2 - y1 * x2  # signed area of (p, v_k+1, v_k+2): proportional to the screen barycentric of v_k
    if perspective_correct:
        w = lam / z
        s = w.sum(0)
        return w / s, lam.sum(0) / s
    bary = lam / lam.sum(0)
    return bary, (bary * z).sum(0)


def fragments_from_triangle_ids(
    screen_vertices: torch.Tensor,
    faces: torch.Tensor,
    triangle_id: torch.Tensor,
    settings: RasterSettings,
) -> Fragments:
    """Build :class:`Fragments` from a visibility result: barycentrics and depth, differentiably.

    Computes, only at covered pixels, the (perspective-correct) barycentrics of the pixel centre w.r.t. the visible
    triangle from ``screen_vertices`` (so they carry gradients) and scatters them into dense tensors.

    Args:
        screen_vertices: ``(B, V, 3)``; faces ``(F, 3)`` int64 contiguous (already validated).
        triangle_id: ``(B, H, W)`` int64, -1 for background.
    """
    B, V, _ = screen_vertices.shape
    _, H, W = triangle_id.shape
    HW = H * W
    flat = triangle_id.reshape(-1)
    pix = (flat >= 0).nonzero().squeeze(1)
    tri = flat.index_select(0, pix)
    b = torch.div(pix, HW, rounding_mode="floor")
    rem = pix - b * HW
    py = torch.div(rem, W, rounding_mode="floor")
    px = rem - py * W
    corner = faces.index_select(0, tri).t()  # (3, P)
    if B > 1:
        corner = corner + b * V
    x, y, z = _corner_coordinates(screen_vertices, corner)
    bary, depth = _pixel_barycentrics(x, y, z, px, py, settings.perspective_correct)
    bary = bary.t()  # (P, 3) view
    # scattered in place into fresh zeros (no copy; the result is still differentiable w.r.t. bary and depth)
    dense_bary = screen_vertices.new_zeros(B * HW, 3)
    dense_bary.index_put_((pix,), bary)
    dense_depth = screen_vertices.new_zeros(B * HW)
    dense_depth.index_put_((pix,), depth)
    dense_bary, dense_depth = dense_bary.view(B, H, W, 3), dense_depth.view(B, H, W)
    return Fragments(triangle_id=triangle_id, barycentrics=dense_bary, depth=dense_depth,
                     screen_vertices=screen_vertices, faces=faces, settings=settings,
                     pixel_index=pix, pixel_triangle=tri, pixel_barycentrics=bary)


def empty_fragments(screen_vertices: torch.Tensor, faces: torch.Tensor, image_size: Tuple[int, int],
                    settings: RasterSettings) -> Fragments:
    """All-background :class:`Fragments` (no triangle drawn)."""
    B = screen_vertices.shape[0]
    H, W = image_size
    tid = torch.full((B, H, W), -1, dtype=torch.int64, device=screen_vertices.device)
    return fragments_from_triangle_ids(screen_vertices, faces, tid, settings)


# ------------------------------------------------------------------------------------------------------ registry
Rasterize = Callable[[torch.Tensor, torch.Tensor, Tuple[int, int], RasterSettings], Fragments]


@dataclass
class _Entry:
    factory: Callable[[], Rasterize]
    is_available: Optional[Callable[[], bool]] = None
    instance: Optional[Rasterize] = None


_REGISTRY: Dict[str, _Entry] = {}
_LOCK = threading.Lock()


def register_backend(name: str, factory: Callable[[], Rasterize], *,
                     is_available: Optional[Callable[[], bool]] = None, overwrite: bool = False) -> None:
    """Register a rasterizer backend.

    Args:
        name: the name used by ``rasterize(..., backend=name)``.
        factory: zero-argument callable returning the rasterizer, a callable
            ``(screen_vertices (B, V, 3), faces (F, 3) int64, (H, W), RasterSettings) -> Fragments`` receiving
            validated inputs. Import optional dependencies inside the factory and raise
            :class:`~facerender.errors.BackendUnavailableError` (naming the extra to install) when they are missing.
            Called once, on first use; the result is cached.
        is_available: optional zero-argument check used by :func:`available_backends` (default: the factory
            succeeds).
        overwrite: replace an existing backend of that name (otherwise ``ValueError``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"backend name must be a non-empty str, got {name!r}")
    if not callable(factory):
        raise ValueError(f"factory must be callable, got {type(factory).__name__}")
    with _LOCK:
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"backend {name!r} is already registered (pass overwrite=True to replace it)")
        _REGISTRY[name] = _Entry(factory, is_available)


def _lazy(path: str) -> Callable[[], Rasterize]:
    """A factory importing ``module:attr`` on first use and calling it without arguments."""

    def factory() -> Rasterize:
        module, attr = path.split(":")
        return getattr(importlib.import_module(module), attr)()

    return factory


def get_rasterizer(name: str) -> Rasterize:
    """The rasterizer registered as ``name`` (created on first use).

    Raises ``ValueError`` for an unknown name (listing the registered ones) and
    :class:`~facerender.errors.BackendUnavailableError` when its optional dependency is missing.
    """
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"unknown rasterizer backend {name!r}; registered: {sorted(_REGISTRY)}")
    if entry.instance is None:
        with _LOCK:
            if entry.instance is None:
                entry.instance = entry.factory()
    return entry.instance


def available_backends() -> List[str]:
    """Names of the registered backends that can run here (optional imports succeed; nvdiffrast also needs CUDA)."""
    names = []
    for name, entry in list(_REGISTRY.items()):
        try:
            ok = entry.is_available() if entry.is_available is not None else (get_rasterizer(name) is not None)
        except (BackendUnavailableError, ImportError, RuntimeError, OSError):
            ok = False
        if ok:
            names.append(name)
    return names


def _importable(module: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            importlib.import_module(module)
        except Exception:  # an installed but broken optional package counts as unavailable
            return False
        return True

    return check


def _nvdiffrast_available() -> bool:
    return torch.cuda.is_available() and _importable("nvdiffrast.torch")()


register_backend("torch", _lazy("facerender.render.backends.torch_backend:TorchRasterizer"),
                 is_available=lambda: True)
register_backend("reference", _lazy("facerender.render.backends.reference:ReferenceRasterizer"),
                 is_available=lambda: True)
register_backend("pytorch3d", _lazy("facerender.render.backends.pytorch3d_backend:PyTorch3DRasterizer"),
                 is_available=_importable("pytorch3d.renderer"))
register_backend("nvdiffrast", _lazy("facerender.render.backends.nvdiffrast_backend:NvdiffrastRasterizer"),
                 is_available=_nvdiffrast_available)


# ----------------------------------------------------------------------------------------------------- frontend
def rasterize(
    screen_vertices: torch.Tensor,
    faces: torch.Tensor,
    image_size: Union[Tuple[int, int], Sequence[int], int],
    settings: Optional[RasterSettings] = None,
    backend: Union[str, Rasterize] = "torch",
) -> Fragments:
    """Rasterize triangles given in screen space.

    Args:
        screen_vertices: ``(B, V, 3)`` float ``(x_px, y_px, z)`` (see the module docstring for the conventions).
        faces: ``(F, 3)`` integer vertex indices (int64; int32 / non-contiguous accepted). ``F = 0`` gives an
            all-background result.
        image_size: ``(H, W)`` (or one int for a square image).
        settings: :class:`RasterSettings` (default: back-face culling, perspective-correct, near = 1e-3).
        backend: a registered name (``"torch"``, ``"reference"``, ``"pytorch3d"``, ``"nvdiffrast"``) or a
            rasterizer callable.
    Returns:
        :class:`Fragments` with ``triangle_id (B, H, W)``, ``barycentrics (B, H, W, 3)``, ``depth (B, H, W)``.
    Raises:
        ShapeError / ValueError for bad inputs (the message states what was received),
        BackendUnavailableError when the backend's optional dependency is missing.
    """
    sv, faces, size, settings = check_raster_inputs(screen_vertices, faces, image_size, settings)
    fn = get_rasterizer(backend) if isinstance(backend, str) else backend
    if faces.shape[0] == 0:
        return empty_fragments(sv, faces, size, settings)
    return fn(sv, faces, size, settings)


class Rasterizer(nn.Module):
    """Module form of :func:`rasterize`: holds the image size, settings and backend name.

    ``forward(screen_vertices (B, V, 3), faces (F, 3)) -> Fragments``.
    """

    def __init__(self, image_size: Union[Tuple[int, int], int], settings: Optional[RasterSettings] = None,
                 backend: str = "torch"):
        super().__init__()
        self.image_size = _image_size(image_size)
        self.settings = RasterSettings() if settings is None else settings
        self.backend = backend

    def forward(self, screen_vertices: torch.Tensor, faces: torch.Tensor) -> Fragments:
        return rasterize(screen_vertices, faces, self.image_size, self.settings, self.backend)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, backend={self.backend!r}, settings={self.settings}"
