"""facerender.io: atomic writes, images (read/write/convert) and video + audio with PyAV."""
from __future__ import annotations

import importlib.util
import itertools
import sys
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import IN_CI
from facerender.errors import BackendUnavailableError, VideoError
from facerender.io import (
    VideoReader,
    VideoWriter,
    atomic_write,
    image_to_tensor,
    read_audio,
    read_image,
    tensor_to_image,
    to_uint8_rgb,
    write_image,
)

HAVE_AV = importlib.util.find_spec("av") is not None


@pytest.fixture(scope="module")
def av_ready():
    """PyAV is the 'video' extra, part of "all" which CI installs: skip locally without it, fail in CI."""
    if not HAVE_AV:
        msg = 'PyAV is not installed (pip install "facerender[video]")'
        if IN_CI:
            pytest.fail(msg + "; CI installs the 'all' extras, so this is an error")
        pytest.skip(msg)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if "partial" in p.name)


# ---------------------------------------------------------------------------------------------------------------
# atomic_write


def test_atomic_write_success_and_failure(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".txt" and tmp != target
        tmp.write_text("first")
        assert not target.exists()  # nothing visible before the block ends
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "first"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_write_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="the folder .*missing.* does not exist"):
        with atomic_write(tmp_path / "missing" / "x.txt"):
            pass
    with pytest.raises(FileNotFoundError, match="did not create the temporary file"):
        with atomic_write(tmp_path / "x.txt"):
            pass
    with pytest.raises(IsADirectoryError):
        with atomic_write(tmp_path):
            pass
    assert not (tmp_path / "x.txt").exists()


# ---------------------------------------------------------------------------------------------------------------
# Images


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(12, 17, 3), dtype=np.uint8)


