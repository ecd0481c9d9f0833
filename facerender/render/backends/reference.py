"""The reference rasterizer: straightforward and slow, the oracle of the tests and the benchmark's baseline.

For every batch item and every chunk of triangles it tests EVERY pixel centre in the union of the chunk's bounding
boxes against every triangle of the chunk (dense ``(chunk, h, w)`` tensors), with the same coverage rule and key
depth as every backend (:func:`~facerender.render.rasterize.edge_values`, :func:`~facerender.render.rasterize.covers`,
:func:`~facerender.render.rasterize.key_depth`), and keeps per pixel the nearest
``(depth, triangle index)`` pair by plain comparisons. Barycentrics and depth are then computed densely for every
pixel by their textbook formulas (ratios of signed areas, perspective correction with ``1 / z``), independently of
the packed computation used by the other backends.
"""
from __future__ import annotations

from typing import Tuple

import torch

from ..rasterize import (
    Fragments,
    RasterSettings,
    covers,
    drawable_triangles,
    edge_values,
    key_depth,
    pixel_bbox,
    snap,
    triangle_setup,
)

__all__ = ["ReferenceRasterizer"]


class ReferenceRasterizer:
    """Dense reference rasterizer (the ``"reference"`` backend).

    Args:
        chunk_size: triangles tested together.
    """

    name = "reference"

    def __init__(self, chunk_size: int = 16):
        self.chunk_size = int(chunk_size)

    @torch.no_grad()
    def triangle_ids(self, screen_vertices: torch.Tensor, faces: torch.Tensor, image_size: Tuple[int, int],
                     settings: RasterSettings) -> torch.Tensor:
        B = screen_vertices.shape[0]
        H, W = image_size
        dev = screen_vertices.device
        sv = screen_vertices.detach().to(torch.float64).clone()
        sv[..., :2] = snap(sv[..., :2])
        out = torch.full((B, H, W), -1, dtype=torch.int64, device=dev)
        big = torch.iinfo(torch.int64).max
        for b in range(B):
            tv = sv[b][faces]  # (F, 3 corners, 3 coords)
            x, y, z = tv[..., 0].t(), tv[..., 1].t(), tv[..., 2].t()  # (3, F)
            keep, area2 = drawable_triangles(x, y, z, settings)
            ids = keep.nonzero().squeeze(1)
            best_z = torch.full((H, W), float("inf"), dtype=torch.float32, device=dev)
            best_id = out[b]
            for s in range(0, ids.numel(), self.chunk_size):
                idx = ids[s:s + self.chunk_size]
                cx, cy, cz = x[:, idx], y[:, idx], z[:, idx]
                box = pixel_bbox(cx, cy, image_size)
                xa, xb = int(box[0].min()), int(box[1].max())
                ya, yb = int(box[2].min()), int(box[3].max())
                if xb < xa or yb < ya:
                    continue
                coef, top_left = triangle_setup(cx, cy, cz, area2[idx], settings.perspective_correct)
                xs = torch.arange(xa, xb + 1, device=dev, dtype=torch.float64) + 0.5
                ys = torch.arange(ya, yb + 1, device=dev, dtype=torch.float64) + 0.5
                yy, xx = torch.meshgrid(ys, xs, indexing="ij")
                xx, yy = xx[None], yy[None]  # (1, h, w) against per-triangle (n, 1, 1)
                c = coef[:, :, None, None]
                e = [edge_values(c[k], c[3 + k], c[6 + k], xx, yy) for k in range(3)]
                inside = covers(e, [top_left[k][:, None, None] for k in range(3)])
                z_all = key_depth(c[9], c[10], c[11], xx, yy, settings.perspective_correct)
                zc = torch.where(inside, z_all.to(torch.float32), float("inf"))  # (n, h, w)
                zmin = zc.amin(0)
                cid = torch.where(inside & (zc == zmin), idx[:, None, None], big).amin(0)
                covered = cid != big
                bz = best_z[ya:yb + 1, xa:xb + 1]
                bi = best_id[ya:yb + 1, xa:xb + 1]
                better = covered & ((zmin < bz) | ((zmin == bz) & ((bi < 0) | (cid < bi))))
                bz[better] = zmin[better]
                bi[better] = cid[better]
        return out

    def __call__(self, screen_vertices: torch.Tensor, faces: torch.Tensor, image_size: Tuple[int, int],
                 settings: RasterSettings) -> Fragments:
        tid = self.triangle_ids(screen_vertices, faces, image_size, settings)
        B, V, _ = screen_vertices.shape
        H, W = image_size
        mask = tid >= 0
        # dense textbook barycentrics: lambda_k = area(p, v_k+1, v_k+2) / area(v0, v1, v2)
        safe = tid.clamp(min=0)
        corner = faces[safe]  # (B, H, W, 3)
        v = torch.stack([screen_vertices[b][corner[b]] for b in range(B)])  # (B, H, W, 3, 3)
        ys, xs = torch.meshgrid(torch.arange(H, device=tid.device), torch.arange(W, device=tid.device),
                                indexing="ij")
        px = xs.to(v.dtype) + 0.5
        py = ys.to(v.dtype) + 0.5

        def area(ax, ay, bx, by, cx, cy):
            return (bx - ax) * (cy - ay) - (cx - ax) * (by - ay)

        vx, vy, vz = v[..., 0], v[..., 1], v[..., 2]
        full = area(vx[..., 0], vy[..., 0], vx[..., 1], vy[..., 1], vx[..., 2], vy[..., 2])
        full = torch.where(mask, full, torch.ones_like(full))
        lam = torch.stack([
            area(px, py, vx[..., 1], vy[..., 1], vx[..., 2], vy[..., 2]),
            area(vx[..., 0], vy[..., 0], px, py, vx[..., 2], vy[..., 2]),
            area(vx[..., 0], vy[..., 0], vx[..., 1], vy[..., 1], px, py),
        ], -1) / full[..., None]
        vz = torch.where(mask[..., None], vz, torch.ones_like(vz))
        if settings.perspective_correct:
            num = lam / vz
            bary = num / num.sum(-1, keepdim=True)
        else:
            bary = lam
        depth = (bary * vz).sum(-1)
        bary = torch.where(mask[..., None], bary, torch.zeros_like(bary))
        depth = torch.where(mask, depth, torch.zeros_like(depth))
        return Fragments(triangle_id=tid, barycentrics=bary, depth=depth, screen_vertices=screen_vertices,
                         faces=faces, settings=settings)
