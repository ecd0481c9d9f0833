"""Texture baking: recover a known texture from synthetic renders; visibility (occlusion, back faces, grazing angles),
fills, batches, tiles and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facerender.cameras import PinholeCamera
from facerender.render.bake import bake_texture, dilate_texture, render_uv, uv_fragments
from facerender.render.interpolate import interpolate
from facerender.render.rasterize import RasterSettings, rasterize
from facerender.render.texture import sample_texture
from morphable_models.errors import ShapeError
from morphable_models.rotation import axis_angle_to_matrix

F64 = torch.float64


# --------------------------------------------------------------------------------------------------- scenes
def cube(margin=0.02):
    """Unit cube (corners at +-1) with 8 shared vertices and a 3 x 2 UV atlas, one cell per side.

    Side ``i`` (outward normal ``DIRS[i]``) has the UV cell column ``i % 3``, row ``i // 3`` (row 0 at v = 0).
    Triangles are counter-clockwise seen from outside (outward right-hand normals)."""
    verts, faces, uvs, fuv, vid = [], [], [], [], {}

    def v(p):
        p = tuple(int(round(x)) for x in p)
        if p not in vid:
            vid[p] = len(verts)
            verts.append(p)
        return vid[p]

    for i, n in enumerate(DIRS):
        n = np.array(n, float)
        a = np.roll(np.abs(n), 1)
        b = np.cross(n, a)
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        ids = [v(n + sa * a + sb * b) for sa, sb in corners]
        u0, v0 = (i % 3) / 3 + margin, (i // 3) / 2 + margin
        du, dv = 1 / 3 - 2 * margin, 1 / 2 - 2 * margin
        uid = []
        for sa, sb in corners:
            uid.append(len(uvs))
            uvs.append((u0 + (sa + 1) / 2 * du, v0 + (sb + 1) / 2 * dv))
        faces += [[ids[0], ids[1], ids[2]], [ids[0], ids[2], ids[3]]]
        fuv += [[uid[0], uid[1], uid[2]], [uid[0], uid[2], uid[3]]]
    return torch.tensor(verts, dtype=F64), torch.tensor(faces), torch.tensor(uvs, dtype=F64), torch.tensor(fuv)


DIRS = [(0, 0, -1), (0, 0, 1), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0)]


def texture_fn(u, v):
    """A smooth colour texture (so that bilinear resampling errors are small)."""
    return torch.stack([0.5 + 0.35 * torch.sin(4 * math.pi * u) * torch.cos(2 * math.pi * v),
                        0.5 + 0.35 * torch.cos(3 * math.pi * u + 1.0),
                        0.3 + 0.25 * torch.sin(4 * math.pi * v) ** 2], -1)


def texel_grid(Ht, Wt):
    j, i = torch.meshgrid(torch.arange(Ht, dtype=F64), torch.arange(Wt, dtype=F64), indexing="ij")
    return (i + 0.5) / Wt, 1 - (j + 0.5) / Ht


def make_texture(Ht, Wt=None):
    return texture_fn(*texel_grid(Ht, Wt or Ht))


def render(verts, faces, uvs, fuv, texture, size=256, rot=(0.5, 0.6, 0.0), dist=6.0, fov=40.0, settings=None):
    """Render ``texture`` on the mesh (camera-space placement: rotation then translation along +z)."""
    R = axis_angle_to_matrix(torch.tensor([rot], dtype=F64))[0]
    cv = verts @ R.T + torch.tensor([0, 0, dist], dtype=F64)
    cam = PinholeCamera.from_fov(fov, (size, size), dtype=F64)
    sv = cam.to_screen(cv[None])
    fr = rasterize(sv, faces, (size, size), settings or RasterSettings())
    uv = interpolate(uvs, fr, faces_uv=fuv)
    img = sample_texture(texture, uv, fr.mask)
    return img[0], sv[0], cv


def cell(mask, i, Ht=128, Wt=126):
    """The texels of cube side ``i`` in a (Ht, Wt) texture."""
    col, row = i % 3, i // 3
    return mask[Ht - (row + 1) * Ht // 2:Ht - row * Ht // 2, col * Wt // 3:(col + 1) * Wt // 3]


def chart_interior(uvs, fuv, size, texels=2):
    """Texels at least ``texels`` away from the border of their UV chart (away from the cube's edges, where the
    bilinear footprint of a texel reaches the neighbouring side's different texture)."""
    covered = uv_fragments(uvs, fuv, size).triangle_id[0] >= 0
    k = 2 * texels + 1
    return -torch.nn.functional.max_pool2d(-covered[None, None].double(), k, 1, texels)[0, 0] > 0


@pytest.fixture(scope="module")
def cube_scene():
    verts, faces, uvs, fuv = cube()
    img, sv, cv = render(verts, faces, uvs, fuv, make_texture(512))
    return verts, faces, uvs, fuv, img, sv, cv


# ---------------------------------------------------------------------------------------------------- recovery
def test_recovers_cube_texture_on_visible_sides(cube_scene):
    verts, faces, uvs, fuv, img, sv, cv = cube_scene
    img_np, sv_np = img.numpy(), sv.numpy()
    img0, sv0 = img_np.copy(), sv_np.copy()
    tex, valid = bake_texture(img_np, sv_np, faces.numpy(), uvs.numpy(), fuv.numpy(), (128, 126))
    assert np.array_equal(img_np, img0) and np.array_equal(sv_np, sv0)  # inputs untouched
    assert isinstance(tex, np.ndarray) and tex.shape == (128, 126, 3) and tex.dtype == np.float64
    assert valid.shape == (128, 126) and valid.dtype == bool
    # which sides face the camera: outward normal . (direction to the camera) > 0
    R = axis_angle_to_matrix(torch.tensor([[0.5, 0.6, 0.0]], dtype=F64))[0]
    centre = torch.tensor([0, 0, 6.0], dtype=F64)
    facing = [float((R @ torch.tensor(n, dtype=F64)) @ -(centre + R @ torch.tensor(n, dtype=F64))) > 0 for n in DIRS]
    assert sum(facing) == 3
    for i in range(6):
        frac = cell(valid, i).mean()
        assert (frac > 0.75) if facing[i] else (frac == 0), (i, frac)
    truth = make_texture(128, 126).numpy()
    err = np.abs(tex - truth).max(-1)
    inner = valid & chart_interior(uvs, fuv, (128, 126)).numpy()
    assert err[inner].max() < 2e-3 and err[inner].mean() < 5e-4  # two bilinear resamplings; half a texel of
    # misregistration would give about 0.02
    assert err[valid].max() < 0.1  # at the cube's edges the neighbouring side may be read
    assert (tex[~valid] == 0).all()


def test_uint8_and_torch_inputs(cube_scene):
    verts, faces, uvs, fuv, img, sv, cv = cube_scene
    img8 = (img * 255).round().to(torch.uint8)
    tex, valid = bake_texture(img8, sv, faces, uvs, fuv, (128, 126))
    assert isinstance(tex, torch.Tensor) and tex.dtype == torch.uint8 and valid.dtype == torch.bool
    ref, ref_valid = bake_texture(img.numpy(), sv.numpy(), faces.numpy(), uvs.numpy(), fuv.numpy(), (128, 126))
    assert np.array_equal(valid.numpy(), ref_valid)
    diff = np.abs(tex.numpy().astype(float) - ref * 255)[ref_valid]
    assert diff.max() <= 1.0  # bilinear of rounded values stays within one level
    f32, _ = bake_texture(img.float(), sv.float(), faces, uvs.float(), fuv, (128, 126))
    assert f32.dtype == torch.float32


def test_noncontiguous_inputs(cube_scene):
    verts, faces, uvs, fuv, img, sv, cv = cube_scene
    ref_tex, ref_valid = bake_texture(img, sv, faces, uvs, fuv, 64)
    img_nc = img.transpose(0, 1).contiguous().transpose(0, 1)
    sv_nc = sv.t().contiguous().t()
    assert not img_nc.is_contiguous() and not sv_nc.is_contiguous()
    tex, valid = bake_texture(img_nc, sv_nc, faces.t().contiguous().t(), uvs, fuv.t().contiguous().t(), 64)
    assert torch.equal(valid, ref_valid) and torch.equal(tex, ref_tex)


def test_occlusion_and_depth_test():
    # a big plane at z = 10 and a small one at z = 5 in front of it, both facing the camera at the origin
    def quad(half, z, uv0, uv1):
        v = torch.tensor([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]], dtype=F64)
        # camera frame: y down; triangles must have negative screen area (front) -> order (0, 3, 2), (0, 2, 1)
        uv = torch.tensor([[uv0[0], uv1[1]], [uv1[0], uv1[1]], [uv1[0], uv0[1]], [uv0[0], uv0[1]]], dtype=F64)
        return v, uv
    vb, ub = quad(2.0, 10.0, (0.0, 0.0), (0.5, 1.0))
    vf, uf = quad(0.5, 5.0, (0.5, 0.0), (1.0, 1.0))
    verts = torch.cat([vb, vf])
    uvs = torch.cat([ub, uf])
    faces = torch.tensor([[0, 3, 2], [0, 2, 1], [4, 7, 6], [4, 6, 5]])
    cam = PinholeCamera.from_fov(40.0, (256, 256), dtype=F64)
    sv = cam.to_screen(verts[None])[0]
    area2 = ((sv[faces[:, 1], 0] - sv[faces[:, 0], 0]) * (sv[faces[:, 2], 1] - sv[faces[:, 0], 1])
             - (sv[faces[:, 2], 0] - sv[faces[:, 0], 0]) * (sv[faces[:, 1], 1] - sv[faces[:, 0], 1]))
    assert bool((area2 < 0).all())  # front faces
    img = torch.full((256, 256, 3), 0.5, dtype=F64)
    tex, valid = bake_texture(img, sv, faces, uvs, faces, (64, 128))
    # back plane occupies u in [0, 0.5] (columns 0..63); x = -2 + 4 * u / 0.5, y = 2 - 4 * (1 - v) ... its
    # occluded square is |x|, |y| < 1 (the front plane's shadow from the camera: half-size 0.5 * 10 / 5)
    u, v = texel_grid(64, 128)
    x = -2 + 4 * u / 0.5
    y = -2 + 4 * (1 - v)  # row 0 (v = 1) is y = -2 (the top of the image, y down)
    back = u < 0.5
    inner = back & (x.abs() < 0.95) & (y.abs() < 0.95)
    outer = back & ((x.abs() > 1.05) | (y.abs() > 1.05)) & (x.abs() < 1.95) & (y.abs() < 1.95)
    assert not valid[inner].any()
    assert valid[outer].all()
    assert valid[u > 0.5].all()  # the front plane is fully visible
    assert torch.allclose(tex[valid], torch.tensor(0.5, dtype=F64), rtol=0, atol=1e-12)
    # a huge depth tolerance makes the occluded part "visible" (the test really uses the z-buffer)
    _, loose = bake_texture(img, sv, faces, uvs, faces, (64, 128), depth_tolerance=2.0)
    assert loose[inner].all()


