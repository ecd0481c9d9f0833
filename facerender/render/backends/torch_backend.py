"""The default rasterizer: vectorised pure PyTorch (CPU and CUDA), no compiled extension.

Decomposed like nvdiffrast:

1. visibility without gradient: per-triangle pixel bounding boxes (after culling and dropping near/far, degenerate
   and off-screen triangles) expanded to candidate (triangle, pixel) pairs with ``repeat_interleave`` and index
   arithmetic; the float64 edge-function test with the documented tie rule
   (:func:`~facerender.render.rasterize.edge_values`, :func:`~facerender.render.rasterize.covers`); the depth at
   the covered candidates; a z-buffer by ``scatter_reduce(amin)`` on packed int64 keys (float32 depth bits high,
   triangle index low). Candidates are processed in chunks of at most ``max_candidates`` pairs so that memory
   stays bounded for large triangles. All per-triangle and per-candidate data live in contiguous 1-D tensors.
2. barycentrics and depth recomputed differentiably at the covered pixels only
   (:func:`~facerender.render.rasterize.fragments_from_triangle_ids`).
"""
from __future__ import annotations

import weakref
from typing import Tuple

import torch

from ..rasterize import (
    _INT64_MAX,
    Fragments,
    RasterSettings,
    decode_key,
    depth_key,
    drawable_triangles,
    edge_values,
    fragments_from_triangle_ids,
    key_depth,
    pixel_bbox,
    snap,
    tie_biased_offsets,
    triangle_setup,
)

__all__ = ["TorchRasterizer"]

#: Triangles whose corners span at most _SMALL = 7 px in x and in y have |A|, |B| <= 7 and edge values of magnitude
#: <= 7 |A| + 7 |B| < 2^7 anywhere in their bounding box; as multiples of 2^-17 (snapped corners, tie bias) these
#: need 24 bits: exact in float32, which halves the memory traffic of their candidate test.
_SMALL = 7.0


