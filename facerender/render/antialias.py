"""Analytic antialiasing of silhouettes with gradients to vertex positions (nvdiffrast's ``antialias``).

Rasterization is piecewise constant: moving a vertex a little does not change which triangle covers a pixel, so
the rendered image has no gradient w.r.t. the outline of the mesh. This op blends the colours of neighbouring
pixels across silhouette edges by the sub-pixel position of the edge, which is differentiable w.r.t. the edge's
end points (Laine et al., "Modular Primitives for High-Performance Differentiable Rendering", SIGGRAPH Asia 2020).

The rule (nvdiffrast's, written out for our screen space, with one extension in step 4):

1. Candidate pairs: horizontally ``(x, y)-(x+1, y)`` and vertically ``(x, y)-(x, y+1)`` adjacent pixels whose
   triangle ids differ (either may be background).
2. The pair's *front* triangle is the one of the two pixels that is covered and nearer (smaller depth at its own
   pixel; on equal depth the second pixel's). Its pixel is the *owner*.
3. A *silhouette edge* of a triangle is an edge without exactly one neighbouring triangle (mesh boundary or
   non-manifold), or whose neighbour lies on the same side of the edge as the triangle in screen space (it faces
   the other way: a fold / occluding contour), or whose neighbour is dropped by the near/far rule. "Same side" is
   read from the two signed areas corrected for the pair's relative winding (a flipped neighbour is handled).
   Edge adjacency is computed once per ``faces`` tensor and cached (:func:`edge_topology`).
4. Walk along the segment from the owner's pixel centre towards the other pixel centre: find the edge through which
   it leaves the front triangle; while that edge is an interior edge crossed inside the segment, continue in the
   neighbouring triangle (at most ``max_walk`` steps, default 4; an extension of nvdiffrast, which stops at the first
   triangle (``max_walk=0``): near a contour the triangles are often thinner than a pixel, so the silhouette edge
   is rarely an edge of the triangle that owns the pixel). Pairs between two covered pixels start only from a front
   triangle that has a silhouette edge itself. The edge reached counts when it is a silhouette edge, at least as
   steep as 45 degrees across the segment (``|dy| >= |dx|`` for a horizontal pair; the other pairs handle flatter
   edges) and the crossing lies within the segment: at a fraction ``t`` in ``(-1/16, 1 + 1/16)``, then clamped to
   ``[0, 1]``.
5. Blend: with ``s = +1`` if the owner is the first pixel of the pair, else ``-1``, ``alpha = s * (0.5 - t)``;
   if ``alpha > 0`` the first pixel becomes ``c0 + alpha * (c1 - c0)``, otherwise the second becomes
   ``c1 + alpha * (c1 - c0)`` (i.e. the pixel whose half of the segment is crossed takes ``|0.5 - t|`` of the
   other colour). Contributions of the up to four pairs of a pixel add up; all use the input colours.

Gradients flow to the input colours and, through ``t``, to the x, y of the edge's two vertices (none when ``t``
was clamped). Like nvdiffrast this only changes pixels next to silhouettes; interior edges between two
front-facing triangles are left alone.
"""
from __future__ import annotations

import threading
import weakref
from typing import List, NamedTuple, Optional

import torch

from ..errors import ShapeError
from .rasterize import Fragments

__all__ = ["antialias", "edge_topology", "EdgeTopology", "Antialias"]

_EPS = 1.0 / 16.0  # the crossing may lie up to 1/16 pixel outside the segment (inaccuracy allowance, as nvdiffrast)


class EdgeTopology(NamedTuple):
    """Edge adjacency of a triangle list.

    Attributes:
        faces: ``(F, 3)`` int64 copy of the faces it was computed from.
        opposite: ``(F, 3)`` int64; for edge ``k`` of triangle ``f`` (between corners ``k+1`` and ``k+2``), the
            vertex of the neighbouring triangle opposite that edge, or the triangle's own corner ``k`` when the edge
            has no unique neighbour (boundary, non-manifold, degenerate triangles).
        neighbour: ``(F, 3)`` int64 index of that neighbouring triangle, -1 when there is none.
        rows: ``(5, 3, F)`` int64 contiguous, per edge ``k``: its two end vertices (corners ``k+1``, ``k+2``), the
            opposite vertex, the neighbour, and +1 / -1 when the neighbour runs along the edge in the opposite /
            same direction (consistent / inconsistent winding; 0 without neighbour). The layout used internally.
    """

    faces: torch.Tensor
    opposite: torch.Tensor
    neighbour: torch.Tensor
    rows: torch.Tensor


