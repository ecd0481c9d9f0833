"""Neural Voice Puppetry benchmarks, rendering half and end to end (each part prints a table; ``--json`` writes it).

  # the runs (see docs/neural_voice_puppetry.md): the speech tracks, the audio model, the target's renderer
  python benchmarks/prepare_speech_tracks.py --out ../nvp_tracks
  facerender train nvp-audio --tracks ../nvp_tracks -o ../nvp_runs/audio --threads 1
  facerender train nvp-render --target ../nvp_tracks/grid_s1/track --video ../nvp_tracks/grid_s1/concat_speech.mp4 \\
      -o ../nvp_runs/render_s1 --audio-model ../nvp_runs/audio --size 128 --texture-size 128 --base-channels 16 \\
      --max-channels 128 --steps 8000 --max-minutes 80 --threads 1
  # 1. the renderer on held-out frames driven by their own tracked expressions, against the albedo x SH render
  python benchmarks/bench_nvp_render.py quality --run ../nvp_runs/render_s1 [--stride 5] [--grid out.png]
  # 2. speech drives the target: held-out audio -> puppet -> dlib's lip opening and identity on the output
  python benchmarks/bench_nvp_render.py lipsync --run ../nvp_runs/render_s1 --frames 3000 -o ../nvp_runs/lipsync \
      --picture docs/images/nvp_side_by_side.jpg
  # 3. speed: features per second of audio, audio-to-expression and rendering per frame at 256^2, Face2Face
  python benchmarks/bench_nvp_render.py speed --run ../nvp_runs/render_s1 --source-track T1 --target-track T2
  # 4. memory against the audio's length: puppet (fresh processes) with 10 s and 10 min of speech
  python benchmarks/bench_nvp_render.py memory --run ../nvp_runs/render_s1

``quality``: each held-out frame (the last ``val_fraction`` of the target, never trained on, every ``--stride``-th)
is rendered from its own tracked parameters; the crop is composited into the real frame with the lower-face alpha
(:func:`facerender.reenact.common.paste_crop`); the baseline is the model render (the tracked albedo under the
tracked SH light, the ``"shaded"`` conditioning map) composited with the SAME alpha. PSNR / SSIM against the real
frame over the crop's square (at the frame's resolution) and PSNR over the composited region (alpha-weighted).

``lipsync``: the held-out end of the target's own speech (the last 20 % of ``concat_speech.mp4``: sentences the audio
model and the renderer never trained on) drives the target from frame ``--start`` (37: half a GRID sentence, so that
the target's own sentences, all of them 3 s of silence-speech-silence, run out of phase with the driving ones). dlib alone judges the output: the Pearson correlation of its inner-lip opening with the real
held-out video's (``facerender.metrics.evaluate``'s ``lip_correlation``, the output vs the video whose audio drove
it), the descriptor distance to the target person, and, as the baseline measured in the same run, the correlation
the unmodified target frames have with the held-out video.
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
from typing import Dict, List

import numpy as np
import torch


def _table(title: str, rows: List[Dict[str, object]]) -> None:
    print(f"\n{title}")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


def _psnr(a: np.ndarray, b: np.ndarray, w: np.ndarray = None) -> float:
    d = (a.astype(np.float64) - b.astype(np.float64)) / 255.0
    if w is None:
        mse = float(np.mean(d ** 2))
    else:
        mse = float((w[..., None] * d ** 2).sum() / max(3 * w.sum(), 1e-9))
    return 10 * np.log10(1.0 / max(mse, 1e-10))


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from facerender.metrics import ssim

    t = lambda x: torch.from_numpy(x.astype(np.float32) / 255.0).permute(2, 0, 1)[None]  # noqa: E731
    return float(ssim(t(a), t(b)))


# ------------------------------------------------------------------------------------------------- quality
def bench_quality(run: Path, stride: int, grid: Path = None) -> Dict[str, object]:
    from morphable_models import load_ict

    from facerender.reenact.common import FrameSource, paste_crop
    from neural_renderers.data import (ConditioningCache, ConditioningRenderer, ConditioningSettings, TrackedVideo,
                                       WindowDataset)
    from neural_renderers.nvp import load_nvp_render

    model = load_ict()
    method, saved = load_nvp_render(run, "cpu", model)
    data = saved["data"]
    cache = ConditioningCache.open(data["cache"])
    val = WindowDataset(cache, 1, "val", data["val_fraction"])
    frames = np.asarray(val.frames)[::stride]
    src = TrackedVideo.open(data["video"], data["track"], model=model, check_content=False)
    tr = src.track
    S = method.config.size
    shaded = ConditioningRenderer(model, tr, ConditioningSettings(size=S, maps=("shaded",),
                                                                  crop_scale=data["settings"]["crop_scale"]))
    boxes = cache.boxes
    video = FrameSource(src.video, cache=False)
    rows = {"network": [], "model": []}
    picks = []
    t0 = time.perf_counter()
    for k in range(0, len(frames), 8):
        idx = frames[k:k + 8]
        batch = torch.utils.data.default_collate([val[int(np.searchsorted(val.frames, i))] for i in idx])
        crops, alpha = method.render(batch["condition"], batch["image"])
        with torch.no_grad():
            base = shaded(tr.expression[idx], tr.rotation[idx], tr.translation[idx], tr.sh[idx], boxes.centre[idx],
                          boxes.side[idx]).clamp(0, 1).numpy()
        for j, i in enumerate(idx):
            frame = video.get(int(i))
            c, s = boxes.centre[i], float(boxes.side[i])
            x0, y0 = int(max(0, np.floor(c[0] - s / 2))), int(max(0, np.floor(c[1] - s / 2)))
            x1, y1 = int(min(frame.shape[1], np.ceil(c[0] + s / 2))), int(min(frame.shape[0], np.ceil(c[1] + s / 2)))
            outs = {}
            for name, crop in (("network", crops[j].numpy()), ("model", base[j])):
                res, _ = paste_crop(frame, crop, c, s, alpha[j].numpy())
                a_full, _ = paste_crop(np.zeros_like(frame), np.ones((S, S, 3), np.float32), c, s, alpha[j].numpy())
                w = a_full[..., 0].astype(np.float64) / 255.0
                sl = (slice(y0, y1), slice(x0, x1))
                rows[name].append((_psnr(res[sl], frame[sl]), _ssim(res[sl], frame[sl]),
                                   _psnr(res, frame, w)))
                outs[name] = res[sl]
            if len(picks) < 4 and k % (8 * max(1, len(frames) // 32)) == 0 and j == 0:
                picks.append((frame[sl], outs["model"], outs["network"]))
    el = time.perf_counter() - t0
    table = []
    for name, label in (("model", "baseline: albedo x SH model render, same alpha"),
                        ("network", "neural texture + deferred renderer")):
        r = np.asarray(rows[name])
        table.append({"composited lower face": label, "frames": len(r), "PSNR crop (dB)": f"{r[:, 0].mean():.2f}",
                      "SSIM crop": f"{r[:, 1].mean():.4f}", "PSNR region (dB)": f"{r[:, 2].mean():.2f}"})
    gain = np.asarray(rows["network"])[:, 2].mean() - np.asarray(rows["model"])[:, 2].mean()
    gain_crop = np.asarray(rows["network"])[:, 0].mean() - np.asarray(rows["model"])[:, 0].mean()
    _table(f"Held-out frames of {Path(data['video']).name} (frames >= {int(val.frames.min())}, every {stride}th) "
           f"driven by their own tracked expressions, composited into the real frame; checkpoint step "
           f"{saved['checkpoint_step']}", table)
    print(f"network - model: {gain_crop:+.2f} dB over the crop, {gain:+.2f} dB over the region ({el:.0f} s)")
    if grid is not None and picks:
        from PIL import Image

        h = 160
        rows_img = []
        for real, mdl, net in picks:
            ims = [Image.fromarray(x).resize((h, h)) for x in (real, mdl, net)]
            rows_img.append(np.concatenate([np.asarray(i) for i in ims], 1))
        Image.fromarray(np.concatenate(rows_img, 0)).save(grid)
        print(f"wrote {grid} (real | model render composited | network composited)")
    return {"rows": table, "gain_region_db": gain, "gain_crop_db": gain_crop, "seconds": el,
            "checkpoint_step": saved["checkpoint_step"]}


# ------------------------------------------------------------------------------------------------- lip sync
def _segment(video: Path, first: int, count: int, out: Path, with_audio: bool) -> Path:
    """Frames ``[first, first + count)`` of ``video`` as a new file (with the matching sound when asked)."""
    from facerender.audio.mux import mux_audio
    from facerender.io.video import VideoReader, VideoWriter

    r = VideoReader(video)
    tmp = out.with_name(".noaudio_" + out.name) if with_audio else out
    with VideoWriter(tmp, fps=r.fps, crf=14, preset="veryfast") as w:
        for fr in r:
            if fr.index >= first + count:
                break
            if fr.index >= first:
                w.write(fr.image)
    if with_audio:
        mux_audio(tmp, video, out, offset=first / r.fps)
        tmp.unlink()
    return out


def dlib_lips(path: Path, n: int) -> np.ndarray:
    """dlib's inner-lip opening of the first ``n`` frames of a video (NaN without a face)."""
    from facerender.errors import NoFaceError
    from facerender.io.video import VideoReader
    from facerender.landmarks.detect import detect_landmarks
    from facerender.metrics import lip_opening

    out = np.full(n, np.nan)
    for fr in VideoReader(path):
        if fr.index >= n:
            break
        try:
            out[fr.index] = float(lip_opening(np.asarray(detect_landmarks(fr.image).points)[None])[0])
        except NoFaceError:
            pass
    return out


