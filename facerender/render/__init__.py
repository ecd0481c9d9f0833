"""Differentiable rendering: rasterizer backends, interpolation, antialiasing, textures, SH lighting, compositing,
the face renderer and conditioning maps.

The rasterizer works in screen space ``(x_px, y_px, z)`` (see docs/architecture.md); cameras
(:mod:`facerender.cameras`) produce it. Backends: ``"torch"`` (default, pure PyTorch), ``"reference"`` (slow
oracle), ``"pytorch3d"`` and ``"nvdiffrast"`` (optional extras, imported on first use).

The package is callable: ``facerender.render(model, fit)`` is :func:`render` (a model, a fit / track frame or
coefficients -> a :class:`RenderOutput`); :func:`render_face` / :class:`FaceRenderer` take vertices and faces.
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
from .renderer import (DEFAULT_ALBEDO, FaceRenderer, Framing, RenderOutput, default_camera_for, default_light,
                       frame_face, render_face, shade_fragments)
from .model_render import render

import types as _types  # noqa: E402

__all__ = [name for name, value in list(globals().items())
           if not name.startswith("_") and not isinstance(value, _types.ModuleType)]

from morphable_models._lazy import attach as _attach, make_callable as _make_callable  # noqa: E402

#: conditioning maps (DVP / NVP inputs) and pictures, imported on first use
_LAZY = {"conditioning_maps": ".conditioning", "ConditioningRenderer": ".conditioning", "DVP_MAPS": ".conditioning",
         "region_albedo": ".conditioning", "write_textured_obj": "facerender.io.mesh",
         "bake_texture": ".bake", "blend_overlay": ".overlay", "draw_landmarks": ".overlay"}
__getattr__, __dir__, _lazy_all = _attach(__name__, _LAZY, ("bake", "conditioning", "overlay", "backends"),
                                          extra=__all__)
__all__ = _lazy_all
# ``facerender.render(model, ...)`` renders (:func:`render`); ``facerender.render.rasterize`` etc. stay the modules'
_make_callable(__name__, "render")
