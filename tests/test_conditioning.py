"""Conditioning maps: one rasterization shared by every map, values of each map, eye gaze, batching, errors."""
from __future__ import annotations

import math

import pytest
import torch

from facerender.render.conditioning import (
    ALL_MAPS,
    DVP_MAPS,
    GAZE_COLORS,
    REGION_NAMES,
    SKIPPED_REGIONS,
    ConditioningRenderer,
    conditioning_maps,
    correspondence_normalization,
    eye_rotations,
    landmark_heatmaps,
    region_albedo,
    rotate_eyes,
)
from facerender.render.rasterize import rasterize
from facerender.render.renderer import frame_face, render_face
from morphable_models import LinearFaceModel, model_to_camera
from morphable_models.errors import ShapeError


def weights(model, values, batch_size=1):
    w = torch.zeros(batch_size, model.num_expression)
    for k, v in values.items():
        w[:, model.expression_names.index(k)] = v
    return w


def drawn_faces(model):
    keep = torch.ones(model.num_faces, dtype=torch.bool)
    for name in SKIPPED_REGIONS:
        keep[torch.as_tensor(model.regions[name].face_ids)] = False
    return model.faces[keep]


@pytest.fixture(scope="module")
def neutral_maps(ict_model):
    cam, R, t = frame_face(ict_model, 96)
    out = ict_model()
    return cam, R, t, out, conditioning_maps(ict_model, out, cam, R, t, maps="all")


def test_all_maps_shapes_and_ranges(ict_model, neutral_maps):
    cam, R, t, out, c = neutral_maps
    assert list(c) == list(ALL_MAPS)
    C = {"shaded": 3, "albedo": 3, "normals": 3, "depth": 1, "mask": 1, "correspondence": 3, "uv": 2, "uv_tile": 1,
         "regions": 1, "regions_onehot": len(REGION_NAMES), "gaze": 3, "landmarks": 68, "landmark_image": 1}
    for k, ch in C.items():
        assert c[k].shape == (1, 96, 96, ch), k
    assert c["landmarks_2d"].shape == (1, 68, 2)
    assert c["regions"].dtype == torch.int64 and c["uv_tile"].dtype == torch.int64
    for k in ("shaded", "albedo", "correspondence", "uv", "gaze", "mask", "landmarks", "regions_onehot"):
        assert c[k].dtype == torch.float32 and float(c[k].min()) >= 0 and float(c[k].max()) <= 1, k
    m = c["mask"][..., 0] > 0
    # everything is 0 on background (uv_tile: -1)
    for k in ("shaded", "albedo", "normals", "depth", "correspondence", "uv", "regions", "gaze"):
        assert float(c[k][~m].abs().max()) == 0, k
    assert bool((c["uv_tile"][~m] == -1).all()) and bool((c["uv_tile"][m] >= 0).all())
    # normals: unit, in [-1, 1]; the surface faces the camera (culling), the nose tip straight at it (z < 0)
    n = c["normals"][0]
    torch.testing.assert_close(n[m[0]].norm(dim=-1), torch.ones(int(m.sum())), atol=1e-5, rtol=0)
    p = c["landmarks_2d"][0, 30]
    assert n[int(p[1]), int(p[0]), 2] < -0.8
    # depth: camera z, near the head's distance
    d = c["depth"][0, ..., 0][m[0]]
    assert float(d.min()) > float(t[0, 2]) - 15 and float(d.max()) < float(t[0, 2]) + 15


def test_one_rasterization_matches_renderer(ict_model, neutral_maps):
    """The mask is the rasterizer's coverage of the drawn set, and the shaded map equals render_face."""
    cam, R, t, out, c = neutral_maps
    faces = drawn_faces(ict_model)
    frags = rasterize(cam.to_screen(model_to_camera(out.vertices, R, t)), faces, (96, 96))
    assert torch.equal(c["mask"][..., 0] > 0, frags.triangle_id >= 0)
    ref = render_face(out.vertices, faces, cam, R, t, albedo=region_albedo(ict_model), antialias=False)
    torch.testing.assert_close(c["shaded"], ref.image)
    torch.testing.assert_close(c["normals"], ref.normals)
    torch.testing.assert_close(c["albedo"], ref.albedo)
    torch.testing.assert_close(c["depth"][..., 0], ref.depth)


