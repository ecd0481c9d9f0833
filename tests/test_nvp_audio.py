"""Neural Voice Puppetry, audio half: decoding, log-mel features, frame windows, Audio2ExpressionNet, losses, the
closed-form map, the datasets and the synthetic check whose answer is known."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from facerender.audio import (AudioFeatures, MelConfig, MelStream, compute_features, frame_times, frame_windows,
                              load_audio, load_features, log_mel, mel_filterbank, probe_audio, resample,
                              save_features, stream_audio, to_mono, window_starts)
from facerender.audio.mel import hz_to_mel, mel_to_hz
from facerender.errors import AudioError, VideoError
from neural_renderers.nvp import (Audio2ExpressionConfig, Audio2ExpressionMethod, Audio2ExpressionNet,
                                  FrameSequenceDataset, NVPAudioConfig, TemporalFilter, context_offsets,
                                  fit_identity_map, mouth_weights, mouth_weights_from_model, temporal_loss,
                                  vertex_gram, vertex_loss, vertex_rms)
from neural_renderers.nvp.synthetic import jaw_from_level, loudness_jaw_clip, synthetic_clip


# ------------------------------------------------------------------------------------ a direct numpy reference
def _np_slaney_mel(f):
    f = np.asarray(f, dtype=np.float64)
    return np.array([x * 3.0 / 200.0 if x < 1000 else 15.0 + 27.0 * math.log(x / 1000.0) / math.log(6.4)
                     for x in f.ravel()]).reshape(f.shape)


def _np_mel_to_hz(m):
    return np.array([x * 200.0 / 3.0 if x < 15 else 1000.0 * 6.4 ** ((x - 15.0) / 27.0) for x in np.ravel(m)])


def _np_filterbank(cfg: MelConfig) -> np.ndarray:
    """Triangles written out one band and one bin at a time (Slaney scale, area-normalised)."""
    freqs = [k * cfg.sample_rate / cfg.n_fft for k in range(cfg.n_fft // 2 + 1)]
    m = np.linspace(_np_slaney_mel([cfg.fmin])[0], _np_slaney_mel([cfg.fmax])[0], cfg.n_mels + 2)
    hz = _np_mel_to_hz(m)
    fb = np.zeros((cfg.n_mels, len(freqs)))
    for i in range(cfg.n_mels):
        lo, c, hi = hz[i], hz[i + 1], hz[i + 2]
        for k, f in enumerate(freqs):
            if lo < f <= c:
                fb[i, k] = (f - lo) / (c - lo)
            elif c < f < hi:
                fb[i, k] = (hi - f) / (hi - c)
        fb[i] *= 2.0 / (hi - lo)
    return fb


def _np_log_mel(x: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """Wav2Lip's melspectrogram on our half-hop grid, frame by frame in float64."""
    x = np.asarray(x, np.float64)
    y = np.empty_like(x)
    y[0] = x[0]
    y[1:] = x[1:] - cfg.preemphasis * x[:-1]
    T = int(math.ceil(len(x) / cfg.hop_length))
    win = np.zeros(cfg.n_fft)
    left = (cfg.n_fft - cfg.win_length) // 2
    win[left:left + cfg.win_length] = np.hanning(cfg.win_length + 1)[:-1]  # periodic Hann
    fb = _np_filterbank(cfg)
    out = np.zeros((T, cfg.n_mels))
    for s in range(T):
        a = s * cfg.hop_length + cfg.hop_length // 2 - cfg.n_fft // 2  # window centred on (s + 0.5) * hop
        frame = np.array([y[i] if 0 <= i < len(y) else 0.0 for i in range(a, a + cfg.n_fft)])
        mel = fb @ np.abs(np.fft.rfft(frame * win))
        db = 20 * np.log10(np.maximum(1e-5, mel)) - cfg.ref_level_db
        out[s] = np.clip(8 * (db + 100) / 100 - 4, -4, 4)
    return out


