"""Conditioning maps for neural renderers (Deep Video Portraits and the 2D methods), from ONE rasterization.

:func:`conditioning_maps` renders a face-model output into a dictionary of channel-last maps ``(B, H, W, C)``,
requested by name; all maps that need visibility share a single :func:`~facerender.render.rasterize.rasterize`
call. Module form: :class:`ConditioningRenderer`.

What is drawn (the "drawn set"): every triangle of the model except the regions in ``skip_regions``. For ICT-FaceKit
the default skips the two overlay meshes that only make sense with transparency / special shaders: the eyelashes
(thin cards that would draw as grey fringes) and the eye-occlusion meshes (a shadowing film that would cover the
whole eye opening) (see :data:`SKIPPED_REGIONS`). Everything else -- face, head and neck, eye sockets, both eyeball
shells, lacrimal fluid, eye blend, mouth socket, gums and tongue, teeth -- is drawn opaque with back-face culling and
the z-buffer, so the mouth interior and teeth appear only where the lips open and the eyes only between the eyelids.
The lacrimal-fluid and eye-blend strips are kept because they close the slit that ICT's eyelids leave at
``eyeBlink = 1`` (without them a line of sclera stays visible in a closed eye); they are drawn in a pinkish skin
tone.

ICT's eyeballs are two nested spheres: the outer ``sclera_*`` shell (with the corneal bulge) and the inner
``iris_*`` sphere, which the opaque outer shell hides. The iris and pupil are therefore located geometrically on
the TEMPLATE: per eye, a sphere is fitted to the outer shell, the optical axis runs from its centre through the
centroid of the corneal bulge, and a vertex belongs to the iris when its angle to the axis is below
:data:`IRIS_HALF_ANGLE` degrees (pupil: :data:`PUPIL_HALF_ANGLE`). The cosine of that angle is interpolated per
pixel, so the discs have smooth, exact outlines, and it moves with the eyeball vertices.

ICT's ``eyeLook*`` blendshapes only deform the eyelids (their eyeball deltas are exactly zero): the eyeballs are
rigid meshes meant to be turned. :func:`rotate_eyes` turns them by the ``eyeLook*`` weights (:data:`GAZE_ANGLES`
degrees at weight 1), and :func:`conditioning_maps` does so for a model output, so gaze shows in every map.
"""
from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from morphable_models.geometry import model_to_camera, vertex_normals

from ..errors import ShapeError
from .interpolate import interpolate
from .rasterize import RasterSettings, rasterize
from ..cameras import PinholeCamera
from .renderer import (
    DEFAULT_ALBEDO,
    Camera,
    common_batch,
    _check_albedo,
    _check_camera,
    _check_vertices,
    check_pose,
    shade_fragments,
)

__all__ = [
    "conditioning_maps",
    "ConditioningRenderer",
    "ALL_MAPS",
    "DVP_MAPS",
    "REGION_CLASSES",
    "REGION_NAMES",
    "SKIPPED_REGIONS",
    "GAZE_COLORS",
    "IRIS_HALF_ANGLE",
    "PUPIL_HALF_ANGLE",
    "region_albedo",
    "correspondence_normalization",
    "landmark_heatmaps",
    "eye_geometry",
    "eye_rotations",
    "rotate_eyes",
    "GAZE_ANGLES",
]

#: Every map :func:`conditioning_maps` can return, in the order of its documentation.
ALL_MAPS: Tuple[str, ...] = (
    "shaded", "albedo", "normals", "depth", "mask", "correspondence", "uv", "uv_tile", "regions", "regions_onehot",
    "gaze", "landmarks", "landmark_image", "landmarks_2d",
)
#: Deep Video Portraits' per-frame conditioning: colour rendering, correspondence image, eye-gaze map.
DVP_MAPS: Tuple[str, ...] = ("shaded", "correspondence", "gaze")
#: Maps that need the rasterization.
_RASTER_MAPS = frozenset(ALL_MAPS) - {"landmarks", "landmark_image", "landmarks_2d"}

#: Overlay meshes of ICT-FaceKit that are not drawn by default.
SKIPPED_REGIONS: Tuple[str, ...] = ("eyelashes_left", "eyelashes_right", "eye_occlusion_left", "eye_occlusion_right")
#: Region classes of the ``"regions"`` map: id ``k + 1`` for entry ``k`` (0 is background). Drawn triangles that
#: belong to none of these regions (ICT: lacrimal fluid, eye blend) get id 1.
REGION_CLASSES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("skin", ("face", "head_and_neck", "eye_socket_left", "eye_socket_right")),
    ("eyes", ("eyeball_left", "eyeball_right")),
    ("mouth_interior", ("mouth_socket", "gums_and_tongue")),
    ("teeth", ("teeth",)),
)
#: Names of the region ids: ``REGION_NAMES[id]``.
REGION_NAMES: Tuple[str, ...] = ("background",) + tuple(name for name, _ in REGION_CLASSES)

