"""``facerender fit IMAGE -o DIR``: fit the default model to a photo and write what a user looks at.

Outputs (each written atomically):
  * ``overlay.png`` - the render (fitted albedo x SH lighting) blended over the photo, with the 68 target landmarks
    (green) and the model's projected landmarks (red);
  * ``mesh.obj`` + ``mesh.mtl`` + ``mesh.png`` - the fitted face-area mesh (ICT's face region, UV tile 0) with a UV
    texture taken from the photo (visible texels only; the others are filled from the fitted albedo);
  * ``params.json`` - pose, identity, expression (with names), SH lighting, camera, landmarks, energies, timings.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch


def _write_vertex_colour_obj(path, vertices: np.ndarray, faces: np.ndarray, image: np.ndarray,
                             screen: np.ndarray) -> Path:
    """An OBJ with ``v x y z r g b`` colours bilinearly sampled from ``image`` at each vertex's projection
    ``screen (V, 2+)`` (no occlusion test), written atomically."""
    from morphable_models import write_obj

    from ..io.atomic import atomic_write

    H, W = image.shape[:2]
    img = image.astype(np.float64) / 255.0
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    x = np.clip(screen[:, 0] - 0.5, 0, W - 1)
    y = np.clip(screen[:, 1] - 0.5, 0, H - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    col = ((img[y0, x0] * (1 - fx) + img[y0, x1] * fx) * (1 - fy) + (img[y1, x0] * (1 - fx) + img[y1, x1] * fx) * fy)
    with atomic_write(path) as tmp:
        write_obj(tmp, vertices, faces, vertex_colors=col[:, :3])
    return Path(path)


def write_fit_outputs(out_dir, model, image: np.ndarray, result, texture_size: int = 512,
                      extra_params: Optional[dict] = None) -> dict:
    """Write overlay.png, mesh.obj/.mtl/.png and params.json for a :class:`~facerender.fitting.fit_image.FitResult`.

    A model without texture coordinates gets ``mesh.obj`` with per-vertex colours from the photo. ``extra_params``
    are added to params.json (e.g. a FLAME fit's own parameters). Returns ``{what: path}`` of every file written
    (overlay, mesh, material and texture when the model has UVs, params).
    """
    from morphable_models.geometry import model_to_camera

    from ..cameras import PinholeCamera
    from ..io.atomic import atomic_write
    from ..io.image import write_image
    from ..io.mesh import write_textured_obj
    from ..render.bake import bake_texture
    from ..render.overlay import blend_overlay, draw_landmarks
    from ..render.renderer import render_face

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    H, W = image.shape[:2]
    dt = model.dtype
    with torch.no_grad():
        verts = model(result.identity.to(dt), result.expression.to(dt)).vertices
        cam = PinholeCamera(result.focal, result.focal, result.principal_point[:, 0], result.principal_point[:, 1],
                            (H, W))
        albedo = torch.full((model.num_vertices, 3), 0.55, dtype=dt)
        if result.albedo is not None:
            ids = torch.as_tensor(model.regions[result.region].vertex_ids)
            albedo[ids] = result.albedo.to(dt)
        # the overlay shows the fitted face area (the rest of the head has no albedo estimate)
        face_ids = torch.as_tensor(model.regions["face"].vertex_ids)
        face_faces = model.submodel("face").faces
        ro = render_face(verts[:, face_ids], face_faces, cam, result.rotation, result.translation,
                         albedo=albedo[face_ids], sh=result.sh.to(dt))
        rend = (ro.image[0].clamp(0, 1).numpy() * 255).astype(np.uint8)
        overlay = blend_overlay(image, rend, ro.mask[0].numpy(), 0.75)
        overlay = draw_landmarks(overlay, result.landmarks, (0, 220, 0), max(1, round(min(H, W) / 300)))
        overlay = draw_landmarks(overlay, result.landmarks_2d, (230, 30, 30), max(1, round(min(H, W) / 300)))
        paths = {"overlay": str(write_image(out / "overlay.png", overlay))}
        # face-area mesh with a texture from the photo
        face = model.submodel("face")
        fverts = verts[:, torch.as_tensor(model.regions["face"].vertex_ids)]
        screen = cam.to_screen(model_to_camera(fverts, result.rotation.to(dt), result.translation.to(dt)))
        fill = albedo[torch.as_tensor(model.regions["face"].vertex_ids)]
        if face.uvs is not None:
            baked = bake_texture(image, screen[0], face.faces, face.uvs, face.faces_uv, texture_size, tile=0,
                                 fill=fill.numpy())
            tex = baked.texture if isinstance(baked.texture, np.ndarray) else baked.texture.numpy()
            paths["mesh"] = str(write_textured_obj(out / "mesh.obj", fverts[0].numpy(), face.faces.numpy(),
                                                   face.uvs.numpy(), face.faces_uv.numpy(), tex,
                                                   material_name="face"))
            paths["material"] = str(out / "mesh.mtl")  # written beside the OBJ (its material and texture)
            paths["texture"] = str(out / "mesh.png")
        else:  # a model without texture coordinates (BFM): per-vertex colours sampled from the photo
            paths["mesh"] = str(_write_vertex_colour_obj(out / "mesh.obj", fverts[0].numpy(), face.faces.numpy(),
                                                         image, screen[0].numpy()))
    params = result.to_dict()
    params["expression_names"] = list(model.expression_names)
    params["model"] = model.name
    params.update(extra_params or {})
    params["units"] = "cm; camera x right, y down, z forward; pixel centres at +0.5"
    with atomic_write(out / "params.json") as tmp:
        Path(tmp).write_text(json.dumps(params, indent=1))
    paths["params"] = str(out / "params.json")
    return paths


def _detector(args):
    """The dlib detector with the command's --threshold / --upsample (None: the package's defaults)."""
    th, up = getattr(args, "threshold", None), getattr(args, "upsample", None)
    if th is None and up is None:
        return "dlib"
    from ..landmarks.detect import get_detector

    return get_detector("dlib", **{k: v for k, v in (("threshold", th), ("upsample", up)) if v is not None})


def _fit_or_hint(fit, args, *a, **kw):
    """Run ``fit`` with the command's detector; a NoFaceError names the options that help."""
    from ..errors import NoFaceError

    det = _detector(args)
    if det != "dlib":
        kw["detector"] = det
    try:
        return fit(*a, **kw)
    except NoFaceError as e:
        if kw.get("landmarks") is not None or kw.get("box") is not None or args.face_index is not None:
            raise
        th = getattr(det, "threshold", None)
        up = getattr(det, "upsample", None)
        if th is None:
            from ..landmarks.detect import get_detector

            d = get_detector("dlib")
            th, up = d.threshold, d.upsample
        msg = str(e).split("; pass")[0]
        raise NoFaceError(f"{msg}; give the face with --box x0,y0,x1,y1 or --landmarks FILE.pts, or detect weaker "
                          f"faces with --threshold {th - 0.3:g} (now {th:g}) or smaller ones with --upsample {up + 1} "
                          f"(now {up})") from e