def test_correspondence_is_template_position(ict_model, neutral_maps):
    cam, R, t, out, c = neutral_maps
    lo, size = correspondence_normalization(ict_model)
    T = ict_model.template
    torch.testing.assert_close(lo, T.amin(0))
    torch.testing.assert_close(lo + size, T.amax(0))
    corr = c["correspondence"][0]
    m = c["mask"][0, ..., 0] > 0
    # neutral shape == template: un-normalised correspondence, moved to camera space, is the unprojected pixel
    model_pts = lo + size * corr[m]  # (P, 3)
    cam_pts = model_to_camera(model_pts[None], R, t)[0]
    ys, xs = m.nonzero(as_tuple=True)
    pix = torch.stack([xs + 0.5, ys + 0.5], -1).float()[None]
    unproj = cam.unproject(pix, c["depth"][0, ..., 0][m][None])[0]
    assert float((cam_pts - unproj).norm(dim=-1).max()) < 2e-3  # cm
    # at the pixels of visible inner landmarks (brows, nose, eye corners, mouth) the value is the landmark's
    # template coordinate, within the size of a pixel on the face (about 0.3 cm here)
    lm_ids = torch.as_tensor(ict_model.landmarks["ibug68"].vertex_index)
    pts = c["landmarks_2d"][0]
    for i in list(range(17, 36)) + [36, 39, 42, 45] + list(range(48, 60)):
        x, y = int(pts[i, 0]), int(pts[i, 1])
        got = lo + size * corr[y, x]
        assert float((got - T[lm_ids[i]]).norm()) < 0.6, i
    # and it does not depend on the expression or the pose
    w = weights(ict_model, {"jawOpen": 1.0})
    c2 = conditioning_maps(ict_model, ict_model(expression=w), cam, torch.tensor([[0.0, 0.3, 0.0]]), t,
                           maps=("correspondence", "landmarks_2d"))
    for i in (30, 36, 45):  # nose tip, outer eye corners
        x, y = (int(v) for v in c2["landmarks_2d"][0, i])
        got = lo + size * c2["correspondence"][0, y, x]
        assert float((got - T[lm_ids[i]]).norm()) < 0.6, i


def test_uv_at_a_vertex_pixel(ict_model):
    """Shift the camera so that a vertex projects exactly onto a pixel centre: the uv map there is its uv."""
    vid = int(ict_model.landmarks["ibug68"].vertex_index[30])  # nose tip (tile 0)
    cam, R, t = frame_face(ict_model, 64)
    v = ict_model.template[None].double()
    cam = cam.apply(lambda x: x.double())
    R, t = R.double(), t.double()
    p = cam.project(model_to_camera(v[:, vid:vid + 1], R, t))[0, 0]
    target = torch.floor(p) + 0.5
    cam = cam.replace(cx=cam.cx + (target[0] - p[0]), cy=cam.cy + (target[1] - p[1]))
    c = conditioning_maps(ict_model, v, cam, R, t, maps=("uv", "uv_tile"))
    x, y = int(target[0]), int(target[1])
    corners = ict_model.faces_uv[(ict_model.faces == vid)]
    candidates = ict_model.uvs[corners].double()
    assert candidates.numel()
    dist = (candidates - c["uv"][0, y, x]).norm(dim=-1).min()
    assert float(dist) < 1e-5
    assert int(c["uv_tile"][0, y, x, 0]) == 0
    # the UDIM tiles: face 0, head / neck 1; local uv in [0, 1]
    yaw = conditioning_maps(ict_model, v, cam, torch.tensor([[0.0, 1.3, 0.0]], dtype=torch.float64), t,
                            maps=("uv", "uv_tile", "regions"))
    tiles = yaw["uv_tile"][yaw["regions"] > 0]
    assert {0, 1} <= set(tiles.unique().tolist())
    assert float(yaw["uv"].min()) >= 0 and float(yaw["uv"].max()) <= 1


