"""facerender.tracking.video: track_video (keyframes, streaming main pass, chunk store, resume, outputs), bad input,
load_track, the CLI. Most tests drive a small stub with the solver's interface (StubTracker) on tiny synthetic
videos; one test runs the real solver on a real clip."""
from __future__ import annotations

import importlib.util
import json
import math
import tracemalloc
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import savgol_filter

from conftest import IN_CI
from facerender.errors import NoFaceError, VideoError
from facerender.io import VideoReader, VideoWriter, read_image
from facerender.landmarks import read_ljson
from facerender.tracking.facebox import landmark_agreement
from facerender.tracking.video import (
    STATE_DIR,
    TrackConfig,
    keyframe_descriptor,
    psnr_summary,
    landmark_jitter,
    load_track,
    render_overlay,
    select_keyframes,
    track_video,
)

HAVE_DLIB = importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models")
HAVE_AV = importlib.util.find_spec("av") is not None


@pytest.fixture(scope="module", autouse=True)
def extras_ready():
    if not (HAVE_DLIB and HAVE_AV):
        msg = "dlib / face-recognition-models / PyAV are not installed (pip install \"facerender[all]\")"
        if IN_CI:
            pytest.fail(msg + "; CI installs the 'all' extras, so this is an error")
        pytest.skip(msg)


# ---------------------------------------------------------------------------------------------------------- stub
@dataclass
class FrameResult:
    """The fields of facerender.tracking.tracker.FrameResult (kept here so that these tests do not depend on the
    solver module)."""

    rotation: np.ndarray
    translation: np.ndarray
    expression: np.ndarray
    sh: np.ndarray
    landmarks_2d: np.ndarray
    energy: float
    flags: list = field(default_factory=list)
    solve_ms: float = 0.0
    model_landmarks_2d: np.ndarray = None


class StubTracker:
    """The interface of facerender.tracking.tracker.FaceTracker without a solver (deterministic and fast): the
    translation follows the landmarks' centroid, the projected landmarks are an exponential average of the given
    ones (the fixed-vertex ones the same, moved by one pixel to the right), the gaze weights go into the expression,
    frames without a face are bridged (the last values carried). ``events`` (when a list) records the calls."""

    nan_frames: set = set()
    instances: list = []
    events = None

    def __init__(self, model, config, image_size, fps):
        self.names = list(model.expression_names)
        self.K = len(self.names)
        self.H, self.W = image_size
        self.fps = fps
        self.focal = 1.2 * max(image_size)
        self.pp = np.array([self.W / 2.0, self.H / 2.0])
        self.last = None
        self.n = 0
        self.bundled = None
        StubTracker.instances.append(self)

    def bundle(self, frames, landmarks, confidences):
        assert len(frames) == len(landmarks) == len(confidences) >= 1
        for f, p, c in zip(frames, landmarks, confidences):
            assert f.shape == (self.H, self.W, 3) and f.dtype == np.uint8
            assert p.shape == (68, 2) and c.shape == (68,)
        self.bundled = len(frames)
        if StubTracker.events is not None:
            StubTracker.events.append(("bundle", None))
        self.video_params = {"identity": np.linspace(-0.5, 0.5, 100).astype(np.float32), "albedo": None,
                             "focal": self.focal, "principal_point": self.pp.copy(),
                             "image_size": (self.H, self.W)}
        return self.video_params

    def _result(self, v, flags, energy):
        return FrameResult(rotation=v["rotation"].copy(), translation=v["translation"].copy(),
                           expression=v["expression"].copy(), sh=v["sh"].copy(),
                           landmarks_2d=v["landmarks_2d"].copy(), energy=energy, flags=flags, solve_ms=0.1,
                           model_landmarks_2d=v["landmarks_2d"] + np.float32([1.0, 0.0]))

    def track_frame(self, frame, landmarks, confidence, gaze):
        self.n += 1
        if StubTracker.events is not None:
            StubTracker.events.append(("solve", None if landmarks is None else np.array(landmarks)))
        if frame is None or landmarks is None:
            if self.last is None:
                v = {"rotation": np.zeros(3, np.float32), "translation": np.array([0, 0, 60], np.float32),
                     "expression": np.zeros(self.K, np.float32), "sh": np.zeros((9, 3), np.float32),
                     "landmarks_2d": np.zeros((68, 2), np.float32)}
                return self._result(v, ["no_face", "no_track_yet", "bridged"], float("nan"))
            return self._result(self.last, ["no_face", "bridged"], float("nan"))
        assert frame.shape == (self.H, self.W, 3) and np.isfinite(landmarks).all()
        c = landmarks.mean(0)
        ex = np.zeros(self.K, np.float32)
        for k, w in (gaze or {}).items():
            ex[self.names.index(k)] = w
        lm = landmarks if self.last is None else 0.5 * landmarks + 0.5 * self.last["landmarks_2d"]
        v = {"rotation": np.array([0.0, (c[0] - self.pp[0]) / self.W, 0.0], np.float32),
             "translation": np.array([(c[0] - self.pp[0]) / self.focal * 60, (c[1] - self.pp[1]) / self.focal * 60,
                                      60.0], np.float32),
             "expression": ex, "sh": np.full((9, 3), 0.1, np.float32), "landmarks_2d": lm.astype(np.float32)}
        self.last = v
        if self.n in StubTracker.nan_frames:
            v = dict(v, rotation=np.full(3, np.nan, np.float32))
        return self._result(v, [], float(np.mean((lm - landmarks) ** 2)))

    def state_dict(self):
        return {"last": self.last, "n": self.n}

    def load_state_dict(self, d):
        self.last = d["last"]
        self.n = int(d["n"])