def offset_curve(output: np.ndarray, real: np.ndarray, max_shift: int = 3) -> Dict[int, float]:
    """Pearson correlation of ``output[t + k]`` with ``real[t]`` for ``k`` in ``-max_shift .. max_shift``."""
    from facerender.metrics import pearson

    n = len(real)
    m = max_shift
    return {k: pearson(output[m + k:n - m + k], real[m:n - m]) for k in range(-m, m + 1)}


def side_by_side_picture(result: Path, side_by_side: Path, lips_target: np.ndarray, path: Path) -> List[int]:
    """Three ``target | result`` frames where the driven mouth differs most from the target's own (dlib's inner-lip
    opening): two where the audio opens a mouth the target closes, one the other way round."""
    from PIL import Image

    from facerender.io.video import VideoReader

    diff = np.nan_to_num(dlib_lips(result, len(lips_target)) - lips_target, nan=0.0)
    picks: List[int] = []
    for sign, want in ((1, 2), (-1, 3)):
        for k in np.argsort(-sign * diff):
            if all(abs(int(k) - j) >= 25 for j in picks):
                picks.append(int(k))
            if len(picks) == want:
                break
    rows = [fr.image for fr in VideoReader(side_by_side) if fr.index in set(picks)]
    Image.fromarray(np.concatenate(rows, 0)).save(path, quality=90)
    print(f"wrote {path} (target | result at output frames {sorted(picks)})")
    return picks


