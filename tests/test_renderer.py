"""The high-level renderer: a plausible ICT render (stored reference), mask / normals / depth semantics, framing,
batching, module == function, float64 gradcheck on a tiny mesh, errors."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from facerender.cameras import OrthographicCamera, PinholeCamera
from facerender.render.conditioning import SKIPPED_REGIONS, region_albedo
from facerender.render.rasterize import rasterize
from facerender.render.renderer import (
    DEFAULT_ALBEDO,
    FaceRenderer,
    Framing,
    default_camera_for,
    default_light,
    frame_face,
    render_face,
)
from morphable_models import model_to_camera
from morphable_models.errors import ShapeError

DATA = Path(__file__).parent / "data"
REFERENCE = DATA / "ict_neutral_64.png"
# Regenerate deliberately: FACERENDER_UPDATE_REFERENCES=1 python -m pytest tests/test_renderer.py -k reference
UPDATE = bool(os.environ.get("FACERENDER_UPDATE_REFERENCES"))


def drawn_faces(model) -> torch.Tensor:
    keep = torch.ones(model.num_faces, dtype=torch.bool)
    for name in SKIPPED_REGIONS:
        keep[torch.as_tensor(model.regions[name].face_ids)] = False
    return model.faces[keep]


@pytest.fixture(scope="module")
def ict_faces(ict_model):
    return drawn_faces(ict_model)


def tent(dtype=torch.float64, seed=0):
    """A 5-vertex pyramid facing the viewer (+z in model space), slightly jittered, 4 front-facing triangles."""
    g = torch.Generator().manual_seed(seed)
    v = torch.tensor([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 0.6]],
                     dtype=dtype)
    v = v + 0.07 * torch.randn(v.shape, generator=g, dtype=dtype)
    faces = torch.tensor([[4, 0, 1], [4, 1, 2], [4, 2, 3], [4, 3, 0]])
    return v[None], faces


def tent_pose(dtype=torch.float64, size=10):
    cam = PinholeCamera.from_fov(40.0, (size, size), dtype=dtype)
    R = torch.zeros(1, 3, dtype=dtype)
    t = torch.tensor([[0.05, -0.03, 5.0]], dtype=dtype)
    return cam, R, t


# ------------------------------------------------------------------------------------------------- the ICT face
def test_ict_render_matches_reference(ict_model, ict_faces):
    cam, R, t = frame_face(ict_model, 64)
    out = render_face(ict_model.template[None], ict_faces, cam, R, t, albedo=region_albedo(ict_model))
    img = out.image[0].clamp(0, 1)
    assert img.shape == (64, 64, 3) and img.dtype == torch.float32
    got = np.round(img.numpy() * 255).astype(np.uint8)
    if UPDATE or not REFERENCE.exists():
        if not UPDATE:
            pytest.fail(f"reference {REFERENCE} missing; regenerate with FACERENDER_UPDATE_REFERENCES=1")
        from PIL import Image

        DATA.mkdir(exist_ok=True)
        Image.fromarray(got).save(REFERENCE)
    from PIL import Image

    ref = np.asarray(Image.open(REFERENCE).convert("RGB")).astype(np.float64) / 255
    diff = np.abs(got.astype(np.float64) / 255 - ref)
    assert diff.mean() < 0.01, f"mean abs difference {diff.mean():.4f} to {REFERENCE.name}"
    assert (diff.max(-1) > 0.1).mean() < 0.02


def test_ict_render_is_plausible(ict_model, ict_faces):
    """Upright, not mirrored, lit from the front, no holes; background untouched."""
    S = 96
    cam, R, t = frame_face(ict_model, S)
    lm = ict_model.get_landmarks(ict_model.template[None])
    out = render_face(ict_model.template[None], ict_faces, cam, R, t, albedo=region_albedo(ict_model),
                      background=(0.0, 0.0, 1.0))
    img, mask = out.image[0], out.mask[0]
    assert 0.3 < mask.float().mean() < 0.8
    # background keeps its colour away from the silhouette
    assert torch.equal(img[0, 0], torch.tensor([0.0, 0.0, 1.0]))
    # no holes or speckles: no uncovered pixel has its 4 neighbours covered, no covered pixel has none covered
    p = torch.nn.functional.pad(mask[None, None].float(), (1, 1, 1, 1))[0, 0]
    neighbours = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]
    assert int((~mask & (neighbours == 4)).sum()) == 0
    assert int((mask & (neighbours == 0)).sum()) == 0
    # upright and not mirrored: eyes above the mouth, the subject's left eye on the image right
    p = cam.project(model_to_camera(lm, R, t))[0]
    assert p[36:42, 1].mean() < p[48:60, 1].mean()
    assert p[42:48, 0].mean() > p[36:42, 0].mean()
    # skin-coloured and lit from the front: the forehead is bright, r > g > b
    fx, fy = p[27].tolist()  # top of the nose bridge
    c = img[int(fy) - 4, int(fx)]
    assert c[0] > c[1] > c[2] and c[0] > 0.6


def test_mask_matches_rasterizer_and_normals_face_camera(ict_model, ict_faces):
    cam, R, t = frame_face(ict_model, 64)
    v = ict_model.template[None]
    out = render_face(v, ict_faces, cam, R, t)
    frags = rasterize(cam.to_screen(model_to_camera(v, R, t)), ict_faces, (64, 64))
    assert torch.equal(out.mask, frags.triangle_id >= 0)
    assert torch.equal(out.fragments.triangle_id, frags.triangle_id)
    # the antialiased coverage differs from the mask only along the silhouette
    a = out.alpha
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert ((a - out.mask.float()).abs() > 1e-6).float().mean() < 0.1
    n = out.normals[0]
    norm = n.norm(dim=-1)
    torch.testing.assert_close(norm[out.mask[0]], torch.ones_like(norm[out.mask[0]]), atol=1e-5, rtol=0)
    assert float(norm[~out.mask[0]].abs().max()) == 0
    # the face centre (nose tip) faces the camera: z < 0 in our frame
    p = cam.project(model_to_camera(ict_model.get_landmarks(v), R, t))[0, 30]
    nz = n[int(p[1]), int(p[0]), 2]
    assert nz < -0.8
    # most visible normals face the camera (back-face culling)
    assert (n[out.mask[0]][:, 2] < 0.05).float().mean() > 0.97
    # depth: camera z of the visible surface, about the head distance
    d = out.depth[0][out.mask[0]]
    assert float(d.min()) > t[0, 2] - 15 and float(d.max()) < t[0, 2] + 15
    # default albedo fills the mask
    torch.testing.assert_close(out.albedo[0][out.mask[0]][0], torch.tensor(DEFAULT_ALBEDO))


def test_frame_face_fills_the_image(ict_model):
    for size in [(64, 64), (90, 60)]:
        cam, R, t = frame_face(ict_model, size, fill=0.9)
        assert isinstance(cam, PinholeCamera) and cam.image_size == size
        pts = ict_model.template[torch.as_tensor(ict_model.regions["face"].vertex_ids)][None]
        p = cam.project(model_to_camera(pts, R, t))[0]
        lo, hi = p.amin(0), p.amax(0)
        H, W = size
        frac = max(float(hi[1] - lo[1]) / H, float(hi[0] - lo[0]) / W)
        assert frac == pytest.approx(0.9, abs=0.01)
        centre = (lo + hi) / 2
        torch.testing.assert_close(centre, torch.tensor([W / 2, H / 2]), atol=0.05, rtol=0)
        assert float(t[0, 2]) > 0
    # a yawed head is framed too; alias and tuple unpacking
    fr = default_camera_for(ict_model, 64, rotation=torch.tensor([[0.0, 0.6, 0.0]]))
    assert isinstance(fr, Framing) and fr.rotation.shape == (1, 3, 3) and fr.translation.shape == (1, 3)
    with pytest.raises(ShapeError, match="face model"):
        frame_face("not a model", 64)


def test_yaw_turns_face_to_image_right(ict_model, ict_faces):
    """A positive rotation about the model's up axis turns the face towards the image right (subject's left)."""
    cam, _, t = frame_face(ict_model, 64)
    R = torch.tensor([[0.0, 0.5, 0.0]])
    lm = ict_model.get_landmarks(ict_model.template[None])
    p = cam.project(model_to_camera(lm, R, t))[0]
    assert p[30, 0] > 32  # the nose tip moved right of the centre


# ----------------------------------------------------------------------------------------------- tiny meshes
def test_render_values_on_tiny_mesh():
    v, faces = tent()
    cam, R, t = tent_pose()
    albedo = torch.full((5, 3), 0.5, dtype=torch.float64)
    sh = default_light(1, dtype=torch.float64)
    out = render_face(v, faces, cam, R, t, albedo, sh, background=0.25, antialias=False)
    m = out.mask[0]
    assert m.any() and not m.all()
    # background exact, covered pixels = clamp(albedo * E(n) / pi)
    assert torch.all(out.image[0][~m] == 0.25)
    from facerender.render.lighting import shade_lambertian

    expect = shade_lambertian(out.albedo, out.normals, sh, normalize=False).clamp(0, 1)
    torch.testing.assert_close(out.image[0][m], expect[0][m])
    assert out.image.dtype == torch.float64 and out.alpha.dtype == torch.float64
    torch.testing.assert_close(out.alpha, m[None].double())


def test_a_batch_of_three_axis_angles_is_not_read_as_one_matrix():
    """(3, 3) is both one matrix and three axis-angle vectors: the translation's batch decides (docstring)."""
    from facerender.render.renderer import check_pose
    from morphable_models.rotation import axis_angle_to_matrix

    ref = torch.zeros(1, dtype=torch.float64)
    aa = torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.2, 0.0], [0.0, 0.0, 0.3]], dtype=torch.float64)
    R, t = check_pose(aa, torch.zeros(3, 3, dtype=torch.float64), ref)
    torch.testing.assert_close(R, axis_angle_to_matrix(aa))
    M = axis_angle_to_matrix(aa[:1])[0]
    for trans in (torch.zeros(3), torch.zeros(1, 3)):  # one matrix, one translation
        R, _ = check_pose(M, trans.double(), ref)
        torch.testing.assert_close(R, M[None])
    R, _ = check_pose(M[None], torch.zeros(3, 3, dtype=torch.float64), ref)  # one matrix for three translations
    torch.testing.assert_close(R, M[None])
    # the shared conversion under it: model_to_camera with three axis-angle rows, one by one
    from morphable_models import model_to_camera

    pts = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=torch.float64).expand(3, 1, 3)
    got = model_to_camera(pts, aa, torch.zeros(3, 3, dtype=torch.float64))
    for k in range(3):
        torch.testing.assert_close(got[k], model_to_camera(pts[:1], aa[k:k + 1], torch.zeros(1, 3,
                                                                                         dtype=torch.float64))[0])
    # and through render_face: three axis-angle poses render as the three one-by-one renders
    v, faces = tent()
    cam, _, t1 = tent_pose()
    aa = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.3, 0.0], [0.2, 0.0, 0.0]], dtype=torch.float64)
    both = render_face(v, faces, cam, aa, t1.expand(3, 3), antialias=False).image
    for k in range(3):
        one = render_face(v, faces, cam, aa[k:k + 1], t1, antialias=False).image
        torch.testing.assert_close(both[k], one[0])