def _speechy(n=16000 * 2, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(n)
    return x.astype(np.float32)


# ----------------------------------------------------------------------------------------------- mel features
def test_slaney_scale_values():
    # Slaney: linear 3/200 per Hz below 1 kHz (55 Hz -> 0.825), 27 mels per factor 6.4 above
    np.testing.assert_allclose(hz_to_mel(np.array([0.0, 55.0, 1000.0, 6400.0])), [0.0, 0.825, 15.0, 42.0], atol=1e-12)
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(np.array([55.0, 440.0, 3000.0, 7600.0]))),
                               [55.0, 440.0, 3000.0, 7600.0], rtol=1e-12)


def test_filterbank_matches_direct_loops():
    cfg = MelConfig()
    fb = mel_filterbank(cfg, torch.float64).numpy()
    assert fb.shape == (80, 201)
    np.testing.assert_allclose(fb, _np_filterbank(cfg), rtol=1e-9, atol=1e-12)
    # no band is empty and nothing lies outside [fmin, fmax]
    assert (fb.max(axis=1) > 0).all()
    freqs = np.arange(201) * 40.0
    assert fb[:, (freqs < 55) | (freqs > 7600)].max() == 0


@pytest.mark.parametrize("cfg", [MelConfig(), MelConfig.wav2lip()], ids=["25ms_10ms", "wav2lip"])
def test_log_mel_matches_direct_numpy(cfg):
    x = _speechy(5000 + 37)
    ref = _np_log_mel(x, cfg)
    got = log_mel(torch.from_numpy(x).double(), cfg).numpy()
    assert got.shape == (math.ceil(len(x) / cfg.hop_length), 80) == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-9)
    got32 = log_mel(torch.from_numpy(x), cfg).numpy()
    np.testing.assert_allclose(got32, ref, atol=2e-4)
    assert -4 <= got.min() and got.max() <= 4 and got.max() > 0  # a loud tone reaches the upper half


def test_log_mel_silence_batch_and_module():
    cfg = MelConfig()
    z = log_mel(torch.zeros(1600))
    assert z.shape == (10, 80) and torch.all(z == cfg.floor)
    x = torch.from_numpy(np.stack([_speechy(3200, 1), _speechy(3200, 2)]))
    batch = log_mel(x)
    assert batch.shape == (2, 20, 80)
    torch.testing.assert_close(batch[1], log_mel(x[1]))
    from facerender.audio import LogMel

    torch.testing.assert_close(LogMel(cfg)(x), batch)
    xt = x.T.contiguous().T  # non-contiguous (2, N)
    assert not xt.is_contiguous()
    torch.testing.assert_close(log_mel(xt), batch)


def test_log_mel_stream_equals_one_shot():
    x = _speechy(16000 + 123, 3)
    ref = log_mel(torch.from_numpy(x))
    rng = np.random.default_rng(0)
    ms = MelStream()
    parts, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 3000))
        parts.append(ms.push(x[i:i + n]))
        i += n
    parts.append(ms.finish())
    got = torch.cat(parts)
    assert got.shape == ref.shape and ms.steps_out == ref.shape[0]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="after finish"):
        ms.push(x[:10])


def test_log_mel_gradcheck_float64():
    cfg = MelConfig(n_fft=64, win_length=48, hop_length=16, n_mels=6, fmin=300.0, fmax=7000.0)
    x = torch.from_numpy(_speechy(80, 4)).double().mul(20).requires_grad_(True)
    y = log_mel(x, cfg)
    assert y.abs().max() < 4  # away from the clip, where the gradient is zero by design
    assert torch.autograd.gradcheck(lambda v: log_mel(v, cfg), (x,), eps=1e-6, atol=1e-5)