def bench_lipsync(run: Path, frames: int, out: Path, start: int = 37, picture: Path = None) -> Dict[str, object]:
    from facerender.metrics import EvaluateConfig, evaluate, pearson
    from neural_renderers.nvp.puppet import PuppetConfig, puppet

    saved = json.loads((run / "config.json").read_text())
    data = saved["data"]
    video = Path(data["video"])
    from facerender.io.video import VideoReader

    n_all = VideoReader(video).frame_count
    first = int(np.floor(n_all * (1 - data["val_fraction"])))
    count = min(frames, n_all - first)
    out.mkdir(parents=True, exist_ok=True)
    held = _segment(video, first, count, out / "heldout_real.mp4", with_audio=True)
    tgt = _segment(video, start, count, out / "target_frames.mp4", with_audio=False)
    t0 = time.perf_counter()
    res = puppet(held, run, out / "puppet", PuppetConfig(side_by_side=True, target_start=start), progress=True)
    t_puppet = time.perf_counter() - t0
    t0 = time.perf_counter()
    ev = evaluate(held, tgt, res.result_path, config=EvaluateConfig(expression=False, seam=True, progress=True,
                                                                    target_order="time", source_order="time"))
    t_eval = time.perf_counter() - t0
    lips_tgt, lips_held = dlib_lips(tgt, count), dlib_lips(held, count)
    base = pearson(lips_tgt, lips_held)
    curve = offset_curve(dlib_lips(res.result_path, count), lips_held)
    print("offset curve (output shifted by k frames against the real held-out video, dlib inner-lip opening): "
          + " ".join(f"{k:+d}:{v:.3f}" for k, v in curve.items()))
    if picture is not None:
        side_by_side_picture(res.result_path, res.side_by_side_path, lips_tgt, picture)
    rows = [{"output judged by dlib": "target frames, mouth untouched (baseline)", "frames": count,
             "inner-lip corr with the real held-out video": f"{base:.3f}", "descriptor distance to target": "-"},
            {"output judged by dlib": "puppet: held-out speech -> the target's mouth", "frames": ev.frames,
             "inner-lip corr with the real held-out video": f"{ev.lip_correlation:.3f}",
             "descriptor distance to target": f"{ev.identity_distance_target:.3f}"}]
    _table(f"Held-out speech (frames {first}..{first + count - 1} of {video.name}, {count / 25:.0f} s) drives the "
           f"target from frame {start}; puppet {t_puppet:.0f} s ({1e3 * t_puppet / count:.0f} ms per frame), "
           f"evaluation {t_eval:.0f} s", rows)
    print(ev.table())
    return {"rows": rows, "evaluation": ev.to_dict(), "puppet_summary": res.summary, "puppet_seconds": t_puppet,
            "baseline_lip_corr": base, "offset_curve": curve}