def test_gradcheck_vertices_albedo_sh():
    v, faces = tent()
    cam, R, t = tent_pose()
    g = torch.Generator().manual_seed(1)
    albedo = (0.45 + 0.1 * torch.rand(1, 5, 3, generator=g, dtype=torch.float64)).requires_grad_()
    sh = (default_light(1, dtype=torch.float64) + 0.02 * torch.randn(1, 9, 3, generator=g, dtype=torch.float64))
    sh.requires_grad_()
    v = v.clone().requires_grad_()

    for aa in (False, True):
        def fn(v_, a_, s_):
            out = render_face(v_, faces, cam, R, t, a_, s_, background=0.2, antialias=aa)
            return out.image, out.alpha

        assert gradcheck(fn, (v, albedo, sh), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
    # the antialiased silhouette depends on the vertices: the alpha gradient is non-zero
    out = render_face(v, faces, cam, R, t, albedo, sh, background=0.2)
    (gv,) = torch.autograd.grad(out.alpha.sum(), v)
    assert gv.abs().sum() > 0


def test_gradcheck_pose_and_intrinsics():
    v, faces = tent()
    cam, _, _ = tent_pose()
    R = torch.tensor([[0.05, -0.04, 0.02]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.05, -0.03, 5.0]], dtype=torch.float64, requires_grad=True)
    fx = cam.fx.clone().requires_grad_()

    def fn(r, tt, f):
        return render_face(v, faces, cam.replace(fx=f, fy=f), r, tt, background=0.2).image

    assert gradcheck(fn, (R, t, fx), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_batch_equals_loop_and_module_equals_function(ict_model, ict_faces):
    w = torch.zeros(2, ict_model.num_expression)
    w[1, ict_model.expression_names.index("jawOpen")] = 1.0
    v = ict_model(expression=w).vertices
    cam, R, t = frame_face(ict_model, 48)
    R2 = torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.3, 0.05]])
    sh = default_light(2) * torch.tensor([1.0, 0.7])[:, None, None]
    batch = render_face(v, ict_faces, cam, R2, t.expand(2, 3), sh=sh)
    for i in range(2):
        single = render_face(v[i:i + 1], ict_faces, cam, R2[i:i + 1], t, sh=sh[i:i + 1])
        torch.testing.assert_close(batch.image[i], single.image[0], atol=1e-5, rtol=0)
        assert torch.equal(batch.mask[i], single.mask[0])
    module = FaceRenderer(ict_faces)
    torch.testing.assert_close(module(v, cam, R2, t.expand(2, 3), sh=sh).image, batch.image)
    # a batch-1 mesh broadcasts over a batch of poses
    broad = render_face(v[:1], ict_faces, cam, R2, t)
    assert broad.image.shape[0] == 2
    torch.testing.assert_close(broad.image[0], batch.image[0], atol=1e-5, rtol=0)