def test_backfaces_and_grazing_angles():
    # one quad tilted by 60 degrees about y, facing the camera; then flipped to face away
    ang = math.radians(60)
    R = axis_angle_to_matrix(torch.tensor([[0.0, ang, 0.0]], dtype=F64))[0]
    base = torch.tensor([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=F64)
    verts = base @ R.T + torch.tensor([0, 0, 6.0], dtype=F64)
    uvs = torch.tensor([[0, 1], [1, 1], [1, 0], [0, 0]], dtype=F64)
    front = torch.tensor([[0, 3, 2], [0, 2, 1]])
    cam = PinholeCamera.from_fov(40.0, (128, 128), dtype=F64)
    sv = cam.to_screen(verts[None])[0]
    img = torch.full((128, 128, 3), 0.25, dtype=F64)
    _, valid = bake_texture(img, sv, front, uvs, front, 32)
    assert valid.float().mean() > 0.8
    # flipped winding = facing away: culled, unless culling is off
    back = front[:, [0, 2, 1]]
    _, v_back = bake_texture(img, sv, back, uvs, back, 32)
    assert not v_back.any()
    _, v_nocull = bake_texture(img, sv, back, uvs, back, 32, cull_backfaces=False)
    assert v_nocull.float().mean() > 0.8
    # normals: the quad's normal is R @ (0, 0, -1); its cosine with the direction to the camera is about 0.5
    n = (R @ torch.tensor([0, 0, -1.0], dtype=F64)).expand(4, 3)
    _, v_lo = bake_texture(img, sv, front, uvs, front, 32, normals=n, camera_vertices=verts, min_cos=0.2)
    _, v_hi = bake_texture(img, sv, front, uvs, front, 32, normals=n, camera_vertices=verts, min_cos=0.8)
    assert torch.equal(v_lo, valid) and not v_hi.any()
    # the cosine along the optical axis is exactly cos(60 deg) = 0.5
    _, v_a = bake_texture(img, sv, front, uvs, front, 32, normals=n, min_cos=0.49)
    _, v_b = bake_texture(img, sv, front, uvs, front, 32, normals=n, min_cos=0.51)
    assert torch.equal(v_a, valid) and not v_b.any()


def test_orthographic_screen_space():
    verts, faces, uvs, fuv = cube()
    R = axis_angle_to_matrix(torch.tensor([[0.4, -0.7, 0.1]], dtype=F64))[0]
    cv = verts @ R.T + torch.tensor([0, 0, 6.0], dtype=F64)
    s = 60.0
    sv = torch.stack([s * cv[:, 0] + 128, s * cv[:, 1] + 128, cv[:, 2]], -1)
    settings = RasterSettings(perspective_correct=False)
    fr = rasterize(sv[None], faces, (256, 256), settings)
    img = sample_texture(make_texture(512), interpolate(uvs, fr, faces_uv=fuv), fr.mask)[0]
    tex, valid = bake_texture(img, sv, faces, uvs, fuv, (128, 126), perspective=False)
    assert valid.float().mean() > 0.3
    err = (tex - make_texture(128, 126)).abs().amax(-1)
    inner = valid & chart_interior(uvs, fuv, (128, 126))
    assert float(err[inner].max()) < 2e-3 and float(err[valid].max()) < 0.1


def test_batch_equals_single_calls(cube_scene):
    verts, faces, uvs, fuv, img, sv, cv = cube_scene
    img2, sv2, _ = render(verts, faces, uvs, fuv, make_texture(512), rot=(-0.3, 2.5, 0.2))
    tex, valid = bake_texture(torch.stack([img, img2]), torch.stack([sv, sv2]), faces, uvs, fuv, 64)
    assert tex.shape == (2, 64, 64, 3) and valid.shape == (2, 64, 64)
    for b, (im, s) in enumerate([(img, sv), (img2, sv2)]):
        t1, v1 = bake_texture(im, s, faces, uvs, fuv, 64)
        assert torch.equal(v1, valid[b]) and torch.allclose(t1, tex[b], rtol=0, atol=1e-12)
    assert not torch.equal(valid[0], valid[1])


def test_tiles(cube_scene):
    verts, faces, uvs, fuv, img, sv, cv = cube_scene
    t0, v0 = bake_texture(img, sv, faces, uvs, fuv, 64)
    shifted = uvs + torch.tensor([2.0, 0.0], dtype=F64)
    t2, v2 = bake_texture(img, sv, faces, shifted, fuv, 64, tile=2)
    assert torch.equal(v0, v2) and torch.allclose(t0, t2, rtol=0, atol=1e-9)
    _, none = bake_texture(img, sv, faces, shifted, fuv, 64, tile=0)
    assert not none.any()
    # a precomputed UV raster gives the same result
    raster = uv_fragments(shifted, fuv, 64, tile=2)
    t3, v3 = bake_texture(img, sv, faces, shifted, fuv, 64, tile=2, uv_raster=raster)
    assert torch.equal(v3, v2) and torch.equal(t3, t2)
    with pytest.raises(ShapeError, match=r"uv_raster must be uv_fragments\(...\) of size \(1, 32, 32\)"):
        bake_texture(img, sv, faces, shifted, fuv, 32, tile=2, uv_raster=raster)


# ------------------------------------------------------------------------------------------------------- fills
def test_fill_dilate_and_vertex_colours(cube_scene):
    verts, faces, uvs, fuv, img, sv, cv = cube_scene
    tex, valid = bake_texture(img, sv, faces, uvs, fuv, 64)
    dil, dvalid = bake_texture(img, sv, faces, uvs, fuv, 64, fill="dilate", dilate_iterations=3)
    assert torch.equal(dvalid, valid)  # the mask reports visibility, not the fill
    assert torch.equal(dil[valid], tex[valid])  # valid texels unchanged
    grown = (dil.abs().sum(-1) > 0) & ~valid
    assert grown.any()
    # every grown texel is within 3 texels (Chebyshev) of a valid one
    _, reach = dilate_texture(torch.zeros(64, 64, 1), valid, 3)
    assert not (grown & ~reach).any()
    # a dilated texel next to exactly one valid texel copies it
    t = torch.zeros(5, 5, 3)
    m = torch.zeros(5, 5, dtype=torch.bool)
    t[2, 2], m[2, 2] = torch.tensor([0.2, 0.4, 0.6]), True
    out, filled = dilate_texture(t, m, 1)
    assert torch.allclose(out[1:4, 1:4], torch.tensor([0.2, 0.4, 0.6]).expand(3, 3, 3)) and filled.sum() == 9
    assert out[0].abs().sum() == 0
    # per-vertex colours fill the invalid texels inside the charts
    colours = torch.rand(verts.shape[0], 3, dtype=F64)
    filled_tex, fvalid = bake_texture(img, sv, faces, uvs, fuv, 64, fill=colours)
    assert torch.equal(fvalid, valid) and torch.equal(filled_tex[valid], tex[valid])
    uvimg, covered = render_uv(colours, faces, uvs, fuv, 64)
    hole = covered & ~valid
    assert hole.any() and torch.allclose(filled_tex[hole], uvimg[hole])
    assert (filled_tex[~covered] == 0).all()


def test_render_uv_interpolates_vertex_attributes():
    verts, faces, uvs, fuv = cube()
    # attribute = vertex position: texel centres of side 0 must lie on the plane z = -1, inside the square
    img, covered = render_uv(verts, faces, uvs, fuv, (64, 66))
    side0 = cell(covered, 0, 64, 66)
    pos = cell(img, 0, 64, 66)[side0]
    assert side0.float().mean() > 0.8
    assert torch.allclose(pos[:, 2], torch.tensor(-1.0, dtype=F64)) and bool((pos[:, :2].abs() < 1).all())
    fr = uv_fragments(uvs, fuv, (64, 66))
    assert fr.triangle_id.shape == (1, 64, 66)
    batched, _ = render_uv(torch.stack([verts, 2 * verts]), faces, uvs, fuv, (64, 66))
    assert torch.allclose(batched[1], 2 * img)


# -------------------------------------------------------------------------------------------------------- ICT
def test_ict_face_bake(ict_face_model):
    """Render the ICT face with a known texture (its own UVs) and bake it back."""
    from morphable_models import model_to_camera

    m = ict_face_model
    V = m.template.to(F64)[None]
    R = torch.tensor([[0.0, 0.3, 0.0]], dtype=F64)
    cv = model_to_camera(V, R, torch.zeros(1, 3, dtype=F64))
    cv = cv - cv.mean(1, keepdim=True) + torch.tensor([0, 0, 90.0], dtype=F64)
    cam = PinholeCamera.from_fov(15.0, (320, 320), dtype=F64)
    sv = cam.to_screen(cv)
    uvs, fuv, faces = m.uvs.to(F64), m.faces_uv, m.faces
    fr = rasterize(sv, faces, (320, 320), RasterSettings())
    truth = make_texture(256)
    img = sample_texture(truth, interpolate(uvs, fr, faces_uv=fuv), fr.mask)[0]
    tex, valid = bake_texture(img, sv[0], faces, uvs, fuv, 128)
    _, covered = render_uv(torch.zeros(m.num_vertices, 1, dtype=F64), faces, uvs, fuv, 128)
    assert valid.sum() > 0.5 * covered.sum()  # most of the face is seen at 17 degrees of yaw
    err = (tex - make_texture(128)).abs().amax(-1)[valid]
    assert float(err.median()) < 0.01 and float((err < 0.05).float().mean()) > 0.97


# ------------------------------------------------------------------------------------------------------ errors
def test_bad_input_raises(cube_scene):
    verts, faces, uvs, fuv, img, sv, cv = cube_scene
    with pytest.raises(ShapeError, match=r"image must have shape.*\(5, 5\)"):
        bake_texture(torch.zeros(5, 5), sv, faces, uvs, fuv)
    with pytest.raises(ShapeError, match=r"faces_uv must have shape \(12, 3\), got \(11, 3\)"):
        bake_texture(img, sv, faces, uvs, fuv[:11])
    with pytest.raises(ShapeError, match=r"faces index out of range: found \[0, 8\] for 8 rows"):
        bake_texture(img, sv, torch.where(faces == 7, 8, faces), uvs, fuv)
    with pytest.raises(ShapeError, match=r"faces_uv index out of range.*24 rows"):
        bake_texture(img, sv, faces, uvs, fuv + 1)
    with pytest.raises(ShapeError, match="uvs must be a float"):
        bake_texture(img, sv, faces, uvs[:, :1], fuv)
    with pytest.raises(ShapeError, match="batch mismatch"):
        bake_texture(torch.stack([img] * 2), torch.stack([sv] * 3), faces, uvs, fuv)
    with pytest.raises(ValueError, match="min_cos=0.5 needs normals"):
        bake_texture(img, sv, faces, uvs, fuv, min_cos=0.5)
    with pytest.raises(ValueError, match="fill must be"):
        bake_texture(img, sv, faces, uvs, fuv, fill="blur")
    with pytest.raises(ShapeError, match=r"fill colours must have shape \(8, 3\)"):
        bake_texture(img, sv, faces, uvs, fuv, fill=torch.zeros(7, 3))
    with pytest.raises(ValueError, match="texture_size"):
        bake_texture(img, sv, faces, uvs, fuv, texture_size=0)
    with pytest.raises(ShapeError, match="normals must be"):
        bake_texture(img, sv, faces, uvs, fuv, normals=torch.zeros(3, 3, dtype=F64))
