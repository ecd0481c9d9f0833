"""facerender.metrics: metric values on constructed inputs with known answers, and `facerender evaluate` on short
real clips (identical videos: PSNR inf / CSIM 1; a shifted copy: the known landmark error)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from facerender.errors import ShapeError
from facerender.metrics import (
    EvaluateConfig,
    SeamConfig,
    action_units,
    align_scale_shift,
    au_agreement,
    blendshape_distance,
    csim,
    evaluate,
    identity_distance,
    interocular,
    lip_opening,
    match_frames,
    neutral_relative,
    pearson,
    pose_error,
    psnr,
    seam_flicker,
    ssim,
)


def _face(scale=100.0, offset=(200.0, 150.0)) -> np.ndarray:
    """A (68, 2) face: dlib's mean face for the points 17-67, a jaw arc for 0-16."""
    from facerender.identity.chips import _MEAN_X, _MEAN_Y

    p = np.zeros((68, 2))
    p[17:, 0], p[17:, 1] = np.array(_MEAN_X), np.array(_MEAN_Y)
    a = np.linspace(np.pi * 0.95, np.pi * 0.05, 17)
    p[:17, 0] = 0.5 + 0.5 * np.cos(a)
    p[:17, 1] = 0.45 + 0.6 * np.sin(a)
    return p * scale + np.array(offset)


# ---------------------------------------------------------------------------------------------------------------
# image metrics


def test_psnr_ssim_known_values():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 32, 48, 3, generator=g) * 0.8
    assert torch.isinf(psnr(a, a)).all()
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-6)
    b = a + 0.1  # MSE 0.01 -> 20 dB
    torch.testing.assert_close(psnr(a, b), torch.full((2,), 20.0), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(psnr(a * 255, b * 255, max_val=255.0), torch.full((2,), 20.0), rtol=1e-5, atol=1e-4)
    # layout: channel-first equals channel-last
    torch.testing.assert_close(psnr(a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)), psnr(a, b))
    torch.testing.assert_close(ssim(a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)), ssim(a, b))
    noisy = (a + 0.2 * torch.rand(a.shape, generator=g)).clamp(0, 1)
    s = ssim(a, noisy)
    assert (s < 0.95).all() and (s > 0).all()
    with pytest.raises(ShapeError, match="differ in shape"):
        psnr(a, a[:, :10])
    with pytest.raises(ShapeError, match="floating point"):
        psnr((a * 255).byte(), (a * 255).byte())
    with pytest.raises(ValueError, match="odd"):
        ssim(a, a, window_size=4)


# ---------------------------------------------------------------------------------------------------------------
# identity


def test_csim_and_identity_distance():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(5, 128))
    np.testing.assert_allclose(csim(d, d[0]), d @ d[0] / np.linalg.norm(d, axis=1) / np.linalg.norm(d[0]))
    assert csim(d[:1], d[0])[0] == pytest.approx(1.0)
    assert csim(d[:1], -d[0])[0] == pytest.approx(-1.0)
    # mean of the reference descriptors is the identity
    ref = np.stack([d[0] + 0.1, d[0] - 0.1])
    assert csim(d[:1], ref)[0] == pytest.approx(1.0)
    assert identity_distance(d[:1], d[:1]) == 0.0
    x = np.zeros((2, 4))
    y = np.array([[3.0, 4, 0, 0], [0, 0, 0, 1]])
    assert identity_distance(x, y) == pytest.approx(3.0)  # (5 + 1) / 2 over 4 pairs
    assert math.isnan(identity_distance(np.zeros((0, 4)), y))
    with pytest.raises(ShapeError, match="lengths differ"):
        csim(d, np.zeros(3))


# ---------------------------------------------------------------------------------------------------------------
# landmarks


def test_pose_error_of_a_shifted_copy_is_known():
    ref = np.stack([_face(), _face(110, (180, 160))])
    io = interocular(ref)
    np.testing.assert_allclose(io, np.linalg.norm(ref[:, 36] - ref[:, 45], axis=-1))
    shifted = ref + np.array([3.0, 4.0])
    np.testing.assert_allclose(pose_error(shifted, ref), 5.0 / io)
    np.testing.assert_allclose(pose_error(ref, ref), 0.0)
    # LPD's optimal alignment removes scale and shift
    scaled = (ref - 100) * 1.3 + np.array([7.0, -2.0])
    np.testing.assert_allclose(align_scale_shift(scaled, ref), ref, atol=1e-9)
    np.testing.assert_allclose(pose_error(scaled, ref, align=True), 0.0, atol=1e-9)
    assert (pose_error(scaled, ref) > 0.1).all()
    # a missing face is NaN, not an error
    gap = shifted.copy()
    gap[1] = np.nan
    e = pose_error(gap, ref)
    assert e[0] == pytest.approx(5.0 / io[0]) and np.isnan(e[1])
    with pytest.raises(ShapeError, match=r"\(T, 68, 2\)"):
        pose_error(ref[:, :30], ref[:, :30])