def test_noncontiguous_orthographic_and_float64(ict_face_model):
    m = ict_face_model
    cam, R, t = frame_face(m, 40)
    v = m.template[None]
    nc = v.transpose(1, 2).contiguous().transpose(1, 2)  # same values, non-contiguous
    assert not nc.is_contiguous()
    torch.testing.assert_close(render_face(nc, m.faces, cam, R, t).image, render_face(v, m.faces, cam, R, t).image)
    out64 = render_face(v.double(), m.faces, cam, R, t)  # the camera follows the vertices' dtype
    assert out64.image.dtype == torch.float64
    torch.testing.assert_close(out64.image.float(), render_face(v, m.faces, cam, R, t).image, atol=1e-3, rtol=0)
    ortho = OrthographicCamera(scale=float(cam.fx[0]) / float(t[0, 2]), tx=20.0, ty=20.0, image_size=(40, 40))
    o = render_face(v, m.faces, ortho, R, torch.tensor([[float(t[0, 0]), float(t[0, 1]), 50.0]]))
    assert 0.2 < o.mask.float().mean() < 0.9


def test_errors_state_what_was_received(ict_face_model):
    m = ict_face_model
    cam, R, t = frame_face(m, 16)
    v = m.template[None]
    with pytest.raises(ShapeError, match=r"\(B, V, 3\).*\(9409, 3\)"):
        render_face(m.template, m.faces, cam, R, t)
    with pytest.raises(ShapeError, match=r"vertices \(2, 9409, 3\) \(batch 2\), rotation \(3, 3, 3\) \(batch 3\)"):
        render_face(v.expand(2, -1, -1), m.faces, cam, torch.zeros(3, 3, 3), t)
    with pytest.raises(ShapeError, match=r"rotation must be .*got \(1, 4\)"):
        render_face(v, m.faces, cam, torch.zeros(1, 4), t)
    with pytest.raises(ShapeError, match=r"translation must be \(B, 3\), got \(1, 2\)"):
        render_face(v, m.faces, cam, R, torch.zeros(1, 2))
    with pytest.raises(ShapeError, match=r"albedo must be .*got \(1, 10, 3\)"):
        render_face(v, m.faces, cam, R, t, albedo=torch.rand(1, 10, 3))
    with pytest.raises(ShapeError, match=r"sh must be .*got \(1, 4, 3\)"):
        render_face(v, m.faces, cam, R, t, sh=torch.rand(1, 4, 3))
    with pytest.raises(ShapeError, match=r"faces"):
        render_face(v, m.faces.float(), cam, R, t)
    with pytest.raises(ShapeError, match=r"camera must be"):
        render_face(v, m.faces, "camera", R, t)
    with pytest.raises(ShapeError, match=r"camera \(batch 3\)"):
        render_face(v.expand(2, -1, -1), m.faces, PinholeCamera.cat([cam, cam, cam]), R, t)
    with pytest.raises(ShapeError, match=r"background"):
        render_face(v, m.faces, cam, R, t, background=torch.zeros(1, 5, 5, 3))


