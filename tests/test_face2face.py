"""Face2Face end to end on short real clips, plus the policies and bad input."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from facerender.errors import VideoError
from facerender.reenact.face2face import Face2FaceConfig, actor_neutral, face2face, frame_schedule, transfer_expression

ROOT = Path(__file__).resolve().parents[1]


def test_frame_schedule_policies():
    s, t, fps = frame_schedule(10, 30.0, 4, 30.0, "source")
    assert fps == 30 and s.tolist() == list(range(10))
    assert t.tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]  # ping-pong: no jumps
    s, t, fps = frame_schedule(3, 30.0, 6, 30.0, "target")
    assert t.tolist() == list(range(6)) and s.tolist() == [0, 1, 2, 0, 1, 2]
    s, t, fps = frame_schedule(10, 30.0, 4, 30.0, "shortest")
    assert len(s) == 4
    # different frame rates: matched by time
    s, t, fps = frame_schedule(60, 30.0, 50, 25.0, "source")
    assert fps == 30 and len(s) == 60 and t[30] == 25 and np.all(np.abs(np.diff(t)) <= 1)
    with pytest.raises(ValueError):
        frame_schedule(0, 30.0, 5, 30.0, "source")
    with pytest.raises(ValueError, match="length"):
        Face2FaceConfig(length="longest")
    with pytest.raises(ValueError, match="mouth_region"):
        Face2FaceConfig(mouth_region="teeth")
    assert Face2FaceConfig().mouth_region == "lips"


def test_transfer_relative_to_neutral():
    rng = np.random.default_rng(0)
    src = rng.uniform(0.1, 0.3, size=(100, 4))
    src[50:60, 0] = 0.9  # the source opens its mouth
    n_s = actor_neutral(src, percentile=5)
    assert np.all(n_s >= 0.1) and np.all(n_s < 0.15)
    n_t = np.array([0.2, 0.0, 0.5, 0.3])
    out = transfer_expression(src, n_s, n_t, keep=np.array([False, False, False, True]),
                              target_current=np.full((100, 4), 0.7))
    assert np.allclose(out[55, 0], np.clip(0.2 + 0.9 - n_s[0], 0, 1))
    assert np.all(out[:, 3] == 0.7)  # kept (e.g. gaze)
    assert out.min() >= 0 and out.max() <= 1
    # the neutral of the source maps to the neutral of the target
    assert np.allclose(transfer_expression(n_s, n_s, n_t), n_t)


@pytest.fixture(scope="module")
def reenactment(video_dir, ict_model, tmp_path_factory):
    """Source expressions_d6 (first 90 frames, the mouth opens) onto talking_d3, tracked here."""
    out = tmp_path_factory.mktemp("f2f")
    cfg = Face2FaceConfig(max_frames=90, stills=(0, 45))
    res = face2face(video_dir / "expressions_d6.mp4", video_dir / "talking_d3.mp4", out, ict_model, cfg,
                    progress=False)
    return res


def test_paste_fades_out_before_the_crop_edge():
    """A face mask that runs past the crop (the forehead of a lowered head, most frames of the README job) must not
    leave a line where the crop ends: pasting a crop of the frame's own colour changes nothing."""
    from types import SimpleNamespace

    import torch

    from facerender.reenact.face2face import _Reenactor

    frame = torch.full((100, 120, 3), 128, dtype=torch.uint8)
    crop = torch.full((32, 32, 3), 128 / 255.0)
    mask = torch.ones(32, 32, dtype=torch.bool)  # touches every edge of the crop
    obj = SimpleNamespace(cfg=Face2FaceConfig(), last_band=None)
    for x0, y0, side in ((20.0, 10.0, 64.0), (33.3, 21.7, 50.5)):
        out = _Reenactor._paste(obj, frame, crop, mask, x0, y0, side)
        assert np.abs(out.astype(int) - 128).max() <= 1, (x0, y0)
    # and inside, away from the edge, the crop is what is pasted
    out = _Reenactor._paste(obj, frame, torch.full((32, 32, 3), 0.2), mask, 20.0, 10.0, 64.0)
    assert np.abs(out[42, 52].astype(int) - round(0.2 * 255)).max() <= 1 and (out[0] == 128).all()