def run_fit(args) -> int:
    from ..io.image import read_image
    from ..model_cli import load_pipeline_model
    from .fit_image import FitConfig, fit_image
    from .relinearize import fit_image_relinearized, is_nonlinear

    from ..cli_support import box_type, check_box, check_input_path
    from ..errors import InputFileError

    # the inputs first (they fail in milliseconds), then the model
    image = read_image(check_input_path(args.image, "IMAGE"))
    landmarks = None
    if args.landmarks:
        from ..landmarks.files import read_landmarks

        from .landmark_fit import check_landmarks

        try:
            landmarks = read_landmarks(check_input_path(args.landmarks, "--landmarks"))
        except (ValueError, UnicodeDecodeError) as e:
            if isinstance(e, InputFileError):
                raise
            raise InputFileError(f"--landmarks: {e}") from e
        if landmarks.shape != (68, 2):
            raise InputFileError(f"--landmarks {args.landmarks}: {landmarks.shape[0]} points; the fit needs the 68 "
                                 f"iBUG points")
        check_landmarks(landmarks, image.shape[:2], name=f"--landmarks {args.landmarks}")
    box = None
    if args.box:
        box = list(args.box if isinstance(args.box, (tuple, list)) else box_type(args.box))
        check_box(box, image.shape[:2], "--box")
    raw, model, notes = load_pipeline_model(getattr(args, "face_model", None), args.home, "fit")
    for n in notes:
        print(f"note: {n}")
    cfg = FitConfig(photometric=not args.no_photometric, size=args.size,
                    levels=tuple(s for s in (64, 128, 256, 512) if s <= args.size) or (args.size,))
    extra = {}
    if is_nonlinear(raw):
        fit = _fit_or_hint(fit_image_relinearized, args, raw, image, landmarks=landmarks, box=box,
                           face_index=args.face_index, config=cfg)
        result, model = fit.result, fit.linear_model
        extra = {"model_parameters": fit.native, "relinearization_rounds": fit.rounds,
                 "linearization_error_px": fit.linearization_error_px}
        print(f"{type(raw).__name__}: {fit.rounds} linearisations; exact model vs its final linearisation: "
              f"{fit.linearization_error_cm * 10:.4f} mm, {fit.linearization_error_px:.4f} px at the landmarks")
    else:
        result = _fit_or_hint(fit_image, args, model, image, landmarks=landmarks, box=box,
                              face_index=args.face_index, config=cfg, progress=True)
    paths = write_fit_outputs(args.output, model, image, result, extra_params=extra)
    if getattr(result, "turns", 0):
        how = {1: "turned 90 degrees clockwise", 2: "upside down", 3: "turned 90 degrees counter-clockwise"}
        print(f"note: the face is {how[result.turns]} in {args.image}: fitted on the photo turned upright; every "
              f"output is in the photo's own coordinates")
    t = result.timings
    print(f"fitted {args.image}: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in t.items()))
    if result.photometric_error is not None:
        print(f"mean colour error {result.photometric_error:.3f} (RGB in [0, 1])")
    from ..cli_support import warn

    for f in result.flags:
        warn(f)
    for k, p in paths.items():
        print(f"wrote {p}")
    return 0
