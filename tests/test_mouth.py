"""Mouth retrieval: normalised descriptors, exact matches, temporal coherence (no flip-flop, successors), "nothing
fits", the thin-plate warp onto target landmarks and the inner-mouth alpha."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facerender.reenact.mouth import (
    INNER_LIP_POINTS,
    OUTER_LIP_POINTS,
    MouthConfig,
    MouthDatabase,
    MouthMatch,
    inner_mouth_alpha,
    mouth_expression_indices,
    mouth_shape_descriptor,
    tps_fit,
    tps_transform,
)
from morphable_models.errors import ShapeError


def mouth_landmarks(cx=128.0, cy=170.0, width=70.0, opening=10.0, smile=0.0, roll=0.0):
    """Synthetic iBUG-68 landmarks: an elliptic outer lip (48-59, corners 48 and 54) and inner lip (60-67)."""
    lm = np.zeros((68, 2))
    for k in range(12):  # 48 at the left corner, then along the upper lip to 54, back along the lower lip
        a = math.pi - k * math.pi / 6
        lm[48 + k] = (math.cos(a) * width / 2,
                      -math.sin(a) * (0.25 * width + opening / 2) - smile * math.cos(a) ** 2 * width * 0.1)
    for k in range(8):
        a = math.pi - k * math.pi / 4
        lm[60 + k] = (math.cos(a) * width * 0.38, -math.sin(a) * (opening / 2 + 0.02 * width))
    R = np.array([[math.cos(roll), -math.sin(roll)], [math.sin(roll), math.cos(roll)]])
    lm = lm @ R.T + (cx, cy)
    lm[:48] = (cx, cy - 60)  # the rest of the face does not matter here
    return lm


def random_db(n=24, seed=0, frames=None, config=None, size=160):
    rng = np.random.default_rng(seed)
    lms = np.stack([mouth_landmarks(size / 2 + rng.normal() * 2, size * 0.62 + rng.normal() * 2,
                                    size * 0.3 + rng.normal() * 2, abs(rng.normal()) * 12, rng.normal() * 0.4)
                    for _ in range(n)])
    exprs = rng.random((n, 4))
    if frames is None:
        frames = (rng.random((n, size, size, 3)) * 255).astype(np.uint8)
    names = ["jawOpen", "mouthSmile_L", "eyeBlink_L", "mouthPucker"]
    return MouthDatabase.build(frames, lms, exprs, expression_names=names, config=config), lms, exprs


def test_descriptor_is_similarity_invariant_and_expression_names():
    lm = mouth_landmarks(opening=14, smile=0.3)
    R = np.array([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]])
    moved = (lm - 50) @ R.T * 1.7 + 200
    d0, d1 = mouth_shape_descriptor(torch.tensor(lm)), mouth_shape_descriptor(torch.tensor(moved))
    assert d0.shape == (36,) and torch.allclose(d0, d1, atol=1e-12)
    assert mouth_expression_indices(["browDown_L", "jawOpen", "MouthClose", "eyeBlink_L"]) == [1, 2]


def test_exact_descriptor_match_is_retrieved():
    db, lms, exprs = random_db()
    assert len(db) == 24
    R = np.array([[math.cos(-0.2), -math.sin(-0.2)], [math.sin(-0.2), math.cos(-0.2)]])
    for i in (0, 7, 23):
        q = (lms[i] - 80) @ R.T * 1.3 + 90  # another position, roll and scale
        m = db.query(q, exprs[i])
        assert isinstance(m, MouthMatch) and m.index == i and m.frame_id == i
        assert m.unary < 1e-6 and m.score > 0.9999
    # the expression descriptor uses only the mouth / jaw weights: changing eyeBlink changes nothing
    e = exprs[7].copy()
    e[2] = 1 - e[2]
    assert db.query(lms[7], e).unary < 1e-6
    assert [m.index for m in db.retrieve(lms[[3, 4, 5]], exprs[[3, 4, 5]])] == [3, 4, 5]


def test_nothing_fits_returns_none_and_empty_database():
    db, lms, exprs = random_db(config=MouthConfig(max_cost=0.05))
    wide_open = mouth_landmarks(80, 100, 48, opening=60)
    assert db.query(wide_open) is None
    assert db.retrieve(np.stack([wide_open, lms[2]]), None)[0] is None
    assert db.retrieve(np.stack([wide_open, lms[2]]), None)[1].index == 2
    empty = MouthDatabase()
    assert len(empty) == 0 and empty.query(lms[0]) is None and empty.retrieve(lms[:2]) == [None, None]


def flip_flop_db(config):
    """Two entries with nearly the same mouth but a different look, far apart in time, and queries that alternate
    between being a hair closer to one and to the other."""
    a = mouth_landmarks(opening=10.0)
    b = mouth_landmarks(opening=10.4)
    frames = np.zeros((2, 160, 160, 3), np.uint8)
    frames[0, :, :, 0] = np.tile(np.arange(160, dtype=np.uint8), (160, 1))  # different appearance
    frames[1, :, :, 1] = np.tile(np.arange(160, dtype=np.uint8)[:, None], (1, 160))
    db = MouthDatabase.build(frames, np.stack([a, b]), frame_ids=[0, 50], config=config)
    queries = np.stack([mouth_landmarks(opening=10.15 if t % 2 else 10.25) for t in range(12)])
    return db, queries


def test_temporal_coherence_prevents_flip_flopping():
    db, queries = flip_flop_db(MouthConfig(w_switch=0.0, w_appearance=0.0))
    free = [m.index for m in db.retrieve(queries)]
    assert free == [1, 0] * 6  # without temporal terms the choice alternates
    db, queries = flip_flop_db(MouthConfig())
    chosen = [m.index for m in db.retrieve(queries)]
    assert len(set(chosen)) == 1
    # the greedy online query with the previous match does not flip either
    prev, online = None, []
    for q in queries:
        prev = db.query(q, previous=prev)
        online.append(prev.index)
    assert len(set(online[1:])) == 1


def test_retrieval_plays_the_target_on_instead_of_jumping():
    # a database of a mouth opening and closing slowly, twice; queries follow the first pass
    openings = np.concatenate([np.linspace(0, 20, 10), np.linspace(20, 0, 10)] * 2)
    lms = np.stack([mouth_landmarks(opening=o) for o in openings])
    frames = (np.random.default_rng(1).random((40, 160, 160, 3)) * 255).astype(np.uint8)
    db = MouthDatabase.build(frames, lms)
    q = np.stack([mouth_landmarks(opening=o + 0.3) for o in openings[2:12]])
    idx = [m.index for m in db.retrieve(q)]
    steps = np.diff(idx)
    assert set(steps.tolist()) <= {0, 1}  # stays or plays on: no jumps between the two passes
    assert len(set(i // 20 for i in idx)) == 1


def test_warp_maps_the_landmarks_onto_the_target_positions():
    # frames whose colours encode their own pixel coordinates: the warped crop must show, at each desired
    # landmark, the coordinates of that landmark in the retrieved frame
    size = 160
    ys, xs = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    coord = np.stack([xs / size, ys / size, np.zeros_like(xs)], -1).astype(np.float32)
    db, lms, _ = random_db(n=3, frames=np.stack([coord] * 3), size=size)
    target = mouth_landmarks(120, 130, 64, opening=22, smile=0.2, roll=0.1)
    target[48:68] = np.floor(target[48:68]) + 0.5  # on pixel centres
    w = db.warp(1, target, (200, 220), regularization=0.0)
    assert w.image.shape == (200, 220, 3) and w.alpha.shape == (200, 220)
    for p in range(48, 68):
        top, bottom, left, right = w.box
        x, y = target[p]
        if not (left <= x < right and top <= y < bottom):
            continue
        got = w.image[int(y), int(x), :2].numpy() * size
        assert np.allclose(got, lms[1, p], atol=0.5), (p, got, lms[1, p])
    # alpha: the inside of the inner lips, feathered, nothing far outside
    inner = target[list(INNER_LIP_POINTS)].mean(0)
    assert float(w.alpha[int(inner[1]), int(inner[0])]) == 1.0
    assert float(w.alpha[:int(target[48:60, 1].min()) - 3].max()) == 0.0
    a = inner_mouth_alpha(target, (200, 220), grow=0.0, feather=0.0)
    assert 0.5 * polygon_area(target[60:68]) < float(a.sum()) < 1.5 * polygon_area(target[60:68])


def polygon_area(p):
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def test_crops_are_normalised_by_the_mouth_corners():
    # the same picture of a mouth, rotated and scaled with its landmarks, gives the same crop
    size = 200
    ys, xs = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    lm0 = mouth_landmarks(100, 110, 60, opening=12)
    pattern = lambda x, y: 0.5 + 0.4 * np.sin((x - 100) / 7.0) * np.cos((y - 110) / 5.0)  # noqa: E731
    img0 = np.repeat(pattern(xs, ys)[..., None], 3, -1)
    ang, s = 0.35, 0.8
    R = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    lm1 = (lm0 - 100) @ R.T * s + 100
    back = np.einsum("ij,hwj->hwi", R.T, np.stack([xs - 100, ys - 100], -1)) / s + 100  # the inverse map
    img1 = np.repeat(pattern(back[..., 0], back[..., 1])[..., None], 3, -1)
    db = MouthDatabase.build(np.stack([img0, img1]).astype(np.float32), np.stack([lm0, lm1]))
    c0, c1 = db.entry(0)["crop"].float(), db.entry(1)["crop"].float()
    assert c0.shape == (64, 96, 3) and db.entry(0)["crop"].dtype == torch.uint8
    assert float((c0 - c1).abs().mean()) < 4.0  # uint8 levels
    assert torch.allclose(db.entry(0)["crop_landmarks"], db.entry(1)["crop_landmarks"], atol=1e-3)
    # memory: about 18 KB per entry
    assert 18_000 < db.memory_bytes / 2 < 19_500


def test_tps_interpolates_and_reproduces_affine_maps():
    g = torch.Generator().manual_seed(0)
    src = torch.rand(20, 2, generator=g, dtype=torch.float64) * 50
    dst = src + torch.randn(20, 2, generator=g, dtype=torch.float64)
    p = tps_fit(src, dst)
    assert torch.allclose(tps_transform(p, src), dst, atol=1e-8)
    A = torch.tensor([[1.1, 0.2], [-0.1, 0.9]], dtype=torch.float64)
    p = tps_fit(src, src @ A.T + 3)
    pts = torch.rand(50, 2, generator=g, dtype=torch.float64) * 80
    assert torch.allclose(tps_transform(p, pts), pts @ A.T + 3, atol=1e-8)


def test_add_online_state_dict_and_bad_input():
    db, lms, exprs = random_db(n=5)
    frame = np.zeros((160, 160, 3), np.uint8)
    assert db.add(frame, lms[0], exprs[0]) == 5 and db.entry(5)["frame_id"] == 5
    db2 = MouthDatabase.from_state_dict(db.state_dict())
    assert len(db2) == 6 and db2.query(lms[3], exprs[3]).index == 3
    with pytest.raises(ShapeError, match=r"landmarks must be iBUG-68 landmarks \(68, 2\) in pixels, got \(20, 2\)"):
        db.query(lms[0][48:])
    with pytest.raises(ShapeError, match="expressions has 3 coefficients but expression_names has 4"):
        db.query(lms[0], exprs[0][:3])
    with pytest.raises(ValueError, match="expressions must be given for every frame or for none"):
        db.add(frame, lms[0])
    with pytest.raises(ShapeError, match=r"frame must be \(N, H, W, 3\) or \(H, W, 3\) RGB, got \(160, 160\)"):
        db.add(frame[..., 0], lms[0], exprs[0])
    bad = lms[0].copy()
    bad[54] = bad[48]
    with pytest.raises(ShapeError, match="mouth corners 48 and 54 coincide"):
        db.query(bad)
    with pytest.raises(ValueError, match="crop_size must be \\(h, w\\) with two ints >= 2"):
        MouthConfig(crop_size=(64,))
    with pytest.raises(IndexError, match="entry index 99 out of range for a database of 6"):
        db.warp(99, lms[0], (160, 160))


def coordinate_db(openings, size=160, seed=0):
    """A database whose frames encode their own pixel coordinates (R = x / size, G = y / size), one entry per
    inner-lip opening (px), and its landmarks."""
    ys, xs = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    coord = np.stack([xs / size, ys / size, np.zeros_like(xs)], -1).astype(np.float32)
    lms = np.stack([mouth_landmarks(size / 2, size * 0.62, size * 0.3, opening=o) for o in openings])
    db = MouthDatabase.build(np.stack([coord] * len(openings)), lms)
    return db, lms


def test_wide_opening_keeps_the_teeth_next_to_the_lips_and_fills_a_cavity():
    # the entry barely opens (4 px); the desired mouth opens 40 px: one spline would stretch the entry's few
    # interior pixels over the whole opening; the cavity warp keeps each lip's neighbourhood at <= max_stretch and
    # shades the rest from the lip colour
    size = 160
    db, lms = coordinate_db([4.0], size)
    target = mouth_landmarks(110, 120, 60, opening=40)
    target[48:68] = np.floor(target[48:68]) + 0.5
    plain = db.warp(0, target, (220, 220), regularization=0.0, max_stretch=math.inf)
    w = db.warp(0, target, (220, 220), regularization=0.0)
    assert db.config.max_stretch == 1.3
    # every landmark still maps onto the entry's landmark (the two splines interpolate their own lip exactly)
    top, bottom, left, right = w.box
    checked = 0
    for p in list(range(48, 61)) + [64]:
        x, y = target[p]
        if left <= x < right and top <= y < bottom:
            got = w.image[int(y), int(x), :2].numpy() * size
            assert np.allclose(got, lms[0, p], atol=0.5), (p, got, lms[0, p])
            checked += 1
    assert checked >= 2
    for p in (61, 62, 63, 65, 66, 67):  # inner-lip landmarks: at most half a ramp of cavity over them
        x, y = target[p]
        got = w.image[int(y), int(x), :2].numpy() * size
        assert np.allclose(got, lms[0, p], atol=2.0), (p, got, lms[0, p])
    # the middle of the opening is cavity: the lip colour times the shading, not a stretched sample of the crop
    x, y = target[[62, 66]].mean(0)
    mid = w.image[int(y), int(x)]
    lip = db.lip_colour
    ratio = (mid / lip.clamp_min(1e-6))[:2]
    assert 0.25 <= float(ratio.mean()) <= 1.0 and abs(float(ratio[0] - ratio[1])) < 0.05
    assert not torch.allclose(plain.image[int(y), int(x)], mid, atol=0.05)
    # the back of the mouth (top of the cavity) is darker than the tongue (bottom)
    top_y = target[62, 1] + 0.35 * (target[66, 1] - target[62, 1])
    bot_y = target[62, 1] + 0.8 * (target[66, 1] - target[62, 1])
    assert float(w.image[int(top_y), int(x)].sum()) < float(w.image[int(bot_y), int(x)].sum())
    # a pixel 3 px below the upper inner lip shows the entry at most max_stretch x 3 px below its upper lip
    # (a single spline maps it ~10x closer to the entry's lower lip)
    y3 = target[62, 1] + 3
    gy = float(w.image[int(y3), int(target[62, 0]), 1]) * size
    scale = np.linalg.norm(lms[0, 54] - lms[0, 48]) / np.linalg.norm(target[54] - target[48])
    assert 0.0 <= gy - lms[0, 62, 1] <= 3 * scale * 1.0 + 0.75
    assert float(plain.image[int(y3), int(target[62, 0]), 1]) * size - lms[0, 62, 1] < 0.5 * (
        lms[0, 66, 1] - lms[0, 62, 1]) + 1  # the plain spline: still between the entry's lips
    # alpha is the same either way
    assert torch.equal(w.alpha, plain.alpha)


def test_cavity_warp_is_the_single_spline_when_the_opening_fits():
    db, lms = coordinate_db([20.0], 160)
    target = mouth_landmarks(110, 120, 60, opening=18)  # narrower than the entry's (relative to width)
    a = db.warp(0, target, (220, 220))
    b = db.warp(0, target, (220, 220), max_stretch=math.inf)
    assert torch.equal(a.image, b.image) and torch.equal(a.alpha, b.alpha)
    with pytest.raises(ValueError, match="max_stretch"):
        db.warp(0, target, (220, 220), max_stretch=0.5)
    with pytest.raises(ValueError, match="max_stretch"):
        MouthConfig(max_stretch=0.9)
    with pytest.raises(ValueError, match="cavity_shading"):
        MouthConfig(cavity_shading=(0.3,))


def test_lip_colour_is_the_colour_between_the_lip_polygons():
    size = 160
    rng = np.random.default_rng(3)
    lms = np.stack([mouth_landmarks(size / 2 + rng.normal(), size * 0.62, size * 0.3, opening=o) for o in (6, 12, 18)])
    frames = np.full((3, size, size, 3), (200, 170, 150), np.uint8)  # skin
    ys, xs = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    from matplotlib.path import Path as MPath

    pix = np.stack([xs.ravel(), ys.ravel()], -1)
    for i in range(3):
        outer = MPath(lms[i, 48:60]).contains_points(pix).reshape(size, size)
        inner = MPath(lms[i, 60:68]).contains_points(pix).reshape(size, size)
        frames[i][outer] = (170, 60, 70)  # lips
        frames[i][inner] = (20, 10, 10)  # dark interior
    db = MouthDatabase.build(frames, lms)
    assert torch.allclose(db.lip_colour, torch.tensor([170, 60, 70]) / 255.0, atol=3 / 255)
    db.add(frames[0], lms[0])  # adding entries recomputes it
    assert db._lip_colour is None


def test_lips_region_replaces_the_whole_mouth_with_the_retrieved_lips():
    # region "lips": the alpha is the outer-lip polygon and the retrieved crop's outer lips land on the desired ones
    size = 160
    db, lms = coordinate_db([12.0], size)
    target = mouth_landmarks(110, 120, 60, opening=12, smile=0.2)
    target[48:68] = np.floor(target[48:68]) + 0.5
    inner = db.warp(0, target, (220, 220), grow=0.0, feather=0.0)
    # the same coordinate frame in a database with the lips config
    ys, xs = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    coord = np.stack([xs / size, ys / size, np.zeros_like(xs)], -1).astype(np.float32)
    lips = MouthDatabase.build(coord[None], lms, config=MouthConfig(region="lips"))
    w = lips.warp(0, target, (220, 220), grow=0.0, feather=0.0, regularization=0.0)
    a_outer = inner_mouth_alpha(target, (220, 220), grow=0.0, feather=0.0, polygon=OUTER_LIP_POINTS)
    assert torch.equal(w.alpha, a_outer)
    assert float(w.alpha.sum()) > 1.5 * float(inner.alpha.sum())  # lips included
    top, bottom, left, right = w.box
    for p in range(48, 60):  # the outer lips are inside the box and map onto the entry's outer lips
        x, y = target[p]
        assert left <= x < right and top <= y < bottom
        got = w.image[int(y), int(x), :2].numpy() * size
        assert np.allclose(got, lms[0, p], atol=0.5), (p, got, lms[0, p])
    with pytest.raises(ValueError, match="region"):
        MouthConfig(region="outer")