# ------------------------------------------------------------------------------------------------- speed
def bench_speed(run: Path, source_track: Path, target_track: Path, frames: int = 24) -> Dict[str, object]:
    """Audio features per second of audio; audio-to-expression per frame; the renderer per frame at 256^2 (the
    run's widths and the paper's); Face2Face's per-frame time on the same machine, in this process."""
    from morphable_models import load_ict

    from facerender.audio import compute_features, frame_times
    from facerender.reenact.face2face import Face2FaceConfig, face2face
    from facerender.tracking import load_track
    from neural_renderers.data import ConditioningRenderer, ConditioningSettings, dequantize, quantize
    from neural_renderers.nvp import (NeuralVoicePuppetryRenderer, NVPRenderConfig, load_nvp_audio,
                                      predict_expressions, region_texture)
    from neural_renderers.nvp.train import AUDIO_MODEL_FILE

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _timing import median_ms

    rows = []
    with tempfile.TemporaryDirectory() as d:
        cfg = Face2FaceConfig(max_frames=frames, side_by_side=False, stills=())
        r = face2face(source_track, target_track, Path(d) / "f2f", config=cfg, progress=False)
        per = r.summary["per_frame_ms"]
        rows.append({"stage": "Face2Face reenactment, 256^2 crop (same run)", "ms": f"{sum(per.values()):.1f}",
                     "unit": "per frame"})
    # audio
    rate = 16000
    t = np.arange(60 * rate) / rate
    wave = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    ms = median_ms(lambda: compute_features(wave, sample_rate=rate), 3, 1)
    rows.append({"stage": "audio features (log-mel + flags), 60 s in memory", "ms": f"{ms / 60:.2f}",
                 "unit": "per s of audio"})
    feats = compute_features(wave, sample_rate=rate)
    am, _ = load_nvp_audio(run / AUDIO_MODEL_FILE)
    times = frame_times(1500, 25.0)
    ms = median_ms(lambda: predict_expressions(am.net, feats, times), 3, 1)
    rows.append({"stage": "audio -> expression, 1500 frames batched", "ms": f"{ms / 1500:.3f}", "unit": "per frame"})
    ms = median_ms(lambda: predict_expressions(am.net, feats, times[:1]), 20, 2)
    rows.append({"stage": "audio -> expression, one frame at a time", "ms": f"{ms:.3f}", "unit": "per frame"})
    # rendering at 256^2: conditioning (UV maps of the new expression), texture + U-Net, compositing
    model = load_ict()
    tr = load_track(target_track)
    settings = ConditioningSettings(size=256, maps=("uv", "uv_tile", "regions"), storage="float16")
    rend = ConditioningRenderer(model, tr, settings)
    from neural_renderers.data import crop_boxes_from_pose, crop_reference

    ref = crop_reference(tr, model)
    boxes = crop_boxes_from_pose(tr.rotation, tr.translation, tr.focal, tr.principal_point, ref)
    idx = np.arange(4)
    maps_ms = median_ms(lambda: quantize(rend(tr.expression[idx], tr.rotation[idx], tr.translation[idx], tr.sh[idx],
                                               boxes.centre[idx], boxes.side[idx]), "float16"), 5, 1) / 4
    cond = torch.from_numpy(dequantize(quantize(rend(tr.expression[idx], tr.rotation[idx], tr.translation[idx],
                                                     tr.sh[idx], boxes.centre[idx], boxes.side[idx]), "float16")))
    region = region_texture(model, 128, 6, slots=7)
    rows.append({"stage": "UV maps of the new expression, 256^2 (batch 4)", "ms": f"{maps_ms:.1f}", "unit": "per frame"})
    saved = json.loads((run / "config.json").read_text())["method_config"]
    for label, base, mx in ((f"the run's widths ({saved['base_channels']}..{saved['max_channels']})",
                             saved["base_channels"], saved["max_channels"]), ("pix2pix widths (64..512)", 64, 512)):
        m = NeuralVoicePuppetryRenderer(NVPRenderConfig(size=256, base_channels=base, max_channels=mx),
                                        region=region).eval()
        img = torch.rand(4, 256, 256, 3)
        net_ms = median_ms(lambda: m.render(cond, img, cond), 5, 1) / 4
        rows.append({"stage": f"neural texture + U-Net 256^2, {label} (batch 4)", "ms": f"{net_ms:.1f}",
                     "unit": "per frame"})
    from facerender.reenact.common import paste_crop

    frame = np.zeros((512, 512, 3), np.uint8)
    crop = np.random.rand(256, 256, 3).astype(np.float32)
    alpha = np.random.rand(256, 256).astype(np.float32)
    comp_ms = median_ms(lambda: paste_crop(frame, crop, (256.0, 256.0), 300.0, alpha), 20, 2)
    rows.append({"stage": "compositing into a 512^2 frame", "ms": f"{comp_ms:.1f}", "unit": "per frame"})
    _table(f"Speed, CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), shared "
           f"machine: compare with Face2Face's line of the same run)", rows)
    return {"rows": rows}