#: Half-angles (degrees, from the eye's optical axis) of the iris and pupil discs.
IRIS_HALF_ANGLE = 21.0
PUPIL_HALF_ANGLE = 7.5
#: Colours of the gaze map (RGB in [0, 1]). "left" is the SUBJECT's left eye (the image right in a frontal view).
GAZE_COLORS: Mapping[str, Tuple[float, float, float]] = {
    "sclera": (1.0, 1.0, 1.0),
    "iris_left": (1.0, 0.0, 0.0),
    "iris_right": (0.0, 1.0, 0.0),
    "pupil": (0.0, 0.0, 1.0),
}
#: Per-region albedo of :func:`region_albedo` (linear RGB in [0, 1]).
REGION_ALBEDO: Mapping[str, Tuple[float, float, float]] = {
    "skin": DEFAULT_ALBEDO,
    "eye_socket": (0.78, 0.55, 0.50),
    "sclera": (0.93, 0.91, 0.88),
    "iris": (0.36, 0.24, 0.14),
    "pupil": (0.03, 0.03, 0.03),
    "mouth_socket": (0.40, 0.15, 0.15),
    "gums_and_tongue": (0.66, 0.30, 0.30),
    "teeth": (0.93, 0.90, 0.82),
}


# ------------------------------------------------------------------------------------------- model-derived tables
@dataclass(frozen=True)
class _EyeGeometry:
    centre: np.ndarray  # (3,) model space
    radius: float
    axis: np.ndarray  # (3,) unit optical axis


def _fit_sphere(P: np.ndarray) -> Tuple[np.ndarray, float]:
    A = np.c_[2 * P, np.ones(len(P))]
    b = (P ** 2).sum(1)
    s = np.linalg.lstsq(A, b, rcond=None)[0]
    c = s[:3]
    return c, float(np.sqrt(max(s[3] + c @ c, 0.0)))


def eye_geometry(model, side: str) -> _EyeGeometry:
    """Centre, radius and optical axis of one eye (``side`` = ``"left"`` / ``"right"``) on the model's template.

    A sphere is fitted to the outer shell (region ``sclera_<side>``, else ``eyeball_<side>``), refitted to the
    points within 2 % of its radius (excluding the cornea), and the axis runs from the centre through the centroid
    of the corneal bulge (points more than 6 % outside the sphere).
    """
    regions = getattr(model, "regions", {}) or {}
    name = next((n for n in (f"sclera_{side}", f"eyeball_{side}") if n in regions), None)
    if name is None:
        raise ValueError(f"model {getattr(model, 'name', '?')!r} has no region 'sclera_{side}' or "
                         f"'eyeball_{side}'; it has {sorted(regions)}")
    P = model.template.detach().cpu().double().numpy()[regions[name].vertex_ids]
    c, r = _fit_sphere(P)
    for _ in range(3):
        d = np.linalg.norm(P - c, axis=1)
        inner = P[d < 1.02 * r]
        if len(inner) < 10:
            break
        c, r = _fit_sphere(inner)
    d = np.linalg.norm(P - c, axis=1)
    bulge = P[d > 1.06 * r]
    axis = (bulge.mean(0) - c) if len(bulge) else np.array([0.0, 0.0, 1.0])
    axis = axis / max(np.linalg.norm(axis), 1e-12)
    return _EyeGeometry(c, r, axis)


