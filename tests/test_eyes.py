"""facerender.tracking.eyes: iris, gaze (eyeLook*) and blinks (eyeBlink*) from frames and 68 landmarks."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from conftest import IN_CI
from facerender.io import VideoReader
from facerender.render.conditioning import GAZE_ANGLES, conditioning_maps
from facerender.render.renderer import frame_face
from facerender.tracking.eyes import (
    BLINK_NAMES,
    GAZE_NAMES,
    ICT_GAZE_CALIBRATION,
    EyeConfig,
    EyeTracker,
    GazeCalibration,
    blink_weights,
    estimate_open_ear,
    eye_aspect_ratio,
    gaze_angles,
    gaze_weights,
    locate_iris,
    predict_offsets,
    weights_to_angles,
)

HAVE_DLIB = importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models")
HAVE_AV = importlib.util.find_spec("av") is not None


# ------------------------------------------------------------------------------------------------------ EAR
def eye_points(width=30.0, height=10.0, centre=(50.0, 40.0)):
    """Six iBUG eye points of an ellipse-like eye (p1 left corner, p4 right corner)."""
    cx, cy = centre
    w, h = width / 2, height / 2
    return np.array([[cx - w, cy], [cx - w / 3, cy - h], [cx + w / 3, cy - h], [cx + w, cy], [cx + w / 3, cy + h],
                     [cx - w / 3, cy + h]])


def test_eye_aspect_ratio():
    p = np.zeros((68, 2))
    p[36:42] = eye_points(30, 9)
    p[42:48] = eye_points(30, 15, (120, 40))
    ear = eye_aspect_ratio(p)
    np.testing.assert_allclose(ear, [9 / 30, 15 / 30])
    batch = np.stack([p, p * 2.0 + 5])  # scale / translation invariant, batched
    np.testing.assert_allclose(eye_aspect_ratio(batch), [[0.3, 0.5], [0.3, 0.5]])
    p[42:48] = 7.0  # degenerate eye
    assert np.isnan(eye_aspect_ratio(p)[1])
    with pytest.raises(ValueError, match=r"\(68, 2\)"):
        eye_aspect_ratio(np.zeros((5, 2)))


def test_blink_weights_mapping():
    cal = ICT_GAZE_CALIBRATION
    op = np.array([0.3, 0.3])
    np.testing.assert_allclose(blink_weights(op, op), [0, 0])
    np.testing.assert_allclose(blink_weights(op * (1 + cal.ear_blink * 0.5), op), [0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(blink_weights([0.0, 0.6], op), [1, 0])  # clipped to [0, 1]
    # looking down lowers the lid without counting as a blink
    down = {"eyeLookDown_L": 1.0, "eyeLookDown_R": 1.0}
    lowered = op * (1 + cal.ear_down)
    np.testing.assert_allclose(blink_weights(lowered, op, down), [0, 0], atol=1e-12)
    assert blink_weights(lowered, op).min() > 0.5


def test_estimate_open_ear_ignores_closed_frames():
    rng = np.random.default_rng(0)
    open_ = rng.normal(0.30, 0.01, (80, 2))
    closed = rng.normal(0.08, 0.01, (70, 2))
    wide = np.full((5, 2), 0.45)
    est = estimate_open_ear(np.concatenate([open_, closed, wide]))
    np.testing.assert_allclose(est, [0.30, 0.30], atol=0.01)
    np.testing.assert_allclose(estimate_open_ear(np.full((3, 2), np.nan), default=0.31), [0.31, 0.31])


# ------------------------------------------------------------------------------------------------------ iris
def drawn_eye(iris_xy, size=(80, 120), eye=None, radius=6.6):
    """A grey eye: skin 0.8, white sclera inside the eye polygon, a dark disc (the iris) at ``iris_xy``."""
    from facerender.tracking.eyes import _inside_polygon

    H, W = size
    eye = eye_points(30, 14, (60, 40)) if eye is None else eye
    ys, xs = np.mgrid[0:H, 0:W] + 0.5
    img = np.full((H, W), 0.65)
    inside = _inside_polygon(xs, ys, eye)
    img[inside] = 0.95
    disc = (xs - iris_xy[0]) ** 2 + (ys - iris_xy[1]) ** 2 <= radius ** 2
    img[inside & disc] = 0.25
    rgb = (np.repeat(img[..., None], 3, 2) * 255).round().astype(np.uint8)
    return rgb, eye


@pytest.mark.parametrize("method", ["disc", "centroid"])
@pytest.mark.parametrize("dx", [-6.0, 0.0, 5.0])
def test_locate_iris_on_a_drawn_eye(method, dx):
    img, eye = drawn_eye((60 + dx, 40.5))
    est = locate_iris(img, eye, EyeConfig(method=method))
    assert est.confidence == pytest.approx(1.0)
    assert abs(est.centre[0] - (60 + dx)) < 0.8 and abs(est.centre[1] - 40.5) < 0.8
    assert est.horizontal == pytest.approx(dx / 15.0, abs=0.06)  # eye width 30: corners at -1 / +1
    assert est.vertical == pytest.approx(0.5 / 30.0, abs=0.03)


def test_locate_iris_hidden_by_the_lid_and_degenerate_eyes():
    # a disc whose upper part is hidden by the lid: the disc matching still finds its centre
    img, eye = drawn_eye((60, 35.0))
    est = locate_iris(img, eye)
    assert abs(est.centre[1] - 35.0) < 1.5
    plain = locate_iris(img, eye, EyeConfig(method="centroid"))
    assert plain.centre[1] > est.centre[1]  # the dark-blob centroid is pulled towards the visible part
    # no iris (uniform eye): low confidence
    flat = np.full((80, 120, 3), 200, np.uint8)
    assert locate_iris(flat, eye).confidence == 0.0
    # degenerate, tiny or NaN eyes
    assert locate_iris(img, np.full((6, 2), 10.0)).confidence == 0.0
    assert locate_iris(img, eye_points(4, 2, (60, 40))).confidence == 0.0
    bad = eye.copy()
    bad[2] = np.nan
    assert np.isnan(locate_iris(img, bad).centre).all()


# ------------------------------------------------------------------------------------------------------ angles
def test_gaze_angles_invert_the_eye_model():
    rng = np.random.default_rng(0)
    for _ in range(10):
        out = rng.uniform(-30, 30, 2)
        up = rng.uniform(-25, 20, 2)
        head = rng.normal(0, 0.25, 3)
        h, v = predict_offsets(out, up, head)
        o2, u2 = gaze_angles(h, v, head)
        np.testing.assert_allclose(o2, out, atol=1e-3)
        np.testing.assert_allclose(u2, up, atol=1e-3)
    o, u = gaze_angles([np.nan, 0.2], [0.0, 0.0])
    assert np.isnan(o[0]) and np.isfinite(o[1])


def test_gaze_directions_and_weights():
    # frontal: looking towards the image LEFT moves both irises to smaller horizontal offsets
    h0, _ = predict_offsets([0, 0], [0, 0])
    h1, _ = predict_offsets([25, -25], [0, 0])  # right eye out, left eye in = the subject looks to their right
    assert (h1 < h0).all()
    w = gaze_weights([25, -25], [0, 0])
    assert w["eyeLookOut_R"] == pytest.approx(1) and w["eyeLookIn_L"] == pytest.approx(1)
    assert w["eyeLookOut_L"] == 0 and w["eyeLookIn_R"] == 0
    assert tuple(w) == GAZE_NAMES
    # up / down relative to the eye's centre line: up = image up = negative vertical
    _, vu = predict_offsets([0, 0], [15, 15])
    _, v0 = predict_offsets([0, 0], [0, 0])
    assert (vu < v0).all()
    # weights <-> angles round trip (GAZE_ANGLES at weight 1)
    ww = {"eyeLookOut_L": 0.4, "eyeLookIn_R": 0.4, "eyeLookDown_L": 0.3, "eyeLookDown_R": 0.3}
    out, up = weights_to_angles(ww)
    np.testing.assert_allclose(out, [-0.4 * GAZE_ANGLES["in"], 0.4 * GAZE_ANGLES["out"]])
    back = gaze_weights(out, up)
    for k in GAZE_NAMES:
        assert back[k] == pytest.approx(ww.get(k, 0.0))


def test_ict_calibration_constants(ict_model):
    c = GazeCalibration.from_model(ict_model)
    ref = ICT_GAZE_CALIBRATION
    np.testing.assert_allclose(c.centre, ref.centre, atol=1e-3)
    np.testing.assert_allclose(c.iris, ref.iris, atol=1e-3)
    np.testing.assert_allclose(c.corners, ref.corners, atol=1e-3)
    assert (c.ear_blink, c.ear_down, c.ear_up) == pytest.approx((ref.ear_blink, ref.ear_down, ref.ear_up), abs=2e-3)
    # symmetric eyes
    np.testing.assert_allclose(c.centre[0] * [-1, 1, 1], c.centre[1], atol=1e-3)


# ------------------------------------------------------------------------------------------------------ renders
def _render(model, weights, rotation=None, size=384):
    names = model.expression_names
    x = torch.zeros(1, len(names))
    for k, v in weights.items():
        x[0, names.index(k)] = v
    rot = None if rotation is None else torch.tensor([rotation], dtype=torch.float32)
    cam, R, t = frame_face(model, size, rotation=rot)
    with torch.no_grad():
        out = conditioning_maps(model, model(expression=x), cam, R, t, maps=("shaded", "landmarks_2d"))
    img = (out["shaded"][0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return img, out["landmarks_2d"][0].double().numpy()


GAZE_CASES = [
    {},
    {"eyeLookOut_L": 1.0, "eyeLookIn_R": 1.0},
    {"eyeLookOut_R": 1.0, "eyeLookIn_L": 1.0},
    {"eyeLookUp_L": 1.0, "eyeLookUp_R": 1.0},
    {"eyeLookDown_L": 1.0, "eyeLookDown_R": 1.0},
    {"eyeLookOut_L": 0.5, "eyeLookIn_R": 0.5, "eyeLookUp_L": 0.5, "eyeLookUp_R": 0.5},
    {"eyeLookOut_R": 0.6, "eyeLookIn_L": 0.6, "eyeLookDown_L": 0.4, "eyeLookDown_R": 0.4},
]


@pytest.mark.parametrize("rotation", [None, (0.0, 0.3, 0.0), (0.2, 0.0, 0.0)], ids=["frontal", "yaw17", "pitch11"])
def test_gaze_round_trip_on_renders(ict_model, rotation):
    """Render ICT with known eyeLook weights (eyeballs turned by rotate_eyes), detect the irises given the model's
    projected eye landmarks and the head rotation, recover the weights."""
    worst = 0.0
    for w in GAZE_CASES:
        img, lm = _render(ict_model, w, rotation)
        et = EyeTracker(open_ear=0.316)
        r = et.update(img, lm, rotation)
        assert r.right.iris.confidence > 0.9 and r.left.iris.confidence > 0.9
        assert not r.closed.any() and r.flags == ()
        for k in GAZE_NAMES:
            err = abs(r.weights[k] - w.get(k, 0.0))
            worst = max(worst, err)
            assert err < 0.25, (w, k, r.weights[k])
        # the iris sits where the render put it: a dark pixel at the estimate (unless the lid hides the centre)
        if not any("Down" in k for k in w):
            for s in (r.right, r.left):
                x, y = s.iris.centre
                assert img[int(y), int(x)].mean() < 100
    assert worst < 0.25


def test_blink_on_renders(ict_model):
    img, lm = _render(ict_model, {})
    op = eye_aspect_ratio(lm)
    for b in (0.0, 0.5, 1.0):
        img, lm = _render(ict_model, {"eyeBlink_L": b, "eyeBlink_R": b})
        r = EyeTracker(open_ear=op).update(img, lm)
        assert r.weights["eyeBlink_L"] == pytest.approx(b, abs=0.1)
        assert r.weights["eyeBlink_R"] == pytest.approx(b, abs=0.1)
        assert bool(r.closed.all()) == (b == 1.0)
        if b == 1.0:
            assert "blink" in r.flags and "gaze_held" in r.flags


# ------------------------------------------------------------------------------------------------------ real video
@pytest.fixture(scope="module")
def expressions(video_dir):
    if not (HAVE_DLIB and HAVE_AV):
        msg = "dlib / PyAV not installed"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    from facerender.landmarks import detect_landmarks

    wanted = {40, 50, 208, 380, 531, 818, 937}
    frames, ears = {}, []
    for f in VideoReader(video_dir / "expressions_d6.mp4"):
        if f.index % 20 == 0 or f.index in wanted:
            lm = detect_landmarks(f.image).points
            if f.index % 20 == 0:
                ears.append(eye_aspect_ratio(lm))
            if f.index in wanted:
                frames[f.index] = (f.image, lm)
    return frames, estimate_open_ear(np.array(ears))


def test_blinks_flagged_on_real_frames(expressions):
    """expressions_d6: frames 50, 208 and 380 show both eyes closed (looked at), 40, 531, 818 and 937 open eyes
    looking sideways / down (a lowered lid, a low EAR, but a visible iris)."""
    frames, op = expressions
    assert 0.3 < op.min() and op.max() < 0.45
    for i, closed in ((50, True), (208, True), (380, True), (40, False), (531, False), (818, False), (937, False)):
        img, lm = frames[i]
        r = EyeTracker(open_ear=op).update(img, lm)
        assert bool(r.closed.all()) == closed and bool(r.closed.any()) == closed, (i, r.right, r.left)
        if closed:
            assert "blink" in r.flags and min(r.weights[k] for k in BLINK_NAMES) > 0.5
        else:
            assert r.right.used and r.left.used


def test_gaze_varies_plausibly_on_real_frames(expressions):
    frames, op = expressions
    g = {}
    for i in (40, 531, 818, 937):
        img, lm = frames[i]
        g[i] = EyeTracker(open_ear=op).update(img, lm).weights
    # frame 40: both irises far towards the image right = the subject looks to their left
    assert g[40]["eyeLookOut_L"] > 0.4 and g[40]["eyeLookIn_R"] > 0.4
    assert g[40]["eyeLookOut_R"] == 0 and g[40]["eyeLookIn_L"] == 0
    # frames 818 and 937 look down
    assert g[818]["eyeLookDown_L"] > 0.3 and g[937]["eyeLookDown_R"] > 0.3
    assert g[937]["eyeLookUp_L"] == 0
    # and differ from each other
    vec = np.array([[g[i][k] for k in GAZE_NAMES] for i in g])
    assert np.linalg.norm(vec[0] - vec[3]) > 0.5


def test_eye_tracker_holds_gaze_and_state(expressions):
    frames, op = expressions
    et = EyeTracker(open_ear=op)
    r1 = et.update(*frames[40])
    r2 = et.update(*frames[50])  # closed: the gaze of frame 40 is held
    assert "gaze_held" in r2.flags
    for k in GAZE_NAMES:
        assert r2.weights[k] == pytest.approx(r1.weights[k])
    # smoothing: the next open frame moves half way
    state = et.state_dict()
    r3 = et.update(*frames[937])
    et2 = EyeTracker(open_ear=op)
    et2.load_state_dict(state)
    r3b = et2.update(*frames[937])
    assert r3.weights == r3b.weights
    raw = EyeTracker(EyeConfig(smoothing=0.0), open_ear=op).update(*frames[937])
    np.testing.assert_allclose(r3.up, 0.5 * raw.up + 0.5 * r1.up, atol=1e-9)


def test_running_open_ear_estimate(expressions):
    frames, op = expressions
    et = EyeTracker()
    assert et.open_ear == pytest.approx([0.32, 0.32])
    for i in range(20):
        et.update(*frames[40 if i % 2 else 531])
    assert np.all(et.open_ear > 0.2) and not np.allclose(et.open_ear, 0.32)


def test_config_validation():
    with pytest.raises(ValueError, match="smoothing"):
        EyeConfig(smoothing=1.0)
    with pytest.raises(ValueError, match="method"):
        EyeConfig(method="blob")
    with pytest.raises(ValueError, match="closed_ratio"):
        EyeConfig(closed_ratio=0.45, lowered_ratio=0.4)
    with pytest.raises(ValueError, match="angles"):
        EyeConfig(angles={"out": 25.0})
    with pytest.raises(ValueError, match="dark_fraction"):
        EyeConfig(dark_fraction=1.5)
