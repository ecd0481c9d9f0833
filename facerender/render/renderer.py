"""The high-level face renderer: model-space vertices + pose + camera + albedo + SH light -> an image.

:func:`render_face` (module form :class:`FaceRenderer`) chains the op-level pieces of :mod:`facerender.render`:

1. ``model_to_camera`` (the one model -> camera transform), ``camera.to_screen``;
2. :func:`~facerender.render.rasterize.rasterize` (one call; visibility is piecewise constant);
3. camera-space vertex normals (``vertex_normals`` of the camera-space vertices), interpolated and normalised per
   pixel; per-vertex albedo interpolated per pixel;
4. Lambertian SH shading per pixel (deferred shading, :func:`~facerender.render.lighting.shade_lambertian`),
   clamped to [0, 1];
5. compositing over the background (the coverage mask selects), then silhouette antialiasing
   (:func:`~facerender.render.antialias.antialias`), which gives gradients w.r.t. the outline.

Differentiable end to end w.r.t. vertices, albedo, SH coefficients, pose, camera intrinsics and the background
(float64 ``gradcheck`` in ``tests/test_renderer.py``). :func:`frame_face` places a face frontally in the image
(used by the CLI, benchmarks and tests).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from morphable_models.geometry import check_faces, model_to_camera, pose_rotation, vertex_normals

from ..cameras import OrthographicCamera, PinholeCamera
from ..errors import ShapeError
from .antialias import antialias as antialias_op
from .compositing import composite
from .interpolate import interpolate
from .lighting import ambient_light, directional_light, shade_lambertian
from .rasterize import Fragments, RasterSettings, rasterize

__all__ = [
    "RenderOutput",
    "render_face",
    "FaceRenderer",
    "shade_fragments",
    "default_light",
    "frame_face",
    "default_camera_for",
    "Framing",
    "check_pose",
    "common_batch",
    "DEFAULT_ALBEDO",
    "DEFAULT_LIGHT_DIRECTION",
]

Camera = Union[PinholeCamera, OrthographicCamera]
Background = Union[torch.Tensor, float, Sequence[float], None]

#: Albedo used when none is given: a neutral light skin tone (linear RGB in [0, 1]).
DEFAULT_ALBEDO: Tuple[float, float, float] = (0.80, 0.64, 0.56)
#: Direction TOWARDS the key light of :func:`default_light`, camera frame (x right, y down, z forward): in front of
#: the face, a little above it and to the image left.
DEFAULT_LIGHT_DIRECTION: Tuple[float, float, float] = (-0.35, -0.45, -1.0)
#: Ambient and key-light intensities of :func:`default_light`.
DEFAULT_AMBIENT = 0.45
DEFAULT_KEY = 0.62


# --------------------------------------------------------------------------------------------------- outputs
@dataclass
class RenderOutput:
    """What :func:`render_face` returns.

    Attributes:
        image: ``(B, H, W, C)`` shaded colour in [0, 1], composited over the background (antialiased when asked).
        mask: ``(B, H, W)`` bool, the rasterizer's coverage (``fragments.mask``).
        alpha: ``(B, H, W)`` float coverage: the antialiased mask when ``antialias`` (differentiable w.r.t. the
            silhouette), else ``mask`` as float.
        normals: ``(B, H, W, 3)`` unit camera-space normals per pixel (0 on background).
        albedo: ``(B, H, W, C)`` interpolated albedo (0 on background).
        depth: ``(B, H, W)`` camera ``z`` per pixel (0 on background).
        fragments: the :class:`~facerender.render.rasterize.Fragments` of the single rasterization.
        screen_vertices: ``(B, V, 3)`` ``(x_px, y_px, z)``.
        camera_vertices: ``(B, V, 3)`` camera-space vertices (x right, y down, z forward).
        vertex_normals: ``(B, V, 3)`` unit camera-space vertex normals.
    """

    image: torch.Tensor
    mask: torch.Tensor
    alpha: torch.Tensor
    normals: torch.Tensor
    albedo: torch.Tensor
    depth: torch.Tensor
    fragments: Fragments
    screen_vertices: torch.Tensor
    camera_vertices: torch.Tensor
    vertex_normals: torch.Tensor


# ----------------------------------------------------------------------------------------------- input checks
def _shape(x) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_vertices(vertices) -> torch.Tensor:
    if not isinstance(vertices, torch.Tensor) or vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise ShapeError(f"vertices must be a (B, V, 3) tensor, got {_shape(vertices)}")
    if not vertices.is_floating_point():
        raise ShapeError(f"vertices must be a floating-point tensor, got {vertices.dtype}")
    return vertices


def _check_finite(name: str, x) -> None:
    """Refuse NaN / inf in a user-supplied tensor, naming it (NaN in, NaN out without a word is worse)."""
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        ok = torch.isfinite(x)
        if not bool(ok.all()):
            n = int((~ok).sum())
            raise ShapeError(f"{name} holds {n} NaN or inf value(s) (shape {tuple(x.shape)}, dtype {x.dtype})")


#: Floating types too coarse for rasterization (depth test, barycentrics): rendered in float32 and cast back.
LOW_PRECISION = (torch.float16, torch.bfloat16)


def _like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``x`` with the dtype and device of ``ref`` (a differentiable cast; no copy when they already match)."""
    return x.to(dtype=ref.dtype, device=ref.device)