def _compute_topology(faces: torch.Tensor) -> EdgeTopology:
    f = faces.to(torch.int64).contiguous()
    F = f.shape[0]
    flat = f.view(-1)
    opposite = flat.clone()
    neighbour = torch.full((F * 3,), -1, dtype=torch.int64, device=f.device)
    winding = torch.zeros(F * 3, dtype=torch.int64, device=f.device)
    if F:
        a, b = f.roll(-1, 1), f.roll(-2, 1)
        lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        n = int(f.max()) + 1
        key = (lo * n + hi).view(-1)
        degenerate = ((f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 0] == f[:, 2]))
        slot = torch.arange(F * 3, device=f.device)
        key = torch.where(degenerate.repeat_interleave(3), -1 - slot, key)  # unique: never paired
        skey, order = torch.sort(key, stable=True)
        _, counts = torch.unique_consecutive(skey, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        first = starts[counts == 2]
        s0, s1 = order[first], order[first + 1]
        opposite[s0] = flat[s1]
        opposite[s1] = flat[s0]
        neighbour[s0] = torch.div(s1, 3, rounding_mode="floor")
        neighbour[s1] = torch.div(s0, 3, rounding_mode="floor")
        start = a.reshape(-1)  # first end point of each edge slot
        sign = torch.where(start[s0] != start[s1], 1, -1)
        winding[s0] = sign
        winding[s1] = sign
    opposite, neighbour = opposite.view(F, 3), neighbour.view(F, 3)
    rows = torch.stack([f.roll(-1, 1).t(), f.roll(-2, 1).t(), opposite.t(), neighbour.t(),
                        winding.view(F, 3).t()]).contiguous()
    return EdgeTopology(f.clone(), opposite, neighbour, rows)


class _TopologyCache:
    """Small LRU cache of :class:`EdgeTopology` keyed on the content of the faces tensor.

    A hit costs an identity check (same tensor object, unchanged version counter) or one ``torch.equal``.
    """

    def __init__(self, size: int = 8):
        self.size = size
        self.entries: List[list] = []  # [weakref or None, version, topology]
        self.lock = threading.Lock()

    def get(self, faces: torch.Tensor) -> EdgeTopology:
        with self.lock:
            for i, entry in enumerate(self.entries):
                ref, version, topo = entry
                hit = ref is not None and ref() is faces and version == faces._version
                if not hit:
                    hit = (topo.faces.shape == faces.shape and topo.faces.device == faces.device
                           and torch.equal(topo.faces, faces.to(torch.int64)))
                    if hit:
                        entry[0], entry[1] = self._ref(faces), faces._version
                if hit:
                    self.entries.insert(0, self.entries.pop(i))
                    return topo
        topo = _compute_topology(faces)
        with self.lock:
            self.entries.insert(0, [self._ref(faces), faces._version, topo])
            del self.entries[self.size:]
        return topo

    @staticmethod
    def _ref(t: torch.Tensor):
        try:
            return weakref.ref(t)
        except TypeError:  # pragma: no cover - tensors support weak references
            return None


_CACHE = _TopologyCache()


def edge_topology(faces: torch.Tensor) -> EdgeTopology:
    """Edge adjacency of ``faces (F, 3)`` (cached on the tensor's content; see :class:`EdgeTopology`)."""
    if not isinstance(faces, torch.Tensor) or faces.ndim != 2 or faces.shape[1] != 3 or faces.is_floating_point():
        got = (tuple(faces.shape), faces.dtype) if isinstance(faces, torch.Tensor) else type(faces).__name__
        raise ShapeError(f"faces must be an integer (F, 3) tensor, got {got}")
    return _CACHE.get(faces)


def face_areas(sv: torch.Tensor, faces: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """``(B * F,)`` doubled signed screen areas, NaN for faces dropped by the near/far rule (no gradient)."""
    B, V, _ = sv.shape
    planes = sv.reshape(B * V, 3).t()  # (3, B * V) view
    corner = faces.t()  # (3, F)
    if B > 1:
        corner = corner[:, None, :] + (torch.arange(B, device=sv.device) * V)[:, None]
    flat = corner.reshape(-1)
    x, y, z = (planes[c].index_select(0, flat).view(3, -1) for c in range(3))
    area = (x[1] - x[0]) * (y[2] - y[0]) - (x[2] - x[0]) * (y[1] - y[0])  # (B * F,)
    zlo = torch.minimum(torch.minimum(z[0], z[1]), z[2])
    zhi = torch.maximum(torch.maximum(z[0], z[1]), z[2])
    return torch.where((zlo > near) & (zhi < far), area, float("nan"))


def _silhouette_edges(area: torch.Tensor, topo: EdgeTopology, B: int) -> torch.Tensor:
    """``(3, B * F)`` bool: edge ``k`` of triangle ``b * F + f`` is a silhouette edge (no gradient).

    ``area (B * F,)``: :func:`face_areas`. The neighbour's far vertex lies on the same side of the edge as the
    triangle (or on the edge) exactly when the two signed areas, corrected for the relative winding of the pair, do
    not have opposite signs.
    """
    F = topo.faces.shape[0]
    valid = torch.isfinite(area)
    nb, wind = topo.rows[3], topo.rows[4]  # (3, F)
    if B > 1:
        nb = nb[:, None, :]
        nb = torch.where(nb >= 0, nb + (torch.arange(B, device=area.device) * F)[:, None], -1)
        nb, wind = nb.reshape(3, B * F), wind.repeat(1, B)
    safe = nb.clamp(min=0).reshape(-1)
    area_nb = area.index_select(0, safe).view(3, -1)
    valid_nb = valid.index_select(0, safe).view(3, -1)
    return (area * area_nb * wind <= 0) | ~valid_nb


def antialias(
    image: torch.Tensor,
    fragments: Fragments,
    screen_vertices: Optional[torch.Tensor] = None,
    faces: Optional[torch.Tensor] = None,
    *,
    topology: Optional[EdgeTopology] = None,
    max_walk: int = 4,
) -> torch.Tensor:
    """Antialias silhouettes of a rendered image, with gradients to the vertex positions (see the module docstring).

    Args:
        image: ``(B, H, W, C)`` shaded image (e.g. interpolated and lit colours composited over a background).
        fragments: the :class:`~facerender.render.rasterize.Fragments` the image was shaded from.
        screen_vertices: ``(B, V, 3)`` the screen-space vertices that were rasterized (default
            ``fragments.screen_vertices``); gradients flow to their x and y.
        faces: ``(F, 3)`` the rasterized faces (default ``fragments.faces``).
        topology: precomputed :func:`edge_topology` of ``faces`` (default: computed once and cached).
        max_walk: how many interior edges the segment may cross before reaching the silhouette edge (step 4 of
            the rule); 0 gives nvdiffrast's behaviour exactly (only the front triangle's own edges count).
    Returns:
        ``(B, H, W, C)`` antialiased image (dtype: promotion of the image and vertex dtypes).
    """
    sv = fragments.screen_vertices if screen_vertices is None else screen_vertices
    faces = fragments.faces if faces is None else faces
    if sv is None or faces is None:
        raise ValueError("pass screen_vertices and faces (the fragments do not hold them)")
    tid = fragments.triangle_id
    B, H, W = tid.shape
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or tuple(image.shape[:3]) != (B, H, W):
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ShapeError(f"image must be (B, H, W, C) = ({B}, {H}, {W}, C) like the fragments, got {got}")
    if not isinstance(sv, torch.Tensor) or sv.ndim != 3 or sv.shape[0] != B or sv.shape[2] != 3:
        got = tuple(sv.shape) if isinstance(sv, torch.Tensor) else type(sv).__name__
        raise ShapeError(f"screen_vertices must be (B, V, 3) with B = {B}, got {got}")
    if not isinstance(faces, torch.Tensor) or faces.ndim != 2 or faces.shape[1] != 3:
        got = tuple(faces.shape) if isinstance(faces, torch.Tensor) else type(faces).__name__
        raise ShapeError(f"faces must be (F, 3), got {got}")
    faces = faces.to(device=tid.device, dtype=torch.int64).contiguous()
    C = image.shape[-1]
    V = sv.shape[1]
    F = faces.shape[0]
    HW = H * W
    if F == 0 or HW == 0:
        return image
    if int(tid.max()) >= F:
        raise ShapeError(f"fragments reference triangle {int(tid.max())} but faces has {F} rows")
    topo = edge_topology(faces) if topology is None else topology
    settings = fragments.settings
    with torch.no_grad():
        svd = sv.detach()
        area = fragments.face_area
        if area is None or screen_vertices is not None and screen_vertices is not fragments.screen_vertices:
            area = face_areas(svd, faces, settings.near, settings.far)
        sil = _silhouette_edges(area.reshape(-1), topo, B)  # (3, B * F)
        sil_flat = sil.reshape(-1)
        # per pixel: does its triangle have a silhouette edge at all (background: no)
        # triangles that can reach a silhouette edge within max_walk steps (the others are skipped early)
        near_sil = sil[0] | sil[1] | sil[2]  # (B * F,)
        if max_walk > 0:
            nb = topo.rows[3]
            if B > 1:
                nb = nb[:, None, :]
                nb = torch.where(nb >= 0, nb + (torch.arange(B, device=nb.device) * F)[:, None], -1).reshape(3, B * F)
            nb_safe = (nb + 1).reshape(-1)
            for _ in range(max_walk):
                padded = torch.cat([near_sil.new_zeros(1), near_sil])
                reach = padded.index_select(0, nb_safe).view(3, -1)
                near_sil = near_sil | reach[0] | reach[1] | reach[2]
        own_sil = torch.cat([sil.new_zeros(1), sil[0] | sil[1] | sil[2]])  # index b * F + f + 1
        potential = torch.cat([sil.new_zeros(1), near_sil])
        if B == 1:
            tglob = tid.reshape(-1)
        else:
            offset = (torch.arange(B, device=tid.device) * F).view(B, 1, 1)
            tglob = torch.where(tid >= 0, tid + offset, -1).reshape(-1)
        pp = potential.index_select(0, tglob + 1).view(B, H, W)
        pairs = torch.zeros(2, B, H, W, dtype=torch.bool, device=tid.device)
        pairs[0, :, :, :-1] = (tid[:, :, :-1] != tid[:, :, 1:]) & (pp[:, :, :-1] | pp[:, :, 1:])
        pairs[1, :, :-1, :] = (tid[:, :-1, :] != tid[:, 1:, :]) & (pp[:, :-1, :] | pp[:, 1:, :])
        q = pairs.view(-1).nonzero().squeeze(1)
        if q.numel() == 0:
            return image
        vertical = q >= B * HW
        p0 = q - vertical.long() * (B * HW)
        p1 = p0 + torch.where(vertical, W, 1)
        dflat = fragments.depth.detach().reshape(-1)
        t0, t1 = tglob.index_select(0, p0), tglob.index_select(0, p1)
        use1 = (t0 < 0) | ((t1 >= 0) & ~(dflat.index_select(0, p0) < dflat.index_select(0, p1)))
        tri = torch.where(use1, t1, t0)  # global b * F + f
        # pairs against background may walk from any triangle that reaches a silhouette edge within max_walk
        # steps; pairs between two covered pixels need a front triangle with a silhouette edge of its own
        q = torch.where((t0 < 0) | (t1 < 0), potential.index_select(0, tri + 1), own_sil.index_select(0, tri + 1))
        q = q.nonzero().squeeze(1)
        p0, p1, tri, use1, vertical = p0[q], p1[q], tri[q], use1[q], vertical[q]
        owner = torch.where(use1, p1, p0)
        b = torch.div(owner, HW, rounding_mode="floor")
        rem = owner - b * HW
        oy = torch.div(rem, W, rounding_mode="floor")
        ox = rem - oy * W
        ds = torch.where(use1, -1.0, 1.0).to(svd.dtype)
        cx = ox.to(svd.dtype) + 0.5
        cy = oy.to(svd.dtype) + 0.5
        # coordinates along (u) and across (v) the pair's segment: x, y for horizontal pairs, y, x for vertical ones
        planes = svd.reshape(B * V, 3).t()
        BV = B * V
        uv = torch.cat([planes[0], planes[1], planes[1], planes[0]])  # u then v table for each orientation
        uoff = vertical.long() * (2 * BV)
        cu = torch.where(vertical, cy, cx)
        cv = torch.where(vertical, cx, cy)
        ends = topo.rows[:2].reshape(6, F)  # end a of edges 0-2, then end b of edges 0-2
        six = torch.arange(6, device=tri.device)[:, None] * F
        neighbour = topo.neighbour.reshape(-1)
        # walk along the segment from the owner's centre: leave the front triangle and, while the edge crossed is an
        # interior edge (to a neighbour facing the same way) inside the segment, continue in the neighbour
        Q = tri.numel()
        found_edge = torch.full((Q,), -1, dtype=torch.int64, device=tri.device)
        found_tri = torch.zeros(Q, dtype=torch.int64, device=tri.device)
        idx = torch.arange(Q, device=tri.device)  # pairs still walking
        bF = b * F
        f = tri - bF
        state_i = torch.stack([idx, f, bF, b * V + uoff])  # (4, n)
        state_f = torch.stack([cu, cv, ds])  # (3, n)
        for _ in range(max_walk + 1):
            idx, f, bF, voff = state_i
            cu, cv, sgn = state_f
            vid = ends.view(-1).index_select(0, (f + six).view(-1)).view(6, -1) + voff
            U = uv.index_select(0, vid.view(-1)).view(6, -1) - cu
            Vv = uv.index_select(0, (vid + BV).view(-1)).view(6, -1) - cv
            Ua, Ub, Va, Vb = U[:3], U[3:], Vv[:3], Vv[3:]
            dU, dV = Ub - Ua, Vb - Va
            straddle = (Va < 0) != (Vb < 0)
            cross = torch.where(straddle, sgn * (Ua * dV - Va * dU) / dV, -float("inf"))
            # exit edge = largest crossing (elementwise: max(dim) would start a thread pool even for tiny inputs)
            t01 = torch.maximum(cross[0], cross[1])
            t = torch.maximum(t01, cross[2])
            di = torch.where(cross[2] > t01, 2, (cross[1] > cross[0]).long())
            inside = (t > -_EPS) & (t < 1.0 + _EPS)
            is_sil = sil_flat.index_select(0, di * (B * F) + bF + f)
            steep = (dV.abs() >= dU.abs()).gather(0, di[None]).squeeze(0)
            hit = (inside & is_sil & steep).nonzero().squeeze(1)
            if hit.numel():
                hi = idx.index_select(0, hit)
                found_edge[hi] = di.index_select(0, hit)
                found_tri[hi] = (f + bF).index_select(0, hit)
            nxt = neighbour.index_select(0, f * 3 + di)  # the triangle across edge di (same batch item)
            go = (inside & ~is_sil & (t < 1.0) & (nxt >= 0)).nonzero().squeeze(1)
            if go.numel() == 0:
                break
            state_i = torch.stack([idx, nxt, bF, voff]).index_select(1, go)
            state_f = state_f.index_select(1, go)
        q = (found_edge >= 0).nonzero().squeeze(1)
        if q.numel() == 0:
            return image
        di, ftri = found_edge[q], found_tri[q]
        p0, p1, vertical, ds = p0[q], p1[q], vertical[q], ds[q]
        cx, cy = cx[q], cy[q]
        f = ftri % F
        vb = (ftri - f) // F * V
        va = topo.rows[0].view(-1).index_select(0, di * F + f) + vb  # corner di + 1
        vb = topo.rows[1].view(-1).index_select(0, di * F + f) + vb  # corner di + 2
    # differentiable part: the crossing position of the chosen edge, from the edge's end points
    svf = sv.reshape(B * V, 3)
    pa, pb = svf.index_select(0, va), svf.index_select(0, vb)
    cx, cy = cx.to(sv.dtype), cy.to(sv.dtype)
    xa, ya = pa[:, 0] - cx, pa[:, 1] - cy
    xb, yb = pb[:, 0] - cx, pb[:, 1] - cy
    xa, ya = torch.where(vertical, ya, xa), torch.where(vertical, xa, ya)
    xb, yb = torch.where(vertical, yb, xb), torch.where(vertical, xb, yb)
    dx, dy = xb - xa, yb - ya
    t = (ds * (xa * dy - ya * dx) / dy).clamp(0.0, 1.0)
    alpha = ds * (0.5 - t)
    dtype = torch.promote_types(image.dtype, alpha.dtype)
    img = image.reshape(B * HW, C).to(dtype)
    c0, c1 = img.index_select(0, p0), img.index_select(0, p1)
    target = torch.where(alpha.detach() > 0, p0, p1)
    out = img.index_add(0, target, alpha.to(dtype)[:, None] * (c1 - c0))
    return out.view(B, H, W, C)


class Antialias(torch.nn.Module):
    """Module form of :func:`antialias`: ``forward(image, fragments) -> (B, H, W, C)``."""

    def forward(self, image: torch.Tensor, fragments: Fragments) -> torch.Tensor:
        return antialias(image, fragments)