def stub(model, config, image_size, fps):
    return StubTracker(model, config, image_size, fps)


# ---------------------------------------------------------------------------------------------------------- videos
@pytest.fixture(scope="module")
def lenna(faces_dir):
    return read_image(faces_dir / "lenna.png"), read_ljson(faces_dir / "lenna.ljson")


def face_frame_image(lenna, size, face_px, pos, rng):
    from PIL import Image

    img, _ = lenna
    H, W = size
    f = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    if face_px:
        c = np.asarray(Image.fromarray(img[170:450, 150:430]).resize((face_px, face_px), Image.BILINEAR))
        x, y = pos
        f[y:y + face_px, x:x + face_px] = c
    return f


def write_video(path, frames, fps=25, times=None, **kw):
    with VideoWriter(path, fps, preset="ultrafast", **kw) as w:
        for i, f in enumerate(frames):
            w.write(f, time=None if times is None else times[i])
    return Path(path)


def write_odd_video(path, frames, rate):
    """H.264 4:4:4 (odd sizes allowed), written with PyAV directly."""
    import av

    H, W = frames[0].shape[:2]
    c = av.open(str(path), "w")
    s = c.add_stream("libx264", rate=rate)
    s.width, s.height, s.pix_fmt = W, H, "yuv444p"
    for f in frames:
        for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
            c.mux(p)
    for p in s.encode(None):
        c.mux(p)
    c.close()
    return Path(path)


