"""Does the tracker notice when it is lost? Every clip of ../shared/data/video/ and the generated hard cases, tracked
with the current settings and with the previous ones (``legacy_config()``) in the same run (docs/tracking.md,
"Knowing when it is lost").

Per clip and setting (from each track's summary.json):

* ``within 10 %``: the fraction of the audited frames (every 5th; those where a fresh HOG + dlib detection finds a
  face) whose fitted model landmarks lie within 10 % of the eye distance of that fresh detection (mean over the 68
  points); ``pts``: the same for the landmark tracker's points (frames where it had none count as misses);
  ``audited``: frames with a fresh detection / frames sampled;
* ``jitter ratio``: RMS second difference of the model's fixed landmarks over the detector's;
* ``PSNR p10``: 10th percentile of the photometric PSNR of the solved frames (dB);
* ``lost``: frames without a usable face after one was seen (bridged), ``drops`` (tracks dropped by a check),
  ``reseeded`` (re-seeded from a fresh detection that disagreed), ``reinit`` (solver restarts), ``interp``
  (bridged frames filled by interpolation), ``photo`` (photometric outliers);
* ``fps``: frames per second of the tracking pass (decode, landmarks, eyes, solve, checks, audit, store).

The hard cases (``facerender.tracking.hardcases``: talking_d3 and lp_d11 placed on a 1280 x 720 canvas) also get a
ground truth: a fresh detection on each SOURCE frame, mapped onto the canvas. ``truth 10 %`` is the fraction of the
frames whose face is at least half inside the canvas with the model within 10 % of the truth, and ``confident
wrong`` counts the frames that carry no loss flag (a face, not bridged) and are more than 10 % off the truth (of the
face being shown nearest the model; the ``two_faces`` case counts a track that moved to the other person as right,
since the model is then on a face, flagged ``redetected`` and ``reinitialised``).

Usage::

    python benchmarks/bench_tracking_robustness.py [--threads 1] [--frames N] [--clips a,b] [--no-baseline]
        [--hard-cases fast_move,moving,...|none] [--hard-frames 150] [--workdir DIR] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from facerender.io import VideoReader
from facerender.tracking.facebox import landmark_agreement
from facerender.tracking.hardcases import HARD_CASES, write_hard_case
from facerender.tracking.quality import FreshDetector
from facerender.tracking.video import TrackConfig, legacy_config, load_track, track_video

SETTINGS = {"now": TrackConfig, "before": legacy_config}


def shared_videos() -> dict:
    from morphable_models.paths import shared_data_dir

    d = shared_data_dir()
    if d is None:
        raise SystemExit("the shared data folder is missing (set FACERENDER_DATA)")
    return {p.stem: p for p in sorted((d / "data" / "video").glob("*.mp4"))}


def make_hard_cases(names, frames, workdir: Path, videos) -> dict:
    """Write each case (talking_d3 as the main face, lp_d11 as the other) and its per-frame ground truth."""
    src = [f.image for f, _ in zip(VideoReader(videos["talking_d3"]), range(frames))]
    other = [f.image for f, _ in zip(VideoReader(videos["lp_d11"]), range(frames))]
    fresh = FreshDetector()
    truth_src = [[fresh(f) for f in src], [fresh(f) for f in other]]
    out = {}
    for name in names:
        path = workdir / f"hard_{name}.mp4"
        layers = []
        write_hard_case(name, path, [src, other], (720, 1280), fps=30.0,
                        callback=lambda i, fr: layers.append(fr))
        truth = []
        for fr in layers:
            faces = []
            for layer in fr.layers:
                t = truth_src[layer.source][min(layer.index, len(truth_src[layer.source]) - 1)]
                if t is not None:
                    q = fr.map_points(t, layer.source)
                    if q is not None:
                        faces.append(q)
            truth.append(faces)
        out[name] = (path, truth)
    return out


def truth_figures(track, truth) -> dict:
    """Fraction of frames with a (half-visible) face whose model landmarks are within 10 % of the nearest true
    face, and the frames with no loss flag that are more than 10 % off."""
    ok = n = wrong = 0
    for i in range(len(track)):
        faces = truth[int(track.index[i])] if int(track.index[i]) < len(truth) else []
        lost = not bool(track.face_found[i])
        if not faces:
            continue
        e = min(landmark_agreement(track.landmarks_2d[i], q) for q in faces)
        n += 1
        ok += e <= 0.1
        wrong += (not lost) and e > 0.1
    return {"truth_within": ok / n if n else float("nan"), "truth_frames": n, "confident_wrong": int(wrong)}


def run(name, path, setting, frames, model, out_root, truth=None) -> dict:
    out = out_root / f"{name}_{setting}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    res = track_video(path, out, model, SETTINGS[setting](), max_frames=frames, overlay=False, progress=False)
    wall = time.perf_counter() - t0
    s = res.summary
    a, ev = s["audit"], s["events"]
    row = {"clip": name, "setting": setting, "frames": s["frames"], "within": a["within"],
           "points_within": a.get("points_within"), "audited": a["detected"], "sampled": a["sampled"],
           "audit_max": a["max"], "worst": a["worst_frames"], "ratio": s["jitter"]["ratio"],
           "psnr_p10": s["psnr"].get("p10"), "fps": res.fps, "wall_s": wall,
           "audit_ms": a["ms_per_sampled_frame"], **{k: ev[k] for k in ev}}
    if truth is not None:
        row.update(truth_figures(load_track(out), truth))
    return row


def fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frames", type=int, default=None, help="frames per clip (default: all)")
    ap.add_argument("--clips", default=None, help="comma-separated clip names (default: every shared clip)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the previous settings")
    ap.add_argument("--hard-cases", default=",".join(HARD_CASES), help="comma-separated cases, or 'none'")
    ap.add_argument("--hard-frames", type=int, default=150)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    from morphable_models import load_ict

    model = load_ict()
    videos = shared_videos()
    clips = [c for c in (args.clips.split(",") if args.clips else videos) if c]
    missing = [c for c in clips if c not in videos]
    if missing:
        raise SystemExit(f"no such shared clip: {missing}; have {sorted(videos)}")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_robust_"))
    work.mkdir(parents=True, exist_ok=True)
    settings = ["now"] + ([] if args.no_baseline else ["before"])
    cases = [] if args.hard_cases == "none" else [c for c in args.hard_cases.split(",") if c]
    hard = make_hard_cases(cases, args.hard_frames, work, videos) if cases else {}
    rows = []
    for name in clips:
        for st in settings:
            rows.append(run(name, videos[name], st, args.frames, model, work))
            print(f"  {name} ({st}): {rows[-1]['within']}", flush=True)
    for name, (path, truth) in hard.items():
        for st in settings:
            rows.append(run(f"hard:{name}", path, st, None, model, work, truth))
            print(f"  hard:{name} ({st}): {rows[-1]['within']} / truth {rows[-1]['truth_within']}", flush=True)
    print("\n| clip | setting | frames | within 10 % | pts | audited | jitter ratio | PSNR p10 | lost | drops | "
          "reseeded | reinit | interp | photo | fps | truth 10 % | confident wrong |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clip']} | {r['setting']} | {r['frames']} | {fmt(r['within'] and 100 * r['within'], '.1f')} | "
              f"{fmt(r['points_within'] and 100 * r['points_within'], '.1f')} | {r['audited']}/{r['sampled']} | "
              f"{fmt(r['ratio'], '.2f')} | {fmt(r['psnr_p10'], '.2f')} | {r['lost_frames']} | {r['drops']} | "
              f"{r['reseeded']} | {r['reinitialised']} | {r['interpolated']} | {r['photometric_outliers']} | "
              f"{fmt(r['fps'], '.1f')} | {fmt(r.get('truth_within') and 100 * r['truth_within'], '.1f')} | "
              f"{r.get('confident_wrong', '-')} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=float)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