# ------------------------------------------------------------------------------------ `facerender render`, OBJ
def test_render_expressions_writes_pngs(ict_model, tmp_path):
    from PIL import Image

    from facerender.pipelines.render_model import ExpressionError, render_expressions

    grid = render_expressions(tmp_path / "sub" / "grid.png", size=32, model=ict_model)
    im = np.asarray(Image.open(grid))
    assert im.shape == (3 * 32 + 2 * 2, 3 * 32 + 2 * 2, 3)
    single = render_expressions(tmp_path / "one.png", {"jawOpen": 1.0}, size=40, yaw=10, grid=False,
                                model=ict_model)
    one = np.asarray(Image.open(single)).astype(np.float64) / 255
    assert one.shape == (40, 40, 3)
    # a face in the middle of a light background
    assert one[0, 0].min() > 0.8 and one[0, 0, 2] - one[20, 20, 2] > 0.15
    views = render_expressions(tmp_path / "views.png", {"mouthSmile_L": 1.0}, size=24, model=ict_model)
    assert np.asarray(Image.open(views)).shape == (24, 3 * 24 + 2 * 2, 3)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ExpressionError, match=r"unknown expression 'jawopen' \(similar: jawOpen\)"):
        render_expressions(tmp_path / "bad.png", {"jawopen": 1.0}, size=16, model=ict_model)
    with pytest.raises(ExpressionError, match=r"'jawOpen' = 2.0 is outside its range \[0.0, 1.0\]"):
        render_expressions(tmp_path / "bad.png", {"jawOpen": 2.0}, size=16, model=ict_model)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing (half-)written