def test_regions_teeth_eyes(ict_model):
    cam, R, t = frame_face(ict_model, 128)
    w = torch.cat([weights(ict_model, {"jawOpen": 1.0, "mouthSmile_L": 0.5, "mouthSmile_R": 0.5}),
                   weights(ict_model, {"mouthPress_L": 1.0, "mouthPress_R": 1.0})])
    c = conditioning_maps(ict_model, ict_model(expression=w), cam, R, t, maps=("regions", "regions_onehot", "mask"))
    r = c["regions"][..., 0]
    count = [[int((r[b] == k).sum()) for k in range(len(REGION_NAMES))] for b in range(2)]
    assert REGION_NAMES == ("background", "skin", "eyes", "mouth_interior", "teeth")
    open_, closed = count
    assert open_[3] > 50 and open_[4] > 5  # mouth interior and teeth visible
    assert closed[3] == 0 and closed[4] == 0  # closed mouth: neither
    assert open_[2] > 20 and closed[2] > 20  # eyes
    assert open_[1] > 0.3 * 128 * 128
    torch.testing.assert_close(c["regions_onehot"].argmax(-1), r)
    torch.testing.assert_close(c["regions_onehot"].sum(-1), torch.ones_like(r, dtype=torch.float32))
    assert torch.equal(r > 0, c["mask"][..., 0] > 0)
    # the teeth lie in the mouth: between the mouth corners
    ys, xs = (r[0] == 4).nonzero(as_tuple=True)
    lm = conditioning_maps(ict_model, ict_model(expression=w[:1]), cam, R, t, maps=("landmarks_2d",))["landmarks_2d"]
    assert float(lm[0, 48, 0]) - 2 <= float(xs.min()) and float(xs.max()) <= float(lm[0, 54, 0]) + 2


def iris_centroid(gaze, colour, right_half):
    g = gaze[0]
    sel = (g == torch.tensor(colour)).all(-1) | (g == torch.tensor(GAZE_COLORS["pupil"])).all(-1)
    W = g.shape[1]
    if right_half:
        sel[:, : W // 2] = False
    else:
        sel[:, W // 2:] = False
    ys, xs = sel.nonzero(as_tuple=True)
    return torch.stack([xs.float().mean(), ys.float().mean()]), int(sel.sum())


def test_gaze_map_follows_eye_look(ict_model):
    cam, R, t = frame_face(ict_model, 160)
    outs = {k: ict_model(expression=weights(ict_model, v)) for k, v in {
        "neutral": {}, "out": {"eyeLookOut_L": 1.0}, "in": {"eyeLookIn_L": 1.0}, "up": {"eyeLookUp_L": 1.0},
        "blink": {"eyeBlink_L": 1.0, "eyeBlink_R": 1.0}}.items()}
    g = {k: conditioning_maps(ict_model, o, cam, R, t, maps=("gaze",))["gaze"] for k, o in outs.items()}
    red, green = GAZE_COLORS["iris_left"], GAZE_COLORS["iris_right"]
    # only eye colours appear
    colours = {tuple(x) for x in g["neutral"][0].reshape(-1, 3).tolist()}
    assert colours <= {(0.0, 0.0, 0.0)} | {tuple(v) for v in GAZE_COLORS.values()}
    # the subject's left eye (red) is on the image right
    left0, n_left = iris_centroid(g["neutral"], red, True)
    right0, n_right = iris_centroid(g["neutral"], green, False)
    assert n_left > 10 and n_right > 10 and left0[0] > 80 > right0[0]
    left_out, _ = iris_centroid(g["out"], red, True)
    left_in, _ = iris_centroid(g["in"], red, True)
    left_up, _ = iris_centroid(g["up"], red, True)
    assert float(left_out[0] - left0[0]) > 2  # looks to the subject's left = image right
    assert float(left_in[0] - left0[0]) < -2
    assert float(left_up[1] - left0[1]) < -1  # up in the image
    right_out, _ = iris_centroid(g["out"], green, False)
    torch.testing.assert_close(right_out, right0)  # the other eye did not move
    # a blink hides the eyes
    assert int((g["blink"] > 0).any(-1).sum()) <= 2
    # without eye_gaze (or with raw vertices), the eyeballs stay: ICT's eyeLook shapes do not move them
    still = conditioning_maps(ict_model, outs["out"], cam, R, t, maps=("gaze",), eye_gaze=False)["gaze"]
    assert float(iris_centroid(still, red, True)[0][0] - left0[0]) < 0.5
    raw = conditioning_maps(ict_model, outs["out"].vertices, cam, R, t, maps=("gaze",))["gaze"]
    torch.testing.assert_close(raw, still)


def test_eye_rotation_is_rigid(ict_model):
    w = weights(ict_model, {"eyeLookOut_L": 1.0, "eyeLookUp_R": 0.5})
    v = ict_model(expression=w).vertices
    R = eye_rotations(ict_model, w)
    assert R.shape == (1, 2, 3, 3)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3).expand(1, 2, 3, 3), atol=1e-6, rtol=0)
    rv = rotate_eyes(ict_model, v, w)
    assert rv is not v and not torch.equal(rv, v)
    ids = torch.as_tensor(ict_model.regions["eyeball_left"].vertex_ids)
    others = torch.ones(ict_model.num_vertices, dtype=torch.bool)
    for side in ("left", "right"):
        others[torch.as_tensor(ict_model.regions[f"eyeball_{side}"].vertex_ids)] = False
    assert torch.equal(rv[:, others], v[:, others])
    # distances within the eyeball are kept; the left eye turned by GAZE_ANGLES["out"] towards +x
    a, b = v[0, ids[:50]], rv[0, ids[:50]]
    def dists(x):
        return (x[:, None] - x[None]).norm(dim=-1)

    torch.testing.assert_close(dists(a), dists(b), atol=1e-4, rtol=0)
    from facerender.render.conditioning import GAZE_ANGLES

    yaw = math.degrees(math.atan2(float(R[0, 0, 0, 2]), float(R[0, 0, 0, 0])))
    assert yaw == pytest.approx(GAZE_ANGLES["out"], abs=1e-4)