@dataclass
class _Tables:
    """Per-model tables (for one device / dtype / drawn set)."""

    faces: torch.Tensor  # (Fd, 3) drawn faces
    face_ids: torch.Tensor  # (Fd,) indices into model.faces
    region_id: torch.Tensor  # (Fd + 1,) region id per drawn triangle, entry 0 = background (index tid + 1)
    eye_side: Optional[torch.Tensor]  # (Fd + 1,) 0 none, 1 left, 2 right
    eye_cos: Optional[torch.Tensor]  # (V, 1) cos(angle to the eye axis) for eye vertices, -1 elsewhere
    tile: Optional[torch.Tensor]  # (Fd + 1,) UDIM tile per drawn triangle (-1 at index 0)
    faces_uv: Optional[torch.Tensor]  # (Fd, 3)
    uvs: Optional[torch.Tensor]  # (T, 2)
    correspondence: torch.Tensor  # (V, 3)
    albedo: torch.Tensor  # (V, 3)


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def correspondence_normalization(model) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(lo (3,), size (3,))`` of the correspondence map: ``(template - lo) / size`` maps the template's
    axis-aligned bounding box (over ALL its vertices) onto ``[0, 1]^3``, each axis separately.

    Invert with ``template_point = lo + size * correspondence``.
    """
    t = model.template.detach()
    lo, hi = t.amin(0), t.amax(0)
    return lo, (hi - lo).clamp_min(1e-12)


def _eye_cosines(model) -> Optional[np.ndarray]:
    """``(V,)`` cos(angle to the own eye's axis) for the vertices of both eyeball shells, -1 elsewhere."""
    regions = getattr(model, "regions", {}) or {}
    T = model.template.detach().cpu().double().numpy()
    out = np.full(T.shape[0], -1.0)
    found = False
    for side in ("left", "right"):
        shells = [n for n in (f"sclera_{side}", f"iris_{side}", f"eyeball_{side}") if n in regions]
        if not shells:
            continue
        g = eye_geometry(model, side)
        ids = np.unique(np.concatenate([regions[n].vertex_ids for n in shells]))
        v = T[ids] - g.centre
        out[ids] = (v @ g.axis) / np.maximum(np.linalg.norm(v, axis=1), 1e-12)
        found = True
    return out if found else None


def region_albedo(model) -> torch.Tensor:
    """A plausible per-vertex albedo ``(V, 3)`` from the model's regions (dtype/device of the model).

    Skin :data:`DEFAULT_ALBEDO` everywhere, then by region (when the model has it, see :data:`REGION_ALBEDO`):
    eye sockets, sclera / iris / pupil (by angle to the eye's axis, see the module docstring), mouth socket, gums
    and tongue, teeth. A model without regions gets uniform skin.
    """
    V = model.num_vertices
    alb = np.tile(np.asarray(REGION_ALBEDO["skin"], dtype=np.float64), (V, 1))
    regions = getattr(model, "regions", {}) or {}

    def paint(names, colour):
        for n in names:
            if n in regions:
                alb[regions[n].vertex_ids] = colour

    paint(("eye_socket_left", "eye_socket_right", "lacrimal_fluid_left", "lacrimal_fluid_right", "eye_blend_left",
           "eye_blend_right"), REGION_ALBEDO["eye_socket"])
    paint(("mouth_socket",), REGION_ALBEDO["mouth_socket"])
    paint(("gums_and_tongue",), REGION_ALBEDO["gums_and_tongue"])
    paint(("teeth",), REGION_ALBEDO["teeth"])
    cos = _eye_cosines(model)
    if cos is not None:
        eye = cos > -1.0
        c_iris, c_pupil = math.cos(math.radians(IRIS_HALF_ANGLE)), math.cos(math.radians(PUPIL_HALF_ANGLE))
        alb[eye] = REGION_ALBEDO["sclera"]
        alb[eye & (cos > c_iris)] = REGION_ALBEDO["iris"]
        alb[eye & (cos > c_pupil)] = REGION_ALBEDO["pupil"]
    return torch.as_tensor(alb, dtype=model.template.dtype, device=model.template.device)


def _build_tables(model, skip: Tuple[str, ...], device, dtype) -> _Tables:
    regions = getattr(model, "regions", {}) or {}
    faces_np = model.faces.detach().cpu().numpy()
    F = faces_np.shape[0]
    keep = np.ones(F, dtype=bool)
    for n in skip:
        if n in regions:
            keep[regions[n].face_ids[regions[n].face_ids < F]] = False
    face_ids = np.nonzero(keep)[0]
    rid = np.ones(F, dtype=np.int64)
    for k, (_, names) in enumerate(REGION_CLASSES):
        for n in names:
            if n in regions:
                rid[regions[n].face_ids[regions[n].face_ids < F]] = k + 1
    side = np.zeros(F, dtype=np.int64)
    has_eyes = False
    for s, n in ((1, "eyeball_left"), (2, "eyeball_right")):
        if n in regions:
            side[regions[n].face_ids[regions[n].face_ids < F]] = s
            has_eyes = True
    cos = _eye_cosines(model) if has_eyes else None

    def lut(values: np.ndarray, pad: int) -> torch.Tensor:
        return torch.as_tensor(np.concatenate([[pad], values[face_ids]]), dtype=torch.long, device=device)

    tile = faces_uv = uvs = None
    if getattr(model, "uvs", None) is not None and getattr(model, "faces_uv", None) is not None:
        uv_np = model.uvs.detach().cpu().double().numpy()
        fuv_np = model.faces_uv.detach().cpu().numpy()
        tri_tile = np.floor(uv_np[fuv_np, 0].mean(1)).astype(np.int64)
        tile = lut(tri_tile, -1)
        faces_uv = torch.as_tensor(fuv_np[face_ids], dtype=torch.long, device=device)
        uvs = model.uvs.detach().to(device=device, dtype=dtype)
    lo, size = correspondence_normalization(model)
    corr = ((model.template.detach() - lo) / size).to(device=device, dtype=dtype)
    return _Tables(
        faces=torch.as_tensor(faces_np[face_ids], dtype=torch.long, device=device),
        face_ids=torch.as_tensor(face_ids, dtype=torch.long, device=device),
        region_id=lut(rid, 0),
        eye_side=lut(side, 0) if has_eyes else None,
        eye_cos=torch.as_tensor(cos, dtype=dtype, device=device)[:, None] if cos is not None else None,
        tile=tile,
        faces_uv=faces_uv,
        uvs=uvs,
        correspondence=corr,
        albedo=region_albedo(model).to(device=device, dtype=dtype),
    )


def _cached(model, key: tuple, build):
    """Per-model cache (weak on the model; keyed on ``key`` and the identity of the model's template and faces)."""
    key = key + (model.template.data_ptr(), model.template._version, model.faces.data_ptr())
    with _LOCK:
        per_model = _CACHE.get(model)
        if per_model is not None and key in per_model:
            return per_model[key]
    value = build()
    with _LOCK:
        per_model = _CACHE.setdefault(model, {})
        if len(per_model) > 16:
            per_model.clear()
        per_model[key] = value
    return value


def _tables(model, skip: Tuple[str, ...], device, dtype) -> _Tables:
    return _cached(model, ("tables", skip, str(device), dtype), lambda: _build_tables(model, skip, device, dtype))


# ------------------------------------------------------------------------------------------------ eye gaze
#: Eyeball rotation in degrees at weight 1 of the ``eyeLook*`` blendshapes (ARKit semantics: ``eyeLookOut_L`` turns
#: the subject's left eye towards the subject's left, ``eyeLookIn_L`` towards the nose, ``Up`` / ``Down``). A choice
#: of ours: ICT-FaceKit's eyeLook* shapes only deform the eyelids, and these angles are typical of ARKit-driven rigs.
GAZE_ANGLES: Mapping[str, float] = {"out": 25.0, "in": 25.0, "up": 20.0, "down": 25.0}


@dataclass
class _EyeRig:
    ids: Tuple[torch.Tensor, torch.Tensor]  # eyeball vertex ids (left, right)
    offset: Tuple[torch.Tensor, torch.Tensor]  # (3,) template centre minus the template mean of the ids
    look: Tuple[Tuple[Optional[int], ...], ...]  # per eye: indices of (out, in, up, down) in the expression set


def _build_eye_rig(model, device, dtype) -> Optional[_EyeRig]:
    regions = getattr(model, "regions", {}) or {}
    names = list(getattr(model, "expression_names", ()))
    if not all(f"eyeball_{s}" in regions for s in ("left", "right")):
        return None
    T = model.template.detach().cpu().double().numpy()
    ids, offset, look = [], [], []
    for side, suffix in (("left", "L"), ("right", "R")):
        vid = regions[f"eyeball_{side}"].vertex_ids
        g = eye_geometry(model, side)
        ids.append(torch.as_tensor(vid, dtype=torch.long, device=device))
        offset.append(torch.as_tensor(g.centre - T[vid].mean(0), dtype=dtype, device=device))
        look.append(tuple(names.index(f"eyeLook{d}_{suffix}") if f"eyeLook{d}_{suffix}" in names else None
                          for d in ("Out", "In", "Up", "Down")))
    if all(k is None for eye in look for k in eye):
        return None
    return _EyeRig(tuple(ids), tuple(offset), tuple(look))


def _eye_rig(model, like: torch.Tensor) -> Optional[_EyeRig]:
    return _cached(model, ("eyes", str(like.device), like.dtype), lambda: _build_eye_rig(model, like.device, like.dtype))


def eye_rotations(model, expression: torch.Tensor, angles: Mapping[str, float] = GAZE_ANGLES) -> Optional[torch.Tensor]:
    """Eyeball rotations ``(B, 2, 3, 3)`` (left, right; model space) from the ``eyeLook*`` weights ``(B, K)``.

    Per eye, ``yaw = out * angles["out"] - in * angles["in"]`` towards the eye's own side (the subject's left for
    the left eye, the right for the right eye) and ``pitch = up * angles["up"] - down * angles["down"]``;
    ``R = R_y(yaw) @ R_x(-pitch)`` in model space (y up, x to the subject's left, z forward). Differentiable w.r.t.
    ``expression``. Returns None for models without ``eyeball_left/right`` regions or ``eyeLook*`` blendshapes.
    """
    rig = _eye_rig(model, expression)
    if rig is None:
        return None
    if expression.ndim != 2 or expression.shape[1] != len(model.expression_names):
        raise ShapeError(f"expression must be (B, {len(model.expression_names)}), got {tuple(expression.shape)}")
    zero = expression.new_zeros(expression.shape[0])
    mats = []
    for eye, (k_out, k_in, k_up, k_down) in enumerate(rig.look):
        def w(k):
            return zero if k is None else expression[:, k]
        sign = 1.0 if eye == 0 else -1.0  # +yaw turns +z towards +x, the subject's left
        yaw = sign * math.radians(1.0) * (w(k_out) * angles["out"] - w(k_in) * angles["in"])
        pitch = math.radians(1.0) * (w(k_up) * angles["up"] - w(k_down) * angles["down"])
        cy, sy, cp, sp = torch.cos(yaw), torch.sin(yaw), torch.cos(-pitch), torch.sin(-pitch)
        one, nil = torch.ones_like(yaw), torch.zeros_like(yaw)
        Ry = torch.stack([cy, nil, sy, nil, one, nil, -sy, nil, cy], -1).view(-1, 3, 3)
        Rx = torch.stack([one, nil, nil, nil, cp, -sp, nil, sp, cp], -1).view(-1, 3, 3)
        mats.append(Ry @ Rx)
    return torch.stack(mats, 1)


def rotate_eyes(model, vertices: torch.Tensor, expression: torch.Tensor,
                angles: Mapping[str, float] = GAZE_ANGLES) -> torch.Tensor:
    """Rotate the eyeballs of ``vertices (B, V, 3)`` (model space) by the ``eyeLook*`` weights of ``expression``.

    ICT-FaceKit's ``eyeLook*`` blendshapes deform only the eyelids (their eyeball deltas are exactly zero): its
    eyeballs are rigid meshes meant to be turned, as here. Each eyeball (both shells, regions ``eyeball_left`` /
    ``eyeball_right``) turns rigidly about its centre, :func:`eye_rotations`; the centre follows the eyeball (the
    template's fitted centre moved with the mean of the eyeball's vertices). Returns a new tensor (the input is not
    modified); the input itself for models without eyes or eyeLook shapes. Differentiable.
    """
    R = eye_rotations(model, expression, angles)
    if R is None:
        return vertices
    rig = _eye_rig(model, expression)
    B = max(vertices.shape[0], R.shape[0])
    out = vertices.expand(B, -1, -1).clone()
    for eye in range(2):
        ids = rig.ids[eye].to(vertices.device)
        pts = vertices[:, ids]  # (B|1, N, 3)
        c = pts.mean(1, keepdim=True) + rig.offset[eye].to(pts)
        out[:, ids] = (pts - c) @ R[:, eye].to(pts).transpose(-1, -2) + c
    return out


# ------------------------------------------------------------------------------------------------- landmarks
def landmark_heatmaps(points: torch.Tensor, image_size: Tuple[int, int], sigma: float) -> torch.Tensor:
    """Gaussian heatmaps ``(B, H, W, L)`` of ``points (B, L, 2)`` (pixels, our convention).

    ``exp(-((x - px)^2 + (y - py)^2) / (2 sigma^2))`` evaluated at pixel centres ``(i + 0.5, j + 0.5)``: the peak is
    1 at the point itself, so the brightest pixel of channel ``l`` is the pixel containing point ``l``.
    Differentiable w.r.t. ``points``. Computed separably (an outer product of two 1-D Gaussians).
    """
    H, W = image_size
    if not sigma > 0:
        raise ValueError(f"landmark sigma must be positive, got {sigma}")
    xs = torch.arange(W, dtype=points.dtype, device=points.device) + 0.5
    ys = torch.arange(H, dtype=points.dtype, device=points.device) + 0.5
    gx = torch.exp(-((xs[None, None, :] - points[..., 0:1]) ** 2) / (2 * sigma ** 2))  # (B, L, W)
    gy = torch.exp(-((ys[None, None, :] - points[..., 1:2]) ** 2) / (2 * sigma ** 2))  # (B, L, H)
    return torch.einsum("blh,blw->bhwl", gy, gx)


# ------------------------------------------------------------------------------------------------- the maps
def _parse_maps(maps) -> Tuple[str, ...]:
    if isinstance(maps, str):
        maps = ALL_MAPS if maps == "all" else (maps,)
    try:
        names = tuple(maps)
    except TypeError:
        raise ValueError(f"maps must be a sequence of map names or 'all', got {maps!r}") from None
    bad = [m for m in names if not isinstance(m, str) or m not in ALL_MAPS]
    if bad:
        raise ValueError(f"unknown conditioning map(s) {bad}; available: {list(ALL_MAPS)} (or 'all')")
    if not names:
        raise ValueError("maps is empty: request at least one of " + ", ".join(ALL_MAPS))
    return tuple(dict.fromkeys(names))


def conditioning_maps(
    model,
    model_output,
    camera: Camera,
    rotation: torch.Tensor,
    translation: torch.Tensor,
    sh: Optional[torch.Tensor] = None,
    albedo: Optional[torch.Tensor] = None,
    maps: Union[str, Sequence[str]] = DVP_MAPS,
    *,
    skip_regions: Optional[Sequence[str]] = None,
    antialias: bool = False,
    landmark_sigma: Optional[float] = None,
    landmark_set: str = "ibug68",
    background: Union[torch.Tensor, float, Sequence[float], None] = None,
    backend: str = "torch",
    eye_gaze: bool = True,
) -> Dict[str, torch.Tensor]:
    """Render conditioning maps of a face-model output, sharing one rasterization.

    Args:
        model: the :class:`~morphable_models.LinearFaceModel` (faces, template, regions, UVs, landmarks).
        model_output: a :class:`~morphable_models.FaceModelOutput` or model-space vertices ``(B, V, 3)``. For a
            model output, the eyeballs are turned by its ``eyeLook*`` weights (:func:`rotate_eyes`) when
            ``eye_gaze``; raw vertices are drawn as they are (call :func:`rotate_eyes` first to turn the eyes).
        camera: :class:`~facerender.cameras.PinholeCamera` / ``OrthographicCamera``, batch 1 or B.
        rotation: ``(B, 3)`` axis-angle, ``(B, 3, 3)`` or ``(B, 6)`` head rotation; translation ``(B, 3)``.
        sh: ``(B, 9, 3)`` SH light for ``"shaded"`` (None: :func:`~facerender.render.renderer.default_light`).
        albedo: ``(B, V, 3)`` / ``(V, 3)`` per-vertex albedo (None: the model output's albedo if it has one, else
            :func:`region_albedo`).
        maps: names from :data:`ALL_MAPS`, or ``"all"``; only these are computed. Default :data:`DVP_MAPS`.
        skip_regions: regions not drawn (default :data:`SKIPPED_REGIONS`; names the model lacks are ignored).
        antialias: antialias the silhouettes of ``"shaded"`` (the other maps are never antialiased: their pixels
            hold exact surface attributes).
        landmark_sigma: standard deviation of the landmark Gaussians in pixels (default ``max(H, W) / 128``).
        landmark_set: the model's landmark set for the landmark maps.
        background: background of ``"shaded"`` (default black).
        backend: rasterizer backend.
        eye_gaze: turn the eyeballs of a model output by its ``eyeLook*`` weights (see :func:`rotate_eyes`).
    Returns:
        ``{name: tensor}`` in the order requested, dtype/device of the vertices; all maps are ``(B, H, W, C)``
        except ``"landmarks_2d"``; background pixels are 0 unless stated:

        * ``"shaded"`` ``C = 3``: colour rendering (albedo x SH irradiance / pi, clamped to [0, 1]);
        * ``"albedo"`` ``C = 3``: interpolated albedo;
        * ``"normals"`` ``C = 3``: unit camera-space normals in [-1, 1] (x right, y down, z forward: surfaces facing
          the camera have z < 0);
        * ``"depth"`` ``C = 1``: camera-space z;
        * ``"mask"`` ``C = 1``: 1 where the drawn set covers the pixel;
        * ``"correspondence"`` ``C = 3``: Deep Video Portraits' correspondence image: the MEAN-FACE (``template``)
          model-space coordinates of the visible surface point, normalised to [0, 1] per axis by the template's
          bounding box (:func:`correspondence_normalization`); independent of identity, expression and pose;
        * ``"uv"`` ``C = 2``: texture coordinates interpolated through ``faces_uv``, LOCAL to their UDIM tile:
          ``(u - tile, v)`` in [0, 1] (``v`` up, as :func:`~facerender.render.texture.sample_texture` expects);
          every triangle lies in one tile, so nothing is interpolated across tiles;
        * ``"uv_tile"`` ``C = 1`` int64: the UDIM tile ``k`` of the pixel's triangle (UDIM ``1001 + k``; ICT:
          0 face and eyeballs, 1 head / neck / mouth socket / eye sockets, 2 gums and tongue, 3 teeth), -1 on
          background. Sample tile ``k``'s texture with ``sample_texture(tex_k, uv, mask=uv_tile[..., 0] == k)``;
        * ``"regions"`` ``C = 1`` int64: 0 background, 1 skin (face, head and neck, eye sockets), 2 eyes (both
          eyeball shells), 3 mouth interior (mouth socket, gums, tongue), 4 teeth (:data:`REGION_NAMES`);
        * ``"regions_onehot"`` ``C = 5`` float: one-hot of ``"regions"`` (channel 0 = background);
        * ``"gaze"`` ``C = 3``: eye-gaze map: only the visible eyeballs, sclera white, the subject's left iris red,
          right iris green, pupils blue (:data:`GAZE_COLORS`), everything else 0; eyelids occlude (so blinks show);
        * ``"landmarks"`` ``C = L`` (68): Gaussian heatmaps of the projected landmarks (peak 1,
          :func:`landmark_heatmaps`; occluded points are drawn too);
        * ``"landmark_image"`` ``C = 1``: the maximum over the landmark heatmaps;
        * ``"landmarks_2d"``: ``(B, L, 2)`` projected landmark positions in pixels.
    Raises:
        ShapeError / ValueError for wrong shapes, mismatched batches or unknown map names (stating what was
        received); ValueError when the model lacks what a map needs (UVs, eye regions, the landmark set).
    """
    names = _parse_maps(maps)
    expression = None
    if hasattr(model_output, "vertices") and not isinstance(model_output, torch.Tensor):
        vertices = model_output.vertices
        expression = getattr(model_output, "expression", None)
        if albedo is None and getattr(model_output, "albedo", None) is not None:
            albedo = model_output.albedo
    else:
        vertices = model_output
    v = _check_vertices(vertices)
    V = model.num_vertices
    if v.shape[1] != V:
        raise ShapeError(f"vertices have {v.shape[1]} vertices ({tuple(v.shape)}) but the model has {V}")
    if eye_gaze and isinstance(expression, torch.Tensor):
        v = rotate_eyes(model, v, expression.to(v))
    R, t = check_pose(rotation, translation, v)
    B = common_batch(
        vertices=v, rotation=R, translation=t, camera=getattr(camera, "batch_size", None),
        albedo=albedo if isinstance(albedo, torch.Tensor) and albedo.ndim == 3 else None,
        sh=sh if isinstance(sh, torch.Tensor) and sh.ndim == 3 else None)
    cam = _check_camera(camera, v, B)
    alb = _check_albedo(albedo, V, B, v)
    H, W = cam.image_size
    skip = tuple(SKIPPED_REGIONS if skip_regions is None else skip_regions)
    tables = _tables(model, skip, v.device, v.dtype)
    if "gaze" in names and tables.eye_cos is None:
        raise ValueError(f"the gaze map needs eyeball regions ('eyeball_left/right', 'sclera_*'); model "
                         f"{getattr(model, 'name', '?')!r} has {sorted(getattr(model, 'regions', {}) or {})}")
    if ("uv" in names or "uv_tile" in names) and tables.uvs is None:
        raise ValueError(f"the uv maps need a model with uvs and faces_uv; model {getattr(model, 'name', '?')!r} "
                         f"has none")

    out: Dict[str, torch.Tensor] = {}
    cv = model_to_camera(v, R, t)
    if cv.shape[0] != B:
        cv = cv.expand(B, -1, -1)

    if any(n in _RASTER_MAPS for n in names):
        sv = cam.to_screen(cv)
        if sv.shape[0] != B:
            sv = sv.expand(B, -1, -1)
        settings = RasterSettings(perspective_correct=isinstance(cam, PinholeCamera))
        frags = rasterize(sv, tables.faces, (H, W), settings, backend)
        mask = frags.mask
        maskf = mask[..., None].to(v.dtype)
        tid1 = (frags.triangle_id + 1)  # 0 = background
        vn = normals_px = albedo_px = None
        if any(n in names for n in ("shaded", "normals")):
            vn = vertex_normals(cv, tables.faces)
        if alb is None:
            alb = tables.albedo
        if "shaded" in names:
            shaded = shade_fragments(frags, cv, tables.faces, alb, sh, background, antialias=antialias, normals=vn)
            out["shaded"] = shaded.image
            normals_px, albedo_px = shaded.normals, shaded.albedo
        if "albedo" in names:
            if albedo_px is None:
                albedo_px = interpolate(alb, frags)
            out["albedo"] = albedo_px
        if "normals" in names:
            if normals_px is None:
                n = interpolate(vn, frags)
                normals_px = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            out["normals"] = normals_px
        if "depth" in names:
            out["depth"] = frags.depth[..., None]
        if "mask" in names:
            out["mask"] = maskf
        if "correspondence" in names:
            out["correspondence"] = interpolate(tables.correspondence, frags)
        if "uv" in names or "uv_tile" in names:
            tile = tables.tile[tid1]  # (B, H, W)
            if "uv" in names:
                uv = interpolate(tables.uvs, frags, faces_uv=tables.faces_uv)
                shift = torch.stack([tile.clamp_min(0).to(v.dtype), torch.zeros_like(uv[..., 1])], dim=-1)
                out["uv"] = (uv - shift) * maskf
            if "uv_tile" in names:
                out["uv_tile"] = tile[..., None]
        if "regions" in names or "regions_onehot" in names:
            rid = tables.region_id[tid1]
            if "regions" in names:
                out["regions"] = rid[..., None]
            if "regions_onehot" in names:
                out["regions_onehot"] = torch.nn.functional.one_hot(rid, len(REGION_NAMES)).to(v.dtype)
        if "gaze" in names:
            side = tables.eye_side[tid1]  # (B, H, W)
            cos = interpolate(tables.eye_cos, frags)[..., 0]
            c_iris, c_pupil = math.cos(math.radians(IRIS_HALF_ANGLE)), math.cos(math.radians(PUPIL_HALF_ANGLE))
            colours = torch.tensor([(0.0, 0.0, 0.0), GAZE_COLORS["sclera"], GAZE_COLORS["iris_left"],
                                    GAZE_COLORS["iris_right"], GAZE_COLORS["pupil"]], dtype=v.dtype, device=v.device)
            cls = torch.where(side > 0, 1, 0)
            cls = torch.where((side > 0) & (cos > c_iris), side + 1, cls)
            cls = torch.where((side > 0) & (cos > c_pupil), 4, cls)
            out["gaze"] = colours[cls]

    if any(n in names for n in ("landmarks", "landmark_image", "landmarks_2d")):
        lms = getattr(model, "landmarks", {}) or {}
        if landmark_set not in lms:
            raise ValueError(f"model {getattr(model, 'name', '?')!r} has no landmark set {landmark_set!r}; "
                             f"has {sorted(lms)}")
        pts = cam.project(lms[landmark_set].gather(cv))  # (B, L, 2)
        if "landmarks" in names or "landmark_image" in names:
            sigma = float(landmark_sigma) if landmark_sigma is not None else max(H, W) / 128.0
            heat = landmark_heatmaps(pts, (H, W), sigma)
            if "landmarks" in names:
                out["landmarks"] = heat
            if "landmark_image" in names:
                out["landmark_image"] = heat.amax(-1, keepdim=True)
        if "landmarks_2d" in names:
            out["landmarks_2d"] = pts
    return {n: out[n] for n in names}


class ConditioningRenderer(nn.Module):
    """Module form of :func:`conditioning_maps`: holds the model (a submodule, so ``.to()`` moves it and its
    buffers appear in ``state_dict``) and the settings.

    ``forward(model_output or vertices (B, V, 3), camera, rotation, translation, sh=None, albedo=None)
    -> {name: (B, H, W, C)}``.
    """

    def __init__(self, model, maps: Union[str, Sequence[str]] = DVP_MAPS, *,
                 skip_regions: Optional[Sequence[str]] = None, antialias: bool = False,
                 landmark_sigma: Optional[float] = None, landmark_set: str = "ibug68",
                 background: Union[torch.Tensor, float, Sequence[float], None] = None,
                 backend: str = "torch", eye_gaze: bool = True) -> None:
        super().__init__()
        self.model = model
        self.maps = _parse_maps(maps)
        self.skip_regions = None if skip_regions is None else tuple(skip_regions)
        self.antialias = antialias
        self.landmark_sigma = landmark_sigma
        self.landmark_set = landmark_set
        self.background = background
        self.backend = backend
        self.eye_gaze = eye_gaze

    def forward(self, model_output, camera: Camera, rotation: torch.Tensor, translation: torch.Tensor,
                sh: Optional[torch.Tensor] = None, albedo: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        return conditioning_maps(self.model, model_output, camera, rotation, translation, sh, albedo, self.maps,
                                 skip_regions=self.skip_regions, antialias=self.antialias,
                                 landmark_sigma=self.landmark_sigma, landmark_set=self.landmark_set,
                                 background=self.background, backend=self.backend, eye_gaze=self.eye_gaze)

    def extra_repr(self) -> str:
        return f"maps={list(self.maps)}, antialias={self.antialias}, backend={self.backend!r}"
