"""PyTorch3D adapter (optional): visibility from ``pytorch3d.renderer.mesh.rasterize_meshes``.

Install with ``pip install "facerender[pytorch3d]"`` (PyTorch3D publishes few wheels; see its install notes). PyTorch3D
is imported when the backend is first used, never at import time.

Conversions (our screen space -> PyTorch3D):
  * PyTorch3D's NDC has +X left, +Y up; the shorter image side spans [-1, 1] and the longer one
    ``[-s, s]`` with ``s = long / short``; its output ``pix_to_face[n, y, x]`` has row 0 at the top and column 0 at
    the left, like ours. Pixel centre ``(i + 0.5, j + 0.5)`` maps to
    ``x_ndc = s_x * (1 - 2 (i + 0.5) / W)``, ``y_ndc = s_y * (1 - 2 (j + 0.5) / H)`` (``s_x = max(W / H, 1)``,
    ``s_y = max(H / W, 1)``), exactly its pixel centres; ``z`` stays the camera depth (what its perspective
    correction expects).
  * Culling, the near/far rule and degenerate triangles are applied here with our rule (only the drawable faces
    are passed, ``cull_backfaces=False``), and PyTorch3D's packed face indices are mapped back to ours.
  * Faces are passed as contiguous int64 (PyTorch3D's ``Meshes`` wants ``LongTensor`` s), vertices as contiguous
    float32.

Only the triangle ids come from PyTorch3D; barycentrics and depth are recomputed by the shared differentiable
:func:`~facerender.render.rasterize.fragments_from_triangle_ids`. PyTorch3D's own edge test has no documented tie
rule, so pixel centres lying exactly on an edge may differ from the torch backend.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ...errors import BackendUnavailableError
from ..rasterize import Fragments, RasterSettings, drawable_triangles, fragments_from_triangle_ids, snap

__all__ = ["PyTorch3DRasterizer", "screen_to_pytorch3d_ndc"]

INSTALL_HINT = ('pip install "facerender[pytorch3d]" '
                '(see https://github.com/facebookresearch/pytorch3d/blob/main/INSTALL.md)')


def screen_to_pytorch3d_ndc(screen_vertices: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
    """``(B, V, 3)`` our screen space -> PyTorch3D NDC ``(x_ndc, y_ndc, z)`` (+X left, +Y up, z unchanged)."""
    H, W = image_size
    sx, sy = max(W / H, 1.0), max(H / W, 1.0)
    x = sx * (1.0 - 2.0 * screen_vertices[..., 0] / W)
    y = sy * (1.0 - 2.0 * screen_vertices[..., 1] / H)
    return torch.stack([x, y, screen_vertices[..., 2]], -1)


class PyTorch3DRasterizer:
    """The ``"pytorch3d"`` backend.

    Args:
        bin_size, max_faces_per_bin: passed to ``rasterize_meshes`` (None: PyTorch3D's heuristics; its CPU path is
            the naive one).
    Raises:
        BackendUnavailableError: PyTorch3D cannot be imported.
    """

    name = "pytorch3d"

    def __init__(self, bin_size: Optional[int] = None, max_faces_per_bin: Optional[int] = None):
        try:
            from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
            from pytorch3d.structures import Meshes
        except ImportError as exc:  # includes a broken build whose compiled extension fails to load
            raise BackendUnavailableError(
                f"the 'pytorch3d' rasterizer backend needs PyTorch3D, which cannot be imported ({exc}); "
                f"install it with {INSTALL_HINT}, or use backend='torch'") from exc
        self._rasterize_meshes = rasterize_meshes
        self._Meshes = Meshes
        self.bin_size = bin_size
        self.max_faces_per_bin = max_faces_per_bin

    def __call__(self, screen_vertices: torch.Tensor, faces: torch.Tensor, image_size: Tuple[int, int],
                 settings: RasterSettings) -> Fragments:
        tid = self.triangle_ids(screen_vertices, faces, image_size, settings)
        return fragments_from_triangle_ids(screen_vertices, faces, tid, settings)

    @torch.no_grad()
    def triangle_ids(self, screen_vertices: torch.Tensor, faces: torch.Tensor, image_size: Tuple[int, int],
                     settings: RasterSettings) -> torch.Tensor:
        B = screen_vertices.shape[0]
        H, W = image_size
        sv = screen_vertices.detach()
        tv = sv.to(torch.float64)[:, faces]  # (B, F, 3 corners, 3)
        tv = torch.cat([snap(tv[..., :2]), tv[..., 2:]], -1)
        keep, _ = drawable_triangles(tv[..., 0].movedim(-1, 0), tv[..., 1].movedim(-1, 0),
                                     tv[..., 2].movedim(-1, 0), settings)  # (B, F)
        finite = torch.isfinite(sv).all(-1, keepdim=True)
        ndc = torch.where(finite, screen_to_pytorch3d_ndc(sv, image_size), 0.0).to(torch.float32).contiguous()
        ids = [keep[b].nonzero().squeeze(1) for b in range(B)]
        meshes = self._Meshes(verts=[ndc[b] for b in range(B)], faces=[faces[i].contiguous() for i in ids])
        pix_to_face, _, _, _ = self._rasterize_meshes(
            meshes, image_size=(H, W), blur_radius=0.0, faces_per_pixel=1, bin_size=self.bin_size,
            max_faces_per_bin=self.max_faces_per_bin, perspective_correct=settings.perspective_correct,
            clip_barycentric_coords=False, cull_backfaces=False)
        packed = pix_to_face[..., 0]  # (B, H, W) index into the packed (concatenated) faces, -1 background
        table = torch.cat(ids) if ids else faces.new_zeros(0)
        if table.numel() == 0:
            return torch.full((B, H, W), -1, dtype=torch.int64, device=sv.device)
        return torch.where(packed >= 0, table[packed.clamp(min=0)], -1).to(torch.int64)