def test_landmark_heatmaps_peak_at_landmarks(ict_model, neutral_maps):
    cam, R, t, out, c = neutral_maps
    expect = cam.project(model_to_camera(ict_model.get_landmarks(out.vertices), R, t))
    torch.testing.assert_close(c["landmarks_2d"], expect)
    heat = c["landmarks"][0]  # (H, W, 68)
    flat = heat.reshape(-1, 68).argmax(0)
    ys, xs = flat // 96, flat % 96
    # the brightest pixel contains the landmark (points on the midline lie on a pixel edge: either side)
    assert bool(((xs + 0.5 - expect[0, :, 0]).abs() <= 0.5 + 1e-4).all())
    assert bool(((ys + 0.5 - expect[0, :, 1]).abs() <= 0.5 + 1e-4).all())
    assert (xs == expect[0, :, 0].floor().long()).float().mean() > 0.8
    sigma = 96 / 128
    d2 = ((xs + 0.5 - expect[0, :, 0]) ** 2 + (ys + 0.5 - expect[0, :, 1]) ** 2)
    torch.testing.assert_close(heat.reshape(-1, 68).amax(0), torch.exp(-d2 / (2 * sigma ** 2)))
    torch.testing.assert_close(c["landmark_image"][0, ..., 0], heat.amax(-1))
    # differentiable w.r.t. the points (float64 gradcheck)
    pts = (torch.rand(1, 3, 2, dtype=torch.float64) * 8).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: landmark_heatmaps(p, (8, 9), 1.3), (pts,))
    with pytest.raises(ValueError, match="sigma"):
        landmark_heatmaps(pts, (8, 8), 0.0)