def _batch_of(name: str, x: torch.Tensor, B: int) -> None:
    if x.shape[0] not in (1, B):
        raise ShapeError(f"batch mismatch: {name} has batch {x.shape[0]} ({tuple(x.shape)}), other inputs have {B}")


def common_batch(**inputs) -> int:
    """The batch size ``B`` shared by named inputs (tensors, whose first dimension is their batch, or ints), each of
    which must have batch 1 or ``B``; otherwise a ShapeError listing every input's batch and shape."""
    sizes = {k: (int(x.shape[0]) if isinstance(x, torch.Tensor) else int(x)) for k, x in inputs.items()
             if x is not None}
    B = max(sizes.values()) if sizes else 1
    if any(b not in (1, B) for b in sizes.values()):
        desc = ", ".join(f"{k} {tuple(x.shape)} (batch {sizes[k]})" if isinstance(x, torch.Tensor)
                         else f"{k} (batch {sizes[k]})" for k, x in inputs.items() if x is not None)
        raise ShapeError(f"batch mismatch: every input must have batch 1 or B = {B}; got {desc}")
    return B


def check_pose(rotation, translation, ref: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Validate ``rotation`` (``(B, 3)`` axis-angle, ``(B, 3, 3)`` or ``(B, 6)``) and ``translation (B, 3)``.

    Returns them cast to the dtype/device of ``ref``, rotation as ``(B, 3, 3)`` matrices. Unbatched ``(3,)`` /
    ``(3, 3)`` / ``(6,)`` are treated as a batch of 1, except that a ``(3, 3)`` rotation next to a translation of
    batch 3 is what its shape also says: a batch of three axis-angle vectors (pass one matrix for three
    translations as ``(1, 3, 3)``).
    """
    if not isinstance(rotation, torch.Tensor) or not rotation.is_floating_point():
        got = rotation.dtype if isinstance(rotation, torch.Tensor) else type(rotation).__name__
        raise ShapeError(f"rotation must be a floating-point tensor (B, 3), (B, 3, 3) or (B, 6), got {got}")
    r = rotation
    three = isinstance(translation, torch.Tensor) and translation.ndim == 2 and translation.shape[0] == 3
    if r.ndim == 1 or (r.ndim == 2 and r.shape == (3, 3) and not three):
        r = r[None]
    ok = (r.ndim == 2 and r.shape[1] in (3, 6)) or (r.ndim == 3 and r.shape[1:] == (3, 3))
    if not ok:
        raise ShapeError(f"rotation must be (B, 3) axis-angle, (B, 3, 3) or (B, 6), got {tuple(rotation.shape)}")
    if not isinstance(translation, torch.Tensor) or not translation.is_floating_point():
        got = translation.dtype if isinstance(translation, torch.Tensor) else type(translation).__name__
        raise ShapeError(f"translation must be a floating-point (B, 3) tensor, got {got}")
    t = translation[None] if translation.ndim == 1 else translation
    if t.ndim != 2 or t.shape[1] != 3:
        raise ShapeError(f"translation must be (B, 3), got {tuple(translation.shape)}")
    return pose_rotation(_like(r, ref)), _like(t, ref)


def _check_camera(camera, ref: torch.Tensor, B: int) -> Camera:
    if not isinstance(camera, (PinholeCamera, OrthographicCamera)):
        raise ShapeError(f"camera must be a PinholeCamera or OrthographicCamera, got {type(camera).__name__}")
    if camera.batch_size not in (1, B):
        raise ShapeError(f"batch mismatch: the camera has batch {camera.batch_size}, other inputs have {B}")
    if camera.dtype != ref.dtype or camera.device != ref.device:
        camera = camera.apply(lambda t: t.to(dtype=ref.dtype, device=ref.device))
    return camera


def _check_albedo(albedo, V: int, B: int, ref: torch.Tensor) -> Optional[torch.Tensor]:
    if albedo is None:
        return None
    if not isinstance(albedo, torch.Tensor) or not albedo.is_floating_point():
        got = albedo.dtype if isinstance(albedo, torch.Tensor) else type(albedo).__name__
        raise ShapeError(f"albedo must be a floating-point (B, V, C) or (V, C) tensor, got {got}")
    a = albedo[None] if albedo.ndim == 2 else albedo
    if a.ndim != 3 or a.shape[1] != V:
        raise ShapeError(f"albedo must be (B, {V}, C) or ({V}, C) per vertex, got {tuple(albedo.shape)}")
    _batch_of("albedo", a, B)
    return _like(a, ref)


def _check_sh(sh, B: int, C: int, ref: torch.Tensor) -> Optional[torch.Tensor]:
    if sh is None:
        return None
    if not isinstance(sh, torch.Tensor) or not sh.is_floating_point():
        got = sh.dtype if isinstance(sh, torch.Tensor) else type(sh).__name__
        raise ShapeError(f"sh must be a floating-point (B, 9, C) tensor, got {got}")
    s = sh[None] if sh.ndim == 2 else sh
    if s.ndim != 3 or s.shape[1] != 9 or s.shape[2] not in (1, C):
        raise ShapeError(f"sh must be (B, 9, {C}) (or (B, 9, 1)) SH coefficients, got {tuple(sh.shape)}")
    _batch_of("sh", s, B)
    return _like(s, ref)


# ------------------------------------------------------------------------------------------------------ light
def default_light(batch_size: int = 1, channels: int = 3, *, dtype: Optional[torch.dtype] = None,
                  device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """The light used when ``sh`` is None: white ambient :data:`DEFAULT_AMBIENT` plus a white directional key light
    :data:`DEFAULT_KEY` from :data:`DEFAULT_LIGHT_DIRECTION` (in front, slightly above and to the image left).

    Returns:
        ``(B, 9, C)`` SH coefficients (see ``docs/rendering.md``, "Lighting").
    """
    dtype = dtype or torch.get_default_dtype()
    d = torch.tensor(DEFAULT_LIGHT_DIRECTION, dtype=dtype, device=device)
    sh = ambient_light(DEFAULT_AMBIENT, 1, channels, dtype=dtype, device=device) \
        + directional_light(d, DEFAULT_KEY, channels)
    return sh.expand(batch_size, 9, channels).clone()


# ------------------------------------------------------------------------------------------------- functional
def shade_fragments(
    fragments: Fragments,
    camera_vertices: torch.Tensor,
    faces: torch.Tensor,
    albedo: Optional[torch.Tensor] = None,
    sh: Optional[torch.Tensor] = None,
    background: Background = None,
    *,
    antialias: bool = True,
    normals: Optional[torch.Tensor] = None,
) -> RenderOutput:
    """Shade an existing rasterization (the part of :func:`render_face` after ``rasterize``).

    Lets callers that already rasterized (e.g. :func:`~facerender.render.conditioning.conditioning_maps`) shade
    without rasterizing again.

    Args:
        fragments: from :func:`~facerender.render.rasterize.rasterize` of ``camera.to_screen(camera_vertices)``.
        camera_vertices: ``(B, V, 3)`` camera-space vertices (for the normals).
        faces: ``(F, 3)`` int64, the faces that were rasterized.
        albedo: ``(B, V, C)`` / ``(V, C)`` per-vertex albedo, or None (:data:`DEFAULT_ALBEDO`).
        sh: ``(B, 9, C)`` or None (:func:`default_light`).
        background: see :func:`render_face`.
        antialias: antialias the silhouettes.
        normals: ``(B, V, 3)`` camera-space vertex normals if already computed (default: ``vertex_normals``).
    """
    B, V, _ = camera_vertices.shape
    ref = camera_vertices
    a = _check_albedo(albedo, V, B, ref)
    C = 3 if a is None else a.shape[-1]
    s = _check_sh(sh, B, C, ref)
    if s is None:
        s = default_light(1, C, dtype=ref.dtype, device=ref.device)
    mask = fragments.mask
    vn = vertex_normals(camera_vertices, faces) if normals is None else normals
    n = interpolate(vn, fragments)  # (B, H, W, 3), 0 on background
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if a is None:
        alb = torch.tensor(DEFAULT_ALBEDO, dtype=ref.dtype, device=ref.device) * mask[..., None].to(ref.dtype)
    else:
        alb = interpolate(a, fragments)
    colour = shade_lambertian(alb, n, s, normalize=False).clamp(0.0, 1.0)
    if colour.shape[0] != B:  # a batch-1 fragment set shaded with B lights
        colour = colour.expand(B, -1, -1, -1)
    image = composite(colour, mask, 0.0 if background is None else _background(background, colour))
    alpha = mask.to(ref.dtype)
    if antialias:
        both = antialias_op(torch.cat([image, alpha[..., None]], dim=-1), fragments)
        image, alpha = both[..., :-1], both[..., -1]
    return RenderOutput(image=image, mask=mask, alpha=alpha, normals=n, albedo=alb, depth=fragments.depth,
                        fragments=fragments, screen_vertices=fragments.screen_vertices,
                        camera_vertices=camera_vertices, vertex_normals=vn)


def _background(background, like: torch.Tensor):
    if isinstance(background, torch.Tensor):
        if not background.is_floating_point():
            raise ShapeError(f"background must be a floating-point tensor, got {background.dtype}")
        return _like(background, like)
    return background


def render_face(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    camera: Camera,
    rotation: torch.Tensor,
    translation: torch.Tensor,
    albedo: Optional[torch.Tensor] = None,
    sh: Optional[torch.Tensor] = None,
    background: Background = None,
    *,
    antialias: bool = True,
    backend: str = "torch",
    settings: Optional[RasterSettings] = None,
) -> RenderOutput:
    """Render a face-model output (or any triangle mesh) with Lambertian SH shading.

    Args:
        vertices: ``(B, V, 3)`` MODEL-space positions (e.g. ``model(...).vertices``).
        faces: ``(F, 3)`` int64 triangles (e.g. ``model.faces``).
        camera: :class:`~facerender.cameras.PinholeCamera` (perspective-correct interpolation) or
            :class:`~facerender.cameras.OrthographicCamera`, batch 1 or B. Its dtype/device follow ``vertices``.
        rotation: head rotation in model space, ``(B, 3)`` axis-angle, ``(B, 3, 3)`` or ``(B, 6)``.
        translation: ``(B, 3)`` head position in camera space (``model_to_camera``).
        albedo: ``(B, V, C)`` or ``(V, C)`` per-vertex reflectance in [0, 1]; None: :data:`DEFAULT_ALBEDO`.
        sh: ``(B, 9, C)`` SH radiance coefficients (``docs/rendering.md``, "Lighting"); None: :func:`default_light`.
        background: ``(B, H, W, C)`` / ``(H, W, C)`` image, a colour ``(C,)``, a number, or None (black).
        antialias: antialias silhouettes (gradients w.r.t. the outline).
        backend: rasterizer backend name (``"torch"`` default).
        settings: :class:`~facerender.render.rasterize.RasterSettings`; default: back-face culling,
            perspective-correct for a pinhole camera, affine for an orthographic one.
    Returns:
        :class:`RenderOutput` (``image (B, H, W, C)`` in [0, 1], ``mask``, ``alpha``, ``normals``, ``albedo``,
        ``depth``, ``fragments``, ``screen_vertices``, ``camera_vertices``, ``vertex_normals``). ``B`` is the largest
        batch among the inputs; every input has batch 1 or ``B``. dtype and device: those of ``vertices``.
    Raises:
        ShapeError (a ``ValueError``) for wrong shapes or mismatched batches, stating what was received.

    Shading is ``clamp(albedo * E(n) / pi, 0, 1)`` per pixel with ``n`` the interpolated, renormalised camera-space
    vertex normal; the clamp has zero gradient where it saturates.

    NaN / inf in ``vertices``, ``rotation``, ``translation``, ``albedo``, ``sh`` or the camera raise a ShapeError
    naming the argument. float16 / bfloat16 inputs are rendered in float32 (their precision breaks the depth test
    and the coverage) and the outputs cast back to the input dtype (``fragments`` stay float32).
    """
    v = _check_vertices(vertices)
    for name, x in (("vertices", v), ("rotation", rotation), ("translation", translation), ("albedo", albedo),
                    ("sh", sh)):
        _check_finite(name, x)
    if isinstance(camera, (PinholeCamera, OrthographicCamera)):
        for k in camera._TENSOR_FIELDS:
            _check_finite(f"camera.{k}", getattr(camera, k))
            x = getattr(camera, k)
            if k in ("fx", "fy", "scale") and bool((x <= 0).any()):
                raise ShapeError(f"camera.{k} must be > 0 (pixels; the package's camera has x right, y down: "
                                 f"mirror the image instead of the focal length), got {x.tolist()}")
    if v.dtype in LOW_PRECISION:
        def up(x):
            return x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x

        cam32 = camera.apply(up) if isinstance(camera, (PinholeCamera, OrthographicCamera)) else camera
        out = render_face(up(v), faces, cam32, up(rotation), up(translation), up(albedo), up(sh), up(background),
                          antialias=antialias, backend=backend, settings=settings)
        return dataclasses.replace(out, **{k: getattr(out, k).to(v.dtype) for k in (
            "image", "alpha", "normals", "albedo", "depth", "screen_vertices", "camera_vertices", "vertex_normals")})
    f = check_faces(faces, v.shape[1]).to(v.device)
    R, t = check_pose(rotation, translation, v)
    B = common_batch(
        vertices=v, rotation=R, translation=t,
        camera=camera.batch_size if isinstance(camera, (PinholeCamera, OrthographicCamera)) else None,
        albedo=albedo if isinstance(albedo, torch.Tensor) and albedo.ndim == 3 else None,
        sh=sh if isinstance(sh, torch.Tensor) and sh.ndim == 3 else None,
        background=background if isinstance(background, torch.Tensor) and background.ndim == 4 else None)
    cam = _check_camera(camera, v, B)
    if settings is None:
        settings = RasterSettings(perspective_correct=isinstance(cam, PinholeCamera))
    cv = model_to_camera(v, R, t)
    if cv.shape[0] != B:
        cv = cv.expand(B, -1, -1)
    sv = cam.to_screen(cv)
    if sv.shape[0] != B:
        sv = sv.expand(B, -1, -1)
    fragments = rasterize(sv, f, cam.image_size, settings, backend)
    return shade_fragments(fragments, cv, f, albedo, sh, background, antialias=antialias)


class FaceRenderer(nn.Module):
    """Module form of :func:`render_face`: holds the faces (a buffer, moved by ``.to()``), the background and the
    rasterizer settings.

    ``forward(vertices (B, V, 3), camera, rotation, translation, albedo=None, sh=None, background=None)
    -> RenderOutput`` (``background=None`` uses the module's).

    Example:
        >>> renderer = FaceRenderer(model.faces)                                  # doctest: +SKIP
        >>> cam, R, t = frame_face(model, (256, 256))                             # doctest: +SKIP
        >>> out = renderer(model(expression=w).vertices, cam, R, t)               # doctest: +SKIP
        >>> out.image.shape                                                       # doctest: +SKIP
        torch.Size([1, 256, 256, 3])
    """

    def __init__(self, faces: torch.Tensor, *, background: Background = None, antialias: bool = True,
                 backend: str = "torch", settings: Optional[RasterSettings] = None) -> None:
        super().__init__()
        self.register_buffer("faces", check_faces(faces), persistent=False)
        if isinstance(background, torch.Tensor):
            self.register_buffer("background", background.detach().clone(), persistent=False)
        else:
            self.background = background
        self.antialias = antialias
        self.backend = backend
        self.settings = settings

    def forward(self, vertices: torch.Tensor, camera: Camera, rotation: torch.Tensor, translation: torch.Tensor,
                albedo: Optional[torch.Tensor] = None, sh: Optional[torch.Tensor] = None,
                background: Background = None) -> RenderOutput:
        bg = self.background if background is None else background
        return render_face(vertices, self.faces, camera, rotation, translation, albedo, sh, bg,
                           antialias=self.antialias, backend=self.backend, settings=self.settings)

    def extra_repr(self) -> str:
        return f"F={self.faces.shape[0]}, antialias={self.antialias}, backend={self.backend!r}"


# ---------------------------------------------------------------------------------------------------- framing
class Framing(NamedTuple):
    """A camera and a head pose that frame a face (:func:`frame_face`).

    Attributes:
        camera: :class:`~facerender.cameras.PinholeCamera` (batch 1).
        rotation: ``(B, 3, 3)`` head rotation in model space.
        translation: ``(B, 3)`` head position in camera space.
    """

    camera: PinholeCamera
    rotation: torch.Tensor
    translation: torch.Tensor


def _framing_points(model_or_vertices, region: Optional[str]) -> torch.Tensor:
    obj = model_or_vertices
    if hasattr(obj, "vertices") and isinstance(getattr(obj, "vertices"), torch.Tensor):  # FaceModelOutput
        obj = obj.vertices
    if isinstance(obj, torch.Tensor):
        if obj.ndim == 2:
            obj = obj[None]
        if obj.ndim != 3 or obj.shape[-1] != 3 or not obj.is_floating_point():
            raise ShapeError(f"vertices must be a floating-point (V, 3) or (B, V, 3) tensor, got {_shape(obj)}")
        return obj
    template = getattr(obj, "template", None)
    if not isinstance(template, torch.Tensor):
        raise ShapeError(f"frame_face needs a face model (with .template), a model output or vertices (B, V, 3), "
                         f"got {type(obj).__name__}")
    pts = template
    regions = getattr(obj, "regions", {}) or {}
    if region is not None and region in regions:
        pts = template[torch.as_tensor(regions[region].vertex_ids, device=template.device)]
    return pts[None]


def frame_face(
    model_or_vertices,
    image_size: Union[Tuple[int, int], int],
    *,
    fov: float = 15.0,
    fill: float = 0.9,
    rotation: Optional[torch.Tensor] = None,
    region: Optional[str] = "face",
    iterations: int = 12,
) -> Framing:
    """Place a face in front of a pinhole camera so that it fills ``fill`` of the image.

    The camera is centred with square pixels and a VERTICAL field of view ``fov`` (degrees). The head keeps the
    rotation ``rotation`` (default: frontal, looking into the camera) and is translated so that the projected
    bounding box of the framing points is centred in the image and its height is ``fill * H`` (or its width
    ``fill * W`` if that is the larger fraction: the face always fits).

    Args:
        model_or_vertices: a face model (its ``template``, restricted to the region ``region`` when the model has
            it, e.g. ICT's ``"face"``: chin to hairline, ear to ear), a model output or vertices ``(V, 3)`` /
            ``(B, V, 3)`` (model space).
        image_size: ``(H, W)`` or one int.
        fov: vertical field of view in degrees.
        fill: fraction of the image height (or width) the framing points span.
        rotation: ``(B, 3)`` axis-angle / ``(B, 3, 3)`` / ``(B, 6)`` head rotation; frames each batch item.
        region: which region of a model frames the face (None: all vertices).
        iterations: fixed-point iterations (perspective makes the size depend on the depth; 12 converge to 1e-6).
    Returns:
        :class:`Framing` ``(camera, rotation (B, 3, 3), translation (B, 3))``, usable as
        ``render_face(vertices, faces, *frame_face(model, 256))``. dtype/device of the model or vertices.
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if not 0 < fill <= 1.5:
        raise ValueError(f"fill must be in (0, 1.5], got {fill}")
    pts = _framing_points(model_or_vertices, region).detach()
    H, W = int(image_size[0]), int(image_size[1])
    cam = PinholeCamera.from_fov(fov, (H, W), axis="vertical", dtype=pts.dtype, device=pts.device)
    if rotation is None:
        rotation = torch.zeros(1, 3, dtype=pts.dtype, device=pts.device)
    R, _ = check_pose(rotation.detach(), torch.zeros(pts.shape[0], 3, dtype=pts.dtype, device=pts.device), pts)
    B = max(R.shape[0], pts.shape[0])
    if pts.shape[0] not in (1, B) or R.shape[0] not in (1, B):
        raise ShapeError(f"batch mismatch: rotation has batch {R.shape[0]}, vertices have {pts.shape[0]}")
    rotated = model_to_camera(pts, R, torch.zeros(1, 3, dtype=pts.dtype, device=pts.device))  # (B, N, 3)
    if rotated.shape[0] != B:
        rotated = rotated.expand(B, -1, -1)
    f = float(cam.fy[0])
    lo, hi = rotated.amin(1), rotated.amax(1)  # (B, 3)
    size = (hi - lo)[:, :2]
    centre = (hi + lo) / 2
    depth = size[:, 1] * f / (fill * H)
    t = torch.stack([-centre[:, 0], -centre[:, 1], depth - lo[:, 2]], dim=-1)
    target = torch.tensor([W / 2.0, H / 2.0], dtype=pts.dtype, device=pts.device)
    for _ in range(max(1, iterations)):
        p = cam.project(rotated + t[:, None])  # (B, N, 2)
        plo, phi = p.amin(1), p.amax(1)
        frac = torch.maximum((phi[:, 1] - plo[:, 1]) / (fill * H), (phi[:, 0] - plo[:, 0]) / (fill * W))
        zc = (rotated[..., 2] + t[:, None, 2]).mean(1)  # a representative depth
        shift = ((plo + phi) / 2 - target) * zc[:, None] / f  # move the box centre onto the image centre
        t = torch.stack([t[:, 0] - shift[:, 0], t[:, 1] - shift[:, 1], t[:, 2]], dim=-1)
        # the projected size scales like 1 / depth around the representative depth
        dz = (zc * frac - zc)
        t = torch.stack([t[:, 0], t[:, 1], t[:, 2] + dz], dim=-1)
    if R.shape[0] != B:
        R = R.expand(B, 3, 3)
    return Framing(cam, R.clone(), t)


def default_camera_for(model_or_vertices, image_size: Union[Tuple[int, int], int], *, fov: float = 15.0,
                       fill: float = 0.9, rotation: Optional[torch.Tensor] = None,
                       region: Optional[str] = "face") -> Framing:
    """Alias of :func:`frame_face` (the default camera and pose for a model)."""
    return frame_face(model_or_vertices, image_size, fov=fov, fill=fill, rotation=rotation, region=region)