def test_read_image_modes(tmp_path, rgb):
    gray = rgb[..., 0]
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), rgb)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), np.repeat(gray[..., None], 3, 2))
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], 2)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)  # alpha dropped, colours kept
    Image.fromarray(gray).convert("LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), np.repeat(gray[..., None], 3, 2))
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(tmp_path / "p.png")
    pal = read_image(tmp_path / "p.png")
    assert pal.shape == rgb.shape and pal.dtype == np.uint8 and len(np.unique(pal.reshape(-1, 3), axis=0)) <= 8
    g16 = gray.astype(np.uint16) * 257
    g16[0, 0] = 65535
    g16[0, 1] = 128  # 128 * 255 / 65535 = 0.498 -> 0
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    got = read_image(tmp_path / "g16.png")
    assert got.shape == rgb.shape
    assert got[0, 0, 0] == 255 and got[0, 1, 0] == 0
    np.testing.assert_array_equal(got[1:, :, 1], gray[1:])
    Image.fromarray(gray > 127).save(tmp_path / "bw.png")
    np.testing.assert_array_equal(read_image(tmp_path / "bw.png")[..., 0], np.where(gray > 127, 255, 0))
    Image.fromarray(rgb).save(tmp_path / "a.ppm")
    np.testing.assert_array_equal(read_image(tmp_path / "a.ppm"), rgb)


def test_read_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="text.png.*not an image format"):
        read_image(tmp_path / "text.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + data[8:40])
    with pytest.raises(ValueError, match="cut.png"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(ValueError, match="is a directory"):
        read_image(tmp_path)


def test_sample_grayscale_photo(faces_dir):
    img = read_image(faces_dir / "einstein.jpg")
    assert img.shape == (1024, 817, 3) and img.dtype == np.uint8
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
    assert read_image(faces_dir / "takeo.ppm").shape == (225, 150, 3)


def test_write_image(tmp_path, rgb):
    out = write_image(tmp_path / "a.png", rgb)
    np.testing.assert_array_equal(read_image(out), rgb)
    write_image(tmp_path / "f.png", rgb.astype(np.float64) / 255.0)
    np.testing.assert_array_equal(read_image(tmp_path / "f.png"), rgb)
    write_image(tmp_path / "t.png", torch.from_numpy(rgb).float().div(255).unsqueeze(0))  # (1, H, W, C)
    np.testing.assert_array_equal(read_image(tmp_path / "t.png"), rgb)
    yy, xx = np.mgrid[0:64, 0:64]
    smooth = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).astype(np.uint8)
    write_image(tmp_path / "hi.jpg", smooth, quality=100)
    write_image(tmp_path / "lo.jpg", smooth, quality=5)
    err_hi = np.abs(read_image(tmp_path / "hi.jpg").astype(int) - smooth).mean()
    err_lo = np.abs(read_image(tmp_path / "lo.jpg").astype(int) - smooth).mean()
    assert err_hi < 1.5 < err_lo  # the quality setting is honoured
    with pytest.raises(ValueError, match="unknown image suffix '.xyz'"):
        write_image(tmp_path / "a.xyz", rgb)
    with pytest.raises(ValueError, match=r"\(H, W, 3\).*\(3, 12, 17\)"):
        write_image(tmp_path / "b.png", rgb.transpose(2, 0, 1))
    assert _leftovers(tmp_path) == [] and not (tmp_path / "b.png").exists()


def test_to_uint8_rgb_conversions(rgb):
    np.testing.assert_array_equal(to_uint8_rgb(rgb), rgb)
    assert to_uint8_rgb(rgb) is not rgb  # a new array
    np.testing.assert_array_equal(to_uint8_rgb(rgb[..., :1]), np.repeat(rgb[..., :1], 3, 2))
    np.testing.assert_array_equal(to_uint8_rgb(rgb.astype(np.uint16) * 257), rgb)
    np.testing.assert_array_equal(to_uint8_rgb(rgb.astype(np.float32) / 255), rgb)
    np.testing.assert_array_equal(to_uint8_rgb(np.array([[2.0, -1.0]])), [[[255] * 3, [0] * 3]])  # clipped
    np.testing.assert_array_equal(to_uint8_rgb(rgb.astype(np.int64)), rgb)
    np.testing.assert_array_equal(to_uint8_rgb(torch.from_numpy(rgb)[None]), rgb)
    noncontig = np.asfortranarray(rgb)
    assert to_uint8_rgb(noncontig).flags.c_contiguous
    with pytest.raises(ValueError, match="range \\[0, 300\\]"):
        to_uint8_rgb(np.array([[0, 300]]))
    with pytest.raises(ValueError, match="NaN or inf"):
        to_uint8_rgb(np.array([[np.nan, 0.0]]))
    with pytest.raises(ValueError, match="got list"):
        to_uint8_rgb([[1, 2]])
    with pytest.raises(ValueError, match=r"\(2, 12, 17, 3\)"):
        to_uint8_rgb(np.stack([rgb, rgb]))


def test_image_tensor_round_trip(rgb):
    t = image_to_tensor(rgb)
    assert t.shape == (1, 12, 17, 3) and t.dtype == torch.float32
    assert float(t.max()) <= 1.0 and float(t[0, 0, 0, 0]) == pytest.approx(rgb[0, 0, 0] / 255)
    np.testing.assert_array_equal(tensor_to_image(t), rgb)
    batch = image_to_tensor(np.stack([rgb, rgb[::-1].copy()]), dtype=torch.float64)
    assert batch.shape == (2, 12, 17, 3) and batch.dtype == torch.float64
    np.testing.assert_array_equal(tensor_to_image(batch)[1], rgb[::-1])
    same = image_to_tensor(batch)
    assert same.dtype == torch.float32 and torch.allclose(same.double(), batch)
    with pytest.raises(ValueError, match="floating point"):
        image_to_tensor(rgb, dtype=torch.int32)


# ---------------------------------------------------------------------------------------------------------------
# Video


def _frames(n, h, w, seed=0):
    """Smooth synthetic frames (gradients plus a moving square) that H.264 keeps nearly exactly."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        f = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), np.full_like(xx, 40 + 15 * i)], -1)
        f[(xx // 8 == i % (w // 8)) & (yy < h // 2)] = 230
        out.append(f.astype(np.uint8))
    return out


def _write(path, frames, fps=25, **kw):
    with VideoWriter(path, fps=fps, crf=kw.pop("crf", 10), preset="ultrafast", **kw) as w:
        for f in frames:
            w.write(f)
    return path


def test_video_round_trip(av_ready, tmp_path):
    frames = _frames(10, 48, 64)
    path = _write(tmp_path / "v.mp4", frames, fps=25)
    assert _leftovers(tmp_path) == []
    r = VideoReader(path)
    assert (r.size, r.height, r.width) == ((48, 64), 48, 64)
    assert r.fps == pytest.approx(25.0) and r.frame_count == 10 and r.frame_count_exact
    assert r.duration == pytest.approx(0.4, abs=1e-3) and not r.has_audio and r.codec == "h264"
    got = list(r)
    assert [f.index for f in got] == list(range(10))
    np.testing.assert_allclose([f.time for f in got], np.arange(10) / 25, atol=1e-6)
    for f, ref in zip(got, frames):
        assert f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8
        assert np.abs(f.image.astype(int) - ref).mean() < 4.0
    # Iterating again starts from the beginning.
    again = next(iter(r))
    np.testing.assert_array_equal(again.image, got[0].image)
    assert "64x48, 25.000 fps, 10 frames" in repr(r)


def test_video_writer_inputs(av_ready, tmp_path):
    """Batches, float tensors, fractional fps, an explicit size; a wrong frame size is rejected."""
    frames = _frames(6, 32, 48)
    batch = torch.from_numpy(np.stack(frames)).float() / 255  # (B, H, W, C) in [0, 1]
    with VideoWriter(tmp_path / "b.mp4", fps=29.97, size=(32, 48), preset="ultrafast") as w:
        w.write(batch[:3])
        w.write(batch[3])
        w.write(frames[4:])
        assert w.frames_written == 6 and w.fps == Fraction(30000, 1001)
        with pytest.raises(ValueError, match=r"frame 6 is 32x40 \(H x W\), the video is 32x48"):
            w.write(frames[0][:, :40])
    r = VideoReader(tmp_path / "b.mp4")
    assert r.frame_count == 6 and r.fps == pytest.approx(30000 / 1001)
    np.testing.assert_allclose([f.time for f in r], np.arange(6) * 1001 / 30000, atol=1e-4)


@pytest.mark.parametrize("odd_size, expected", [("pad", (48, 64)), ("crop", (46, 62))])
def test_video_odd_size(av_ready, tmp_path, odd_size, expected):
    frames = _frames(4, 47, 63)
    path = _write(tmp_path / "odd.mp4", frames, odd_size=odd_size)
    r = VideoReader(path)
    assert r.size == expected
    first = next(iter(r)).image
    h, w = min(expected[0], 47), min(expected[1], 63)
    assert np.abs(first[:h, :w].astype(int) - frames[0][:h, :w]).mean() < 4.0
    if odd_size == "pad":  # the added column / row repeats the edge
        assert np.abs(first[:-1, -1].astype(int) - frames[0][:, -1]).mean() < 6.0


def test_variable_frame_rate(av_ready, tmp_path):
    times = [0.0, 0.05, 0.1, 0.3, 0.35, 0.5, 0.9, 1.0, 1.01, 1.2]
    with VideoWriter(tmp_path / "vfr.mp4", fps=30, preset="ultrafast") as w:
        for f, t in zip(_frames(10, 48, 64), times):
            w.write(f, time=t)
        with pytest.raises(ValueError, match="frame times must increase"):
            w.write(_frames(1, 48, 64)[0], time=1.0)
    r = VideoReader(tmp_path / "vfr.mp4")
    got = [f.time for f in r]
    np.testing.assert_allclose(got, times, atol=1e-4)
    assert r.frame_count == 10
    assert r.fps == pytest.approx(10 / (1.2 + 1 / 30), rel=0.1)  # an average rate


def _noise_audio(n, channels, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((channels, n)).astype(np.float32)
    k = np.ones(8, np.float32) / 8  # low-pass: AAC keeps it well
    return np.stack([np.convolve(c, k, mode="same") for c in x]) * 0.3


@pytest.mark.parametrize("channels", [1, 2])
def test_audio_round_trip(av_ready, tmp_path, channels):
    rate = 16000
    audio = _noise_audio(rate, channels)  # 1 s, longer than the 0.4 s video: cut to the video
    path = _write(tmp_path / "a.mp4", _frames(10, 48, 64), fps=25, audio_from=(audio, rate))
    r = VideoReader(path)
    assert r.has_audio and r.info.audio_sample_rate == rate and r.info.audio_channels == channels
    samples, got_rate = read_audio(path)
    assert got_rate == rate and samples.dtype == np.float32
    assert samples.shape == (channels, int(0.4 * rate))
    # No lag (AAC's encoder delay is recorded in the file) and a close waveform.
    ref = audio[:, : samples.shape[1]]
    lags = range(-64, 65)
    corr = [np.sum(samples[:, 2000 + lag: 5000 + lag] * ref[:, 2000:5000]) for lag in lags]
    assert lags[int(np.argmax(corr))] == 0
    assert np.linalg.norm(samples[:, 1000:-1000] - ref[:, 1000:-1000]) / np.linalg.norm(ref[:, 1000:-1000]) < 0.2
    # Audio from a file: the same track again.
    path2 = _write(tmp_path / "b.mp4", _frames(10, 48, 64), fps=25, audio_from=path)
    samples2, rate2 = read_audio(path2)
    assert rate2 == rate and samples2.shape == samples.shape


def test_writer_failures_leave_nothing(av_ready, tmp_path):
    target = tmp_path / "x.mp4"
    with pytest.raises(RuntimeError, match="stop"):
        with VideoWriter(target, fps=25, preset="ultrafast") as w:
            for f in _frames(5, 48, 64):
                w.write(f)
            raise RuntimeError("stop")
    assert not target.exists() and _leftovers(tmp_path) == []
    with pytest.raises(VideoError, match="no frames were written"):
        with VideoWriter(target, fps=25):
            pass
    assert not target.exists() and _leftovers(tmp_path) == []
    # A writer that is dropped without close removes its temporary file.
    w = VideoWriter(target, fps=25, preset="ultrafast")
    w.write(_frames(1, 48, 64)[0])
    del w
    assert not target.exists() and _leftovers(tmp_path) == []
    # An existing target survives a failed rewrite.
    _write(target, _frames(3, 48, 64))
    before = target.read_bytes()
    with pytest.raises(ValueError):
        with VideoWriter(target, fps=25, preset="ultrafast") as w:
            w.write(_frames(1, 48, 64)[0])
            w.write(np.zeros((10, 10, 3), np.uint8))
    assert target.read_bytes() == before and _leftovers(tmp_path) == []
    with pytest.raises(VideoError, match="write\\(\\) after close"):
        w.write(_frames(1, 48, 64)[0])


def test_writer_argument_errors(av_ready, tmp_path):
    with pytest.raises(ValueError, match="fps must be positive"):
        VideoWriter(tmp_path / "a.mp4", fps=0)
    with pytest.raises(ValueError, match="odd_size must be 'pad' or 'crop'"):
        VideoWriter(tmp_path / "a.mp4", fps=25, odd_size="wrap")
    with pytest.raises(ValueError, match=r"audio samples must be \(N,\) or \(C, N\)"):
        VideoWriter(tmp_path / "a.mp4", fps=25, audio_from=(np.zeros((3, 100)), 16000))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoWriter(tmp_path / "missing" / "a.mp4", fps=25)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_and_wrong_files(av_ready, tmp_path):
    good = _write(tmp_path / "good.mp4", _frames(10, 48, 64))
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 10)
    (tmp_path / "cut.mp4").write_bytes(good.read_bytes()[:600])
    for name in ("empty.mp4", "text.mp4", "cut.mp4"):
        with pytest.raises(VideoError, match=name):
            VideoReader(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        VideoReader(tmp_path / "missing.mp4")
    with pytest.raises(VideoError, match="good.mp4.* holds no audio stream"):
        read_audio(good)
    # An audio-only file has no video stream.
    import av

    with av.open(str(tmp_path / "sound.m4a"), "w") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        frame = av.AudioFrame.from_ndarray(_noise_audio(4000, 1), format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 16000, 0, Fraction(1, 16000)
        for p in list(s.encode(frame)) + list(s.encode(None)):
            c.mux(p)
    with pytest.raises(VideoError, match="sound.m4a.* holds no video stream \\(streams: audio\\)"):
        VideoReader(tmp_path / "sound.m4a")
    samples, rate = read_audio(tmp_path / "sound.m4a")
    assert rate == 16000 and samples.shape == (1, 4000)


def test_av_missing_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(BackendUnavailableError, match=r'pip install "facerender\[video\]"'):
        VideoReader(tmp_path / "x.mp4")
    with pytest.raises(BackendUnavailableError, match=r"facerender\[video\]"):
        VideoWriter(tmp_path / "x.mp4", fps=25)


def test_streaming_memory(av_ready, tmp_path):
    """Iterating keeps one frame at a time: the traced peak stays far below the decoded video's size."""
    h, w, n = 128, 128, 90
    path = _write(tmp_path / "long.mp4", _frames(n, h, w), fps=30, crf=30)
    r = VideoReader(path)
    tracemalloc.start()
    try:
        count = sum(1 for _ in r)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n
    assert peak < 8 * h * w * 3  # the whole video would be 90 frames = 4.4 MB; measured about one frame


def test_sample_video(av_ready, video_dir):
    r = VideoReader(video_dir / "talking_d3.mp4")
    assert r.size == (512, 512) and r.fps == pytest.approx(30.0)
    assert r.frame_count == 354 and r.frame_count_exact and r.has_audio
    assert r.duration == pytest.approx(354 / 30, abs=0.05)
    frames = list(itertools.islice(r, 30))
    assert len(frames) == 30 and frames[0].image.shape == (512, 512, 3) and frames[0].image.dtype == np.uint8
    np.testing.assert_allclose([f.time for f in frames], np.arange(30) / 30, atol=1e-3)
    assert frames[0].image.std() > 10  # a real picture, not a blank frame
    samples, rate = read_audio(video_dir / "talking_d3.mp4")
    assert rate == 44100 and samples.shape[0] == 2
    assert samples.shape[1] / rate == pytest.approx(11.79, abs=0.05)