@pytest.fixture(scope="module")
def gap_video(tmp_path_factory, lenna):
    """22 frames 256x192: a face moving (0-6), noise only (7-14), the face back elsewhere (15-21)."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(22):
        if i < 7:
            frames.append(face_frame_image(lenna, (192, 256), 120, (10 + 5 * i, 20 + i), rng))
        elif i < 15:
            frames.append(face_frame_image(lenna, (192, 256), 0, (0, 0), rng))
        else:
            frames.append(face_frame_image(lenna, (192, 256), 110, (120 - 2 * (i - 15), 40), rng))
    return write_video(tmp_path_factory.mktemp("videos") / "gap.mp4", frames, fps=25)


def per_frame_equal(a, b, keys=("index", "time", "rotation", "translation", "expression", "sh", "gaze", "blink",
                                 "eyes_closed", "iris", "landmarks", "landmarks_smoothed", "landmark_confidence",
                                 "landmarks_2d", "model_landmarks_2d", "face_found", "status", "flags", "energy")):
    for k in keys:
        x, y = getattr(a, k), getattr(b, k)
        assert x.shape == y.shape, k
        if x.dtype.kind in "fc":
            np.testing.assert_array_equal(x, y, err_msg=k)
        else:
            assert (x == y).all(), k


def whittaker(y, lam):
    """Whittaker-Henderson smoothing of a whole series ``(T, ...)``: the minimiser of ``|x - y|^2 + lam |D2 x|^2``."""
    n = y.shape[0]
    d = np.diff(np.eye(n), 2, axis=0)
    return np.linalg.solve(np.eye(n) + lam * d.T @ d, y.reshape(n, -1)).reshape(y.shape)


def segments(tr):
    """``[(a, b)]``: runs of frames with a face, split where the landmark tracker detected the face afresh (the
    landmark smoother restarts there as after a gap)."""
    segs, a = [], None
    for i in range(len(tr)):
        if not tr.face_found[i] or tr.status[i] == "detected":
            if a is not None:
                segs.append((a, i))
            a = i if tr.face_found[i] else None
    if a is not None:
        segs.append((a, len(tr)))
    return segs


def solved_runs(tr, key):
    """Runs of consecutive frames counted by the jitter of the summary (face found, solved, no loss / re-detection)."""
    bad = {"bridged", "reinitialised", "redetected", "nan_replaced"}
    ok = [bool(tr.face_found[i]) and not (bad & set(str(f).split(","))) and "lost:" not in str(f)
          for i, f in enumerate(tr.flags)]
    runs, a = [], None
    for i, o in enumerate(ok + [False]):
        if o and a is None:
            a = i
        elif not o and a is not None:
            runs.append(getattr(tr, key)[a:i])
            a = None
    return runs


def assert_finite_params(tr):
    for k in ("rotation", "translation", "expression", "sh", "gaze", "blink", "landmarks_2d", "time"):
        assert np.isfinite(getattr(tr, k)).all(), k


# ---------------------------------------------------------------------------------------------------------- bad input
def test_bad_video_files_leave_nothing(tmp_path, ict_model):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="not found"):
        track_video(tmp_path / "missing.mp4", out, ict_model, tracker_factory=stub, progress=False)
    assert not out.exists()
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match="empty.mp4"):
        track_video(empty, out, ict_model, tracker_factory=stub, progress=False)
    assert not out.exists()
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoError, match="notes.mp4"):
        track_video(text, out, ict_model, tracker_factory=stub, progress=False)
    assert not out.exists()
    # a truncated file (the mp4 index is at the end)
    good = write_video(tmp_path / "good.mp4", [np.full((64, 64, 3), 128, np.uint8)] * 10)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(VideoError, match="cut.mp4"):
        track_video(cut, out, ict_model, tracker_factory=stub, progress=False)
    assert not out.exists()
    # an existing folder is left as it was
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(VideoError):
        track_video(text, out, ict_model, tracker_factory=stub, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError):
        track_video(good, f, ict_model, tracker_factory=stub, progress=False)
    with pytest.raises(ValueError, match="max_frames"):
        track_video(good, out, ict_model, tracker_factory=stub, progress=False, max_frames=0)


def test_video_without_any_face(tmp_path, ict_model):
    rng = np.random.default_rng(1)
    v = write_video(tmp_path / "noise.mp4", [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(12)])
    out = tmp_path / "out"
    with pytest.raises(NoFaceError, match="noise.mp4"):
        track_video(v, out, ict_model, tracker_factory=stub, progress=False)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------- main flow
def test_faceless_stretch_and_reentry(tmp_path, gap_video, ict_model):
    out = tmp_path / "out"
    res = track_video(gap_video, out, ict_model, TrackConfig(chunk_size=8), tracker_factory=stub, progress=False)
    assert res.frames == 22 and res.frames_with_face == 14 and res.resumed_from == 0
    assert sorted(p.name for p in out.iterdir()) == ["energy_fps.png", "overlay.mp4", "params.npz", "summary.json"]
    tr = load_track(out)
    assert len(tr) == 22
    np.testing.assert_array_equal(tr.index, np.arange(22))
    np.testing.assert_allclose(tr.time, np.arange(22) / 25.0, atol=1e-6)
    expect = np.array([i < 7 or i >= 15 for i in range(22)])
    np.testing.assert_array_equal(tr.face_found, expect)
    assert tr.has_flag("no_face")[~expect].all() and tr.has_flag("bridged")[~expect].all()
    assert not tr.has_flag("no_face")[expect].any()
    assert tr.has_flag("redetected")[15] and tr.status[15] == "detected"
    assert set(tr.status[~expect]) == {"no_face"}
    assert_finite_params(tr)
    # the 8 bridged frames (no longer than bridge_max_gap) are interpolated between the solved frames 6 and 15
    t = (np.arange(1, 9) / 9.0)[:, None]
    np.testing.assert_allclose(tr.translation[7:15], tr.translation[6] + t * (tr.translation[15] - tr.translation[6]),
                               atol=1e-5)
    np.testing.assert_allclose(tr.landmarks_2d[7:15], tr.landmarks_2d[6] + t[:, :, None] * (
        tr.landmarks_2d[15] - tr.landmarks_2d[6]), atol=1e-4)
    assert tr.has_flag("interpolated")[7:15].all() and not tr.has_flag("interpolated")[expect].any()
    assert tr.has_flag("lost")[7:15].all() and res.summary["events"]["lost_frames"] == 8
    assert res.summary["events"]["interpolated"] == 8
    # with bridge_max_gap 0 (and for longer gaps) bridged frames carry the last tracked parameters
    held = load_track(track_video(gap_video, tmp_path / "held", ict_model, TrackConfig(chunk_size=8, bridge_max_gap=0),
                                  tracker_factory=stub, progress=False, overlay=False).out_dir)
    np.testing.assert_array_equal(held.translation[7:15], np.repeat(held.translation[6:7], 8, 0))
    assert not held.has_flag("interpolated").any()
    np.testing.assert_array_equal(held.translation[expect], tr.translation[expect])
    assert np.isnan(tr.landmarks[~expect]).all() and np.isfinite(tr.landmarks[expect]).all()
    assert np.isnan(tr.energy[~expect]).all()
    # the solver got the detected landmarks smoothed (Whittaker-Henderson, lam 0.5, window 11: 5 frames of delay) per
    # run of frames with a face; the raw ones are stored too
    cfg = TrackConfig()
    assert (cfg.smoothing, cfg.smoothing_window, cfg.smoothing_lambda) == ("whittaker", 11, 0.5)
    assert res.summary["smoothing"] == {"method": "whittaker", "window": 11, "lambda": 0.5, "delay_frames": 5}
    assert np.isnan(tr.landmarks_smoothed[~expect]).all()
    assert segments(tr) == [(0, 7), (15, 22)]
    for a, b in segments(tr):
        # runs of 7 frames: frame a waits for 5 later ones (a window of 6), every later frame sees the whole run
        seg = tr.landmarks[a:b].astype(np.float64)
        np.testing.assert_allclose(tr.landmarks_smoothed[a + 1:b], whittaker(seg, 0.5)[1:], rtol=0, atol=1e-3)
        np.testing.assert_allclose(tr.landmarks_smoothed[a], whittaker(seg[:6], 0.5)[0], rtol=0, atol=1e-3)
    assert np.abs(tr.landmarks_smoothed - tr.landmarks)[expect].max() > 0.05
    # the 2026-11 smoother stays available: Savitzky-Golay, window 5, order 2 (scipy's savgol_filter inside a run)
    old = load_track(track_video(gap_video, tmp_path / "sg", ict_model,
                                 TrackConfig(smoothing="savgol", smoothing_window=5, smoothing_order=2),
                                 tracker_factory=stub, progress=False, overlay=False).out_dir)
    for a, b in segments(old):
        offline = savgol_filter(old.landmarks[a:b].astype(np.float64), 5, 2, axis=0, mode="interp")
        np.testing.assert_allclose(old.landmarks_smoothed[a + 2:b], offline[2:], rtol=0, atol=1e-3)
        np.testing.assert_allclose(old.landmarks_smoothed[a], old.landmarks[a], rtol=0, atol=1e-4)  # 3 points, order 2
    # the fixed-vertex model landmarks (the stub's: its fitted ones moved by 1 px)
    np.testing.assert_allclose(tr.model_landmarks_2d[expect], tr.landmarks_2d[expect] + [1, 0], atol=1e-5)
    # per-video values
    assert tr.image_size == (192, 256) and tr.fps == pytest.approx(25.0)
    assert tr.focal == pytest.approx(1.2 * 256) and tr.principal_point.tolist() == [128.0, 96.0]
    assert tr.identity.shape == (100,) and tr.albedo is None
    assert tr.expression.shape == (22, ict_model.num_expression)
    assert tr.expression_names == tuple(ict_model.expression_names) and len(tr.gaze_names) == 8
    assert 1 <= len(tr.keyframes) <= 8 and all(expect[k] for k in tr.keyframes)
    assert tr.video == str(gap_video.resolve())
    # the gaze given to the solver is stored and went into the expression
    gi = [tr.expression_names.index(n) for n in tr.gaze_names]
    np.testing.assert_allclose(tr.expression[expect][:, gi], tr.gaze[expect], atol=1e-6)
    # summary
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 22 and summary["frames_with_face"] == 14
    assert summary["status_counts"]["no_face"] == 8 and summary["flag_counts"]["no_face"] == 8
    for k in ("keyframes", "bundle", "decode", "landmarks", "eyes", "solve", "overlay_render", "overlay_encode"):
        assert summary["timings_s"][k] >= 0, k
    assert summary["tracking_fps"] > 0 and summary["jitter"]["triples"] > 0
    j = summary["jitter"]
    for name, key in (("detector", "landmarks"), ("smoothed", "landmarks_smoothed"), ("model", "model_landmarks_2d"),
                      ("model_sliding", "landmarks_2d")):
        assert j[f"{name}_px"] == pytest.approx(landmark_jitter(solved_runs(tr, key))[0], rel=1e-4), name
    assert j["ratio"] == j["model_ratio"] == pytest.approx(j["model_px"] / j["detector_px"])
    assert j["smoothed_px"] < j["detector_px"] and j["smoothed_ratio"] < 1
    d = summary["landmark_distance"]
    assert d["frames"] == 13 and 0 < d["smoothed_px"] < d["model_px"]  # frame 15 (re-detected) does not count
    assert summary["smoothing"] == {"method": "whittaker", "window": 11, "lambda": 0.5, "delay_frames": 5}
    # the overlay: same frames and times, labelled where no face
    r = VideoReader(out / "overlay.mp4")
    assert r.size == (192, 256) and r.frame_count == 22 and r.fps == pytest.approx(25.0)
    from PIL import Image

    png = Image.open(out / "energy_fps.png")
    assert png.size[0] >= 400


def test_odd_size_odd_rate_and_estimated_frame_count(tmp_path, lenna, ict_model):
    rng = np.random.default_rng(2)
    frames = [face_frame_image(lenna, (121, 161), 90, (30 + 2 * i, 12), rng) for i in range(9)]
    v = write_odd_video(tmp_path / "odd.mp4", frames, Fraction(25, 2))
    res = track_video(v, tmp_path / "out", ict_model, tracker_factory=stub, progress=False)
    tr = load_track(res.out_dir)
    assert tr.image_size == (121, 161) and len(tr) == 9 and tr.face_found.all()
    np.testing.assert_allclose(tr.time, np.arange(9) / 12.5, atol=1e-6)
    ov = VideoReader(res.overlay_path)
    assert ov.size == (122, 162) and ov.frame_count == 9  # H.264 4:2:0 output padded by one row / column


def test_one_and_two_frame_videos(tmp_path, lenna, ict_model):
    rng = np.random.default_rng(7)
    for n in (1, 2):
        frames = [face_frame_image(lenna, (144, 192), 100, (40 + i, 20), rng) for i in range(n)]
        v = write_video(tmp_path / f"n{n}.mp4", frames)
        res = track_video(v, tmp_path / f"out{n}", ict_model, tracker_factory=stub, progress=False)
        tr = load_track(res.out_dir)
        assert len(tr) == n and tr.face_found.all() and VideoReader(res.overlay_path).frame_count == n
        assert res.summary["jitter"]["triples"] == 0


def test_very_small_faces(tmp_path, lenna, ict_model):
    rng = np.random.default_rng(3)
    frames = [face_frame_image(lenna, (120, 160), 50, (20 + 3 * i, 10 + i), rng) for i in range(8)]
    v = write_video(tmp_path / "small.mp4", frames, fps=30, crf=10)
    tr = load_track(track_video(v, tmp_path / "out", ict_model, tracker_factory=stub, progress=False,
                                overlay=False).out_dir)
    assert tr.face_found.all() and tr.has_flag("small_face").all()
    gt0 = (lenna[1] - [150, 170]) * 50 / 280.0 + [20, 10]
    assert np.linalg.norm(tr.landmarks[0] - gt0, axis=1).mean() < 1.5  # pixels, on a 25 px face box
    assert not (tmp_path / "out" / "overlay.mp4").exists()


def test_variable_frame_rate_times_are_kept(tmp_path, lenna, ict_model):
    rng = np.random.default_rng(4)
    times = np.cumsum([0.0, 0.04, 0.04, 0.1, 0.02, 0.033, 0.25, 0.04, 0.04, 0.05])
    frames = [face_frame_image(lenna, (144, 192), 100, (30 + i, 20), rng) for i in range(len(times))]
    v = write_video(tmp_path / "vfr.mp4", frames, fps=25, times=times)
    res = track_video(v, tmp_path / "out", ict_model, tracker_factory=stub, progress=False)
    tr = load_track(res.out_dir)
    np.testing.assert_allclose(tr.time, times, atol=1e-4)
    assert res.summary["timestamps"]["variable_rate"]
    back = np.array([f.time for f in VideoReader(res.overlay_path)])
    np.testing.assert_allclose(back, times, atol=1e-4)


def test_max_frames_and_nan_guard(tmp_path, gap_video, ict_model, monkeypatch):
    monkeypatch.setattr(StubTracker, "nan_frames", {3})
    res = track_video(gap_video, tmp_path / "out", ict_model, tracker_factory=stub, progress=False, overlay=False,
                      max_frames=6)
    tr = load_track(res.out_dir)
    assert len(tr) == 6 and tr.has_flag("nan_replaced").tolist() == [False, False, True, False, False, False]
    assert_finite_params(tr)
    np.testing.assert_array_equal(tr.rotation[2], tr.rotation[1])  # the previous frame's values
    assert all(k < 6 for k in tr.keyframes)


@pytest.mark.parametrize("window", [1, 5])
def test_solver_gets_the_smoothed_points_a_fixed_delay_later(tmp_path, gap_video, ict_model, monkeypatch, window):
    """Window 5: frame i is solved once frame i + 2 is read, on the smoothed points; window 1 is the pipeline without
    smoothing (each frame solved right after it is read, on the detected points)."""
    from facerender.tracking import facebox

    events = []
    monkeypatch.setattr(StubTracker, "events", events)
    update = facebox.LandmarkTracker.update

    def spy(self, image):
        obs = update(self, image)
        events.append(("observe", np.array(obs.landmarks.points) if obs.found else None))
        return obs

    monkeypatch.setattr(facebox.LandmarkTracker, "update", spy)
    cfg = TrackConfig(smoothing_window=window, smoothing_order=2)
    res = track_video(gap_video, tmp_path / "out", ict_model, cfg, tracker_factory=stub, progress=False,
                      overlay=False, max_frames=10)
    tr = load_track(res.out_dir)
    main = events[[k for k, _ in events].index("bundle") + 1:]
    order = "".join(k[0].upper() for k, _ in main)
    observed = [p for k, p in main if k == "observe"]
    solved = [p for k, p in main if k == "solve"]
    assert len(observed) == len(solved) == 10
    assert all((p is None) == (not f) for p, f in zip(solved, tr.face_found))
    if window == 1:
        assert order == "OS" * 10
        for o, p in zip(observed, solved):
            assert (o is None and p is None) or np.array_equal(o, p)  # the detected points, unchanged
        np.testing.assert_array_equal(tr.landmarks_smoothed, tr.landmarks)
        assert res.summary["jitter"]["smoothed_px"] == res.summary["jitter"]["detector_px"]
        # a params.npz written before the smoothing existed loads with the raw / sliding points in the new keys
        with np.load(res.params_path) as z:
            old = {k: z[k] for k in z.files if k not in ("landmarks_smoothed", "model_landmarks_2d")}
        np.savez(tmp_path / "params.npz", **old)
        tr_old = load_track(tmp_path)
        np.testing.assert_array_equal(tr_old.landmarks_smoothed, tr.landmarks)
        np.testing.assert_array_equal(tr_old.model_landmarks_2d, tr.landmarks_2d)
    else:
        assert order == "OO" + "OS" * 8 + "SS"
        face = tr.face_found
        np.testing.assert_array_equal(tr.landmarks_smoothed[face], np.stack([p for p in solved if p is not None])
                                      .astype(np.float32))
        assert not np.array_equal(tr.landmarks_smoothed[face], tr.landmarks[face])


# ---------------------------------------------------------------------------------------------------------- resume
class Interrupt(Exception):
    pass


@pytest.mark.parametrize("exc,stop", [(Interrupt, 16), (KeyboardInterrupt, 20)])
def test_resume_after_interruption_gives_the_same_params(tmp_path, gap_video, ict_model, exc, stop):
    """Smoothing on (window 5: the solver runs 2 frames behind the decoder): interrupted inside a run of frames with
    a face (frames 17 and 18 read, not solved yet) and while the end of the stream is flushed (frame 21 pending)."""
    from facerender.tracking.video import _Store

    cfg = TrackConfig(chunk_size=5, smoothing_window=5, smoothing_order=2)
    full = load_track(track_video(gap_video, tmp_path / "full", ict_model, cfg, tracker_factory=stub,
                                  progress=False, overlay=False).out_dir)

    def stop_at(i, res):
        if i == stop:
            raise exc("stop")

    out = tmp_path / "part"
    with pytest.raises(exc):
        track_video(gap_video, out, ict_model, cfg, tracker_factory=stub, progress=False, callback=stop_at)
    state = out / STATE_DIR
    manifest = json.loads((state / "manifest.json").read_text())
    assert manifest["frames_done"] == stop + 1 and not manifest["complete"]  # frames 0..stop finished
    stops = list(range(5, stop + 1, 5)) + ([stop + 1] if (stop + 1) % 5 else [])
    assert [c["stop"] for c in manifest["chunks"]] == stops
    assert sorted(p.name for p in out.iterdir()) == [STATE_DIR]  # no half-written output
    k = len(stops) - 1
    assert sorted(p.name for p in state.glob("state_*.npz")) == [f"state_{k:06d}.npz"]
    # the snapshot: consumer and producer positions, the smoother's pending frames (images included) and history
    snap = _Store(out).read_state(k)
    pending = [p[0]["index"] for p in snap["smoother"]["pending"]]
    assert snap["consumed"] == stop + 1 and snap["observed"] == min(stop + 3, 22)
    assert pending == list(range(stop + 1, min(stop + 3, 22)))
    assert all(p[0]["image"].shape == (192, 256, 3) and p[0]["image"].dtype == np.uint8
               for p in snap["smoother"]["pending"])
    assert len(snap["smoother"]["history"]) == min(stop - 14, 4)  # the face's run restarted at frame 15
    seen = []
    res = track_video(gap_video, out, ict_model, cfg, tracker_factory=stub, progress=False,
                      callback=lambda i, r: seen.append(i))
    assert res.resumed_from == stop + 1 and seen == list(range(stop + 1, 22))
    assert not state.exists()
    part = load_track(out)
    per_frame_equal(full, part)
    np.testing.assert_array_equal(full.identity, part.identity)
    np.testing.assert_array_equal(full.keyframes, part.keyframes)
    assert VideoReader(out / "overlay.mp4").frame_count == 22


def test_restart_and_changed_settings_discard_the_partial_run(tmp_path, gap_video, ict_model):
    cfg = TrackConfig(chunk_size=5)

    def stop(i, res):
        if i == 12:
            raise Interrupt()

    out = tmp_path / "out"
    with pytest.raises(Interrupt):
        track_video(gap_video, out, ict_model, cfg, tracker_factory=stub, progress=False, callback=stop,
                    overlay=False)
    res = track_video(gap_video, out, ict_model, cfg, tracker_factory=stub, progress=False, overlay=False,
                      resume=False)
    assert res.resumed_from == 0 and res.frames == 22
    with pytest.raises(Interrupt):
        track_video(gap_video, out, ict_model, cfg, tracker_factory=stub, progress=False, callback=stop,
                    overlay=False)
    res = track_video(gap_video, out, ict_model, TrackConfig(chunk_size=5, keyframes=3), tracker_factory=stub,
                      progress=False, overlay=False)
    assert res.resumed_from == 0 and len(load_track(out).keyframes) <= 3


def test_interrupt_before_any_frame_leaves_nothing(tmp_path, gap_video, ict_model):
    def boom(model, config, size, fps):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        track_video(gap_video, out, ict_model, tracker_factory=boom, progress=False)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------- memory
def test_memory_does_not_grow_with_length(tmp_path, lenna, ict_model):
    """Python-side allocations (tracemalloc: numpy buffers included) stay flat over 240 streamed frames."""
    rng = np.random.default_rng(5)
    face = face_frame_image(lenna, (96, 128), 70, (30, 10), rng)
    frames = [np.roll(face, i % 9, axis=1) for i in range(240)]
    v = write_video(tmp_path / "long.mp4", frames, fps=30)
    samples = {}

    def probe(i, res):
        if i in (60, 235):
            samples[i] = tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        track_video(v, tmp_path / "out", ict_model, TrackConfig(chunk_size=50), tracker_factory=stub,
                    progress=False, overlay=False, callback=probe)
    finally:
        tracemalloc.stop()
    assert samples[235] - samples[60] < 1.5e6, samples  # the chunk buffer is at most 50 frames


# ---------------------------------------------------------------------------------------------------------- helpers
def test_keyframe_selection_is_diverse_and_pose_invariant():
    rng = np.random.default_rng(6)
    base = rng.normal(size=(68, 2)) * 10 + 100
    base[36:42] += [-25, 0]
    base[42:48] += [25, 0]
    d0 = keyframe_descriptor(base)
    th = 0.4
    R = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    np.testing.assert_allclose(keyframe_descriptor(2.5 * base @ R.T + [40, -7]), d0, atol=1e-9)
    # three clusters (e.g. neutral, mouth open, turned): the first three picks cover all of them
    open_mouth = base.copy()
    open_mouth[48:68, 1] += np.where(np.arange(20) % 2, 15, 0)
    turned = base * [0.7, 1.0]
    cands = [b + rng.normal(0, 0.3, (68, 2)) for b in [base] * 10 + [open_mouth] * 3 + [turned] * 2]
    D = np.stack([keyframe_descriptor(c) for c in cands])
    picks = select_keyframes(D, 3)
    assert sorted({0 if p < 10 else 1 if p < 13 else 2 for p in picks}) == [0, 1, 2]
    assert picks[0] < 10  # starts from the most typical frame
    assert select_keyframes(D[:2], 5) == [0, 1] or sorted(select_keyframes(D[:2], 5)) == [0, 1]
    assert select_keyframes(np.zeros((0, 136)), 3) == []


def test_landmark_jitter():
    t = np.arange(10, dtype=float)[:, None, None]
    linear = np.concatenate([t * [1.0, 2.0]] * 3, axis=1)  # (10, 3, 2): constant velocity
    assert landmark_jitter([linear]) == (0.0, 24)
    alt = np.zeros((6, 1, 2))
    alt[::2, 0, 0] = 1.0  # +1, 0, +1, 0 ...: second difference +-2
    rms, n = landmark_jitter([alt, np.zeros((2, 1, 2))])
    assert rms == pytest.approx(2.0) and n == 4


def test_load_track_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="facerender track"):
        load_track(tmp_path)
    np.savez(tmp_path / "params.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="missing"):
        load_track(tmp_path)
    (tmp_path / "params.npz").write_text("garbage")
    with pytest.raises(ValueError, match="readable"):
        load_track(tmp_path / "params.npz")


def test_render_overlay_from_a_track(tmp_path, gap_video, ict_model):
    res = track_video(gap_video, tmp_path / "out", ict_model, tracker_factory=stub, progress=False, overlay=False,
                      max_frames=10)
    timings = {}
    p = render_overlay(res.out_dir, gap_video, tmp_path / "ov.mp4", ict_model, progress=False, timings=timings)
    frames = [f.image for f in VideoReader(p)]
    assert len(frames) == 10 and timings["overlay_render"] > 0
    src = [f.image for f in VideoReader(gap_video)][:10]
    tr = load_track(res.out_dir)
    # the model's projected landmarks are drawn in red over the frame
    x, y = tr.landmarks_2d[0][30].astype(int)
    px = frames[0][y, x].astype(int)
    assert px[0] > 150 and px[1] < 120, px
    assert np.abs(frames[0].astype(int) - src[0].astype(int)).mean() > 1.0
    with pytest.raises(ValueError, match="frames"):
        bad = write_video(tmp_path / "other.mp4", [np.zeros((64, 64, 3), np.uint8)] * 3)
        render_overlay(res.out_dir, bad, tmp_path / "ov2.mp4", ict_model, progress=False)
    assert not (tmp_path / "ov2.mp4").exists()


def test_summary_audit_events_and_overlay_marks(tmp_path, gap_video, ict_model):
    """Every 5th frame the model's landmarks are compared with a fresh detection (frames 0, 5, 15, 20 show a face,
    frame 10 is noise); the events count the lost and interpolated frames; the overlay marks them in red."""
    from facerender.tracking.quality import FreshDetector

    res = track_video(gap_video, tmp_path / "out", ict_model, TrackConfig(chunk_size=8), tracker_factory=stub,
                      progress=False)
    tr = load_track(res.out_dir)
    np.testing.assert_array_equal(np.flatnonzero(tr.audit_sampled), [0, 5, 10, 15, 20])
    np.testing.assert_array_equal(np.isfinite(tr.audit_error), np.isin(np.arange(22), [0, 5, 15, 20]))
    a = res.summary["audit"]
    assert (a["sampled"], a["detected"], a["interval"]) == (5, 4, 5)
    assert a["within"] == pytest.approx(np.mean(tr.audit_error[[0, 5, 15, 20]] <= 0.1))
    # the stored error is the model landmarks' agreement with a fresh detection of that frame
    img = [f.image for f in VideoReader(gap_video)][5]
    want = landmark_agreement(tr.landmarks_2d[5], FreshDetector()(img, tr.landmarks_2d[5]))
    assert tr.audit_error[5] == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(tr.audit_points_error[5], landmark_agreement(
        tr.landmarks[5], FreshDetector()(img, tr.landmarks_2d[5])), rtol=1e-5)
    ev = res.summary["events"]
    assert ev["lost_frames"] == 8 and ev["interpolated"] == 8 and ev["no_face"] == 8 and ev["redetected"] == 1
    frames = [f.image for f in VideoReader(res.overlay_path)]
    assert frames[10][1:3, 100:150].mean(axis=(0, 1))[0] > 180 > 100 > frames[10][1:3, 100:150].mean(axis=(0, 1))[1]
    assert frames[3][1:3, 100:150, 0].std() > 30  # a tracked frame: no border, the noise background shows


class RestartStub(StubTracker):
    """The stub with the solver's ``restart`` and a PSNR per frame (30 dB, 18 dB on the frames in ``low``)."""

    low = set()
    restarts = []

    def restart(self):
        RestartStub.restarts.append(self.n + 1)
        self.last = None

    def track_frame(self, frame, landmarks, confidence, gaze):
        res = super().track_frame(frame, landmarks, confidence, gaze)
        res.psnr = 18.0 if self.n in RestartStub.low else 30.0 + 0.1 * math.sin(self.n)
        if self.n in RestartStub.restarts:
            res.flags = res.flags + ["reinitialised"]
        return res


