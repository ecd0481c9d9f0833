"""nvdiffrast adapter (optional, CUDA only): visibility from ``nvdiffrast.torch.rasterize``.

Install with ``pip install "facerender[nvdiffrast]"``; nvdiffrast compiles its CUDA kernels on first use and needs a
CUDA GPU (there is no CPU path). Licence: NVIDIA source code licence (non-commercial). Imported on first use only.

Conversions (our screen space -> nvdiffrast clip space, range mode):
  * ``w = z`` (camera depth), ``x_clip = (2 x / W - 1) w``, ``y_clip = (1 - 2 y / H) w`` (OpenGL NDC, y up), and
    ``z_clip = ((f + n) z - 2 f n) / (f - n)`` with ``n = min z / 2`` and ``f = 2 max z`` over the drawn triangles'
    vertices, so that ``z_ndc`` is inside ``(-1, 1)`` (nvdiffrast clips against it) and increases with depth.
    nvdiffrast's perspective-correct interpolation uses ``w`` like ours.
  * nvdiffrast writes image row 0 at ``y_ndc = -1`` (the bottom): its output rows are flipped to ours.
  * Triangles are pre-filtered with our rule (culling, near/far, degenerate: nvdiffrast does not cull) and passed
    per batch item in range mode (``ranges`` on the CPU), faces cast to contiguous int32, positions to contiguous
    float32. Its ``rast[..., 3]`` holds ``triangle_id + 1`` (0 = background), mapped back to our face indices.

Only the triangle ids come from nvdiffrast; barycentrics and depth are recomputed by the shared differentiable
:func:`~facerender.render.rasterize.fragments_from_triangle_ids` (nvdiffrast's ``(u, v)`` are not used). Pixel
centres exactly on an edge follow nvdiffrast's own rule there.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from ...errors import BackendUnavailableError
from ..rasterize import Fragments, RasterSettings, drawable_triangles, fragments_from_triangle_ids, snap

__all__ = ["NvdiffrastRasterizer", "screen_to_clip"]

INSTALL_HINT = 'pip install "facerender[nvdiffrast]" (needs a CUDA GPU and the CUDA toolkit)'


def screen_to_clip(screen_vertices: torch.Tensor, image_size: Tuple[int, int], near: float, far: float
                   ) -> torch.Tensor:
    """``(B, V, 3)`` our screen space -> ``(B, V, 4)`` OpenGL clip space with ``w = z`` and depth range [near, far]."""
    H, W = image_size
    x, y, z = screen_vertices.unbind(-1)
    w = z
    zc = ((far + near) * z - 2.0 * far * near) / (far - near)
    return torch.stack([(2.0 * x / W - 1.0) * w, (1.0 - 2.0 * y / H) * w, zc, w], -1)


class NvdiffrastRasterizer:
    """The ``"nvdiffrast"`` backend (CUDA tensors only).

    Raises:
        BackendUnavailableError: nvdiffrast cannot be imported or no CUDA device is available.
    """

    name = "nvdiffrast"

    def __init__(self):
        try:
            import nvdiffrast.torch as dr
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the 'nvdiffrast' rasterizer backend needs nvdiffrast, which cannot be imported ({exc}); "
                f"install it with {INSTALL_HINT}, or use backend='torch'") from exc
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                "the 'nvdiffrast' rasterizer backend needs a CUDA GPU (nvdiffrast has no CPU path) and "
                "torch.cuda.is_available() is False; use backend='torch'")
        self._dr = dr
        self._contexts: Dict[torch.device, object] = {}

    def _context(self, device: torch.device):
        if device not in self._contexts:
            self._contexts[device] = self._dr.RasterizeCudaContext(device=device)
        return self._contexts[device]

    def __call__(self, screen_vertices: torch.Tensor, faces: torch.Tensor, image_size: Tuple[int, int],
                 settings: RasterSettings) -> Fragments:
        tid = self.triangle_ids(screen_vertices, faces, image_size, settings)
        return fragments_from_triangle_ids(screen_vertices, faces, tid, settings)

    @torch.no_grad()
    def triangle_ids(self, screen_vertices: torch.Tensor, faces: torch.Tensor, image_size: Tuple[int, int],
                     settings: RasterSettings) -> torch.Tensor:
        if screen_vertices.device.type != "cuda":
            raise ValueError(f"the 'nvdiffrast' backend needs CUDA tensors, got screen_vertices on "
                             f"{screen_vertices.device}; move them with .cuda() or use backend='torch'")
        B, V, _ = screen_vertices.shape
        H, W = image_size
        dev = screen_vertices.device
        sv = screen_vertices.detach()
        tv = sv.to(torch.float64)[:, faces]  # (B, F, 3 corners, 3)
        tv = torch.cat([snap(tv[..., :2]), tv[..., 2:]], -1)
        keep, _ = drawable_triangles(tv[..., 0].movedim(-1, 0), tv[..., 1].movedim(-1, 0),
                                     tv[..., 2].movedim(-1, 0), settings)  # (B, F)
        out = torch.full((B, H, W), -1, dtype=torch.int64, device=dev)
        if not bool(keep.any()):
            return out
        zs = tv[..., 2][keep]
        near, far = 0.5 * float(zs.min()), 2.0 * float(zs.max())
        finite = torch.isfinite(sv).all(-1, keepdim=True) & (sv[..., 2:] > 0)
        safe = torch.where(finite, sv, torch.tensor([0.0, 0.0, 1.0], dtype=sv.dtype, device=dev))
        pos = screen_to_clip(safe.to(torch.float64), image_size, near, far).to(torch.float32)
        pos = pos.reshape(B * V, 4).contiguous()
        ids = [keep[b].nonzero().squeeze(1) for b in range(B)]
        tri = torch.cat([faces[i] + b * V for b, i in enumerate(ids)]).to(torch.int32).contiguous()
        counts = torch.tensor([i.numel() for i in ids], dtype=torch.int32)
        starts = torch.cumsum(counts, 0, dtype=torch.int32) - counts
        ranges = torch.stack([starts, counts], 1).contiguous()  # CPU int32, as nvdiffrast requires
        rast, _ = self._dr.rasterize(self._context(dev), pos, tri, resolution=[H, W], ranges=ranges,
                                     grad_db=False)
        packed = rast[..., 3].flip(1).round().to(torch.int64) - 1  # rows to ours; 0 -> -1 background
        table = torch.cat(ids)
        return torch.where(packed >= 0, table[packed.clamp(min=0)], -1)
