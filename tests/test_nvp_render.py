"""Neural Voice Puppetry, rendering half and the whole pipeline: the neural texture (values, float64 gradients,
Laplacian pyramid, tiles and the eyes' slot), the lower-face region and compositing masks, the renderer method on the
shared trainer, the streamed audio mux, and the CLI end to end on a short speech clip with its audio in sync (offset
measured), with its bad inputs."""
from __future__ import annotations

import json
import math
import wave

import numpy as np
import pytest
import torch

from neural_renderers.nvp.render import NeuralVoicePuppetryRenderer, NVPRenderConfig, crop_figures
from neural_renderers.nvp.texture import (EYES_REGION, NeuralTexture, composite_masks, lower_face_weights, sample_tiled,
                                          split_condition)

FRAMES = 24


# --------------------------------------------------------------------------------------------- neural texture
def _texel_uv(i, j, w, h):
    """UV of the centre of texel (col i, row j) of a (h, w) texture (v up, row 0 at the top)."""
    return (i + 0.5) / w, 1 - (j + 0.5) / h


def test_sample_tiled_values_tiles_levels_and_background():
    T, C = 3, 2
    fine = torch.arange(T * C * 4 * 4, dtype=torch.float64).reshape(T, C, 4, 4)
    coarse = torch.full((T, C, 2, 2), 100.0, dtype=torch.float64)
    coarse[1] = 200.0
    uv = torch.zeros(1, 2, 3, 2, dtype=torch.float64)
    tile = torch.tensor([[[1, 2, 0], [3, 4, 1]]])  # slot k + 1; 0 background; 4 is beyond the 3 slots
    uv[0, 0, 0] = torch.tensor(_texel_uv(1, 2, 4, 4))
    uv[0, 0, 1] = torch.tensor(_texel_uv(3, 0, 4, 4))
    uv[0, 1, 0] = torch.tensor(_texel_uv(0, 3, 4, 4))
    uv[0, 1, 2] = torch.tensor([2.0, -1.0])  # outside [0, 1]: the border texel (row 3, col 3)
    out = sample_tiled([fine, coarse], uv, tile)
    assert out.shape == (1, 2, 3, C) and out.dtype == torch.float64
    # at a fine texel centre: that texel + the coarse level's (constant) value; the slot picks the texture
    np.testing.assert_allclose(out[0, 0, 0], fine[0, :, 2, 1] + 100.0)
    np.testing.assert_allclose(out[0, 0, 1], fine[1, :, 0, 3] + 200.0)
    np.testing.assert_allclose(out[0, 1, 0], fine[2, :, 3, 0] + 100.0)
    np.testing.assert_allclose(out[0, 1, 2], fine[0, :, 3, 3] + 100.0)
    assert out[0, 0, 2].abs().sum() == 0 and out[0, 1, 1].abs().sum() == 0  # background and unknown slot
    # halfway between two texel centres along u: their mean
    uv2 = torch.tensor([[[[0.25, 1 - 0.5 / 4]]]], dtype=torch.float64)
    np.testing.assert_allclose(sample_tiled([fine], uv2, torch.ones(1, 1, 1, dtype=torch.long))[0, 0, 0],
                               (fine[0, :, 0, 0] + fine[0, :, 0, 1]) / 2)
    with pytest.raises(ValueError, match="tile must be"):
        sample_tiled([fine], uv, tile[..., :2])
    with pytest.raises(ValueError, match="every texture"):
        sample_tiled([fine, coarse[:2]], uv, tile)


def test_neural_texture_gradcheck_float64():
    torch.manual_seed(0)
    levels = [torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True),
              torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)]
    uv = (0.1 + 0.8 * torch.rand(2, 3, 4, 2, dtype=torch.float64)).requires_grad_(True)
    tile = torch.randint(0, 3, (2, 3, 4))

    def f(a, b, u):
        return sample_tiled([a, b], u, tile)

    assert torch.autograd.gradcheck(f, (*levels, uv), eps=1e-6, atol=1e-6)
    # the module: texels are stored / scale, so d out / d param = scale * d out / d texel
    tex = NeuralTexture(channels=3, size=8, levels=2, tiles=2, scale=5.0).double()
    with torch.no_grad():
        for p, v in zip(tex.pyramid, levels):
            p.copy_(v / 5.0)
    out = tex(uv.detach(), tile)
    np.testing.assert_allclose(out.detach(), f(*levels, uv).detach(), rtol=1e-12, atol=1e-12)
    out.sum().backward()
    g = torch.autograd.grad(f(*levels, uv).sum(), levels[0])[0]
    np.testing.assert_allclose(tex.pyramid[0].grad, 5.0 * g, rtol=1e-12, atol=1e-12)


