"""facerender.tracking.smoothing: the streaming fixed-delay smoothers (Savitzky-Golay against scipy, Whittaker-Henderson
against its defining least-squares problem), gaps and restarts, edges, state round trips."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from scipy.signal import savgol_filter

from facerender.tracking.smoothing import StreamingSavitzkyGolay, StreamingWhittaker, make_smoother


def run(sm, seq, restarts=(), cut=None):
    """Stream ``seq`` (list of (L, 2) arrays or None) through ``sm``; returns [(index, smoothed or None)] and the lag
    of each output (frames pushed after it when it came out)."""
    out, lags = [], []
    for i, p in enumerate(seq):
        for item, s in sm.push(i, p, restart=i in restarts):
            out.append((item, s))
            lags.append(i - item)
    for item, s in sm.flush():
        out.append((item, s))
        lags.append(None)
    return out, lags


def noisy_track(T, L=4, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(T, dtype=np.float64)[:, None, None]
    base = rng.normal(size=(1, L, 2)) * 20 + 100
    return base + 0.8 * t * [1.0, -0.5] + 3 * np.sin(0.3 * t) + rng.normal(0, 1.0, (T, L, 2))


@pytest.mark.parametrize("window,order", [(5, 2), (7, 3), (9, 2), (3, 1)])
def test_matches_scipy_in_the_interior_and_at_the_end(window, order):
    x = noisy_track(30)
    out, lags = run(StreamingSavitzkyGolay(window, order), list(x))
    d = window // 2
    assert [i for i, _ in out] == list(range(30))
    assert lags == [d] * (30 - d) + [None] * d  # each frame comes out `delay` frames later; the rest on flush
    got = np.stack([s for _, s in out])
    ref = savgol_filter(x, window, order, axis=0, mode="interp")
    np.testing.assert_allclose(got[d:], ref[d:], rtol=0, atol=1e-10)  # interior and one-sided end = scipy's interp
    assert np.abs(got[d:-d] - x[d:-d]).max() > 0.1  # it does smooth


def test_start_uses_shorter_windows_and_polynomials_pass_unchanged():
    t = np.arange(12, dtype=np.float64)
    quad = np.stack([0.3 * t ** 2 - 2 * t + 5, -0.1 * t ** 2 + t], -1)[:, None, :].repeat(3, 1)  # (12, 3, 2)
    out, _ = run(StreamingSavitzkyGolay(5, 2), list(quad))
    np.testing.assert_allclose(np.stack([s for _, s in out]), quad, atol=1e-10)  # order 2: exact everywhere
    x = noisy_track(10, seed=1)
    got = np.stack([s for _, s in run(StreamingSavitzkyGolay(5, 2), list(x))[0]])
    np.testing.assert_allclose(got[0], x[0], atol=1e-10)  # 3 points, order 2: the raw point
    # frame 1: the order-2 fit over frames 0..3 (only 2 later frames are waited for)
    c = np.polynomial.polynomial.polyfit(np.arange(4), x[:4].reshape(4, -1), 2)
    np.testing.assert_allclose(got[1].reshape(-1), np.polynomial.polynomial.polyval(1, c), atol=1e-10)


SMOOTHERS = [lambda: StreamingSavitzkyGolay(5, 2), lambda: StreamingWhittaker(5, 0.5),
             lambda: StreamingWhittaker(11, 0.5)]


@pytest.mark.parametrize("make", SMOOTHERS)
def test_gaps_and_restarts_break_the_window(make):
    x = noisy_track(26, seed=2)
    seq = list(x)
    for i in (8, 9, 10, 20):  # a 3-frame gap and a single missing frame
        seq[i] = None
    out, lags = run(make(), seq)
    d = make().delay
    assert [i for i, _ in out] == list(range(26)) and lags == [d] * (26 - d) + [None] * d
    for i in (8, 9, 10, 20):
        assert out[i][1] is None
    # each segment is smoothed on its own, as if it were a stream of its own
    for a, b in ((0, 8), (11, 20), (21, 26)):
        alone = np.stack([s for _, s in run(make(), list(x[a:b]))[0]])
        np.testing.assert_allclose(np.stack([out[i][1] for i in range(a, b)]), alone, atol=1e-12)
    # restart=True splits the same way without a missing frame; segments of 1-2 frames work
    out_r, _ = run(make(), list(x), restarts={6, 7, 9})
    for a, b in ((0, 6), (6, 7), (7, 9), (9, 26)):
        alone = np.stack([s for _, s in run(make(), list(x[a:b]))[0]])
        np.testing.assert_allclose(np.stack([out_r[i][1] for i in range(a, b)]), alone, atol=1e-12)
    np.testing.assert_allclose(out_r[6][1], x[6], atol=1e-12)  # a one-frame segment is its own point


@pytest.mark.parametrize("make", SMOOTHERS)
def test_state_round_trip_mid_stream_is_exact(make):
    x = noisy_track(24, seed=3)
    seq = list(x)
    seq[11] = None
    restarts = {17}
    full, _ = run(make(), seq, restarts)
    for cut in range(0, 25):
        sm = make()
        got = []
        for i in range(cut):
            got += sm.push(i, seq[i], restart=i in restarts)
        assert sm.pending <= sm.delay and len(sm.state_dict()["history"]) <= sm.window - 1
        state = copy.deepcopy(sm.state_dict())
        sm2 = make()
        sm2.load_state_dict(state)
        for i in range(cut, 24):
            got += sm2.push(i, seq[i], restart=i in restarts)
        got += sm2.flush()
        assert [i for i, _ in got] == [i for i, _ in full]
        for (_, a), (_, b) in zip(got, full):
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_array_equal(a, b)  # bit for bit
    # the end of the stream, one frame at a time, with a round trip in between
    sm = make()
    got = []
    for i, p in enumerate(seq):
        got += sm.push(i, p, restart=i in restarts)
    got += sm.flush(1)
    sm2 = make()
    sm2.load_state_dict(copy.deepcopy(sm.state_dict()))
    got += sm2.flush(1) + sm2.flush()
    assert sm2.pending == 0 and sm2.flush() == []
    d = sm.delay
    np.testing.assert_array_equal(np.stack([s for _, s in got[-d:]]), np.stack([s for _, s in full[-d:]]))


def whittaker_solve(y, lam):
    """The Whittaker-Henderson minimiser of ``|x - y|^2 + lam |D2 x|^2`` over a whole series ``(T, ...)``."""
    n = y.shape[0]
    d = np.diff(np.eye(n), 2, axis=0)
    return np.linalg.solve(np.eye(n) + lam * d.T @ d, y.reshape(n, -1)).reshape(y.shape)


@pytest.mark.parametrize("window,lam", [(5, 0.5), (11, 0.5), (9, 0.2), (13, 1.0)])
def test_whittaker_minimises_its_energy_on_every_window(window, lam):
    x = noisy_track(30, seed=4)
    out, lags = run(StreamingWhittaker(window, lam), list(x))
    d = window // 2
    assert lags == [d] * (30 - d) + [None] * d
    got = np.stack([s for _, s in out])
    for i in range(30):
        # the window the module docstring describes: up to `window` frames in [i - window + 1, i + d], centred
        lo = min(max(0, i - d), 30 - window)
        hi = min(i + d, 29) + 1
        lo = max(lo, hi - window)
        ref = whittaker_solve(x[lo:hi], lam)[i - lo]
        np.testing.assert_allclose(got[i], ref, rtol=0, atol=1e-10)
        # ... and that is the minimum: moving the smoothed point in any direction raises the window's energy
        y, z = x[lo:hi].reshape(hi - lo, -1), whittaker_solve(x[lo:hi], lam).reshape(hi - lo, -1)

        def energy(v):
            return ((v - y) ** 2).sum() + lam * (np.diff(v, 2, axis=0) ** 2).sum()
        for e in (1e-3, -1e-3):
            bumped = z.copy()
            bumped[i - lo] += e
            assert energy(bumped) > energy(z)
    assert np.abs(got[d:-d] - x[d:-d]).max() > 0.1  # it does smooth


def test_whittaker_keeps_lines_and_approaches_the_whole_series_filter():
    t = np.arange(40, dtype=np.float64)
    line = np.stack([0.7 * t - 3, -1.3 * t + 100], -1)[:, None, :].repeat(3, 1)
    out, _ = run(StreamingWhittaker(11, 0.5), list(line))
    np.testing.assert_allclose(np.stack([s for _, s in out]), line, atol=1e-9)  # every frame, edges included
    # in the interior, the truncated 11-frame window is the whole-series smoother up to its tail (< 5e-4 per weight)
    x = noisy_track(60, seed=5)
    got = np.stack([s for _, s in run(StreamingWhittaker(11, 0.5), list(x))[0]])
    ref = whittaker_solve(x, 0.5)
    scale = np.abs(x - x.mean(0)).max()
    assert np.abs(got[10:-10] - ref[10:-10]).max() < 5e-3 * scale
    # it removes more frame-to-frame jitter than the default Savitzky-Golay(5, 2) does, for less distance
    sg = np.stack([s for _, s in run(StreamingSavitzkyGolay(5, 2), list(x))[0]])

    def jitter(v):
        return np.sqrt((np.diff(v, 2, axis=0) ** 2).sum(-1).mean())
    assert jitter(got) < jitter(sg)


def test_make_smoother_and_cross_method_states():
    assert isinstance(make_smoother("whittaker", 11, lam=0.5), StreamingWhittaker)
    assert isinstance(make_smoother("savgol", 5, 2), StreamingSavitzkyGolay)
    assert "lam=0.5" in repr(make_smoother())
    with pytest.raises(ValueError, match="'whittaker' or 'savgol'"):
        make_smoother("kalman")
    for lam in (0, -1.0, float("nan"), float("inf"), "a", None, True):
        with pytest.raises(ValueError, match="lam"):
            StreamingWhittaker(11, lam)
    with pytest.raises(ValueError, match="method savgol"):
        StreamingWhittaker(5, 0.5).load_state_dict(StreamingSavitzkyGolay(5, 2).state_dict())
    with pytest.raises(ValueError, match="lam 0.2"):
        StreamingWhittaker(5, 0.5).load_state_dict(StreamingWhittaker(5, 0.2).state_dict())
    # a state written before the method was recorded is a Savitzky-Golay one
    old = StreamingSavitzkyGolay(5, 2).state_dict()
    del old["method"]
    StreamingSavitzkyGolay(5, 2).load_state_dict(old)
    with pytest.raises(ValueError, match="method savgol"):
        StreamingWhittaker(5, 0.5).load_state_dict(old)
    # window 1 is a pass-through whatever the method
    p = np.arange(8.0).reshape(4, 2)
    np.testing.assert_array_equal(StreamingWhittaker(1, 0.5).push(0, p)[0][1], p)


def test_items_are_carried_and_window_one_is_a_pass_through():
    frame = np.zeros((4, 4, 3), np.uint8)
    sm = StreamingSavitzkyGolay(1)
    p = np.arange(8.0).reshape(4, 2)
    [(item, s)] = sm.push({"image": frame}, p)
    assert item["image"] is frame and sm.delay == 0 and sm.pending == 0
    np.testing.assert_array_equal(s, p)
    p[0, 0] = 99.0  # the caller's array is copied
    assert s[0, 0] == 0.0
    assert sm.push("none", None) == [("none", None)]


def test_bad_settings_and_states():
    for w in (0, 2, -1, 4.5):
        with pytest.raises(ValueError, match="window"):
            StreamingSavitzkyGolay(w)
    with pytest.raises(ValueError, match="order"):
        StreamingSavitzkyGolay(5, 5)
    with pytest.raises(ValueError, match=r"\(L, D\)"):
        StreamingSavitzkyGolay(5).push(0, np.zeros(3))
    sm = StreamingSavitzkyGolay(5, 2)
    sm.push(0, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="shape"):
        sm.push(1, np.zeros((5, 2)))
    with pytest.raises(ValueError, match="window 7"):
        StreamingSavitzkyGolay(5, 2).load_state_dict(StreamingSavitzkyGolay(7, 2).state_dict())