def test_photometric_check_and_solver_restart(tmp_path, lenna, ict_model):
    """A frame whose PSNR leaves the clip's distribution is flagged and the landmark tracker verifies its next
    frame; a face that jumps across the frame restarts the solver (``restarted``, then ``reinitialised``)."""
    rng = np.random.default_rng(3)
    frames = [face_frame_image(lenna, (192, 256), 110, (10 + (i >= 38) * 120, 20 + (i % 3)), rng) for i in range(46)]
    v = write_video(tmp_path / "jump.mp4", frames, fps=25)
    RestartStub.low, RestartStub.restarts = {36}, []
    res = track_video(v, tmp_path / "out", ict_model, TrackConfig(chunk_size=10), progress=False, overlay=False,
                      tracker_factory=lambda m, c, s, f: RestartStub(m, c, s, f))
    tr = load_track(res.out_dir)
    assert np.flatnonzero(tr.has_flag("photometric_outlier")).tolist() == [35]  # the 36th solve is frame 35
    assert np.flatnonzero(tr.has_flag("restarted")).tolist() == [38]
    assert RestartStub.restarts == [39] and tr.has_flag("reinitialised")[38]
    assert res.summary["events"]["photometric_outliers"] == 1
    # without the checks (the previous behaviour) nothing is flagged or restarted
    RestartStub.restarts = []
    from facerender.tracking.video import legacy_config

    res = track_video(v, tmp_path / "old", ict_model, legacy_config(chunk_size=10), progress=False, overlay=False,
                      tracker_factory=lambda m, c, s, f: RestartStub(m, c, s, f))
    tr = load_track(res.out_dir)
    assert not tr.has_flag("photometric_outlier").any() and not tr.has_flag("restarted").any()
    assert RestartStub.restarts == []