def test_neural_texture_pyramid_regularizer_and_image():
    tex = NeuralTexture(channels=4, size=16, levels=4, tiles=2)
    assert [tuple(p.shape) for p in tex.pyramid] == [(2, 4, 16, 16), (2, 4, 8, 8), (2, 4, 4, 4), (2, 4, 2, 2)]
    assert float(tex.regularization().detach()) == 0.0  # zero initialisation, as the reference
    with torch.no_grad():
        for p in tex.pyramid:
            p.fill_(1.0)
    assert float(tex.regularization().detach()) == pytest.approx(8 + 2 + 1 + 0)
    img = tex.image(0, (0, 1, 2))
    assert img.shape == (16, 16, 3) and torch.allclose(img, torch.full_like(img, 4.0))
    with pytest.raises(ValueError, match="power of two"):
        NeuralTexture(size=24)


def test_split_condition_gives_the_eyes_their_own_slot():
    cond = torch.zeros(1, 1, 3, 4)
    cond[0, 0, 0] = torch.tensor([0.2, 0.3, 1.0, 1.0])  # face skin, tile 0
    cond[0, 0, 1] = torch.tensor([0.2, 0.3, 1.0, float(EYES_REGION)])  # an eyeball over the same tile
    cond[0, 0, 2] = torch.tensor([0.5, 0.5, 4.0, 4.0])  # teeth, tile 3
    uv, tile = split_condition(cond, eye_slot=6)
    assert tile.tolist() == [[[1, 7, 4]]] and uv.shape == (1, 1, 3, 2)
    assert split_condition(cond)[1].tolist() == [[[1, 1, 4]]]
    assert split_condition(cond[..., :3], eye_slot=6)[1].tolist() == [[[1, 1, 4]]]


def test_composite_masks_alpha_inside_hole_and_specks_removed():
    w = torch.zeros(1, 48, 48)
    w[0, 20:40, 12:36] = 1.0
    w[0, 5, 5] = 1.0  # a one-pixel speck (an eyelid patch over the face's UV chart)
    alpha, hole = composite_masks(w, dilate=2, feather=1.5)
    assert alpha.shape == hole.shape == (1, 48, 48)
    assert float(alpha[0, 30, 24]) == pytest.approx(1.0) and float(alpha[0, 5, 5]) == 0.0
    assert float(hole[0, 5, 5]) == 0.0 and float(hole[0, 30, 24]) == 1.0
    assert bool(((alpha > 0) <= (hole > 0)).all())  # the output is used only where the renderer filled it
    assert 0.2 < float(alpha[0, 30, 10 - 0]) < 0.8  # the feathered border around the grown region
    with pytest.raises(ValueError, match="weight must be"):
        composite_masks(w[0], 1, 1)


def test_lower_face_weights_on_ict(ict_model):
    w = lower_face_weights(ict_model)
    assert w.shape == (ict_model.num_vertices,) and w.min() >= 0 and w.max() <= 1
    with torch.no_grad():
        v = ict_model().vertices[0]
        lm = ict_model.get_landmarks(v[None], "ibug68")[0]
    near = torch.cdist(lm, v).argmin(1).numpy()
    assert (w[near[48:68]] > 0.95).all()  # lips
    assert (w[near[[5, 6, 7, 8, 9, 10, 11]]] > 0.9).all()  # chin and jaw line
    assert (w[near[list(range(17, 31)) + list(range(36, 48))]] == 0).all()  # brows, nose bridge and tip, eyes
    assert (w[near[31:36]] < 0.3).all()  # the nostrils: where the region fades in
    assert (w[ict_model.regions["teeth"].vertex_ids] == 1).all()
    assert (w[ict_model.regions["eyeball_left"].vertex_ids] == 0).all()


# --------------------------------------------------------------------------------------------- the method
def _synthetic_batch(n=8, S=32, seed=0):
    """Frames whose real crop IS a known texture seen through a moving UV map (a face-sized patch)."""
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(3, 8, 8, generator=g)
    conds, imgs = [], []
    for k in range(n):
        cond = torch.zeros(S, S, 4)
        y, x = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
        inside = (x >= 6) & (x < 26) & (y >= 4 + k % 3) & (y < 28)
        cond[..., 0] = ((x - 6 + 0.5) / 20).clamp(0, 1)
        cond[..., 1] = (1 - (y - 4 - k % 3 + 0.5) / 24).clamp(0, 1)
        cond[..., 2] = inside.float()
        cond[..., 3] = inside.float()
        cond[~inside] = 0
        col = sample_tiled([gt[None].double()], cond[None, ..., :2].double(), cond[None, ..., 2].long())[0]
        img = torch.where(inside[..., None], col.float(), torch.full((S, S, 3), 0.3))
        conds.append(cond)
        imgs.append(img)
    return {"condition": torch.stack(conds), "image": torch.stack(imgs)}


