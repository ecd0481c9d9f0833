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

import numpy as np
import torch


def write_fit_outputs(out_dir, model, image: np.ndarray, result, texture_size: int = 512) -> dict:
    """Write overlay.png, mesh.obj/.mtl/.png and params.json for a :class:`~facerender.fitting.fit_image.FitResult`.

    Returns the paths written.
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
        baked = bake_texture(image, screen[0], face.faces, face.uvs, face.faces_uv, texture_size, tile=0,
                             fill=fill.numpy())
        tex = baked.texture if isinstance(baked.texture, np.ndarray) else baked.texture.numpy()
        paths["mesh"] = str(write_textured_obj(out / "mesh.obj", fverts[0].numpy(), face.faces.numpy(),
                                               face.uvs.numpy(), face.faces_uv.numpy(), tex, material_name="face"))
    params = result.to_dict()
    params["expression_names"] = list(model.expression_names)
    params["model"] = model.name
    params["units"] = "cm; camera x right, y down, z forward; pixel centres at +0.5"
    with atomic_write(out / "params.json") as tmp:
        Path(tmp).write_text(json.dumps(params, indent=1))
    paths["params"] = str(out / "params.json")
    return paths


def run_fit(args) -> int:
    from morphable_models import load_ict

    from ..io.image import read_image
    from .fit_image import FitConfig, fit_image

    model = load_ict(args.home)
    image = read_image(args.image)
    landmarks = None
    if args.landmarks:
        from ..landmarks.files import read_landmarks

        landmarks = read_landmarks(args.landmarks)
    box = None
    if args.box:
        try:
            box = [float(v) for v in args.box.split(",")]
        except ValueError:
            raise SystemExit(f"--box: expected x0,y0,x1,y1, got {args.box!r}") from None
        if len(box) != 4:
            raise SystemExit(f"--box: expected 4 numbers, got {len(box)}")
    cfg = FitConfig(photometric=not args.no_photometric, size=args.size,
                    levels=tuple(s for s in (64, 128, 256, 512) if s <= args.size) or (args.size,))
    result = fit_image(model, image, landmarks=landmarks, box=box, face_index=args.face_index, config=cfg)
    paths = write_fit_outputs(args.output, model, image, result)
    t = result.timings
    print(f"fitted {args.image}: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in t.items()))
    if result.photometric_error is not None:
        print(f"mean colour error {result.photometric_error:.3f} (RGB in [0, 1])")
    for f in result.flags:
        print(f"warning: {f}")
    for k, p in paths.items():
        print(f"wrote {p}")
    return 0
