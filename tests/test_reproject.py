"""Colouring the reenacted face from the current target frame: exact reprojection through identical meshes,
the mapping direction, occlusion and newly exposed surface, recolouring with the fallback, the UV round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facerender.reenact.reproject import (
    FrameReprojector,
    RecolorConfig,
    frame_texture,
    recolor,
    reproject_frame,
    sample_frame_texture,
)
from facerender.render.rasterize import RasterSettings, rasterize
from morphable_models.errors import ShapeError

F64 = torch.float64


# ------------------------------------------------------------------------------------------------------ scenes
def plane(n, x0, x1, y0, y1, z, bump=0.0):
    """A grid mesh in camera space (x right, y down, z forward) facing the camera; ``(V, 3)``, ``(F, 3)``."""
    xs = torch.linspace(x0, x1, n, dtype=F64)
    ys = torch.linspace(y0, y1, n, dtype=F64)
    Y, X = torch.meshgrid(ys, xs, indexing="ij")
    Z = z + bump * torch.sin(X * 1.3) * torch.cos(Y * 0.9)
    v = torch.stack([X, Y, Z], -1).reshape(-1, 3)
    faces = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            faces += [[a, c, b], [b, c, d]]
    return v, torch.tensor(faces)


def pinhole(v, f=60.0, c=32.0):
    return torch.stack([f * v[:, 0] / v[:, 2] + c, f * v[:, 1] / v[:, 2] + c, v[:, 2]], -1)


def front_facing(sv, faces):
    """Flip faces so that they are front faces in screen space (negative signed area)."""
    p = sv[faces]
    area = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 2, 0] - p[:, 0, 0]) * (p[:, 1, 1] - p[:, 0, 1])
    return torch.where((area > 0)[:, None], faces[:, [0, 2, 1]], faces)


def noise_frame(H=64, W=64, seed=0):
    return torch.rand(H, W, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)


def smooth_frame(H=64, W=64):
    y, x = torch.meshgrid(torch.arange(H, dtype=F64), torch.arange(W, dtype=F64), indexing="ij")
    return torch.stack([0.5 + 0.3 * torch.sin(x / 9), 0.5 + 0.3 * torch.cos(y / 11),
                        0.4 + 0.2 * torch.sin((x + y) / 13)], -1)


def bumpy_scene():
    v, faces = plane(24, -3.5, 3.5, -3.5, 3.5, 8.0, bump=0.4)
    sv = pinhole(v)[None]
    return sv, front_facing(sv[0], faces)


# --------------------------------------------------------------------------------------------- direct path
def test_identical_mesh_reproduces_the_frame_on_visible_pixels():
    sv, faces = bumpy_scene()
    frame = noise_frame()
    fr = rasterize(sv, faces, (64, 64))
    rep = reproject_frame(frame, fr, sv[0])
    covered = fr.mask[0]
    assert rep.colors.shape == (64, 64, 3) and rep.valid.shape == (64, 64) and rep.colors.dtype == F64
    assert not bool((rep.valid & ~covered).any())
    assert int(rep.valid.sum()) > 0.9 * int(covered.sum())
    assert float((rep.colors - frame)[rep.valid].abs().max()) < 1e-9
    assert float(rep.colors[~rep.valid].abs().max()) == 0.0
    # uint8 frames are read as float32 / 255
    rep8 = reproject_frame((frame * 255).round().to(torch.uint8), fr, sv[0])
    assert rep8.colors.dtype == torch.float32
    assert torch.allclose(rep8.colors[rep8.valid].double(), (frame * 255).round()[rep8.valid] / 255, atol=1e-6)


def test_mapping_direction_a_shifted_render_reads_the_shifted_frame():
    sv, faces = bumpy_scene()
    frame = noise_frame(seed=1)
    moved = sv.clone()
    moved[..., 0] += 3.0  # the reenacted face is 3 px to the right, 2 px down
    moved[..., 1] += 2.0
    fr = rasterize(moved, faces, (64, 64))
    rep = reproject_frame(frame, fr, sv)
    assert rep.valid.shape == (64, 64)  # an unbatched frame and a batch-1 render: unbatched results
    rows, cols = torch.nonzero(rep.valid, as_tuple=True)
    assert rows.numel() > 1000
    assert torch.allclose(rep.colors[rows, cols], frame[rows - 2, cols - 3], atol=1e-9)
    # positions: where each covered pixel's surface point lies in the tracked frame (3 px left, 2 px up)
    centres = torch.stack(torch.meshgrid(torch.arange(64.0) + 0.5, torch.arange(64.0) + 0.5, indexing="xy"), -1)
    cov = fr.mask[0]
    motion = (rep.positions - centres.to(rep.positions.dtype))[cov]
    assert torch.allclose(motion, torch.tensor([-3.0, -2.0], dtype=motion.dtype).expand_as(motion), atol=1e-6)
    assert bool(torch.isnan(rep.positions[~cov]).all())


def test_orthographic_screen_space():
    v, faces = plane(16, -2, 2, -2, 2, 8.0, bump=0.3)
    sv = torch.stack([12 * v[:, 0] + 32, 12 * v[:, 1] + 32, v[:, 2]], -1)[None]
    faces = front_facing(sv[0], faces)
    fr = rasterize(sv, faces, (64, 64), RasterSettings(perspective_correct=False))
    frame = noise_frame(seed=2)
    rep = reproject_frame(frame, fr, sv)
    assert int(rep.valid.sum()) > 0.9 * int(fr.mask.sum())
    assert float((rep.colors - frame)[rep.valid].abs().max()) < 1e-9


def occlusion_scene():
    """A back plane filling the image and a small front plane occluding its centre in the TRACKED frame; in the
    reenacted render the front plane has moved out of view."""
    vb, fb = plane(8, -12, 12, -12, 12, 20.0)
    vf, ff = plane(4, -1.5, 1.5, -1.5, 1.5, 10.0)
    faces = torch.cat([fb, ff + vb.shape[0]])
    tracked = pinhole(torch.cat([vb, vf]))[None]
    faces = front_facing(tracked[0], faces)
    reenacted = tracked.clone()
    reenacted[0, vb.shape[0]:, 0] += 200.0  # the front plane leaves the image
    return tracked, reenacted, faces, fb.shape[0]


def test_occluded_surface_is_invalid_and_takes_the_fallback():
    tracked, reenacted, faces, n_back = occlusion_scene()
    frame = noise_frame(seed=3)[None]
    fr = rasterize(reenacted, faces, (64, 64))
    tfr = rasterize(tracked, faces, (64, 64))
    assert bool(fr.mask.all()) and bool((fr.triangle_id < n_back).all())
    occluded = tfr.triangle_id[0] >= n_back  # what the tracked frame shows of the front plane
    assert 100 < int(occluded.sum()) < 64 * 64 // 2
    rep = reproject_frame(frame, fr, tracked)
    assert torch.equal(rep.valid[0], ~occluded)
    assert float((rep.colors[0] - frame[0])[~occluded].abs().max()) < 1e-9
    # the caller's tracked rasterization gives the same
    rep2 = reproject_frame(frame, fr, tracked, tracked_fragments=tfr)
    assert torch.equal(rep2.valid, rep.valid) and torch.equal(rep2.colors, rep.colors)
    # recolour: invalid pixels show the fallback exactly, valid ones the frame
    fallback = torch.full((1, 64, 64, 3), 0.25, dtype=F64)
    out = recolor(rep.colors, rep.valid, fallback, fr.mask, feather=0, match=None)
    assert torch.equal(out[0][occluded], fallback[0][occluded])
    assert torch.allclose(out[0][~occluded], frame[0][~occluded])
    # with feathering the weight is 0 on invalid pixels and ramps up to 1 within `feather` pixels
    out, w = recolor(rep.colors, rep.valid, fallback, fr.mask, feather=3, match=None, return_weight=True)
    assert float(w[0][occluded].max()) == 0.0 and float(w[0, 0, 0]) == 1.0
    assert torch.equal(out[0][occluded], fallback[0][occluded])
    assert sorted(set(np.round(w[0].numpy(), 4).ravel().tolist())) == [0.0, 0.3333, 0.6667, 1.0]


def test_gain_matching_gives_the_fallback_the_frame_colours():
    frame = smooth_frame()[None]
    valid = torch.zeros(1, 64, 64, dtype=torch.bool)
    valid[:, :, :32] = True
    colors = torch.where(valid[..., None], frame, torch.zeros(()))
    fallback = 0.6 * frame  # the right shading, the wrong brightness
    plain = recolor(colors, valid, fallback, feather=2, match=None)
    matched = recolor(colors, valid, fallback, feather=2, match="gain", scale=8)
    assert torch.allclose(plain[:, :, 34:], fallback[:, :, 34:])
    assert float((matched - frame)[:, :, 34:].abs().max()) < 0.02
    assert float((plain - frame)[:, :, 34:].abs().mean()) > 0.15
    assert torch.allclose(matched[:, :, :30], frame[:, :, :30])


def test_batches_and_module():
    sv, faces = bumpy_scene()
    sv2 = torch.cat([sv, sv + torch.tensor([2.0, -1.0, 0.0], dtype=F64)])
    frames = torch.stack([noise_frame(seed=4), noise_frame(seed=5)])
    fr = rasterize(sv2.flip(0), faces, (64, 64))  # reenacted = the other item's tracked mesh
    rep = reproject_frame(frames, fr, sv2)
    for b in range(2):
        fb = rasterize(sv2.flip(0)[b:b + 1], faces, (64, 64))
        one = reproject_frame(frames[b], fb, sv2[b])
        assert torch.equal(rep.valid[b], one.valid) and torch.allclose(rep.colors[b], one.colors)
    fallback = torch.zeros(2, 64, 64, 3, dtype=F64)
    img, w = FrameReprojector(RecolorConfig(feather=0, match=None))(frames, fr, sv2, fallback)
    assert img.shape == (2, 64, 64, 3) and torch.equal(w > 0, rep.valid)
    assert torch.allclose(img[rep.valid], rep.colors[rep.valid])


def test_bad_input_raises_with_what_was_received():
    sv, faces = bumpy_scene()
    fr = rasterize(sv, faces, (64, 64))
    frame = noise_frame()
    with pytest.raises(ShapeError, match="fragments must be the Fragments of the reenacted render, got Tensor"):
        reproject_frame(frame, fr.triangle_id, sv)
    with pytest.raises(ShapeError, match=r"frame must be a \(B, H, W, C\) or \(H, W, C\) image, got \(64, 64\)"):
        reproject_frame(frame[..., 0], fr, sv)
    with pytest.raises(ShapeError, match="frame must be uint8 or floating point, got torch.int32"):
        reproject_frame(frame.to(torch.int32), fr, sv)
    with pytest.raises(ShapeError, match=r"tracked_screen_vertices must be a float \(B, V, 3\).*got \(\(576, 2\)"):
        reproject_frame(frame, fr, sv[0, :, :2])
    with pytest.raises(ShapeError, match="batch mismatch: tracked_screen_vertices has batch 2"):
        reproject_frame(frame, fr, torch.cat([sv, sv]))
    with pytest.raises(ShapeError, match=r"faces index out of range: \[0, 575\] for the 100 tracked vertices"):
        reproject_frame(frame, fr, sv[:, :100])
    with pytest.raises(ValueError, match="margin must be an int >= 0, got -1"):
        reproject_frame(frame, fr, sv, margin=-1)
    with pytest.raises(ShapeError, match=r"fallback must have shape \(1, 64, 64, 3\) like colors, got \(32, 32, 3\)"):
        recolor(frame, fr.mask[0], torch.zeros(32, 32, 3))
    with pytest.raises(ValueError, match="match must be None or 'gain', got 'hist'"):
        recolor(frame, fr.mask[0], frame, match="hist")


# ---------------------------------------------------------------------------------------- ICT: mouth opening
@pytest.fixture(scope="module")
def ict_scene(ict_model):
    from facerender.render.conditioning import conditioning_maps
    from facerender.render.renderer import frame_face

    model = ict_model
    cam, R, t = frame_face(model, 128)
    names = list(model.expression_names)
    neutral = model(expression=torch.zeros(1, len(names)))
    w = torch.zeros(1, len(names))
    w[0, names.index("jawOpen")] = 0.7
    opened = model(expression=w)
    maps = conditioning_maps(model, opened, cam, R, t, maps=("uv", "uv_tile", "regions"))
    from facerender.render.conditioning import SKIPPED_REGIONS, _tables

    faces = _tables(model, SKIPPED_REGIONS, "cpu", torch.float32).faces
    from morphable_models import model_to_camera

    tracked = cam.to_screen(model_to_camera(neutral.vertices, R, t))
    reen = cam.to_screen(model_to_camera(opened.vertices, R, t))
    return dict(model=model, faces=faces, tracked=tracked, reen=reen, maps=maps)


def test_ict_mouth_opening_exposes_surface_that_takes_the_fallback(ict_scene):
    s = ict_scene
    frame = smooth_frame(128, 128).float()
    tracked_fr = rasterize(s["tracked"], s["faces"], (128, 128))
    same = reproject_frame(frame, tracked_fr, s["tracked"])
    assert float((same.colors - frame)[same.valid].abs().max()) < 1e-5
    assert int(same.valid.sum()) > 0.9 * int(tracked_fr.mask.sum())
    fr = rasterize(s["reen"], s["faces"], (128, 128))
    rep = reproject_frame(frame, fr, s["tracked"], tracked_fragments=tracked_fr)
    regions = s["maps"]["regions"][0, ..., 0]
    interior = (regions == 3) | (regions == 4)  # mouth interior and teeth: hidden behind the closed lips
    assert int(interior.sum()) > 10 and not bool(rep.valid[interior].any())
    fallback = torch.full((128, 128, 3), 0.2)
    out = recolor(rep.colors, rep.valid, fallback, fr.mask[0], feather=0, match=None)
    assert torch.equal(out[interior], fallback[interior])


def test_ict_uv_round_trip_agrees_with_the_direct_path(ict_scene):
    s = ict_scene
    model = s["model"]
    frame = smooth_frame(128, 128).float()
    tex, valid = frame_texture(frame, s["tracked"][0], s["faces"], model.uvs, _faces_uv(model, s["faces"]),
                               size=256, tile=0)
    uv, tile = s["maps"]["uv"], s["maps"]["uv_tile"][..., 0]
    rep_uv = sample_frame_texture(tex, valid, uv, mask=tile == 0)
    fr = rasterize(s["reen"], s["faces"], (128, 128))
    rep = reproject_frame(frame, fr, s["tracked"])
    both = rep_uv.valid & rep.valid
    assert int(both.sum()) > 0.8 * int(rep.valid.sum() - (rep.valid & (tile != 0)).sum())
    assert float((rep_uv.colors - rep.colors)[both].abs().mean()) < 0.01


def _faces_uv(model, faces):
    """faces_uv rows of the drawn faces (matched through the vertex triples)."""
    from facerender.render.conditioning import SKIPPED_REGIONS, _tables

    return _tables(model, SKIPPED_REGIONS, "cpu", torch.float32).faces_uv