# ------------------------------------------------------------------------------------------------- memory
def bench_memory(run: Path, seconds=(10, 600), frames: int = 50) -> Dict[str, object]:
    """Peak resident memory of ``facerender puppet`` (a fresh process each) for speech of several lengths: the
    speech is GRID sentences repeated into a WAV; the first ``frames`` output frames are written (the render loop is
    per frame; what grows with the length is the features and the per-frame expressions)."""
    import subprocess
    import wave

    from morphable_models.paths import shared_data_dir

    from facerender.audio import load_audio

    clips = sorted((shared_data_dir() / "data" / "speech" / "grid_multi").glob("*.mp4"))
    x = np.concatenate([load_audio(c, 16000)[0] for c in clips])
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for sec in seconds:
            wav = Path(d) / f"speech_{sec}s.wav"
            y = np.tile(x, int(np.ceil(sec * 16000 / len(x))))[:sec * 16000]
            with wave.open(str(wav), "wb") as f:
                f.setnchannels(1)
                f.setsampwidth(2)
                f.setframerate(16000)
                f.writeframes((np.clip(y, -1, 1) * 32767).astype("<i2").tobytes())
            out = Path(d) / f"out_{sec}"
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "facerender.cli", "puppet", "--audio", str(wav), "--model",
                                str(run), "-o", str(out), "--max-frames", str(frames), "--no-progress"],
                               capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
            if r.returncode:
                raise SystemExit(r.stderr[-2000:])
            s = json.loads((out / "summary.json").read_text())
            rows.append({"speech": f"{sec} s", "output frames": s["frames"],
                         "peak resident memory (MB)": f"{s['peak_memory_mb']:.0f}",
                         "wall s": f"{time.perf_counter() - t0:.0f}"})
    _table(f"Memory of puppet against the speech's length (first {frames} frames written; the features are kept: "
           f"32 kB per second of audio)", rows)
    return {"rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="part", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--run", type=Path, required=True)
    q.add_argument("--stride", type=int, default=5)
    q.add_argument("--grid", type=Path, default=None)
    q.add_argument("--json", type=Path, default=None)
    ls = sub.add_parser("lipsync")
    ls.add_argument("--run", type=Path, required=True)
    ls.add_argument("--frames", type=int, default=1500)
    ls.add_argument("--start", type=int, default=37, help="the target frame the output begins with")
    ls.add_argument("--picture", type=Path, default=None, help="JPEG of three target | result frames")
    ls.add_argument("-o", "--output", type=Path, required=True)
    ls.add_argument("--json", type=Path, default=None)
    sp = sub.add_parser("speed")
    sp.add_argument("--run", type=Path, required=True)
    sp.add_argument("--source-track", type=Path, required=True)
    sp.add_argument("--target-track", type=Path, required=True)
    sp.add_argument("--json", type=Path, default=None)
    mm = sub.add_parser("memory")
    mm.add_argument("--run", type=Path, required=True)
    mm.add_argument("--json", type=Path, default=None)
    for p in (q, ls, sp, mm):
        p.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared, other jobs "
          f"running), torch {torch.__version__}, {args.threads} thread(s)")
    if args.part == "quality":
        res = bench_quality(args.run, args.stride, args.grid)
    elif args.part == "lipsync":
        res = bench_lipsync(args.run, args.frames, args.output, args.start, args.picture)
    elif args.part == "memory":
        res = bench_memory(args.run)
    else:
        res = bench_speed(args.run, args.source_track, args.target_track)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
