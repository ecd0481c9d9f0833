"""``facerender.render(model, ...)``: render a face model from a fit, a track frame or plain coefficients.

The one-call form of the renderer for users; :func:`~facerender.render.renderer.render_face` is the op it calls
(vertices + faces + camera + pose + albedo + light). Everything a result needs to be re-rendered comes from the
result itself: :class:`~facerender.fitting.fit_image.FitResult` and :class:`~facerender.tracking.trackfile.Track`
carry the coefficients, the pose, the SH light, the fitted albedo of their region and a ``camera()``.

    >>> import facerender
    >>> model = facerender.load_model()                                    # doctest: +SKIP
    >>> out = facerender.render(model, expression={"jawOpen": 0.8})        # framed frontally, 256^2
    >>> fit = facerender.fit_image(model, "photo.jpg")
    >>> out = facerender.render(model, fit, background="photo.jpg")       # the fit over the photo
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from ..errors import ShapeError, UsageError
from .renderer import Background, RenderOutput, frame_face, render_face

__all__ = ["render"]


def _as_batch(x, dt, dev, width: Optional[int] = None) -> Optional[torch.Tensor]:
    if x is None:
        return None
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, device=dev)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    t = t.to(dt)
    if width is not None and t.ndim == 1:
        t = t[None]
    return t


def _from_params(params, frame: Optional[int]) -> Dict[str, Any]:
    """The coefficients, pose, light, albedo, region and camera of a FitResult-like or Track-like object."""
    out: Dict[str, Any] = {}
    if params is None:
        return out
    is_track = hasattr(params, "face_found") and hasattr(params, "keyframes")
    if is_track:
        n = len(params)
        if frame is None:
            raise UsageError(f"render(model, track): give frame= (0 .. {n - 1}), the frame to render")
        if not -n <= int(frame) < n:
            raise UsageError(f"frame={frame}: the track has {n} frames")
        i = int(frame)
        out.update(identity=np.asarray(params.identity)[None], expression=np.asarray(params.expression[i])[None],
                   rotation=np.asarray(params.rotation[i])[None], translation=np.asarray(params.translation[i])[None],
                   sh=np.asarray(params.sh[i])[None])
        if getattr(params, "albedo", None) is not None:
            out.update(albedo=params.albedo, region="face")
    else:
        if frame is not None:
            raise UsageError("frame= applies to a Track (from load_track), not to a single fit")
        for k in ("identity", "expression", "rotation", "translation", "sh"):
            if getattr(params, k, None) is None:
                raise UsageError(f"render(model, params): params must be a FitResult or a Track (with identity, "
                                 f"expression, rotation, translation, sh, camera()), got {type(params).__name__} "
                                 f"without {k!r}")
            out[k] = getattr(params, k)
        if getattr(params, "albedo", None) is not None:
            out.update(albedo=params.albedo, region=getattr(params, "region", None) or "face")
    if hasattr(params, "camera"):
        out["camera"] = params.camera()
    return out


def _background(background, dt, dev):
    if background is None or isinstance(background, (int, float)):
        return background
    if isinstance(background, (str, bytes)) or hasattr(background, "__fspath__"):
        from ..io.image import read_image

        background = read_image(background)
    if isinstance(background, np.ndarray) and background.ndim >= 2 and background.shape[0] > 4:
        from ..io.image import to_uint8_rgb

        return torch.from_numpy(to_uint8_rgb(background)).to(device=dev, dtype=dt) / 255.0
    if isinstance(background, torch.Tensor) and not background.is_floating_point():
        return background.to(device=dev, dtype=dt) / 255.0
    return torch.as_tensor(background, dtype=dt, device=dev) if not isinstance(background, torch.Tensor) \
        else background


def render(
    model,
    params=None,
    *,
    frame: Optional[int] = None,
    identity=None,
    expression: Union[torch.Tensor, Mapping[str, float], None] = None,
    rotation=None,
    translation=None,
    camera=None,
    image_size: Union[int, Tuple[int, int]] = 256,
    albedo=None,
    sh=None,
    background: Union[Background, str, np.ndarray] = None,
    region: Optional[str] = None,
    antialias: bool = True,
    backend: str = "torch",
) -> RenderOutput:
    """Render a face model, from a result or from coefficients.

    Args:
        model: a :class:`~morphable_models.LinearFaceModel` (``facerender.load_model()``); FLAME / multilinear
            models: pass ``morphable_models.as_linear(model)``.
        params: a :class:`~facerender.fitting.fit_image.FitResult` (``fit_image``) or a
            :class:`~facerender.tracking.trackfile.Track` (``load_track``; with ``frame=``): its coefficients,
            pose, SH light, fitted albedo (and region) and camera are used; the keywords below override them.
        frame: the frame of a Track to render.
        identity: ``(B, K_id)`` / ``(K_id,)`` coefficients (default 0: the mean face).
        expression: ``(B, K_exp)`` / ``(K_exp,)`` weights, or ``{name: weight}`` (``{"jawOpen": 1.0}``).
        rotation: ``(B, 3)`` axis-angle / ``(B, 3, 3)`` / ``(B, 6)`` head rotation in model space.
        translation: ``(B, 3)`` head position in camera space (cm).
        camera: a :class:`~facerender.cameras.PinholeCamera` / ``OrthographicCamera``. Default: the result's
            ``camera()``, else :func:`~facerender.render.renderer.frame_face` framing the face frontally in
            ``image_size`` (which also supplies the rotation and translation when they are not given).
        image_size: ``(H, W)`` or a side, used only when the camera comes from ``frame_face``.
        albedo: ``(V, 3)`` / ``(B, V, 3)`` per-vertex albedo of the rendered mesh. Default: the result's fitted
            albedo; else the plausible region colours of ``conditioning.region_albedo`` (skin, eyes, mouth, teeth).
        sh: ``(B, 9, 3)`` SH light (default: the result's, else ``default_light()``).
        background: an image path, an ``(H, W, 3)`` uint8 / float array, a ``(B, H, W, C)`` tensor, a colour or a
            number (None: black).
        region: render only this region of the model (default: the region of the result's albedo, e.g. ``face``
            for fits and tracks, else the whole model).
        antialias, backend: as :func:`~facerender.render.renderer.render_face`.
    Returns:
        :class:`~facerender.render.renderer.RenderOutput`: ``image (B, H, W, 3)`` in [0, 1], ``mask (B, H, W)``,
        ``alpha``, ``normals``, ``depth`` ... (``facerender.io.write_image(path, out.image[0])`` saves it).
    Raises:
        UsageError: ``params`` of the wrong kind, a frame outside the track, an unknown region.
        ExpressionError / ShapeError: unknown expression names, weights outside their range, wrong shapes.
    """
    dt, dev = model.dtype, model.device
    p = _from_params(params, frame)
    if identity is not None:
        p["identity"] = identity
    if expression is not None:
        p["expression"] = expression
    for k, v in (("rotation", rotation), ("translation", translation), ("sh", sh), ("camera", camera)):
        if v is not None:
            p[k] = v
    if albedo is not None:
        p["albedo"] = albedo
        p.pop("region", None)
    if region is not None:
        p["region"] = region
    expr = p.get("expression")
    if isinstance(expr, Mapping):
        rig = getattr(model, "rig", None)
        if rig is None:
            raise UsageError(f"expression={dict(expr)!r}: the model {getattr(model, 'name', '')!r} has no named "
                             f"blendshape rig; pass a ({getattr(model, 'num_expression', 'K')},) weight vector")
        expr = rig.weights(dict(expr))
    ident = _as_batch(p.get("identity"), dt, dev, 1)
    expr = _as_batch(expr, dt, dev, 1)
    verts = model(ident, expr).vertices
    reg = p.get("region")
    faces = model.faces
    if reg is not None:
        regions = getattr(model, "regions", {}) or {}
        if reg not in regions:
            from morphable_models._lazy import suggest

            raise UsageError(f"region={reg!r}: the model has no such region{suggest(reg, regions)} "
                             f"(regions: {', '.join(sorted(regions))})")
        ids = torch.as_tensor(regions[reg].vertex_ids, device=dev)
        verts = verts[:, ids]
        faces = model.submodel(reg).faces
    alb = p.get("albedo")
    if alb is None:
        from .conditioning import region_albedo

        alb = region_albedo(model)
        if reg is not None:
            alb = alb[torch.as_tensor(regions[reg].vertex_ids, device=alb.device)]
    alb = _as_batch(alb, dt, dev)
    if alb.shape[-2] != verts.shape[1]:
        raise ShapeError(f"albedo has {alb.shape[-2]} vertices, the rendered mesh {verts.shape[1]} "
                         f"(region {reg or 'all'}); give region= to match")
    cam = p.get("camera")
    rot, trans = p.get("rotation"), p.get("translation")
    if cam is None or rot is None or trans is None:
        framing = frame_face(model, image_size, rotation=_as_batch(rot, dt, dev, 1) if rot is not None else None)
        cam = framing.camera if cam is None else cam
        rot = framing.rotation if rot is None else rot
        trans = framing.translation if trans is None else trans
    sh_t = _as_batch(p.get("sh"), dt, dev)
    if sh_t is not None and sh_t.ndim == 2:
        sh_t = sh_t.reshape(-1, 9, 3)
    return render_face(verts, faces, cam, _as_batch(rot, dt, dev, 1), _as_batch(trans, dt, dev, 1), albedo=alb,
                       sh=sh_t, background=_background(background, dt, dev), antialias=antialias, backend=backend)