def test_log_mel_device_and_errors(device):
    x = torch.from_numpy(_speechy(4000)).to(device)
    y = log_mel(x)
    assert y.device.type == device.type
    torch.testing.assert_close(y.cpu(), log_mel(x.cpu()), atol=1e-4, rtol=0)
    with pytest.raises(TypeError, match="floating point"):
        log_mel(torch.zeros(100, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"\(N,\) or \(B, N\)"):
        log_mel(torch.zeros(2, 3, 100))
    with pytest.raises(AudioError, match="NaN"):
        log_mel(torch.tensor([0.0, float("nan")] * 100))
    with pytest.raises(ValueError, match="fmax"):
        MelConfig(fmax=9000.0)


# ---------------------------------------------------------------------------------------------- alignment
@pytest.mark.parametrize("fps", [24, 25, 29.97, 30])
def test_window_centres_on_frames_for_an_hour(fps):
    rate = 100.0
    n = int(3600 * fps)
    t = frame_times(n, fps)
    exact = 1001.0 / 30000.0 if fps == 29.97 else 1.0 / fps
    np.testing.assert_allclose(t[[1, n - 1]], [exact, (n - 1) * exact], rtol=1e-13)
    s0 = window_starts(t, rate, 16)
    centre = (s0 + 8) / rate  # steps s0 .. s0 + 15 span [s0, s0 + 16) / rate
    err = np.abs(centre - t)
    assert err.max() <= 0.5 / rate + 1e-9  # within half a step (5 ms), never drifting
    if fps == 25:
        assert err.max() < 1e-9  # the half-hop grid centres the window exactly at 25 fps
        assert (np.diff(s0) == 4).all()


@pytest.mark.parametrize("fps", [24, 25, 29.97, 30])
def test_click_lands_in_the_window_centre(fps):
    sr, n_frames = 16000, 60
    t = frame_times(n_frames, fps)
    x = np.zeros(int(sr * (t[-1] + 0.5)), np.float32)
    clicks = [7, 23, 41]
    for f in clicks:
        x[int(round(t[f] * sr))] = 1.0
    feats = compute_features(x, sample_rate=sr)
    win = feats.windows(t)  # (N, 16, 80)
    assert win.shape == (n_frames, 16, 80)
    for f in clicks:
        energy = win[f].mean(axis=1)
        assert int(np.argmax(energy)) in (7, 8), energy.round(2)
    # a frame far from every click sees silence only
    assert np.all(win[15] == feats.pad_value)


def test_frame_windows_padding_and_torch():
    feats = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    w = frame_windows(feats, np.array([0.0, 0.095]), rate=100.0, steps=4, pad_value=-1.0)
    # t = 0: steps -2 .. 1; t = 0.095: round(9.5 - 2) = 8 (half up) -> 8 .. 11
    np.testing.assert_array_equal(w[0, :, 0], [-1, -1, 0, 2])
    np.testing.assert_array_equal(w[1, :, 0], [16, 18, -1, -1])
    we = frame_windows(torch.from_numpy(feats), np.array([0.0]), 100.0, 4)  # edge padding, torch in and out
    assert isinstance(we, torch.Tensor)
    np.testing.assert_array_equal(we[0, :, 0].numpy(), [0, 0, 0, 2])
    with pytest.raises(ValueError, match="times"):
        frame_windows(feats, np.array([[0.0]]), 100.0)


# ------------------------------------------------------------------------------------------ decoding, flags
def _write_wav(path, samples, rate, layout):
    import av

    c = av.open(str(path), mode="w")
    s = c.add_stream("pcm_s16le", rate=rate, layout=layout)
    fr = av.AudioFrame.from_ndarray((np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1),
                                    format="s16", layout=layout)
    fr.sample_rate = rate
    for p in s.encode(fr):
        c.mux(p)
    for p in s.encode(None):
        c.mux(p)
    c.close()


@pytest.mark.parametrize("rate,layout", [(8000, "mono"), (22050, "stereo"), (44100, "mono"), (48000, "5.1")])
def test_decode_resamples_and_downmixes(tmp_path, rate, layout):
    pytest.importorskip("av")
    ch = {"mono": 1, "stereo": 2, "5.1": 6}[layout]
    t = np.arange(int(rate * 1.5)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    inter = np.zeros((len(t), ch))
    inter[:, 0] = tone  # the front-left (or only) channel
    if ch == 2:
        inter[:, 1] = tone
    p = tmp_path / f"tone_{rate}_{ch}.wav"
    _write_wav(p, inter.reshape(-1), rate, layout)
    info = probe_audio(p)
    assert (info.sample_rate, info.channels) == (rate, ch)
    x, info2 = load_audio(p)
    assert x.dtype == np.float32 and abs(len(x) - 24000) <= 1
    spec = np.abs(np.fft.rfft(x[2000:18000]))
    assert abs(np.argmax(spec) * 16000 / 16000 - 440) <= 1  # 1 Hz bins over 1 s
    amp = np.sqrt(2 * np.mean(x[2000:18000] ** 2))
    expect = 0.5 if ch <= 2 else 0.5 * np.asarray(to_mono(np.eye(6, dtype=np.float32)[:, :1]))[0]
    assert amp == pytest.approx(expect, rel=0.25)
    chunks = list(stream_audio(p, chunk_seconds=0.25))
    assert all(len(c) == 4000 for c in chunks[:-1])
    np.testing.assert_array_equal(np.concatenate(chunks), x)


def test_no_audio_stream_and_missing_file(tmp_path):
    pytest.importorskip("av")
    from facerender.io import VideoWriter

    p = tmp_path / "silent_video.mp4"
    with VideoWriter(p, fps=25) as w:
        for _ in range(5):
            w.write(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(AudioError, match="holds no audio stream"):
        compute_features(p)
    with pytest.raises(VideoError):  # AudioError is a VideoError
        probe_audio(p)
    with pytest.raises(FileNotFoundError):
        compute_features(tmp_path / "nope.wav")


def test_flags_silence_noise_tone_and_band_limit():
    sr = 16000
    rng = np.random.default_rng(0)
    z = compute_features(np.zeros(sr * 3, np.float32), sample_rate=sr)
    assert z.silent and not z.speech_like and not z.active.any()
    with pytest.raises(AudioError, match="silent"):
        z.check_speech("test.wav")
    noise = compute_features((0.1 * rng.standard_normal(sr * 4)).astype(np.float32), sample_rate=sr)
    assert not noise.silent and not noise.speech_like
    t = np.arange(sr * 4) / sr
    tone = compute_features((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sample_rate=sr)
    assert not tone.speech_like
    tel = compute_features((0.1 * rng.standard_normal(8000)).astype(np.float32), sample_rate=8000)
    assert tel.band_limited and tel.features.shape == (100, 80)
    assert tel.features[:, -10:].mean() < -3.5  # nothing above 4 kHz but the resampler's edge transients
    with pytest.raises(AudioError, match="outside the supported"):
        resample(np.zeros(100, np.float32), 4000)
    with pytest.raises(AudioError, match="NaN"):
        compute_features(np.array([0.0, np.nan] * 50, np.float32), sample_rate=sr)


def test_real_speech_is_speech_like(shared_dir):
    p = shared_dir / "data" / "speech" / "grid_s1" / "video" / "bbaf2n.mp4"
    if not p.is_file():
        pytest.skip(f"{p} missing")
    f = compute_features(p)
    assert f.speech_like and not f.silent and not f.band_limited
    assert f.features.shape == (301, 80) and f.info.sample_rate == 44100  # 3.01 s at 100 steps per second
    act = f.frame_activity(frame_times(75, 25))
    assert act[:5].max() < 0.5 and act[20:50].mean() > 0.5  # GRID sentences start in silence


def test_phone_features(shared_dir):
    pytest.importorskip("pocketsphinx")
    from facerender.audio import PHONES, phone_features

    p = shared_dir / "data" / "speech" / "grid_s1" / "video" / "bbaf2n.mp4"  # "bin blue at f two now"
    if not p.is_file():
        pytest.skip(f"{p} missing")
    f = phone_features(p)
    assert f.kind == "phones" and f.rate == 100.0 and f.start == pytest.approx(0.0078)
    assert f.features.shape == (301, len(PHONES)) == (301, 40)
    np.testing.assert_array_equal(f.features.sum(axis=1), 1.0)  # one phone per step
    ph = [PHONES[k] for k in f.features.argmax(axis=1)]
    assert ph[:30] == ["SIL"] * 30  # GRID sentences start in silence
    spoken = set(ph[90:210]) - {"SIL"}
    assert {"B", "IH", "N"} <= spoken  # "bin"
    w = f.windows(frame_times(75, 25))
    assert w.shape == (75, 16, 40)
    x = np.zeros(16000, np.float32)
    z = phone_features(x, sample_rate=16000)
    assert z.features.shape == (100, 40) and (z.features[:, 0] == 1).all()  # silence decodes as SIL


def test_external_features_roundtrip_and_errors(tmp_path):
    arr = np.random.default_rng(0).standard_normal((120, 29)).astype(np.float32)
    p = save_features(tmp_path / "ds.npz", arr, rate=50.0, kind="deepspeech", start=0.01)
    f = load_features(p)
    assert isinstance(f, AudioFeatures) and f.kind == "deepspeech" and f.rate == 50.0 and f.start == 0.01
    np.testing.assert_array_equal(f.features, arr)
    w = f.windows(np.array([0.01 + 1.0]))  # step 50 starts at 1.01 s: the window is steps 42 .. 57
    np.testing.assert_array_equal(w[0], arr[42:58])
    np.savez(tmp_path / "bad.npz", feats=arr)
    with pytest.raises(AudioError, match="must hold 'features'"):
        load_features(tmp_path / "bad.npz")
    np.savez(tmp_path / "bad2.npz", features=arr, rate=-1.0)
    with pytest.raises(AudioError, match="rate"):
        load_features(tmp_path / "bad2.npz")


# -------------------------------------------------------------------------------------- the network
def test_network_shapes_and_sequence_consistency():
    torch.manual_seed(0)
    cfg = Audio2ExpressionConfig(feature_dim=29, num_identities=3)
    net = Audio2ExpressionNet(cfg).eval()
    assert cfg.offsets == (-3, -2, -1, 0, 1, 2, 3, 4) and cfg.center_index == 3
    x = torch.randn(5, 8, 16, 29)
    out = net(x, torch.tensor([0, 1, 2, 1, 0]))
    assert out.expression.shape == (5, 53) and out.code.shape == (5, 32) and out.frame_codes.shape == (5, 8, 32)
    assert out.attention.shape == (5, 8) and out.expression_center.shape == (5, 53)
    assert out.frame_codes.abs().max() < 1
    torch.testing.assert_close(out.attention.sum(1), torch.ones(5))
    # predict_sequence == forward on the gathered windows (clamped at the clip's ends)
    seq = torch.randn(12, 16, 29)
    pred = net.predict_sequence(seq, identity=2)
    for t in (0, 5, 11):
        idx = torch.tensor([min(max(t + o, 0), 11) for o in cfg.offsets])
        torch.testing.assert_close(pred[t], net(seq[idx][None], torch.tensor([2])).expression[0])
    with pytest.raises(ValueError, match=r"\(W, D\) = \(16, 29\)"):
        net(torch.randn(2, 8, 16, 80), torch.tensor([0, 0]))
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        net(x, torch.tensor([0, 1, 2, 3, 0]))


def test_temporal_filter_weights():
    torch.manual_seed(0)
    f = TemporalFilter(32, 8)
    c = torch.rand(1, 1, 32).expand(4, 8, 32).contiguous()
    out, att = f(c)
    torch.testing.assert_close(out, c[:, 0])  # weights sum to one: constant codes pass unchanged
    assert (att > 0).all()
    with torch.no_grad():  # a bias that prefers frame 5 makes the filter select it
        f.linear.weight.zero_()
        f.linear.bias.copy_(torch.tensor([0, 0, 0, 0, 0, 30.0, 0, 0]))
    codes = torch.randn(2, 8, 32)
    out, att = f(codes)
    torch.testing.assert_close(out, codes[:, 5], atol=1e-9, rtol=0)
    assert context_offsets(1) == (0,) and context_offsets(4) == (-1, 0, 1, 2)


def test_network_gradcheck_float64():
    torch.manual_seed(0)
    cfg = Audio2ExpressionConfig(feature_dim=3, code_dim=4, filter_frames=4, num_expressions=2)
    net = Audio2ExpressionNet(cfg).double()
    x = torch.randn(2, 4, 16, 3, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([0, 0])
    assert torch.autograd.gradcheck(lambda v: net(v, ids).expression, (x,))
    f = TemporalFilter(4, 4).double()
    c = torch.randn(2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: f(v)[0], (c,))


def test_vertex_losses_agree_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    K, V, B = 6, 40, 5
    basis = torch.randn(K, V, 3, generator=g, dtype=torch.float64)
    w = torch.ones(V, dtype=torch.float64)
    w[:10] = 10.0
    pred = torch.randn(B, K, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(B, K, generator=g, dtype=torch.float64)
    gram = vertex_gram(basis, w)
    torch.testing.assert_close(vertex_rms(pred - target, gram), vertex_loss(pred, target, basis, w))
    # by hand: the weighted mean over vertices and coordinates, then the square root
    d = torch.einsum("bk,kvc->bvc", pred - target, basis)
    hand = torch.sqrt((w[None, :, None] * d ** 2).sum() / (3 * w.sum() * B))
    torch.testing.assert_close(vertex_rms(pred - target, gram), hand, rtol=1e-6, atol=0)
    assert torch.autograd.gradcheck(lambda p: vertex_rms(p - target, gram), (pred,))
    p3 = torch.randn(B, 3, K, generator=g, dtype=torch.float64, requires_grad=True)
    t3 = torch.randn(B, 3, K, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: temporal_loss(p, t3, gram), (p3,))
    # a prediction off by the same offset in every frame has no temporal error
    assert float(temporal_loss(t3 + 0.3, t3, gram)) < 1e-5
    with pytest.raises(ValueError, match=r"\(K, V, 3\)"):
        vertex_gram(torch.zeros(3, 4))


def test_mouth_weights():
    verts = torch.tensor([[0.0, 0, 0], [1.5, 0, 0], [2.5, 0, 0], [0, 5, 0]])
    w = mouth_weights(verts, torch.zeros(1, 3), radius=2.0, mouth_weight=10.0)
    np.testing.assert_array_equal(w.numpy(), [10, 10, 1, 1])


def test_mouth_weights_on_ict(ict_face_model):
    w = mouth_weights_from_model(ict_face_model)
    assert w.shape == (ict_face_model.num_vertices,)
    share = float((w == 10).float().mean())
    assert 0.02 < share < 0.2, share
    verts = ict_face_model().vertices[0]
    lm = ict_face_model.get_landmarks(verts[None], "ibug68")[0]
    near = torch.cdist(lm[[62, 66]], verts).argmin(dim=1)  # inner-lip midpoints are mouth vertices
    assert (w[near] == 10).all()
    nose = torch.cdist(lm[[30]], verts).argmin(dim=1)
    assert (w[nose] == 1).all()


def test_fit_identity_map_recovers_known_map():
    g = torch.Generator().manual_seed(1)
    codes = torch.rand(200, 32, generator=g, dtype=torch.float64) * 2 - 1
    W = torch.randn(53, 32, generator=g, dtype=torch.float64) * 0.1
    b = torch.rand(53, generator=g, dtype=torch.float64)
    expr = codes @ W.T + b
    W2, b2 = fit_identity_map(codes, expr, ridge=0.0)
    torch.testing.assert_close(W2, W)
    torch.testing.assert_close(b2, b)
    bad = expr.clone()
    bad[:20] += 5.0  # corrupted frames with weight 0 are ignored
    weights = torch.ones(200)
    weights[:20] = 0
    W3, b3 = fit_identity_map(codes, bad, weights, ridge=0.0)
    torch.testing.assert_close(W3, W)
    with pytest.raises(ValueError, match="at least 33 frames"):
        fit_identity_map(codes[:10], expr[:10])


# --------------------------------------------------------------------------------------- data and training
def _toy_basis(K=53):
    basis = torch.zeros(K, K, 3)
    basis[torch.arange(K), torch.arange(K)] = 1.0  # d^T G d = mean squared weight difference
    return basis


def test_dataset_context_stays_in_its_split():
    clip = synthetic_clip(4, seed=3)  # 100 frames
    train = clip.split(0, 80)
    held = clip.split(80, 100)
    ds = FrameSequenceDataset([train])
    assert len(ds) == 80 and ds.offsets.tolist() == list(range(-4, 6))
    item = ds[79]  # last training frame: context past 79 repeats frame 79
    assert item["windows"].shape == (10, 16, 80) and item["expression"].shape == (3, 53)
    np.testing.assert_array_equal(item["windows"][-1].numpy(), clip.windows(np.array([79]))[0])
    np.testing.assert_array_equal(item["expression"][2].numpy(), clip.expression[79])
    item = FrameSequenceDataset([held])[0]  # first held-out frame: no training audio in its context
    np.testing.assert_array_equal(item["windows"][0].numpy(), clip.windows(np.array([80]))[0])
    # a frame's window is the centred window of its time
    t = frame_times(100, 25)
    ref = frame_windows(clip.features, t, 100.0, 16, clip.pad_value)
    np.testing.assert_array_equal(clip.all_windows(), ref)


def test_load_speech_tracks_splits_and_cuts(tmp_path, monkeypatch):
    pytest.importorskip("av")
    import json
    import types

    import facerender.tracking
    from neural_renderers.nvp import load_speech_tracks

    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):  # 2-s "clips" (audio files stand in for videos)
        _write_wav(tmp_path / f"{name}.wav", 0.1 * rng.standard_normal(32000), 16000, "mono")
    tracks = {"spk1.npz": np.arange(100 * 53, dtype=np.float32).reshape(100, 53),  # clips a + b concatenated
              "spk2.npz": np.ones((50, 53), np.float32)}

    def fake_load_track(path):
        e = tracks[Path(path).name]
        return types.SimpleNamespace(expression=e, face_found=np.ones(len(e), bool),
                                     has_flag=lambda name: np.zeros(len(e), bool))

    monkeypatch.setattr(facerender.tracking, "load_track", fake_load_track)
    manifest = {"data": str(tmp_path), "fps": 25.0, "speakers": {
        "spk1": {"track": "spk1.npz", "clips": [{"name": "a", "video": "a.wav", "start": 0, "frames": 50,
                                                 "heldout_from": 50},
                                                {"name": "b", "video": "b.wav", "start": 50, "frames": 50,
                                                 "heldout_from": 0}]},
        "spk2": {"track": "spk2.npz", "clips": [{"name": "c", "video": "c.wav", "start": 0, "frames": 50,
                                                 "heldout_from": 40}]}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    train, names = load_speech_tracks(tmp_path, "train")
    assert names == ["spk1", "spk2"] and [(c.name, c.identity, c.start, c.stop) for c in train] == \
        [("a", 0, 0, 50), ("c", 1, 0, 40)]
    np.testing.assert_array_equal(train[0].expression, tracks["spk1.npz"][:50])
    assert train[0].features.shape == (200, 80)
    # the 3 frames on each side of the cut between a and b are not targets; nothing else is dropped
    np.testing.assert_array_equal(np.flatnonzero(~train[0].valid), [47, 48, 49])
    held, _ = load_speech_tracks(tmp_path, "heldout")
    assert [(c.name, c.start, c.stop) for c in held] == [("b", 0, 50), ("c", 40, 50)]
    np.testing.assert_array_equal(np.flatnonzero(~held[0].valid), [0, 1, 2])
    np.testing.assert_array_equal(held[0].expression, tracks["spk1.npz"][50:])
    assert held[1].valid.all()
    ds = FrameSequenceDataset(train)
    assert len(ds) == 47 + 40
    with pytest.raises(ValueError, match="not in"):
        load_speech_tracks(tmp_path, "train", speakers=["nobody"])
    with pytest.raises(ValueError, match="split"):
        load_speech_tracks(tmp_path, "test")


def test_synthetic_pipeline_learns_the_known_map(tmp_path):
    """The shared trainer drives the "nvp-audio" method (160 steps of 32) to the known loudness -> jawOpen map."""
    from neural_renderers.training import TrainConfig, Trainer

    torch.manual_seed(0)
    w, e, lv = loudness_jaw_clip(2.0, seed=1)
    np.testing.assert_allclose(e[:, 26], jaw_from_level(lv))
    assert e[:, 26].max() == pytest.approx(0.7) and e[:, 26].min() == 0.0 and np.all(np.delete(e, 26, 1) == 0)
    train = [synthetic_clip(16, seed=s) for s in (0, 1)]
    test = synthetic_clip(8, seed=9)
    method = Audio2ExpressionMethod(NVPAudioConfig(lr=3e-3), basis=_toy_basis())
    net = method.net
    with torch.no_grad():
        net.maps.bias[0] = torch.from_numpy(train[0].expression.mean(0))
    ds = FrameSequenceDataset(train)
    tr = Trainer(method, ds, tmp_path / "run", TrainConfig(steps=160, batch_size=32, lr_decay_start=0.5,
                                                             log_every=40, val_every=0, sample_every=10 ** 6,
                                                             checkpoint_every=10 ** 6, progress=False,
                                                             tensorboard=False, threads=1),
                 val_data=FrameSequenceDataset([test]))
    before = tr.validate()["val/total"]
    res = tr.fit()
    assert res.step == 160 and res.validation["val/total"] < 0.5 * before
    method.eval()
    with torch.no_grad():
        pred = net.predict_sequence(torch.from_numpy(test.all_windows()), 0).numpy()
    truth = test.expression[:, 26]
    corr = np.corrcoef(pred[:, 26], truth)[0, 1]
    assert corr > 0.95, corr
    assert np.sqrt(np.mean((pred[:, 26] - truth) ** 2)) < 0.08
    assert np.abs(np.delete(pred, 26, 1)).max() < 0.1
    # the prediction is in sync: shifting it by a frame or more only lowers the correlation
    shifts = {k: np.corrcoef(np.roll(pred[:, 26], k)[5:-5], truth[5:-5])[0, 1] for k in range(-3, 4)}
    assert max(shifts, key=shifts.get) == 0
    # a new identity's map, fitted in closed form on frozen codes, reproduces a scaled target
    new = method.fit_new_identity(torch.from_numpy(train[1].all_windows()),
                                  torch.from_numpy(0.5 * train[1].expression), ridge=1e-6)
    assert new == 1
    with torch.no_grad():
        pred2 = net.predict_sequence(torch.from_numpy(test.all_windows()), new).numpy()
    assert np.corrcoef(pred2[:, 26], truth)[0, 1] > 0.95
    assert np.abs(pred2[:, 26].mean() - 0.5 * truth.mean()) < 0.05


def test_training_step_losses():
    torch.manual_seed(0)
    method = Audio2ExpressionMethod(NVPAudioConfig(num_identities=2), basis=_toy_basis())
    net = method.net
    assert set(method.networks()) == {"audio2expression"} and method.name == "nvp-audio"
    assert [p.name for p in method.phases()] == ["audio2expression"]
    batch = {"windows": torch.randn(4, 10, 16, 80), "expression": torch.rand(4, 3, 53),
             "identity": torch.tensor([0, 1, 0, 1]), "weight": torch.tensor([1.0, 1.0, 0.0, 1.0])}
    losses = method.training_step(batch)
    assert set(losses) == {"total", "absolute", "center", "temporal"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    assert net.encoder.conv[0].weight.grad.abs().sum() > 0
    assert net.maps.weight.grad[1].abs().sum() > 0
    with pytest.raises(ValueError, match=r"S \+ 2 = 10"):
        method.training_step({**batch, "windows": torch.randn(4, 8, 16, 80)})