def test_tracks_of_earlier_formats_load(tmp_path, gap_video, ict_model):
    """params.npz written before the audit (format 3) loads with no audit (sampled False, NaN errors)."""
    import zipfile

    res = track_video(gap_video, tmp_path / "out", ict_model, tracker_factory=stub, progress=False, overlay=False,
                      max_frames=8)
    with np.load(res.params_path) as z:
        d = {k: z[k] for k in z.files if not k.startswith("audit_") and k != "box"}
    d["format_version"] = np.int64(3)
    old = tmp_path / "old.npz"
    np.savez(old, **d)
    assert zipfile.is_zipfile(old)
    tr = load_track(old)
    assert len(tr) == 8 and not tr.audit_sampled.any() and np.isnan(tr.audit_error).all()
    assert np.isnan(tr.box).all() and tr.audit_points_error.shape == (8,)
    np.testing.assert_array_equal(tr.landmarks_2d, load_track(res.out_dir).landmarks_2d)


# ---------------------------------------------------------------------------------------------------------- CLI
def test_cli_track(tmp_path, gap_video, ict_home, monkeypatch, capsys):
    from facerender import cli
    from facerender.tracking import tracker as tracker_module

    monkeypatch.setattr(tracker_module, "FaceTracker", StubTracker)
    out = tmp_path / "cli"
    rc = cli.main(["--home", str(ict_home), "track", str(gap_video), "-o", str(out), "--max-frames", "12",
                   "--no-overlay"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "frames/s" in text and "solve" in text and "params.npz" in text
    assert "on the face:" in text and "lost 5 frames (0 interpolated)" in text
    assert len(load_track(out)) == 12 and not (out / "overlay.mp4").exists()
    bad = tmp_path / "bad.mp4"
    bad.write_text("nope")
    rc = cli.main(["--home", str(ict_home), "track", str(bad), "-o", str(tmp_path / "cli2")])
    assert rc == 3 and "bad.mp4" in capsys.readouterr().err  # an unusable input (docs/errors.md)
    assert not (tmp_path / "cli2").exists()
    # the smoothing options reach the track (its summary records them); a bad lambda is a clear error
    for opts, want in ((["--smoothing", "savgol"], {"method": "savgol", "window": 5, "order": 2}),
                       (["--smoothing", "none"], {"window": 1}),
                       (["--smoothing-lambda", "2"], {"method": "whittaker", "lambda": 2.0})):
        out = tmp_path / f"cli_{opts[-1]}"
        assert cli.main(["--home", str(ict_home), "track", str(gap_video), "-o", str(out), "--max-frames", "6",
                         "--no-overlay"] + opts) == 0
        got = json.loads((out / "summary.json").read_text())["smoothing"]
        assert {k: got[k] for k in want} == want, got
    capsys.readouterr()
    for bad_lam in ("-1", "0", "nan", "x"):
        with pytest.raises(SystemExit) as e:
            cli.main(["--home", str(ict_home), "track", str(gap_video), "-o", str(tmp_path / "cli3"),
                      "--smoothing-lambda", bad_lam])
        assert e.value.code == 2 and "--smoothing-lambda: must be a finite number > 0" in capsys.readouterr().err
    assert not (tmp_path / "cli3").exists()


# ---------------------------------------------------------------------------------------------------------- real solver
@pytest.mark.slow
def test_real_tracker_on_a_real_clip(tmp_path, video_dir, ict_model):
    """The lead's FaceTracker end to end on 20 frames of talking_d3 (3 keyframes to keep it short)."""
    pytest.importorskip("facerender.tracking.tracker")
    cfg = TrackConfig(keyframes=3, keyframe_candidates=6, chunk_size=8)
    res = track_video(video_dir / "talking_d3.mp4", tmp_path / "out", ict_model, cfg, max_frames=20,
                      progress=False)
    tr = load_track(res.out_dir)
    assert len(tr) == 20 and tr.face_found.all()
    assert_finite_params(tr)
    assert tr.albedo is not None and tr.albedo.shape[1] == 3 and np.isfinite(tr.albedo).all()
    assert np.isfinite(tr.energy).all()
    # the projected model landmarks follow the detected ones
    err = np.linalg.norm(tr.landmarks_2d - tr.landmarks, axis=-1)[:, 17:].mean()
    assert err < 6.0, err
    j = res.summary["jitter"]
    assert j["triples"] >= 10 and np.isfinite(j["model_px"]) and np.isfinite(j["detector_px"])
    # smoothing on (default): the solver's input and the fixed-vertex model landmarks jitter less than the detector
    assert j["smoothed_px"] < j["detector_px"] and j["model_px"] < j["detector_px"]
    assert np.isfinite(tr.model_landmarks_2d).all() and not np.array_equal(tr.model_landmarks_2d, tr.landmarks_2d)
    assert VideoReader(res.overlay_path).frame_count == 20
    # photometric PSNR inside the face mask, on the keyframes and on the frames held out from the albedo
    assert np.isfinite(tr.psnr).all() and tr.psnr.shape == (20,)
    ps = res.summary["psnr"]
    assert ps["keyframes_n"] + ps["other_n"] == 20 and ps["other_n"] >= 17
    assert 20.0 < ps["other"] < 45.0 and 20.0 < ps["keyframes"] < 45.0, ps
    # held-out frames are not much worse than the frames the albedo was estimated on
    assert ps["other"] > ps["keyframes"] - 3.0, ps


def test_psnr_summary_splits_keyframes():
    psnr = np.array([30.0, 20.0, np.nan, 25.0, 35.0])
    index = np.arange(5)
    s = psnr_summary(psnr, index, [0, 4])
    assert s["keyframes"] == pytest.approx(32.5) and s["keyframes_n"] == 2
    assert s["other"] == pytest.approx(22.5) and s["other_n"] == 2
    assert s["other_p10"] == pytest.approx(20.5)
    assert s["p10"] == pytest.approx(np.percentile([30.0, 20.0, 25.0, 35.0], 10)) and s["median"] == pytest.approx(27.5)
    e = psnr_summary(np.full(3, np.nan), np.arange(3), [])
    assert e["keyframes"] is None and e["other"] is None and e["other_n"] == 0
