"""Deep Video Portraits on real data: the dataset layer (crops, cache, windows, split, fingerprints), a tiny network
that overfits real frames, pose transfer, and the CLI end to end on a short clip."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from neural_renderers.data import (ConditioningSettings, TrackedVideo, WindowDataset, build_cache, split_frames,
                                   stable_crop_boxes, window_indices)
from neural_renderers.errors import DatasetError

FRAMES = 40


@pytest.fixture(scope="module")
def d10(video_dir, ict_model, tmp_path_factory):
    """The first 40 frames of talking_d10, tracked here, and a 32^2 conditioning cache."""
    from facerender.tracking import track_video

    tdir = tmp_path_factory.mktemp("d10_track")
    track_video(video_dir / "talking_d10.mp4", tdir, ict_model, max_frames=FRAMES, overlay=False, progress=False)
    src = TrackedVideo.open(video_dir / "talking_d10.mp4", tdir)
    cache = build_cache(src, ict_model, ConditioningSettings(size=32, batch=10), progress=False)
    return src, cache


def test_window_indices_at_sequence_edges_and_gaps():
    w = window_indices(6, 3)
    assert w.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]]
    valid = np.array([True, True, False, True, False, True])
    w = window_indices(6, 3, valid)
    # an untracked past frame takes the next tracked one towards the current frame
    assert w[3].tolist() == [1, 3, 3] and w[5].tolist() == [3, 5, 5] and w[4].tolist() == [3, 3, 4]
    assert window_indices(4, 1).tolist() == [[0], [1], [2], [3]]
    with pytest.raises(ValueError, match="window must be >= 1"):
        window_indices(4, 0)


def test_time_split_and_too_few_frames():
    valid = np.ones(100, bool)
    valid[[10, 95]] = False
    tr, va = split_frames(100, valid, 0.15)
    assert tr.max() < 85 <= va.min() and len(tr) == 84 and len(va) == 14 and 95 not in va
    with pytest.raises(DatasetError, match="9 tracked frames of 10: 8 for training .* and 1 for validation"):
        split_frames(10, np.r_[np.ones(9, bool), False], 0.15, min_train=9)
    with pytest.raises(DatasetError, match=r"0 for validation"):
        split_frames(20, np.r_[np.ones(10, bool), np.zeros(10, bool)], 0.15)


def test_stable_crops_follow_the_head_not_the_landmark_noise(d10, ict_model):
    src, cache = d10
    tr = src.track
    boxes = stable_crop_boxes(tr, ict_model)
    assert len(boxes) == FRAMES and np.allclose(boxes.centre, cache.boxes.centre)
    raw = (tr.landmarks.max(1) + tr.landmarks.min(1)) / 2  # centre of the detector's box, per frame
    jit_raw = np.abs(np.diff(raw, 2, axis=0)).mean()
    jit_box = np.abs(np.diff(boxes.centre, 2, axis=0)).mean()
    assert jit_box < 0.25 * jit_raw, (jit_box, jit_raw)
    # the face is inside the crop and fills a steady share of it
    lm = tr.landmarks_2d
    inside = (lm >= (boxes.centre - boxes.side[:, None] / 2)[:, None]) & \
             (lm <= (boxes.centre + boxes.side[:, None] / 2)[:, None])
    assert inside.all()
    share = np.ptp(lm, axis=1).max(1) / boxes.side
    assert 0.45 < share.min() and share.max() < 0.75


def test_cache_windows_channel_order_and_reuse(d10, ict_model, monkeypatch):
    src, cache = d10
    assert cache.channels == 9 and cache.num_frames == FRAMES and cache.size == 32
    ds = WindowDataset(cache, window=3, split="train")
    val = WindowDataset(cache, window=3, split="val")
    assert len(ds) == 34 and len(val) == 6 and set(ds.frames).isdisjoint(val.frames)
    s = ds[0]
    assert s["condition"].shape == (32, 32, 27) and s["image"].shape == (32, 32, 3) and int(s["frame"]) == 0
    # frame 0 repeats at the start; the current frame is last
    c0 = torch.from_numpy(cache.read("cond", 0).astype(np.float32) / 255)
    for k in range(3):
        assert torch.equal(s["condition"][..., 9 * k:9 * k + 9], c0)
    s5 = ds[5]
    for k, f in enumerate((3, 4, 5)):
        assert torch.equal(s5["condition"][..., 9 * k:9 * k + 9],
                           torch.from_numpy(cache.read("cond", f).astype(np.float32) / 255))
    # the maps: colour render and correspondence cover the face, the gaze map only the eyes
    cond = cache.read("cond", 5).astype(np.float32) / 255
    face = cond[..., 3:6].sum(-1) > 0
    eyes = cond[..., 6:9].sum(-1) > 0
    assert 0.2 < face.mean() < 0.8 and 0 < eyes.mean() < 0.05 and (eyes <= face).all()
    # a second build opens the cache without rendering
    import neural_renderers.data.cache as cache_mod

    def boom(*a, **k):
        raise AssertionError("re-rendered")

    monkeypatch.setattr(cache_mod.ConditioningRenderer, "__call__", boom)
    again = build_cache(src, ict_model, ConditioningSettings(size=32, batch=10), progress=False)
    assert again.folder == cache.folder


def test_float16_cache_holds_texture_coordinates_and_tiles(d10, ict_model):
    """Neural Voice Puppetry's conditioning: UVs at float16 precision, the UDIM tile + 1, the mask."""
    src, _ = d10
    with pytest.raises(ValueError, match="need storage='float16'"):
        ConditioningSettings(size=32, maps=("uv", "uv_tile"))
    settings = ConditioningSettings(size=32, maps=("uv", "uv_tile", "mask"), storage="float16", batch=20)
    cache = build_cache(src, ict_model, settings, progress=False)
    assert cache.channels == 4
    c = cache.read("cond", 7)
    assert c.dtype == np.float16
    uv, tile, mask = c[..., :2].astype(np.float32), c[..., 2], c[..., 3] > 0.5
    tiles = np.unique(tile)
    assert (tiles == np.round(tiles)).all() and tiles.min() == 0 and {1.0, 2.0} <= set(tiles.tolist())
    assert ((tile > 0) == mask).all() and (uv[mask] >= 0).all() and (uv[mask] <= 1).all()
    assert len(np.unique(np.round(uv[mask] * 2048))) > 2 * len(np.unique(np.round(uv[mask] * 255)))
    s = WindowDataset(cache, window=1, split="all")[7]
    assert s["condition"].dtype == torch.float32 and torch.equal(s["condition"], torch.from_numpy(c.astype(np.float32)))