def test_batch_equals_loop_and_module(ict_model):
    cam, R, t = frame_face(ict_model, 64)
    w = torch.cat([weights(ict_model, {}), weights(ict_model, {"jawOpen": 0.8, "eyeLookOut_L": 1.0})])
    out = ict_model(expression=w)
    R2 = torch.tensor([[0.0, 0.0, 0.0], [0.05, -0.4, 0.0]])
    names = ("shaded", "normals", "correspondence", "uv", "regions", "gaze", "landmarks_2d", "landmark_image")
    batch = conditioning_maps(ict_model, out, cam, R2, t.expand(2, 3), maps=names)
    for i in range(2):
        single = conditioning_maps(ict_model, ict_model(expression=w[i:i + 1]), cam, R2[i:i + 1], t, maps=names)
        for k in names:
            torch.testing.assert_close(batch[k][i], single[k][0], atol=1e-5, rtol=0, msg=k)
    module = ConditioningRenderer(ict_model, names)
    for k, v in module(out, cam, R2, t.expand(2, 3)).items():
        torch.testing.assert_close(v, batch[k])
    assert "maps=" in repr(module)


def test_maps_by_name_dtype_and_defaults(ict_model):
    cam, R, t = frame_face(ict_model, 32)
    out = ict_model()
    c = conditioning_maps(ict_model, out, cam, R, t)
    assert tuple(c) == DVP_MAPS
    c = conditioning_maps(ict_model, out, cam, R, t, maps=["mask", "depth"])
    assert list(c) == ["mask", "depth"]
    c64 = conditioning_maps(ict_model, out.vertices.double(), cam, R, t, maps=("shaded", "correspondence"))
    assert all(v.dtype == torch.float64 for v in c64.values())
    c32 = conditioning_maps(ict_model, out.vertices, cam, R, t, maps=("shaded", "correspondence"))
    for k in c32:
        torch.testing.assert_close(c64[k].float(), c32[k], atol=2e-3, rtol=0)
    # a given albedo and light are used
    white = torch.ones(ict_model.num_vertices, 3)
    a = conditioning_maps(ict_model, out, cam, R, t, albedo=white, maps=("albedo",))["albedo"]
    assert float(a.max()) == pytest.approx(1.0)


def test_errors_state_what_was_received(ict_model):
    cam, R, t = frame_face(ict_model, 16)
    v = ict_model.template[None]
    with pytest.raises(ValueError, match=r"unknown conditioning map\(s\) \['colour'\].*available"):
        conditioning_maps(ict_model, v, cam, R, t, maps=("shaded", "colour"))
    with pytest.raises(ValueError, match="empty"):
        conditioning_maps(ict_model, v, cam, R, t, maps=())
    with pytest.raises(ShapeError, match=r"vertices have 10 vertices \(\(1, 10, 3\)\) but the model has 26719"):
        conditioning_maps(ict_model, v[:, :10], cam, R, t)
    with pytest.raises(ShapeError, match=r"\(B, V, 3\).*\(26719, 3\)"):
        conditioning_maps(ict_model, ict_model.template, cam, R, t)
    with pytest.raises(ShapeError, match=r"batch mismatch.*vertices \(2, 26719, 3\) \(batch 2\), rotation \(3, 3, 3\) \(batch 3\)"):
        conditioning_maps(ict_model, v.expand(2, -1, -1), cam, torch.zeros(3, 3, 3), t)
    with pytest.raises(ShapeError, match=r"albedo must be .*got \(1, 5, 3\)"):
        conditioning_maps(ict_model, v, cam, R, t, albedo=torch.rand(1, 5, 3))


def test_model_without_regions():
    """A plain mesh model: everything drawn is region 1; the gaze map needs eyes."""
    verts = torch.tensor([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]])
    model = LinearFaceModel(verts, torch.tensor([[0, 1, 2], [0, 2, 3]]), uvs=(verts[:, :2] + 1) / 2)
    cam, R, t = frame_face(model, 16, region=None)
    c = conditioning_maps(model, model(), cam, R, t, maps=("regions", "uv", "albedo", "correspondence"))
    m = c["regions"][..., 0] > 0
    assert bool(m.any()) and set(c["regions"][m].unique().tolist()) == {1}
    assert float(c["uv"].max()) <= 1
    with pytest.raises(ValueError, match="gaze map needs eyeball regions"):
        conditioning_maps(model, model(), cam, R, t, maps=("gaze",))
    with pytest.raises(ValueError, match="no landmark set 'ibug68'"):
        conditioning_maps(model, model(), cam, R, t, maps=("landmarks",))