def test_renderer_method_learns_its_texture(tmp_path):
    """32^2, 8 synthetic frames, 120 steps on the shared trainer: the texture's colour channels converge to the
    image's colours and the composited region's PSNR rises (about 10 s)."""
    from torch.utils.data import Dataset

    from neural_renderers.training import TrainConfig, Trainer, seed_everything

    batch = _synthetic_batch()

    class DS(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"condition": batch["condition"][i], "image": batch["image"][i]}

    seed_everything(0)
    cfg = NVPRenderConfig(size=32, texture_size=16, texture_levels=2, tiles=1, base_channels=8, max_channels=32,
                          lr=2e-3, hole_shift=0.0)
    m = NeuralVoicePuppetryRenderer(cfg)
    assert m.name == "nvp-render" and set(m.networks()) == {"texture", "renderer"} and cfg.slots == 2
    tr = Trainer(m, DS(), tmp_path / "run", TrainConfig(steps=120, batch_size=4, val_every=0, val_batches=2,
                                                        sample_every=120, checkpoint_every=1000, progress=False,
                                                        tensorboard=False, threads=1), val_data=DS())
    before = tr.validate()
    res = tr.fit()
    after = res.validation
    assert after["val/psnr_region"] > before["val/psnr_region"] + 6, (before, after)
    o = m.generate(m.texture, m.renderer, batch["condition"], batch["image"], m.region_weight(batch["condition"]))
    err = ((o["features"][:, :3] - o["real"]).abs() * o["mesh"]).sum() / (3 * o["mesh"].sum())
    assert float(err.detach()) < 0.15, float(err.detach())  # texture colour vs the image, in [-1, 1] units
    assert (tmp_path / "run" / "samples" / "step_00000120.png").is_file()
    # inference: the crop and the alpha; the union with another region only grows the alpha
    m.eval()
    crop, alpha = m.render(batch["condition"][:2], batch["image"][:2])
    crop2, alpha2 = m.render(batch["condition"][:2], batch["image"][:2], batch["condition"][2:4])
    assert crop.shape == (2, 32, 32, 3) and alpha.shape == (2, 32, 32) and 0 <= float(crop.min())
    assert bool((alpha2 >= alpha - 1e-6).all())
    with pytest.raises(ValueError, match="expected condition"):
        m.render(batch["condition"][:, :16], batch["image"][:, :16])


def test_crop_figures():
    real = torch.zeros(1, 3, 8, 8) - 1
    fake = real.clone()
    fake[..., :4] += 0.2  # 0.1 in [0, 1] on the left half
    alpha = torch.zeros(1, 1, 8, 8)
    alpha[..., :4] = 1
    f = crop_figures(fake, real, alpha)
    assert f["psnr_region"] == pytest.approx(20.0, abs=1e-3)
    assert f["psnr"] == pytest.approx(10 * math.log10(1 / (0.01 / 2)), abs=1e-3)


# --------------------------------------------------------------------------------------------- audio mux
def _write_wav(path, x, rate, channels=1):
    x = np.asarray(x, np.float32)
    data = np.repeat(x[:, None], channels, 1) if channels > 1 else x[:, None]
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes((np.clip(data, -1, 1) * 32767).astype("<i2").tobytes())


def _write_layout(path, x, rate, layout):
    """``x (N,)`` in every channel of a PCM WAV with an FFmpeg channel layout (mono, stereo, 5.1)."""
    import av

    ch = {"mono": 1, "stereo": 2, "5.1": 6}[layout]
    c = av.open(str(path), "w")
    st = c.add_stream("pcm_s16le", rate=rate, layout=layout)
    f = av.AudioFrame.from_ndarray((np.repeat(x[None], ch, 0).T.reshape(1, -1) * 32767).astype(np.int16),
                                   format="s16", layout=layout)
    f.sample_rate = rate
    for pk in st.encode(f):
        c.mux(pk)
    for pk in st.encode(None):
        c.mux(pk)
    c.close()


