"""Benchmark of Neural Voice Puppetry's audio half: features, Audio2ExpressionNet on real speech, the synthetic check.

Parts (each prints a table; ``--json`` writes everything):

1. **Features** (CPU): log-mel per second of audio -- torch one-shot on 60 s, batched 8 x 10 s, streamed
  (:class:`~facerender.audio.MelStream`, 1-s chunks), decode + features of the GRID clips -- against the baseline of the
  same maths in vectorised NumPy (Wav2Lip's pipeline without librosa), measured in the same run. Memory of a long
  file streamed through :func:`~facerender.audio.iter_log_mel` (resident set size at the start and the end).
2. **Synthetic check**: audio whose loudness drives jawOpen through a known map; held-out correlation and the
  offset that maximises it.
3. **Real speech** (needs ``--tracks``, from ``benchmarks/prepare_speech_tracks.py``): Audio2ExpressionNet trained on
  the training part of every speaker, evaluated on the held-out last 20 %: correlation of predicted and tracked
  jawOpen and of the inner-lip opening of the mesh (iBUG points 62-66, cm) per frame, the audio-video offset that
  maximises it (-5 .. 5 frames), next to a baseline measured in the same run (per speaker, a linear regression of
  jawOpen / opening on the loudness around the frame), and a new target's map fitted in closed form from frozen
  codes. The same network is trained on pocketsphinx phone features (``--features``) for comparison. Training runs
  the shared trainer (``train_nvp_audio``, the method ``"nvp-audio"``) into ``--runs/audio_<features>``; a run that
  is already there is evaluated as it is (``facerender train nvp-audio`` writes the same runs).
4. **Speed**: audio-to-expression per frame (a whole clip batched, and frame by frame as a stream).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_nvp_audio.py --tracks ../nvp_tracks [--steps 5000] [--batch 64]
        [--runs ../nvp_runs] [--json out.json] [--skip features,synthetic,real]
        [--features log_mel,phones] [--plot docs/images/nvp_audio_heldout.png]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median_ms  # noqa: E402

from facerender.audio import MelConfig, MelStream, compute_features, iter_log_mel, log_mel  # noqa: E402
from neural_renderers.nvp import (Audio2ExpressionMethod, FrameSequenceDataset, NVPAudioConfig,  # noqa: E402
                                  fit_identity_map, load_nvp_audio, load_speech_tracks, train_nvp_audio)
from neural_renderers.training import TrainConfig, Trainer  # noqa: E402
from neural_renderers.nvp.synthetic import synthetic_clip  # noqa: E402

JAW = 26  # ICT's jawOpen


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def numpy_log_mel(x: np.ndarray, cfg: MelConfig, fb: np.ndarray) -> np.ndarray:
    """The baseline: the same features in vectorised NumPy (float32 framing, numpy FFT)."""
    y = np.empty_like(x)
    y[0] = x[0]
    y[1:] = x[1:] - cfg.preemphasis * x[:-1]
    T = -(-len(x) // cfg.hop_length)
    pad = np.zeros((T - 1) * cfg.hop_length + cfg.n_fft, np.float32)
    pad[cfg.left_pad:cfg.left_pad + len(y)] = y
    idx = np.arange(T)[:, None] * cfg.hop_length + np.arange(cfg.n_fft)[None]
    win = np.hanning(cfg.win_length + 1)[:-1].astype(np.float32)
    mag = np.abs(np.fft.rfft(pad[idx] * win, axis=1))
    S = 20 * np.log10(np.maximum(1e-5, mag @ fb.T)) - cfg.ref_level_db
    return np.clip(8 * (S + 100) / 100 - 4, -4, 4)


def corr(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 3 or a.std() < 1e-12 or b.std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def offset_curve(pairs, max_shift=5):
    """Pooled correlation of ``pred[t + k]`` with ``truth[t]`` within each clip for k in -max..max, over the frames
    ``t`` whose tracked value is valid. ``pairs``: ``(pred (n,), truth (n,), valid (n,))`` per clip."""
    out = {}
    for k in range(-max_shift, max_shift + 1):
        ps, ts = [], []
        for p, t, ok in pairs:
            n = len(t)
            if n <= abs(k) + 2:
                continue
            if k >= 0:
                ps.append(p[k:][ok[:n - k]]), ts.append(t[:n - k][ok[:n - k]])
            else:
                ps.append(p[:n + k][ok[-k:]]), ts.append(t[-k:][ok[-k:]])
        out[k] = corr(np.concatenate(ps), np.concatenate(ts)) if ps else float("nan")
    return out


def table(title, rows, cols):
    print(f"\n{title}")
    w = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    print("  " + " | ".join(c.ljust(x) for c, x in zip(cols, w)))
    print("  " + "-+-".join("-" * x for x in w))
    for r in rows:
        print("  " + " | ".join(str(r.get(c, "")).ljust(x) for c, x in zip(cols, w)))


# ------------------------------------------------------------------------------------------------------ parts
def part_features(speech_dir: Path, results: dict):
    cfg = MelConfig()
    rng = np.random.default_rng(0)
    x60 = (0.1 * rng.standard_normal(16000 * 60)).astype(np.float32)
    fb = __import__("facerender.audio", fromlist=["mel_filterbank"]).mel_filterbank(cfg).numpy()
    rows = []
    ms = median_ms(lambda: numpy_log_mel(x60, cfg, fb), 3, 1)
    rows.append({"what": "baseline: NumPy, one shot, 60 s", "ms per s of audio": f"{ms / 60:.2f}",
                 "x real time": f"{60e3 / ms:.0f}"})
    xt = torch.from_numpy(x60)
    ms = median_ms(lambda: log_mel(xt, cfg), 5, 1)
    rows.append({"what": "torch log_mel, one shot, 60 s", "ms per s of audio": f"{ms / 60:.2f}",
                 "x real time": f"{60e3 / ms:.0f}"})
    xb = xt[:16000 * 80].reshape(8, -1) if xt.numel() >= 16000 * 80 else xt.repeat(2)[:16000 * 80].reshape(8, -1)
    ms = median_ms(lambda: log_mel(xb, cfg), 5, 1)
    rows.append({"what": "torch log_mel, batch 8 x 10 s", "ms per s of audio": f"{ms / 80:.2f}",
                 "x real time": f"{80e3 / ms:.0f}"})

    def streamed():
        s = MelStream(cfg)
        for i in range(0, x60.shape[0], 16000):
            s.push(x60[i:i + 16000])
        s.finish()

    ms = median_ms(streamed, 3, 1)
    rows.append({"what": "torch MelStream, 1-s chunks, 60 s", "ms per s of audio": f"{ms / 60:.2f}",
                 "x real time": f"{60e3 / ms:.0f}"})
    clips = sorted((speech_dir / "grid_s1" / "video").glob("*.mp4"))[:20]
    if clips:
        t = time.perf_counter()
        dur = sum(compute_features(p).duration for p in clips)
        el = time.perf_counter() - t
        rows.append({"what": f"decode (AAC 44.1 kHz) + resample + features + flags, {len(clips)} GRID clips",
                     "ms per s of audio": f"{1e3 * el / dur:.2f}", "x real time": f"{dur / el:.0f}"})
    table("Audio features (CPU, 16 kHz, 80 mels, 25 ms / 10 ms)", rows, ["what", "ms per s of audio", "x real time"])
    results["features"] = rows
    # memory of a long file, streamed
    with tempfile.TemporaryDirectory() as d:
        import av

        minutes = 10
        p = Path(d) / "long.wav"
        c = av.open(str(p), mode="w")
        s = c.add_stream("pcm_s16le", rate=16000, layout="mono")
        for m in range(minutes * 6):
            seg = (0.1 * rng.standard_normal(16000 * 10) * 32767).astype(np.int16).reshape(1, -1)
            fr = av.AudioFrame.from_ndarray(seg, format="s16", layout="mono")
            fr.sample_rate = 16000
            for pk in s.encode(fr):
                c.mux(pk)
        for pk in s.encode(None):
            c.mux(pk)
        c.close()
        samples, steps = [], 0
        t = time.perf_counter()
        for i, block in enumerate(iter_log_mel(p, cfg, chunk_seconds=10.0)):
            steps += block.shape[0]
            if i % 6 == 0:
                samples.append(rss_mb())
        el = time.perf_counter() - t
        mem = {"minutes": minutes, "steps": steps, "rss_first_mb": round(samples[0], 1),
               "rss_last_mb": round(samples[-1], 1), "rss_max_mb": round(max(samples), 1),
               "x_real_time": round(minutes * 60 / el)}
        print(f"\nStreaming a {minutes}-minute WAV through iter_log_mel (features not kept): {steps} steps, "
              f"RSS {mem['rss_first_mb']} MB after the first 10 s, {mem['rss_last_mb']} MB at the end "
              f"(max {mem['rss_max_mb']}), {mem['x_real_time']}x real time")
        results["long_audio_memory"] = mem


def toy_basis(K=53):
    b = torch.zeros(K, K, 3)
    b[torch.arange(K), torch.arange(K)] = 1.0
    return b


def _train_config(steps: int, batch: int, **kw) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=batch, lr_decay_start=0.3, checkpoint_every=steps, val_every=0,
                       sample_every=10 ** 9, log_every=max(steps // 10, 1), progress=False, tensorboard=False, **kw)


def part_synthetic(results: dict, steps: int, batch: int):
    torch.manual_seed(0)
    train = [synthetic_clip(30, seed=s) for s in range(4)]
    test = synthetic_clip(30, seed=100)
    method = Audio2ExpressionMethod(NVPAudioConfig(lr=2e-3), basis=toy_basis())
    net = method.net
    with torch.no_grad():
        net.maps.bias[0] = torch.from_numpy(train[0].expression.mean(0))
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        Trainer(method, FrameSequenceDataset(train), d, _train_config(steps, batch)).fit()
    el = time.perf_counter() - t
    method.eval()
    with torch.no_grad():
        pred = net.predict_sequence(torch.from_numpy(test.all_windows()), 0).numpy()[:, JAW]
    truth = test.expression[:, JAW]
    curve = offset_curve([(pred, truth, np.ones(len(truth), bool))])
    best = max(curve, key=lambda k: curve[k])
    row = {"train frames": sum(c.num_frames for c in train), "steps": steps, "train s": f"{el:.0f}",
           "held-out corr": f"{curve[0]:.4f}", "RMSE": f"{np.sqrt(np.mean((pred - truth) ** 2)):.4f}",
           "best offset (frames)": best}
    table("Synthetic check: loudness drives jawOpen through a known map (30 s held out)", [row], list(row))
    results["synthetic"] = row


def _opening(model, identity, expr: np.ndarray) -> np.ndarray:
    """Inner-lip opening (cm): distance of iBUG points 62 and 66 on the mesh, per frame."""
    out = []
    ident = torch.as_tensor(identity, dtype=torch.float32)[None]
    with torch.no_grad():
        for i in range(0, len(expr), 512):
            e = torch.as_tensor(expr[i:i + 512], dtype=torch.float32)
            v = model(identity=ident.expand(e.shape[0], -1), expression=e).vertices
            lm = model.get_landmarks(v, "ibug68")
            out.append((lm[:, 62] - lm[:, 66]).norm(dim=-1).numpy())
    return np.concatenate(out)


def loudness(clip, frames):
    """Per frame the mean of the log-mel over the 4 central steps of its window (the baseline's regressor)."""
    w = clip.windows(frames)
    return w[:, 6:10].mean(axis=(1, 2))


def _train(kind, tracks: Path, runs: Path, steps, batch):
    """The ``nvp-audio`` run of ``kind`` in ``runs/audio_<kind>``: trained by the shared trainer unless it exists.
    Returns the network, its config, the first / last logged losses, the training seconds and the frames."""
    run = runs / f"audio_{kind}"
    if not (run / "checkpoints" / "last.pt").is_file():
        train_nvp_audio(tracks, run, train=_train_config(steps, batch, threads=torch.get_num_threads()),
                        features=kind)
    else:
        print(f"{kind}: evaluating the existing run {run}")
    method, saved = load_nvp_audio(run)
    rec = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rec = [r for r in rec if "audio2expression/total" in r]
    hist = [{k.split("/")[-1]: v for k, v in r.items()} for r in (rec[0], rec[-1])]
    summ = json.loads((run / "train_summary.json").read_text())
    cfg = json.loads((run / "config.json").read_text())
    return method.net, method.config, hist, summ["train_seconds_total"], cfg["data"]["train_frames"], summ


def _predict(net, clips, map_override=None):
    """Per speaker a list of (pred (n, K), truth (n, K), valid (n,), clip, frames) over each clip's range."""
    per = {}
    for c in clips:
        fr = np.arange(c.start, c.stop)
        win = torch.from_numpy(c.windows(fr))
        with torch.no_grad():
            if map_override is None:
                pred = net.predict_sequence(win, c.identity).numpy()
            else:
                W, b = map_override
                pred = (net.sequence_codes(win) @ W.T + b).numpy()
        per.setdefault(c.speaker, []).append((pred, c.expression[fr], c.valid[fr], c, fr))
    return per


def _plot(items, face, identities, base, mel_by_key, path: Path):
    """Tracked / predicted / baseline jawOpen and lip opening over a few held-out s1 sentences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tj, pj, bj, to, po, bo, cuts = [], [], [], [], [], [], [0]
    for pred, truth, ok, c, fr in items:
        L = loudness(mel_by_key[(c.speaker, c.name)], fr)
        (aj, bj_), (ao, bo_) = base["s1"]
        tj.append(truth[:, JAW]), pj.append(pred[:, JAW]), bj.append(aj * L + bj_)
        to.append(_opening(face, identities["s1"], truth)), po.append(_opening(face, identities["s1"], pred))
        bo.append(ao * L + bo_)
        cuts.append(cuts[-1] + len(fr))
    fig, axes = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True)
    x = np.arange(cuts[-1]) / 25.0
    for ax, (t, p_, b), lab in zip(axes, [(tj, pj, bj), (to, po, bo)], ["jawOpen weight", "inner-lip opening (cm)"]):
        ax.plot(x, np.concatenate(t), "k", lw=1.6, label="tracked (video)")
        ax.plot(x, np.concatenate(p_), "C3", lw=1.3, label="Audio2ExpressionNet (audio)")
        ax.plot(x, np.concatenate(b), "C0", lw=1.0, ls="--", label="loudness baseline")
        for cpos in cuts[1:-1]:
            ax.axvline(cpos / 25.0, color="0.7", lw=0.8)
        ax.set_ylabel(lab)
    axes[0].legend(loc="upper right", fontsize=8, ncol=3)
    axes[0].set_title("held-out GRID s1 sentences: " + ", ".join(it[3].name for it in items))
    axes[1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}")


def part_real(tracks: Path, results: dict, steps: int, batch: int, runs: Path, kinds, plot=None):
    from facerender.tracking import load_track
    from morphable_models import load_ict

    t = time.perf_counter()
    data = {"log_mel": (load_speech_tracks(tracks, "train"), load_speech_tracks(tracks, "heldout")[0])}
    t_feat = time.perf_counter() - t
    speakers = data["log_mel"][0][1]
    if "phones" in kinds:
        t = time.perf_counter()
        data["phones"] = (load_speech_tracks(tracks, "train", features="phones"),
                          load_speech_tracks(tracks, "heldout", features="phones")[0])
        print(f"phone features of every clip in {time.perf_counter() - t:.0f} s")
    mel_train, mel_held = data["log_mel"][0][0], data["log_mel"][1]
    face = load_ict().submodel("face")
    from neural_renderers.nvp import mouth_weights_from_model

    weights = mouth_weights_from_model(face)
    manifest = json.loads((tracks / "manifest.json").read_text())
    identities = {spk: load_track(tracks / manifest["speakers"][spk]["track"]).identity for spk in speakers}
    n_train = sum(int(c.valid[c.start:c.stop].sum()) for c in mel_train)
    print(f"\nreal speech: {len(speakers)} speakers, {n_train} training frames ({len(mel_train)} clip parts), "
          f"{sum(c.stop - c.start for c in mel_held)} held-out frames; log-mel features in {t_feat:.0f} s; "
          f"mouth region {int((weights > 1).sum())} of {weights.numel()} face vertices")
    # the baseline: per speaker, linear regression of jawOpen / opening on loudness, fitted on training frames
    base = {}
    for spk in speakers:
        tr = [c for c in mel_train if c.speaker == spk]
        L = np.concatenate([loudness(c, np.arange(c.start, c.stop)) for c in tr])
        J = np.concatenate([c.expression[c.start:c.stop, JAW] for c in tr])
        O = np.concatenate([_opening(face, identities[spk], c.expression[c.start:c.stop]) for c in tr])
        X = np.stack([L, np.ones_like(L)], 1)
        base[spk] = (np.linalg.lstsq(X, J, rcond=None)[0], np.linalg.lstsq(X, O, rcond=None)[0])
    mel_by_key = {(c.speaker, c.name): c for c in mel_held}
    multi = [s for s in speakers if s != "s1"]
    groups = [("s1", ["s1"])] + ([(f"grid_multi x{len(multi)}", multi)] if multi else [])
    rows, curves, nets, per_plot = [], {}, {}, []
    for kind in kinds:
        (train_clips, _), held_clips = data[kind]
        net, cfg, hist, t_train, n_ds, summ = _train(kind, tracks, runs, steps, batch)
        if list(cfg.speakers) != list(speakers):
            raise SystemExit(f"the run's speakers {list(cfg.speakers)} differ from the tracks' {speakers}")
        n_steps, n_batch = summ["steps"], summ["batch_size"]
        nets[kind] = (net, cfg)
        print(f"{kind}: trained {n_steps} steps x {n_batch} in {t_train:.0f} s ({1e3 * t_train / n_steps:.0f} ms "
              f"per step); loss {hist[0]['total']:.4f} -> {hist[-1]['total']:.4f} (vertex RMS at t: "
              f"{hist[-1]['absolute']:.4f} cm)")
        results.setdefault("training", {})[kind] = {"seconds": t_train, "steps": n_steps, "batch": n_batch,
                                                   "frames": n_ds, "final": hist[-1]}
        per = _predict(net, held_clips)
        if kind == "log_mel":
            per_plot = per.get("s1", [])[:4]
        for title, spks in groups:
            jp, jt, op, ot, bj, bo, pairs_j, pairs_o = [], [], [], [], [], [], [], []
            for spk in spks:
                for pred, truth, ok, c, fr in per.get(spk, []):
                    o_p = _opening(face, identities[spk], pred)
                    o_t = _opening(face, identities[spk], truth)
                    L = loudness(mel_by_key[(c.speaker, c.name)], fr)
                    (aj, bj_), (ao, bo_) = base[spk]
                    jp.append(pred[ok, JAW]), jt.append(truth[ok, JAW]), op.append(o_p[ok]), ot.append(o_t[ok])
                    bj.append((aj * L + bj_)[ok]), bo.append((ao * L + bo_)[ok])
                    pairs_j.append((pred[:, JAW], truth[:, JAW], ok))
                    pairs_o.append((o_p, o_t, ok))
            if not jp:
                continue
            cj, co = offset_curve(pairs_j), offset_curve(pairs_o)
            best_j = max(cj, key=lambda k: -1 if np.isnan(cj[k]) else cj[k])
            best_o = max(co, key=lambda k: -1 if np.isnan(co[k]) else co[k])
            seg = int(np.median([len(x[1]) for x in pairs_j]))
            offset_txt = f"{best_j:+d} / {best_o:+d}" if seg >= 30 else f"n/a ({seg}-frame parts)"
            J, O = np.concatenate(jt), np.concatenate(ot)
            rows.append({"features": kind, "held-out": title, "frames": int(J.size),
                         "jawOpen corr": f"{corr(np.concatenate(jp), J):.3f}",
                         "loudness baseline": f"{corr(np.concatenate(bj), J):.3f}",
                         "opening corr": f"{corr(np.concatenate(op), O):.3f}",
                         "loudness baseline ": f"{corr(np.concatenate(bo), O):.3f}",
                         "best offset jaw / opening": offset_txt,
                         "opening RMSE cm": f"{np.sqrt(np.mean((np.concatenate(op) - O) ** 2)):.3f}"})
            curves[f"{kind}, {title}"] = {"jaw": cj, "opening": co}
    if plot is not None and per_plot:
        _plot(per_plot, face, identities, base, mel_by_key, plot)
    table("Held-out audio of speakers seen in training: per-frame correlation with the tracked face (baseline: "
          "per-speaker linear regression on the loudness around the frame)", rows, list(rows[0]))
    for title, c in curves.items():
        print(f"  offset curve ({title}), opening: " + " ".join(f"{k:+d}:{v:.3f}" for k, v in c["opening"].items()))
    results["real"] = {"rows": rows, "curves": {t: {k: {str(s): v for s, v in d.items()} for k, d in c.items()}
                                                for t, c in curves.items()}}
    net, cfg = nets["log_mel"]
    # a new target's map in closed form from frozen codes (s1's own training frames), next to its trained map
    s1_train = [c for c in mel_train if c.speaker == "s1"]
    if s1_train:
        with torch.no_grad():
            codes = torch.cat([net.sequence_codes(torch.from_numpy(c.windows(np.arange(c.start, c.stop))))
                               for c in s1_train])
        ex = np.concatenate([c.expression[c.start:c.stop] for c in s1_train])
        ok = np.concatenate([c.valid[c.start:c.stop] for c in s1_train])
        t = time.perf_counter()
        W, b = fit_identity_map(codes, torch.from_numpy(ex), torch.from_numpy(ok.astype(np.float64)))
        t_fit = time.perf_counter() - t
        per2 = _predict(net, [c for c in mel_held if c.speaker == "s1"], (W, b))
        jp = np.concatenate([p_[ok_, JAW] for p_, tr, ok_, c, fr in per2["s1"]])
        jt = np.concatenate([tr[ok_, JAW] for p_, tr, ok_, c, fr in per2["s1"]])
        print(f"\nclosed-form map for s1 from frozen codes ({int(ok.sum())} frames, {1e3 * t_fit:.1f} ms): held-out "
              f"jawOpen corr {corr(jp, jt):.3f} (trained map: {rows[0]['jawOpen corr']})")
        results["closed_form_s1"] = {"frames": int(ok.sum()), "ms": 1e3 * t_fit, "jaw_corr": corr(jp, jt)}
    # speed: audio -> expression per frame
    win = torch.from_numpy(np.concatenate([c.all_windows() for c in mel_held])[:1500])
    n = win.shape[0]
    with torch.no_grad():
        ms_batch = median_ms(lambda: net.predict_sequence(win, 0), 5, 1) / n
        seq = win[:8][None]
        ids = torch.zeros(1, dtype=torch.long)
        ms_one = median_ms(lambda: net(seq, ids), 50, 5)
    srow = [{"mode": f"a clip batched ({n} frames)", "ms per frame": f"{ms_batch:.4f}"},
            {"mode": "frame by frame (8 windows through the encoder each)", "ms per frame": f"{ms_one:.3f}"}]
    table("Audio-to-expression speed (CPU, log-mel features excluded)", srow, ["mode", "ms per frame"])
    results["speed"] = srow


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tracks", type=Path, default=None, help="output folder of prepare_speech_tracks.py")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--synthetic-steps", type=int, default=600)
    ap.add_argument("--runs", type=Path, default=None,
                    help="folder of the training runs (audio_log_mel, audio_phones; default: beside --tracks)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: features,synthetic,real")
    ap.add_argument("--features", default="log_mel,phones",
                    help="feature kinds trained on real speech (phones needs pocketsphinx)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None, help="PNG of tracked vs predicted on held-out s1 sentences")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    from morphable_models.paths import shared_data_dir

    d = shared_data_dir()
    speech = (d / "data" / "speech") if d is not None else Path("missing")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), torch "
          f"{torch.__version__}, {args.threads} thread(s); timings are medians, ratios against the same-run baseline")
    results = {"threads": args.threads}
    if "features" not in skip:
        part_features(speech, results)
    if "synthetic" not in skip:
        part_synthetic(results, args.synthetic_steps, args.batch)
    if "real" not in skip:
        if args.tracks is None:
            print("\nreal speech: skipped (pass --tracks, see benchmarks/prepare_speech_tracks.py)")
        else:
            kinds = [k.strip() for k in args.features.split(",") if k.strip()]
            if "log_mel" not in kinds:
                kinds.insert(0, "log_mel")
            runs = args.runs if args.runs is not None else args.tracks.resolve().parent / "nvp_runs"
            part_real(args.tracks, results, args.steps, args.batch, runs, kinds, args.plot)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