def test_write_textured_obj_round_trip(ict_face_model, tmp_path):
    from PIL import Image

    from facerender.io.mesh import write_textured_obj
    from morphable_models import read_obj

    m = ict_face_model
    tex = (np.arange(8 * 8 * 3) % 256).astype(np.uint8).reshape(8, 8, 3)
    path = write_textured_obj(tmp_path / "face", m.template, m.faces, m.uvs, m.faces_uv, tex, material_name="skin")
    assert path == tmp_path / "face.obj"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.mtl", "face.obj", "face.png"]
    mesh = read_obj(path)
    np.testing.assert_allclose(mesh.vertices, m.template.numpy(), atol=1e-5)
    np.testing.assert_allclose(mesh.uvs, m.uvs.numpy(), atol=1e-6)
    text = path.read_text()
    assert text.startswith("mtllib face.mtl\n") and "usemtl skin\n" in text
    mtl = (tmp_path / "face.mtl").read_text()
    assert "newmtl skin" in mtl and "map_Kd face.png" in mtl
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "face.png")), tex)
    # without a texture: no PNG, no map_Kd
    write_textured_obj(tmp_path / "plain.obj", m.template, m.faces, m.uvs, m.faces_uv)
    assert not (tmp_path / "plain.png").exists() and "map_Kd" not in (tmp_path / "plain.mtl").read_text()
    with pytest.raises(ShapeError, match=r"faces_uv must match faces \(18460, 3\), got \(2, 3\)"):
        write_textured_obj(tmp_path / "bad.obj", m.template, m.faces, m.uvs, m.faces_uv[:2])
    with pytest.raises(ShapeError, match=r"vertices must have shape \(N, 3\), got \(9409, 2\)"):
        write_textured_obj(tmp_path / "bad.obj", m.template[:, :2], m.faces)
    with pytest.raises(ValueError, match="material_name"):
        write_textured_obj(tmp_path / "bad.obj", m.template, m.faces, material_name="a b")
    assert not (tmp_path / "bad.obj").exists()