def test_a_track_of_another_video_is_refused(d10, video_dir):
    src, _ = d10
    with pytest.raises(DatasetError, match="does not match the video .*talking_d3.mp4.*eye distance"):
        TrackedVideo.open(video_dir / "talking_d3.mp4", src.track_dir)
    with pytest.raises(DatasetError, match="frame size"):
        TrackedVideo.open(video_dir / "expressions_d6.mp4", src.track_dir)


def test_reenactment_opens_only_the_video_it_was_trained_on(d10, video_dir, tmp_path):
    from neural_renderers.data import open_trained_target, video_fingerprint

    src, _ = d10
    data = {"video": str(src.video), "track": str(src.track_dir), "video_fingerprint": video_fingerprint(src.video)}
    for target in (None, src.video, src.track_dir):  # the run's own, the same video named again, its track folder
        got = open_trained_target(data, target, refusal="never", progress=False)
        assert got.fingerprint["bytes"] == data["video_fingerprint"]["bytes"] and len(got.track) == FRAMES
    with pytest.raises(DatasetError, match="^train on this one first$"):
        open_trained_target(data, video_dir / "talking_d3.mp4", refusal="train on this one first", progress=False)
    with pytest.raises(FileNotFoundError, match="no such target video or track folder: .*nothing.mp4"):
        open_trained_target(data, tmp_path / "nothing.mp4", refusal="never", progress=False)
    changed = dict(data, video_fingerprint=dict(data["video_fingerprint"], bytes=1))  # replaced since training
    with pytest.raises(DatasetError, match="talking_d10.mp4' changed since the network was trained on it"):
        open_trained_target(changed, None, refusal="never", progress=False)
    with pytest.raises(DatasetError, match="^not this one$"):
        open_trained_target(changed, src.track_dir, refusal="not this one", progress=False)