def test_outputs_written(reenactment):
    r = reenactment
    assert r.frames == 90
    assert r.result_path.is_file() and r.side_by_side_path.is_file()
    from facerender.io.video import VideoReader

    rd = VideoReader(r.result_path)
    assert rd.size == (512, 512) and abs(rd.fps - 30) < 0.5 and rd.has_audio
    sb = VideoReader(r.side_by_side_path)
    assert sb.size[0] == 256 and sb.size[1] >= 3 * 256 - 8
    assert any(p.name.endswith("_blended.png") for p in r.stills)
    s = json.loads((r.out_dir / "summary.json").read_text())
    for k in ("decode", "transfer", "render", "composite", "encode"):
        assert s["per_frame_ms"][k] > 0
    assert (r.out_dir / "source_track" / "params.npz").is_file()
    assert not list(r.out_dir.rglob("*.partial*"))


def test_checks_on_real_video(reenactment):
    """Expression transferred (dlib inner-lip opening r >= 0.8), identity kept (< 0.6, closer to the target),
    stable (seam band <= 1.2x the target's), no frame without a face."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from check_face2face import check
    finally:
        sys.path.pop(0)
    res = check(reenactment.out_dir)
    assert res["lip_opening_correlation"] >= 0.8, res
    assert res["identity_distance_to_target"] < 0.6, res
    assert res["identity_distance_to_target"] < res["identity_distance_to_source"], res
    assert res["seam_ratio"] <= 1.2, res
    assert res["output_frames_without_face"] == [], res


def test_reuses_track_folders(reenactment, tmp_path, ict_model):
    """Track folders as inputs: no tracking is repeated; the target follows the source's length by ping-pong."""
    out = tmp_path / "again"
    cfg = Face2FaceConfig(max_frames=12, side_by_side=False, stills=(), mouth="model")
    r = face2face(reenactment.source_track, reenactment.target_track, out, ict_model, cfg, progress=False)
    assert r.timings["track_source"] < 1.0 and r.timings["track_target"] < 1.0
    assert r.frames == 12 and r.side_by_side_path is None and r.result_path.is_file()


def test_self_reenactment_keeps_the_frame_detail(reenactment, tmp_path, ict_model):
    """The target reenacted with its own track: the reenacted mesh is the tracked one, so the result should be the
    target frame. With ``keep_detail`` the frame's detail finer than the 128^2 crop comes back: the result is
    closer to the target (inside the face) than without it, and its fine structure (Laplacian) is close to the
    target's."""
    from scipy.ndimage import laplace

    from facerender.io.video import VideoReader
    from facerender.tracking.video import load_track

    tgt = load_track(reenactment.target_track)
    lm = tgt.landmarks_2d[:6, 17:36]  # brows, eyes and nose (the model mouth differs from the frame's)
    x0, y0 = (lm.min(1).min(0) + 4).astype(int)
    x1, y1 = (lm.max(1).max(0) - 4).astype(int)
    errs, sharp = {}, {}
    frames = [f.image for f, _ in zip(VideoReader(tgt.video), range(6))]
    for keep in (False, True):
        cfg = Face2FaceConfig(max_frames=6, side_by_side=False, stills=(), mouth="model", crop_size=128,
                              keep_detail=keep, length="target", crf=10)
        r = face2face(reenactment.target_track, reenactment.target_track, tmp_path / f"self_{keep}", ict_model, cfg,
                      progress=False)
        assert r.summary["tracking_fps"] == {"source": None, "target": None}  # nothing was tracked
        out = [f.image for f in VideoReader(r.result_path)]
        assert len(out) == 6
        errs[keep] = np.mean([np.abs(o[y0:y1, x0:x1].astype(float) - t[y0:y1, x0:x1]).mean()
                              for o, t in zip(out, frames)])
        sharp[keep] = np.mean([laplace(o[y0:y1, x0:x1].mean(-1).astype(float)).std() for o in out])
    sharp_t = np.mean([laplace(t[y0:y1, x0:x1].mean(-1).astype(float)).std() for t in frames])
    # measured: error 2.68 -> 2.38 grey levels, Laplacian std 3.55 -> 4.42 against the target's 4.12
    assert errs[True] < 0.93 * errs[False] and errs[True] < 3.5, errs
    assert sharp[False] < 0.9 * sharp_t and 0.95 * sharp_t < sharp[True] < 1.2 * sharp_t, (sharp, sharp_t)


def test_bad_input(tmp_path, ict_model, video_dir):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00 ftypisom" + b"\x13" * 4000)
    out = tmp_path / "out"
    with pytest.raises(VideoError):
        face2face(bad, video_dir / "talking_d3.mp4", out, ict_model, Face2FaceConfig(max_frames=5), progress=False)
    assert not (out / "result.mp4").exists()
    with pytest.raises(FileNotFoundError):
        face2face(tmp_path / "missing.mp4", video_dir / "talking_d3.mp4", out, ict_model, progress=False)