@pytest.mark.parametrize("rate,layout", [(22050, "stereo"), (8000, "mono"), (48000, "5.1")])
def test_mux_audio_keeps_time_and_cuts_at_the_video_end(tmp_path, rate, layout):
    from facerender.audio.mux import mux_audio
    from facerender.errors import AudioError
    from facerender.io.video import VideoReader, VideoWriter, read_audio

    with VideoWriter(tmp_path / "v.mp4", fps=25) as w:
        for i in range(40):
            w.write(np.full((32, 32, 3), 5 * i, np.uint8))
    x = np.zeros(int(2.5 * rate), np.float32)
    clicks = [0.2, 0.9, 1.45]
    for t in clicks:
        x[int(t * rate):int(t * rate) + max(4, rate // 700)] = 0.9
    _write_layout(tmp_path / "a.wav", x, rate, layout)
    out = mux_audio(tmp_path / "v.mp4", tmp_path / "a.wav", tmp_path / "o.mp4")
    r = VideoReader(out)
    assert r.frame_count == 40 and r.has_audio and r.info.audio_sample_rate == rate
    a, ar = read_audio(out)
    assert a.shape[1] / ar == pytest.approx(1.6, abs=1e-3)  # cut at the video's end (40 / 25 s)
    env = np.abs(a[0])
    for t in clicks[:2]:
        lo = int((t - 0.1) * ar)
        assert abs((lo + np.argmax(env[lo:lo + int(0.2 * ar)])) / ar - t) < 0.003
    # an offset into the audio plays that time with frame 0
    a2, _ = read_audio(mux_audio(tmp_path / "v.mp4", tmp_path / "a.wav", tmp_path / "o2.mp4", offset=0.8))
    assert abs(np.argmax(np.abs(a2[0, :int(0.3 * ar)])) / ar - 0.1) < 0.003
    with pytest.raises(AudioError, match="no audio"):
        mux_audio(tmp_path / "v.mp4", tmp_path / "v.mp4", tmp_path / "o3.mp4")
    assert not (tmp_path / "o3.mp4").exists()


# --------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def speech_clip(shared_dir, ict_model, tmp_path_factory):
    """The first 24 frames of a GRID speaker's sentence, tracked here, and a one-speaker speech-track manifest."""
    from facerender.tracking import track_video

    video = shared_dir / "data" / "speech" / "grid_multi" / "brbk7n.mp4"
    if not video.is_file():
        pytest.skip(f"missing {video}")
    root = tmp_path_factory.mktemp("nvp_clip")
    track_video(video, root / "track", ict_model, max_frames=FRAMES, overlay=False, progress=False)
    manifest = {"version": 1, "data": str(video.parent.parent), "fps": 25.0, "speakers": {"multi_brbk7n": {
        "track": "track/params.npz", "clips": [{"name": "brbk7n", "video": "grid_multi/brbk7n.mp4", "start": 0,
                                               "frames": FRAMES, "heldout_from": 20}]}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root, video


def facerender(capsys, *args, check=True):
    from facerender.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    if check and code != 0:
        raise AssertionError(f"exit {code}\n{out}\n{err}")
    return code, out, err


def test_cli_train_and_puppet_in_sync(speech_clip, tmp_path, capsys):
    from facerender.audio import compute_features, frame_times
    from facerender.io.video import VideoReader
    from neural_renderers.nvp import load_nvp_audio, predict_expressions

    root, video = speech_clip
    common = ["--threads", "1", "--no-progress", "--checkpoint-every", "1000", "--val-every", "0"]
    arun = tmp_path / "audio"
    _, out, _ = facerender(capsys, "train", "nvp-audio", "--tracks", root, "-o", arun, "--steps", "6",
                           "--batch-size", "8", *common)
    assert "trained 6 steps" in out
    cfg = json.loads((arun / "config.json").read_text())
    assert cfg["method"] == "nvp-audio" and cfg["method_config"]["speakers"] == ["multi_brbk7n"]
    run = tmp_path / "render"
    args = ["train", "nvp-render", "--target", root / "track", "-o", run, "--size", "32", "--texture-size", "32",
            "--base-channels", "8", "--max-channels", "16", "--batch-size", "4", "--audio-model", arun,
            "--sample-every", "4", *common]
    # too few tracked frames for a neural texture: refused, naming the counts
    rc, _, err = facerender(capsys, *args, "--steps", "4", check=False)
    assert rc == 3 and "tracked frames" in err and "Traceback" not in err and not (run / "checkpoints").exists()
    _, out, err = facerender(capsys, *args, "--steps", "4", "--min-train-frames", "12")
    assert "trained 4 steps" in out
    saved = json.loads((run / "config.json").read_text())
    # 24 frames are too few to fit a map (>= 100): the speakers' mean map, flagged
    assert saved["data"]["map"]["source"] == "average" and (run / "audio2expression.pt").is_file()
    # the driving audio: a real sentence of another speaker, 1.32 s (longer than the target's 24 frames: 33 frames)
    speech = tmp_path / "speech.wav"
    from facerender.audio import load_audio

    x, _ = load_audio(video.parent / "lbax4n.mp4", 16000)
    _write_wav(speech, x[int(0.5 * 16000):int(1.82 * 16000)], 16000)
    out_dir = tmp_path / "out"
    _, out, err = facerender(capsys, "puppet", "--audio", speech, "--model", run, "-o", out_dir, "--no-progress")
    r = VideoReader(out_dir / "result.mp4")
    assert r.frame_count == 33 and r.has_audio and r.size == VideoReader(video).size
    assert VideoReader(out_dir / "side_by_side.mp4").frame_count == r.frame_count
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["frames"] == 33 and summary["target_loops"] and summary["flags"]["identity_map"]
    assert "identity map" in err
    # sync, measured: the expressions rendered per frame against those the output's own sound predicts, shifted
    ex = np.load(out_dir / "expressions.npz")
    net, _ = load_nvp_audio(run / "audio2expression.pt")
    feats = compute_features(out_dir / "result.mp4")
    again = predict_expressions(net.net, feats, frame_times(33, 25.0))
    a, b = ex["predicted"] - ex["predicted"].mean(0), again - again.mean(0)  # the per-frame variations
    assert np.abs(a).max() > 1e-6
    corr = {k: np.corrcoef(a[3 + k:30 + k].ravel(), b[3:30].ravel())[0, 1] for k in range(-2, 3)}
    assert max(corr, key=corr.get) == 0 and corr[0] > 0.9, corr
    # audio shorter than the target cuts the output; longer loops the target ping-pong
    short = tmp_path / "short.wav"
    _write_wav(short, x[int(0.5 * 16000):int(1.22 * 16000)], 16000)
    out1 = tmp_path / "out1"
    facerender(capsys, "puppet", "--audio", short, "--model", run, "-o", out1, "--no-progress", "--no-side-by-side",
               "--target-start", "3")
    s1 = json.loads((out1 / "summary.json").read_text())
    assert s1["frames"] == 18 and not s1["target_loops"] and VideoReader(out1 / "result.mp4").frame_count == 18
    assert np.load(out1 / "expressions.npz")["target_index"].tolist() == list(range(3, 21))
    long = tmp_path / "long.wav"
    _write_wav(long, np.tile(x[:int(1.8 * 16000)], 2)[:int(2.2 * 16000)], 16000)
    out2 = tmp_path / "out2"
    facerender(capsys, "puppet", "--audio", long, "--model", run, "-o", out2, "--no-progress", "--no-side-by-side")
    s2 = json.loads((out2 / "summary.json").read_text())
    ti = np.load(out2 / "expressions.npz")["target_index"]
    assert s2["frames"] == 55 and s2["target_loops"] and ti.max() == FRAMES - 1 and ti[FRAMES] == FRAMES - 2
    assert not (out2 / "side_by_side.mp4").exists()
    # bad inputs: one line, an exit code, no output written
    mute = tmp_path / "mute.mp4"
    from facerender.io.video import VideoWriter

    with VideoWriter(mute, fps=25) as w:
        w.write(np.zeros((16, 16, 3), np.uint8))
    silent = tmp_path / "silent.wav"
    _write_wav(silent, np.zeros(16000), 16000)
    noise = tmp_path / "noise.wav"
    _write_wav(noise, 0.2 * np.random.default_rng(0).standard_normal(2 * 16000), 16000)
    for extra, code, msg in [
        (("--audio", silent), 3, "silent"),
        (("--audio", mute), 3, "no audio stream"),
        (("--audio", speech, "--target", video.parent / "lbax4n.mp4"), 3, "trained on"),
        (("--audio", noise, "--require-speech"), 3, "does not look like speech"),
    ]:
        bad = tmp_path / f"bad{code}{len(msg)}"
        rc, _, err = facerender(capsys, "puppet", "--model", run, "-o", bad, "--no-progress", *extra, check=False)
        assert rc == code and msg in err and "Traceback" not in err, (extra, rc, err)
        assert not (bad / "result.mp4").exists()
    # music / noise without --require-speech: done, and flagged
    out3 = tmp_path / "out3"
    _, _, err = facerender(capsys, "puppet", "--audio", noise, "--model", run, "-o", out3, "--no-progress",
                           "--no-side-by-side", "--max-frames", "4")
    assert "does not look like speech" in err
    assert json.loads((out3 / "summary.json").read_text())["flags"]["speech_like"] is False