def test_lip_opening_and_pearson():
    f = _face()
    f[62], f[66] = [250.0, 240.0], [250.0, 250.0]
    f[36], f[45] = [200.0, 180.0], [300.0, 180.0]
    assert lip_opening(f)[0] == pytest.approx(0.1)
    a = np.array([0.0, 1, 2, 3, np.nan, 5])
    assert pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert pearson(a, -a) == pytest.approx(-1.0)
    assert math.isnan(pearson([1.0, 2.0], [1.0, 2.0]))
    with pytest.raises(ShapeError):
        pearson([1.0, 2, 3], [1.0, 2])


def test_match_frames_orders():
    np.testing.assert_array_equal(match_frames(6, 30, 6, 30, "time"), np.arange(6))
    np.testing.assert_array_equal(match_frames(8, 30, 3, 15, "time"), [0, 0, 1, 2, 2, 2, -1, -1])  # half to even
    np.testing.assert_array_equal(match_frames(7, 1, 3, 1, "clamp"), [0, 1, 2, 2, 2, 2, 2])
    np.testing.assert_array_equal(match_frames(7, 1, 3, 1, "loop"), [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(match_frames(7, 1, 3, 1, "pingpong"), [0, 1, 2, 1, 0, 1, 2])
    np.testing.assert_array_equal(match_frames(4, 1, 1, 1, "pingpong"), [0, 0, 0, 0])
    with pytest.raises(ValueError, match="order"):
        match_frames(3, 1, 3, 1, "random")
    with pytest.raises(ValueError, match="positive"):
        match_frames(3, 0, 3, 1)


# ---------------------------------------------------------------------------------------------------------------
# expression


def test_blendshape_distance_and_action_units():
    names = ["jawOpen", "mouthSmile_L", "mouthSmile_R", "eyeBlink_L", "eyeBlink_R"]
    rng = np.random.default_rng(1)
    w = rng.uniform(0, 0.5, size=(20, 5))
    np.testing.assert_allclose(blendshape_distance(w, w), 0.0)
    # relative to each actor's neutral: a constant offset (another person's resting face) is no difference
    np.testing.assert_allclose(blendshape_distance(w, w + 0.2, relative=True), 0.0, atol=1e-12)
    np.testing.assert_allclose(blendshape_distance(w, w + 0.2, relative=False), 0.2)
    np.testing.assert_allclose(neutral_relative(w).min(0) <= 0, True)
    au, aus = action_units(w, names)
    assert aus == ["AU12", "AU27", "AU45"]
    np.testing.assert_allclose(au[:, 0], w[:, 1:3].mean(1))
    np.testing.assert_allclose(au[:, 1], w[:, 0])
    assert au_agreement(au, au) == 1.0
    on, off = np.full((4, 3), 0.9), np.zeros((4, 3))
    assert au_agreement(on, off) == 0.0
    half = off.copy()
    half[:2] = 0.9
    assert au_agreement(half, off) == 0.5
    nan = half.copy()
    nan[3] = np.nan
    assert au_agreement(nan, off) == pytest.approx(1 / 3)  # frames 0, 1 disagree, 2 agrees, 3 is left out
    with pytest.raises(ValueError, match="no action unit"):
        action_units(w[:, :1], ["foo"])


def test_fit_expressions_recovers_jaw_opening(ict_model):
    """Landmarks projected from ICT with known jawOpen: the per-video fit recovers it (identity fixed per video)."""
    from morphable_models import model_to_camera

    from facerender.metrics import fit_expressions

    m = ict_model
    jaw = np.array([0.0, 0.15, 0.3, 0.45, 0.6, 0.2])
    expr = torch.zeros(len(jaw), m.num_expression)
    expr[:, m.expression_names.index("jawOpen")] = torch.tensor(jaw, dtype=torch.float32)
    with torch.no_grad():
        verts = m(torch.zeros(len(jaw), m.num_identity), expr).vertices
        rot = torch.tensor([[0.1, 0.05, 0.0]]).expand(len(jaw), 3)
        lm = m.get_landmarks(model_to_camera(verts, rot, torch.tensor([[0.0, 0.0, 70.0]]).expand(len(jaw), 3)))
    uv = (lm[..., :2] / lm[..., 2:] * 768.0 + 256.0).double().numpy()
    uv[3] = np.nan  # a frame without a face
    fit = fit_expressions(uv, (512, 512), m)
    j = fit.expression[:, fit.names.index("jawOpen")]
    assert np.isnan(j[3]) and np.isnan(fit.rotation[3]).all()
    ok = np.isfinite(j)
    assert pearson(j[ok], jaw[ok]) > 0.95
    assert np.abs(j[ok] - jaw[ok]).max() < 0.15
    au, aus = action_units(fit.expression, fit.names)
    assert pearson(au[ok, aus.index("AU27")], jaw[ok]) > 0.95


# ---------------------------------------------------------------------------------------------------------------
# seam flicker


def _seam_videos(flicker: bool, T=8, H=160, W=160):
    rng = np.random.default_rng(2)
    base = rng.uniform(60, 190, size=(H, W, 3))
    base = base + 20 * np.sin(np.arange(W) / 5.0)[None, :, None]
    tgts, ress = [], []
    yy, xx = np.mgrid[0:H, 0:W]
    inside = (np.abs(xx - 80) < 35) & (np.abs(yy - 85) < 45)  # the "edited" region
    ring = inside & ~((np.abs(xx - 80) < 31) & (np.abs(yy - 85) < 41))
    for t in range(T):
        tgt = np.clip(base + rng.normal(0, 1.0, size=base.shape), 0, 255)
        res = tgt.copy()
        res[inside] += 25  # a steady edit: the seam adds no flicker
        if flicker:
            res[ring] += rng.choice([-15.0, 15.0])  # the border jumps every frame
        tgts.append(np.clip(tgt, 0, 255).astype(np.uint8))
        ress.append(np.clip(res, 0, 255).astype(np.uint8))
    lm = np.repeat(_face(60, (50, 55))[None], T, 0)
    return np.stack(ress), np.stack(tgts), lm


def test_seam_flicker_constructed():
    res, tgt, lm = _seam_videos(False)
    steady = seam_flicker(res, tgt, lm, SeamConfig(threshold=8.0, fraction=0.5))
    assert steady.frames == 7 and 0.1 < steady.region_area < 0.9
    assert steady.ratio == pytest.approx(1.0, abs=0.05)
    res, tgt, lm = _seam_videos(True)
    jumpy = seam_flicker(res, tgt, lm, SeamConfig(threshold=8.0, fraction=0.5))
    assert jumpy.ratio > 3.0
    # nothing edited: no region, no ratio (not an error)
    none = seam_flicker(tgt, tgt, lm)
    assert none.ratio is None and none.region_area == 0.0
    # frames without a face are skipped
    lm_gap = lm.copy()
    lm_gap[2:4] = np.nan
    assert seam_flicker(res, tgt, lm_gap, SeamConfig(threshold=8.0, fraction=0.5)).frames == 5
    with pytest.raises(ShapeError):
        seam_flicker(res, tgt[:3], lm)
    with pytest.raises(ValueError, match="fraction"):
        SeamConfig(fraction=1.5)


# ---------------------------------------------------------------------------------------------------------------
# evaluate on real clips


@pytest.fixture(scope="module")
def clips(video_dir, tmp_path_factory):
    """A 12-frame clip of talking_d3 (30 fps), its copy shifted by (8, 4) px, and a 15 fps version."""
    import itertools

    from facerender.io.video import VideoReader, VideoWriter

    d = tmp_path_factory.mktemp("clips")
    frames = [f.image for f in itertools.islice(VideoReader(video_dir / "talking_d3.mp4"), 12)]
    paths = {"orig": d / "orig.mp4", "shift": d / "shift.mp4", "half": d / "half.mp4", "gap": d / "gap.mp4"}
    with VideoWriter(paths["orig"], fps=30, crf=0) as w:
        for f in frames:
            w.write(f)
    with VideoWriter(paths["shift"], fps=30, crf=0) as w:
        for f in frames:
            w.write(np.pad(f, ((4, 0), (8, 0), (0, 0)), mode="edge")[:f.shape[0], :f.shape[1]])
    with VideoWriter(paths["half"], fps=15, crf=0) as w:
        for f in frames[::2]:
            w.write(f)
    with VideoWriter(paths["gap"], fps=30, crf=0) as w:  # frames 3-5 show no face
        for k, f in enumerate(frames):
            w.write(np.zeros_like(f) + 90 if 3 <= k <= 5 else f)
    return paths


def test_evaluate_identical_videos(dlib_ready_metrics, clips):
    p = clips["orig"]
    ev = evaluate(p, p, p, reference=p, config=EvaluateConfig(expression=True, identity_stride=3,
                                                             target_identity_stride=4))
    assert ev.frames == 12 and ev.faceless == {"result": 0, "source": 0, "target": 0, "reference": 0}
    assert math.isinf(ev.psnr) and ev.ssim == pytest.approx(1.0, abs=1e-6)
    assert ev.csim_reference == pytest.approx(1.0, abs=1e-6)  # frame by frame: the same frames
    assert ev.csim_source > 0.98 and ev.csim_target > 0.98  # to the mean descriptor of the video
    assert ev.identity_distance_target < 0.4  # different frames of one person (same person: < 0.6)
    assert ev.pose_error_reference == 0.0 and ev.pose_error_target == 0.0
    assert ev.pose_error_source == pytest.approx(0.0, abs=1e-9)
    assert ev.lip_correlation == pytest.approx(1.0)
    assert ev.expression_distance_reference == pytest.approx(0.0, abs=1e-9)
    assert ev.au_agreement_reference == 1.0 and ev.au_agreement_source == 1.0
    assert ev.seam_ratio is None and any("no edited region" in n for n in ev.notes)
    assert ev.descriptors == {"result": 4, "source": 4, "target": 3, "reference": 4}
    json.dumps(ev.to_dict())
    assert "| identity: CSIM" in ev.table()


def test_evaluate_shifted_copy_and_frame_rates(dlib_ready_metrics, clips):
    """A copy shifted by (8, 4) px: P_T to the target = |(8, 4)| / outer-eye-corner distance (dlib's HOG works on
    8-px cells, so the detection shifts exactly); a 15 fps reference is matched by time."""
    ev = evaluate(clips["orig"], clips["orig"], clips["shift"], reference=clips["half"],
                  config=EvaluateConfig(expression=False, seam=False))
    from facerender.io.video import VideoReader
    from facerender.landmarks import detect_landmarks

    first = next(iter(VideoReader(clips["orig"]))).image
    io = float(interocular(detect_landmarks(first).points)[0])
    assert ev.pose_error_target == pytest.approx(math.hypot(8, 4) / io, rel=0.1)
    assert ev.pose_error_source == pytest.approx(0.0, abs=0.01)  # aligned: the shift is removed
    assert "15.000 fps" in ev.matching["reference"] and "by time" in ev.matching["reference"]
    assert ev.psnr < 40 and ev.csim_target > 0.95


def test_evaluate_counts_frames_without_a_face(dlib_ready_metrics, clips):
    ev = evaluate(clips["orig"], clips["orig"], clips["gap"], config=EvaluateConfig(expression=False, seam=False,
                                                                                   identity_stride=1))
    assert ev.faceless["result"] == 3 and ev.faceless_result == [3, 4, 5]
    assert ev.descriptors["result"] == 9  # the faceless frames give no descriptor
    assert ev.pose_error_target == pytest.approx(0.0, abs=1e-9)  # the other 9 frames are the target's
    assert "| 3 / 0 / 0 |" in ev.table()


def test_evaluate_bad_input(tmp_path, clips):
    with pytest.raises(FileNotFoundError, match="result video"):
        evaluate(clips["orig"], clips["orig"], tmp_path / "nothing.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    from facerender.errors import VideoError

    with pytest.raises(VideoError, match="bad.mp4"):
        evaluate(clips["orig"], clips["orig"], bad)
    with pytest.raises(ValueError, match="target_order"):
        EvaluateConfig(target_order="sideways")


def test_cli_evaluate(dlib_ready_metrics, clips, tmp_path, capsys):
    from facerender.cli import main

    out = tmp_path / "ev.json"
    rc = main(["evaluate", "--source", str(clips["orig"]), "--target", str(clips["orig"]), "--result",
               str(clips["shift"]), "--json", str(out), "--max-frames", "6", "--no-expression", "--no-seam", "-q"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "pose: P_T" in text and "matched to the output" in text
    data = json.loads(out.read_text())
    assert data["frames"] == 6 and data["pose_error_target"] > 0.02
    rc = main(["evaluate", "--source", str(clips["orig"]), "--target", str(clips["orig"]), "--result",
               str(tmp_path / "missing.mp4")])
    assert rc != 0


@pytest.fixture(scope="module")
def dlib_ready_metrics():
    import importlib.util

    from conftest import IN_CI

    if importlib.util.find_spec("dlib") is None or importlib.util.find_spec("face_recognition_models") is None:
        msg = 'dlib-bin and face-recognition-models are not installed (pip install "facerender[landmarks]")'
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
