"""Differentiable rendering: rasterizer backends, interpolation, antialiasing, textures, SH lighting, compositing,
the face renderer and conditioning maps.

The rasterizer works in screen space ``(x_px, y_px, z)`` (see docs/architecture.md); cameras
(:mod:`facerender.cameras`) produce it. Backends: ``"torch"`` (default, pure PyTorch), ``"reference"`` (slow
oracle), ``"pytorch3d"`` and ``"nvdiffrast"`` (optional extras, imported on first use).
"""
from .antialias import Antialias, EdgeTopology, antialias, edge_topology
from .compositing import Compositor, composite, from_uint8, to_bchw, to_bhwc, to_uint8
from .interpolate import interpolate
from .lighting import (
    SHShading,
    ambient_light,
    directional_light,
    sh_basis,
    sh_from_deep3d,
    sh_irradiance,
    sh_to_deep3d,
    shade_lambertian,
)
from .rasterize import (
    Fragments,
    RasterSettings,
    Rasterizer,
    available_backends,
    fragments_from_triangle_ids,
    get_rasterizer,
    rasterize,
    register_backend,
)
from .texture import TextureSampler, sample_texture

__all__ = [name for name in dir() if not name.startswith("_")]
