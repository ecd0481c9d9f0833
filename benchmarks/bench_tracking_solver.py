"""Per-frame tracking solve: our warm-started Gauss-Newton vs an Adam tracker with metrical-tracker's schedule.

Both solve the SAME per-frame energy (landmarks + photometric colour on a face crop + priors + temporal term,
identity and albedo from the same keyframe bundling), frame after frame with warm starts, on the same frames:

* Gauss-Newton (ours): ``TrackerConfig.iterations`` LM iterations at the crop size (default 128^2);
* Adam (metrical-tracker's per-frame schedule, ../shared/docs/TARGETS.md): the pyramid [[0.25, 40], [0.5, 40],
  [1.0, 70]] (scale of the crop, Adam steps) per frame after the first, whose schedule starts with [1.0, 160];
  learning rate chosen by a small grid on the first frames.

Reports per-frame solve time (landmark detection and decoding are done beforehand and reported separately), fps,
and the per-frame energy at the crop size reached by each method (median over frames), with 2 threads by default.

Usage: python benchmarks/bench_tracking_solver.py [--video PATH] [--frames 30] [--threads 2] [--size 128]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from facerender.fitting.solver import AdamConfig, LeastSquaresProblem, solve
from facerender.io.video import VideoReader
from facerender.landmarks.detect import detect_landmarks
from facerender.tracking.tracker import FaceTracker, TrackerConfig
from morphable_models import load_ict, shared_data_dir

METRICAL_SCHEDULE_FIRST = ((1.0, 160),)
METRICAL_SCHEDULE = ((0.25, 40), (0.5, 40), (1.0, 70))


def make_adam_solver(lr: float, size: int, first: list):
    def solve_fn(build, x0, lo, hi):
        schedule = METRICAL_SCHEDULE_FIRST if not first else METRICAL_SCHEDULE
        first.append(True)
        x = x0
        for scale, steps in schedule:
            prob = build(max(16, int(round(size * scale))))
            r = solve(LeastSquaresProblem(residuals=prob.residuals, lower=lo, upper=hi), x,
                      AdamConfig(lr=lr, steps=steps), method="adam")
            x = r.params
        final = build(size)
        return x, float(0.5 * final.residuals(x).square().sum())
    return solve_fn


def run(model, frames, lms, confs, cfg, fps, solve_fn=None):
    tr = FaceTracker(model, cfg, frames[0].shape[:2], fps)
    k = list(range(0, len(frames), max(1, len(frames) // 6)))[:6]
    tr.bundle([frames[i] for i in k], [lms[i] for i in k], [confs[i] for i in k])
    out = []
    for i in range(len(frames)):
        t = time.perf_counter()
        r = tr.track_frame(frames[i], lms[i], confs[i], solve_fn=solve_fn)
        out.append((time.perf_counter() - t, r.energy))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--video", default=None)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--lrs", default="0.003,0.01")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    video = args.video or str(shared_data_dir(required=True) / "data" / "video" / "talking_d3.mp4")
    model = load_ict()
    frames, lms, confs = [], [], []
    t = time.perf_counter()
    rd = VideoReader(video)
    for fr in rd:
        if len(frames) >= args.frames:
            break
        frames.append(fr.image)
    t_dec = (time.perf_counter() - t) / len(frames)
    t = time.perf_counter()
    for f in frames:
        lm = detect_landmarks(f)
        lms.append(np.asarray(lm.points))
        confs.append(np.asarray(lm.confidence))
    t_det = (time.perf_counter() - t) / len(frames)
    cfg = TrackerConfig(size=args.size)
    gn = run(model, frames, lms, confs, cfg, rd.fps)
    # Adam: pick the learning rate on the first 5 frames
    best_lr, best_e = None, float("inf")
    for lr in [float(v) for v in args.lrs.split(",")]:
        res = run(model, frames[:5], lms[:5], confs[:5], cfg, rd.fps, make_adam_solver(lr, args.size, []))
        e = statistics.median(r[1] for r in res[1:])
        if e < best_e:
            best_lr, best_e = lr, e
    adam = run(model, frames, lms, confs, cfg, rd.fps, make_adam_solver(best_lr, args.size, []))

    def stats(rows):
        ts = [r[0] for r in rows[1:]]  # the first frame (re)initialises
        return statistics.median(ts) * 1e3, 1.0 / statistics.median(ts), statistics.median(r[1] for r in rows[1:])

    g, a = stats(gn), stats(adam)
    print(f"video {video}, {len(frames)} frames, crop {args.size}^2, {torch.get_num_threads()} threads; "
          f"decode {t_dec * 1e3:.1f} ms/frame, dlib landmarks {t_det * 1e3:.1f} ms/frame (not in the solve times)")
    print("| solver | per-frame solve ms (median) | fps | median per-frame energy |")
    print("|---|---|---|---|")
    print(f"| Gauss-Newton ({cfg.iterations} LM iterations, warm start) | {g[0]:.1f} | {g[1]:.1f} | {g[2]:.4g} |")
    print(f"| Adam, metrical-tracker schedule 40/40/70 steps (lr {best_lr}) | {a[0]:.1f} | {a[1]:.2f} | {a[2]:.4g} |")
    print(f"| ratio | {a[0] / g[0]:.1f}x faster | | energy ratio Adam / GN {a[2] / g[2]:.3f} |")


if __name__ == "__main__":
    main()