def test_pose_transfer_of_an_actor_onto_itself_is_the_identity(d10):
    from neural_renderers.dvp import transfer_pose

    tr = d10[0].track
    ok = np.asarray(tr.face_found, bool)
    rows = np.arange(len(tr))
    rot, trans = transfer_pose(tr.rotation, tr.translation, ok, rows, tr.rotation, tr.translation, ok)
    assert np.allclose(rot, tr.rotation, atol=1e-6) and np.allclose(trans, tr.translation, atol=1e-6)
    # a source twice as far away moves half as much
    rot2, trans2 = transfer_pose(tr.rotation, tr.translation * 2, ok, rows, tr.rotation, tr.translation, ok)
    assert np.allclose(trans2, tr.translation, atol=1e-5)


def test_tiny_dvp_overfits_real_frames(d10):
    """32^2 network, 8 real frames, 150 steps (about 15 s on 2 cores): PSNR from < 16 dB to > 25 dB."""
    from torch.utils.data import Subset

    from neural_renderers.dvp import DeepVideoPortraits, DVPConfig
    from neural_renderers.training import TrainConfig, Trainer, seed_everything

    _, cache = d10
    ds = Subset(WindowDataset(cache, 3, "train"), list(range(0, 32, 4)))
    seed_everything(0)
    m = DeepVideoPortraits(DVPConfig(size=32, window=3, base_channels=16, max_channels=64, disc_channels=16,
                                     dropout=0.0))
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(m, ds, d, TrainConfig(steps=150, batch_size=4, val_every=0, val_batches=2, sample_every=1000,
                                           checkpoint_every=1000, progress=False, tensorboard=False, threads=1),
                     val_data=ds)
        before = tr.validate()["val/psnr"]
        res = tr.fit()
    after = res.validation["val/psnr"]
    assert before < 16 and after > 25, (before, after)


def facerender(capsys, *args, check=True):
    """Run the CLI in this process; returns (exit code, stdout, stderr)."""
    from facerender.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    if check and code != 0:
        raise AssertionError(f"exit {code}\n{out}\n{err}")
    return code, out, err


def test_cli_train_resume_and_reenact(d10, tmp_path, capsys):
    src, _ = d10
    run = tmp_path / "run"
    common = ["--size", "32", "--window", "2", "--base-channels", "8", "--batch-size", "4", "--checkpoint-every", "5",
              "--sample-every", "5", "--val-every", "0", "--threads", "1", "--no-progress"]
    _, out, _ = facerender(capsys, "train", "dvp", "--target", src.track_dir, "-o", run, "--steps", "6", *common)
    assert "trained 6 steps" in out and (run / "checkpoints" / "last.pt").is_file()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["method_config"]["size"] == 32 and cfg["data"]["train_frames"] == 34
    _, out, _ = facerender(capsys, "train", "dvp", "-o", run, "--resume", "--steps", "8", "--threads", "1",
                           "--no-progress")
    assert "trained 8 steps" in out
    out = tmp_path / "out"
    facerender(capsys, "reenact", "--method", "dvp", "--model", run, "--source", src.track_dir, "-o", out,
               "--max-frames", "6")
    from facerender.io.video import VideoReader

    r = VideoReader(out / "result.mp4")
    assert r.frame_count == 6 and r.size == src.track.image_size
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "dvp" and summary["frames"] == 6 and summary["checkpoint_step"] == 8
    assert (out / "side_by_side.mp4").is_file() and list((out / "stills").glob("*_network.png"))
    # user errors: one line, non-zero exit, no traceback
    for args, code, msg in [
        (("train", "dvp", "-o", tmp_path / "empty", "--resume", "--no-progress"), 1, "is not a training run"),
        (("train", "dvp", "-o", run, "--target", src.track_dir, "--steps", "9", "--no-progress"), 1,
         "already holds a run"),
        (("reenact", "--method", "dvp", "--source", src.track_dir, "-o", tmp_path / "x"), 2, "needs --model RUN"),
        (("reenact", "--method", "dvp", "--model", tmp_path, "--source", src.track_dir, "-o", tmp_path / "x"), 3,
         "not a training run"),  # an unusable input: exit 3 (docs/errors.md)
        (("train", "dvp", "-o", run, "--size", "100"), 2, "power of two"),
    ]:
        if code == 2 and args[-2] == "--size":  # argparse errors exit through SystemExit
            with pytest.raises(SystemExit) as e:
                facerender(capsys, *args, check=False)
            rc, err = e.value.code, capsys.readouterr().err
        else:
            rc, _, err = facerender(capsys, *args, check=False)
        assert rc == code, (args, rc, err)
        assert msg in err and "Traceback" not in err, err
    assert math.isfinite(summary["seam_stability"]["ratio"])