class TorchRasterizer:
    """Vectorised PyTorch rasterizer (the ``"torch"`` backend).

    Args:
        max_candidates: largest number of (triangle, pixel) candidate pairs tested at once (memory bound:
            roughly 150 bytes per candidate). A single triangle whose bounding box exceeds it is still processed
            whole.
    """

    name = "torch"

    def __init__(self, max_candidates: int = 1 << 22):
        if max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
        self.max_candidates = int(max_candidates)
        self._corner_cache = None

    def __call__(self, screen_vertices: torch.Tensor, faces: torch.Tensor, image_size: Tuple[int, int],
                 settings: RasterSettings) -> Fragments:
        tid, area = self._visibility(screen_vertices, faces, image_size, settings)
        fragments = fragments_from_triangle_ids(screen_vertices, faces, tid, settings)
        fragments.face_area = area
        return fragments

    def triangle_ids(self, screen_vertices: torch.Tensor, faces: torch.Tensor, image_size: Tuple[int, int],
                     settings: RasterSettings) -> torch.Tensor:
        """Visibility only: ``(B, H, W)`` int64 triangle ids (-1 background)."""
        return self._visibility(screen_vertices, faces, image_size, settings)[0]

    @torch.no_grad()
    def _visibility(self, screen_vertices: torch.Tensor, faces: torch.Tensor, image_size: Tuple[int, int],
                    settings: RasterSettings) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(B, H, W)`` triangle ids and the ``(B, F)`` face areas (NaN where dropped by near/far)."""
        B, V, _ = screen_vertices.shape
        F = faces.shape[0]
        H, W = image_size
        HW = H * W
        dev = screen_vertices.device
        buf = torch.full((B * HW,), _INT64_MAX, dtype=torch.int64, device=dev)
        # corner coordinates as (3 corners, B * F) rows, float64, x and y snapped
        planes = screen_vertices.detach().reshape(B * V, 3).t().to(torch.float64).contiguous()
        planes[:2] = snap(planes[:2])
        corner = self._corner_index(faces, B, V)
        x, y, z = (planes[c].index_select(0, corner).view(3, B * F) for c in range(3))
        keep, area2 = drawable_triangles(x, y, z, settings)
        zlo = torch.minimum(torch.minimum(z[0], z[1]), z[2])
        zhi = torch.maximum(torch.maximum(z[0], z[1]), z[2])
        face_area = torch.where((zlo > settings.near) & (zhi < settings.far), area2, float("nan")).view(B, F)
        sel = keep.nonzero().squeeze(1)  # flat b * F + f
        n_sel = sel.numel()
        if n_sel == 0:
            return decode_key(buf).view(B, H, W), face_area
        sel3 = (sel[None, :] + (torch.arange(3, device=dev) * (B * F))[:, None]).reshape(-1)
        x, y, z = (c.reshape(-1).index_select(0, sel3).view(3, n_sel) for c in (x, y, z))
        area2 = area2.index_select(0, sel)
        x0, x1, y0, y1 = pixel_bbox(x, y, image_size)
        bw = (x1 - x0 + 1).clamp_(min=0)
        bh = (y1 - y0 + 1).clamp_(min=0)
        cnt = bw * bh
        setup = triangle_setup(x, y, z, area2, settings.perspective_correct)
        fid = sel % F
        base = torch.div(sel, F, rounding_mode="floor") * HW + y0 * W + x0  # flat index of the bbox corner pixel
        coef = setup.coef
        # rows gathered per candidate: the edge values at the bbox corner pixel centre with the tie rule folded in
        # (E0), A, B; then P, Q, R, the corner centre and the bbox width. With snapped corners all edge values are
        # exact multiples of 2^-16, so E0 + A lx + B ly equals A x + B y + C' exactly (the order does not matter).
        xc = x0.to(torch.float64) + 0.5
        yc = y0.to(torch.float64) + 0.5
        e0 = edge_values(coef[0:3], coef[3:6], tie_biased_offsets(coef, setup.top_left), xc, yc)
        rows64 = torch.cat([e0, coef[:6], torch.stack([bw.to(torch.float64)])])  # (10, T)
        depth_rows = torch.cat([coef[9:], torch.stack([xc, yc])])  # (5, T) float64
        ints = torch.stack([base, fid])
        # small triangles (see _SMALL) test their candidates in float32, the others in float64: two passes over
        # the same tables, each with the other kind's candidate counts set to zero
        extent = [torch.maximum(torch.maximum(c[0], c[1]), c[2]) - torch.minimum(torch.minimum(c[0], c[1]), c[2])
                  for c in (x, y)]  # the real extent: the pixel bbox may be clipped by the image border
        small = (extent[0] <= _SMALL) & (extent[1] <= _SMALL)
        for rows, counts in ((rows64.to(torch.float32), torch.where(small, cnt, 0)),
                             (rows64, torch.where(small, 0, cnt))):
            ends = torch.cumsum(counts, 0)
            total = int(ends[-1])
            if total == 0:
                continue
            if total <= self.max_candidates:
                bounds = [0, n_sel]
            else:  # chunk boundaries on whole triangles, ~max_candidates candidates per chunk
                marks = torch.arange(self.max_candidates, total, self.max_candidates, device=dev, dtype=torch.int64)
                cuts = torch.searchsorted(ends, marks).add_(1).clamp_(max=n_sel)
                bounds = sorted(set([0] + cuts.tolist() + [n_sel]))
            for a, b in zip(bounds[:-1], bounds[1:]):
                self._chunk(rows[:, a:b], depth_rows[:, a:b], ints[:, a:b], counts[a:b], W, settings, buf)
        return decode_key(buf).view(B, H, W), face_area

    def _corner_index(self, faces: torch.Tensor, B: int, V: int) -> torch.Tensor:
        """Flat vertex index ``(3 * B * F,)`` of corner ``k`` of face ``f`` in item ``b`` at ``(k * B + b) * F + f``
        (cached for the last faces tensor, batch size and vertex count)."""
        key = (faces.data_ptr(), faces._version, tuple(faces.shape), faces.device, B, V)
        cached = self._corner_cache
        if cached is not None and cached[0] == key and cached[1]() is faces:
            return cached[2]
        corner = faces.t()
        if B > 1:
            corner = corner[:, None, :] + (torch.arange(B, device=faces.device) * V)[None, :, None]
        corner = corner.reshape(-1).contiguous()
        self._corner_cache = (key, weakref.ref(faces), corner)
        return corner

    @staticmethod
    def _chunk(rows: torch.Tensor, depth_rows: torch.Tensor, ints: torch.Tensor, cnt: torch.Tensor, W: int,
               settings: RasterSettings, buf: torch.Tensor) -> None:
        """Test the candidates of a run of triangles and update the z-buffer ``buf``.

        ``rows (10, T)``: E0 (3), A (3), B (3), bbox width, in the dtype of the edge arithmetic;
        ``depth_rows (5, T)`` float64: P, Q, R, corner centre x, y; ``ints (2, T)``: bbox corner pixel, face id;
        ``cnt (T,)`` candidates per triangle (0 skips a triangle).
        """
        n = int(cnt.sum())
        if n == 0:
            return
        dev = cnt.device
        dt = rows.dtype
        # candidate -> triangle (sorted), like repeat_interleave (which would start a thread pool even for tiny
        # inputs): mark each triangle's first candidate and count the marks
        start = torch.cumsum(cnt, 0) - cnt
        marks = torch.zeros(n + 1, dtype=torch.int64, device=dev)
        marks.index_add_(0, start, torch.ones_like(start))
        rep = torch.cumsum(marks[:n], 0) - 1

        def g(row: torch.Tensor) -> torch.Tensor:
            return row.index_select(0, rep)

        # position inside the bounding box (exact small integers in floating point: faster than int64 division)
        local = torch.arange(n, device=dev, dtype=dt) - g(start.to(dt))
        bw = g(rows[9])
        ly = torch.floor(local / bw)
        lx = local - ly * bw
        e0, e1, e2 = (g(rows[k]) + g(rows[3 + k]) * lx + g(rows[6 + k]) * ly for k in range(3))
        hit = (torch.minimum(torch.minimum(e0, e1), e2) > 0).nonzero().squeeze(1)
        t = rep.index_select(0, hit)
        lxh = lx.index_select(0, hit).to(torch.float64)
        lyh = ly.index_select(0, hit).to(torch.float64)
        zk = key_depth(depth_rows[0].index_select(0, t), depth_rows[1].index_select(0, t),
                       depth_rows[2].index_select(0, t), depth_rows[3].index_select(0, t) + lxh,
                       depth_rows[4].index_select(0, t) + lyh, settings.perspective_correct)
        pix = ints[0].index_select(0, t) + (lyh * W + lxh).to(torch.int64)
        buf.scatter_reduce_(0, pix, depth_key(zk, ints[1].index_select(0, t)), "amin")
