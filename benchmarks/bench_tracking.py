"""Benchmark of video tracking (facerender.tracking): landmarks, eyes, solver, outputs, jitter and memory.

Three parts, each printed as a table (and written to JSON with ``--json``):

1. **Landmarks** on the sample clips: :class:`~facerender.tracking.facebox.LandmarkTracker` (predictor in a box that
   follows the face, HOG only on loss / verification) against the baseline of HOG + predictor on every frame, in
   the same run: ms per frame (detection, prediction, checks, verification) and the detector's landmark jitter.
2. **Tracking** (``track_video``) on the sample clips with the real solver (``--solver real``, default) or a
   landmark-only stub (``--solver stub``, for the pipeline's own cost): per-stage ms per frame, frames per second,
   bundling time, and the landmark jitter of the projected model landmarks next to the detector's (RMS of the second
   temporal difference over runs of consecutive tracked frames, pixels).
3. **Memory** (``--long-minutes M``): a clip looped to ``M`` minutes is written to a file and tracked as a stream;
   the resident set size (``/proc/self/status`` VmRSS) is sampled every 50 frames of the main pass (first and last
   tenth compared, linear slope) and every 0.5 s by a thread over all passes (maximum per pass), and the process
   peak (``getrusage``) reported. Run it in its own process (``--skip landmarks,tracking``) with the video already
   written (``--workdir``) so that the peak is the tracking's alone.

Usage::

    python benchmarks/bench_tracking.py [--threads 1] [--frames 150] [--solver real|stub] [--no-overlay]
                                        [--clips talking_d3,talking_d10,expressions_d6]
                                        [--long-minutes 10 --long-solver stub] [--json out.json]
                                        [--baseline savgol5]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from facerender.io import VideoReader, VideoWriter
from facerender.tracking.facebox import LEGACY_LANDMARKS, LandmarkTracker, LandmarkTrackerConfig
from facerender.tracking.tracker import TrackerConfig
from facerender.tracking.video import (SAVGOL_SMOOTHING, TrackConfig, landmark_jitter, legacy_config, load_track,
                                       track_video)


def shared_video(name: str) -> Path:
    from morphable_models.paths import shared_data_dir

    d = shared_data_dir()
    if d is None:
        raise SystemExit("the shared data folder is missing (set FACERENDER_DATA)")
    return d / "data" / "video" / f"{name}.mp4"


def rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class StubTracker:
    """The solver interface without a solver: the pipeline's own cost (decode, landmarks, eyes, store, overlay)."""

    def __init__(self, model, config, image_size, fps):
        self.K = model.num_expression
        self.H, self.W = image_size
        self.focal = 1.2 * max(image_size)
        self.last = None

    def bundle(self, frames, landmarks, confidences):
        self.video_params = {"identity": np.zeros(100, np.float32), "albedo": None, "focal": self.focal,
                             "principal_point": np.array([self.W / 2, self.H / 2]), "image_size": (self.H, self.W)}
        return self.video_params

    def track_frame(self, frame, landmarks, confidence, gaze):
        from types import SimpleNamespace

        if landmarks is not None:
            lm = landmarks if self.last is None else 0.5 * landmarks + 0.5 * self.last
            self.last = lm
        lm = self.last if self.last is not None else np.zeros((68, 2))
        return SimpleNamespace(rotation=np.zeros(3), translation=np.array([0, 0, 60.0]), expression=np.zeros(self.K),
                               sh=np.zeros((9, 3)), landmarks_2d=lm, energy=0.0,
                               flags=[] if landmarks is not None else ["no_face", "bridged"], solve_ms=0.0)

    def state_dict(self):
        return {"last": self.last}

    def load_state_dict(self, d):
        self.last = d["last"]


def stub_factory(model, config, size, fps):
    return StubTracker(model, config, size, fps)


# ------------------------------------------------------------------------------------------------------ part 1
def bench_landmarks(clips, frames, legacy=False):
    from facerender.landmarks import DlibDetector

    det = DlibDetector()
    rows = []
    for name in clips:
        imgs = [f.image for f in itertools.islice(VideoReader(shared_video(name)), frames)]
        det.landmarks_in_box(imgs[0], (0, 0, 64, 64))  # load the models outside the timings
        # baseline: HOG + predictor on every frame
        t_det, t_pred, base = [], [], []
        for im in imgs:
            t0 = time.perf_counter()
            faces = det.detect_faces(im)
            t1 = time.perf_counter()
            if not faces:
                base.append(None)
                continue
            f = max(faces, key=lambda d: d.area)
            base.append(det.landmarks_in_box(im, f.box).points)
            t2 = time.perf_counter()
            t_det.append(t1 - t0)
            t_pred.append(t2 - t1)
        runs_b = [np.array(base)] if all(b is not None for b in base) else []
        jb, _ = landmark_jitter(runs_b)
        for label, cfg in [("", LandmarkTrackerConfig())] + ([(" (legacy)", LandmarkTrackerConfig(
                **LEGACY_LANDMARKS))] if legacy else []):
            lt = LandmarkTracker(cfg)
            obs = []
            t0 = time.perf_counter()
            for im in imgs:
                obs.append(lt.update(im))
            wall = time.perf_counter() - t0
            st = lt.stats
            n = len(imgs)
            runs_t = [np.array([o.landmarks.points for o in obs])] if all(o.found for o in obs) else []
            jt, _ = landmark_jitter(runs_t)
            rows.append({
                "clip": name + label, "frames": n,
                "baseline_ms": 1e3 * (sum(t_det) + sum(t_pred)) / n, "baseline_detect_ms": 1e3 * np.mean(t_det),
                "baseline_predict_ms": 1e3 * np.mean(t_pred),
                "tracker_ms": 1e3 * wall / n, "detect_ms": st["detect_ms"] / n, "predict_ms": st["predict_ms"] / n,
                "check_ms": st["check_ms"] / n, "verify_ms": st["verify_ms"] / n, "detections": int(st["detected"]),
                "lost": int(st["lost"]), "jitter_baseline_px": jb, "jitter_tracker_px": jt,
            })
    print("\n1. Landmarks: LandmarkTracker vs HOG + predictor on every frame (ms per frame; jitter = RMS 2nd "
          "difference, px)")
    print(f"{'clip':<26}{'frames':>7}{'baseline':>10}{'(HOG':>8}{'pred)':>7}{'tracker':>9}{'(det':>7}{'pred':>6}"
          f"{'check':>7}{'verify)':>8}{'HOG runs':>9}{'lost':>5}{'jit base':>9}{'jit trk':>8}")
    for r in rows:
        print(f"{r['clip']:<26}{r['frames']:>7}{r['baseline_ms']:>10.2f}{r['baseline_detect_ms']:>8.2f}"
              f"{r['baseline_predict_ms']:>7.2f}{r['tracker_ms']:>9.2f}{r['detect_ms']:>7.2f}{r['predict_ms']:>6.2f}"
              f"{r['check_ms']:>7.2f}{r['verify_ms']:>8.2f}{r['detections']:>9}{r['lost']:>5}"
              f"{r['jitter_baseline_px']:>9.2f}{r['jitter_tracker_px']:>8.2f}")
    return rows


# ------------------------------------------------------------------------------------------------------ part 2
#: ``--baseline``: earlier tracker settings tracked in the same run as the current defaults: ``savgol5``, the 2026-11
#: releases (Savitzky-Golay 5 / order 2 landmark smoothing and the temporal weight 3e-5 it was tuned with);
#: ``legacy``, before 2026-12 (the landmark tracker without the tied box and the verification by fresh landmarks,
#: ``legacy_config()``; with ``--baseline legacy`` part 1 also times that landmark tracker).
BASELINES = {"savgol5": lambda: TrackConfig(**SAVGOL_SMOOTHING, tracker=TrackerConfig(w_temporal=3e-5)),
             "legacy": legacy_config}


def bench_tracking(clips, frames, solver, overlay, model, out_root, baseline=None):
    rows = []
    configs = [("default", TrackConfig)] + ([(baseline, BASELINES[baseline])] if baseline else [])
    factory = stub_factory if solver == "stub" else None
    warm = VideoReader(shared_video(clips[0]))  # first-use costs (dlib models, imports) outside the timings
    from facerender.tracking.eyes import EyeTracker
    from facerender.landmarks import detect_landmarks

    img = next(iter(warm)).image
    EyeTracker().update(img, detect_landmarks(img).points)
    for name, (cname, make_config) in itertools.product(clips, configs):
        out = out_root / (f"track_{name}" if cname == "default" else f"track_{name}_{cname}")
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        res = track_video(shared_video(name), out, model, make_config(), max_frames=frames, overlay=overlay,
                          progress=False, tracker_factory=factory)
        wall = time.perf_counter() - t0
        s = res.summary
        t = s["timings_s"]
        n = s["frames"]
        j = s["jitter"]
        ps = s.get("psnr", {})
        dist = single_image_distance(load_track(out), model) if solver == "real" else {}
        rows.append({
            "clip": name if cname == "default" else f"{name} ({cname})", "frames": n, "fps": res.fps,
            "keyframes_s": t.get("keyframes", 0),
            "bundle_s": t.get("bundle", 0),
            "decode_ms": 1e3 * t.get("decode", 0) / n, "landmarks_ms": 1e3 * t.get("landmarks", 0) / n,
            "eyes_ms": 1e3 * t.get("eyes", 0) / n, "solve_ms": 1e3 * t.get("solve", 0) / n,
            "write_ms": 1e3 * t.get("write", 0) / n,
            "overlay_ms": 1e3 * t.get("overlay", 0) / n if overlay else float("nan"),
            "jitter_detector_px": j["detector_px"], "jitter_model_px": j["model_px"], "jitter_ratio": j["ratio"],
            "jitter_triples": j["triples"], "no_face": s["status_counts"].get("no_face", 0), "wall_s": wall,
            "blink_frames": s["flag_counts"].get("blink", 0),
            "jitter_smoothed_px": j.get("smoothed_px", float("nan")),
            "psnr_keyframes": ps.get("keyframes") or float("nan"), "psnr_other": ps.get("other") or float("nan"),
            **dist,
        })
    print(f"\n2. track_video ({solver} solver, first {frames} frames; ms per frame; jitter px)")
    print(f"{'clip':<26}{'frames':>7}{'fps':>7}{'kf s':>7}{'bundle s':>9}{'decode':>8}{'lmks':>7}{'eyes':>7}"
          f"{'solve':>8}{'store':>7}{'overlay':>9}{'jit det':>8}{'jit mod':>8}{'ratio':>7}{'blinks':>7}")
    for r in rows:
        print(f"{r['clip']:<26}{r['frames']:>7}{r['fps']:>7.2f}{r['keyframes_s']:>7.1f}{r['bundle_s']:>9.1f}"
              f"{r['decode_ms']:>8.2f}{r['landmarks_ms']:>7.2f}{r['eyes_ms']:>7.2f}{r['solve_ms']:>8.1f}"
              f"{r['write_ms']:>7.2f}{r['overlay_ms']:>9.1f}{r['jitter_detector_px']:>8.2f}"
              f"{r['jitter_model_px']:>8.2f}{r['jitter_ratio']:>7.2f}{r['blink_frames']:>7}")
    if solver == "real":
        print("\n2b. quality: jitter (px; model = fixed iBUG-68 vertices), PSNR in the face mask (dB), mean distance "
              "to the detected points (px) of the tracked model and of an independent single-image landmark fit per "
              "frame (shipped priors, identity free) on the same frames (every 5th solved frame)")
        print(f"{'clip':<26}{'jit det':>8}{'jit smooth':>11}{'jit model':>10}{'ratio':>7}{'PSNR kf':>8}{'PSNR other':>11}"
              f"{'n':>5}{'track 68':>9}{'single 68':>10}{'track 51':>9}{'single 51':>10}{'single, video id, 68':>21}")
        for r in rows:
            print(f"{r['clip']:<26}{r['jitter_detector_px']:>8.2f}{r['jitter_smoothed_px']:>11.2f}"
                  f"{r['jitter_model_px']:>10.2f}{r['jitter_ratio']:>7.2f}{r['psnr_keyframes']:>8.2f}"
                  f"{r['psnr_other']:>11.2f}{r['dist_frames']:>5}{r['dist_track_68']:>9.2f}{r['dist_single_68']:>10.2f}"
                  f"{r['dist_track_51']:>9.2f}{r['dist_single_51']:>10.2f}{r['dist_single_fixed_id_68']:>21.2f}")
    return rows


def single_image_distance(track, model, every: int = 5) -> dict:
    """Mean distance (px) from the detected points of the tracked model's fitted landmarks (``landmarks_2d``: the 17
    jaw points slide along the contour) and of a single-image landmark fit of each frame (``fit_landmarks`` with the
    shipped priors, identity free, the track's focal length), on every ``every``-th frame that was solved (face, not
    bridged / re-initialised); over all 68 points and over the 51 inner points."""
    from facerender.fitting.landmark_fit import fit_landmarks

    ok = [i for i in range(len(track.index)) if track.face_found[i]
          and not {"bridged", "reinitialised", "nan_replaced"} & set(str(track.flags[i]).split(","))][::every]
    if not ok:
        return {"dist_frames": 0, **{k: float("nan") for k in ("dist_track_68", "dist_single_68", "dist_track_51",
                                                                   "dist_single_51", "dist_single_fixed_id_68")}}
    det = torch.as_tensor(track.landmarks[ok], dtype=torch.float32)
    conf = torch.as_tensor(track.landmark_confidence[ok], dtype=torch.float32)
    pp = torch.as_tensor(np.asarray(track.principal_point, np.float32))[None].expand(len(ok), 2)
    fit = fit_landmarks(model, det, tuple(track.image_size), conf, focal=float(track.focal), principal_point=pp)
    single = fit.landmarks_2d.detach().numpy()
    ident = torch.as_tensor(np.asarray(track.identity, np.float32))[None].expand(len(ok), -1)
    fixed = fit_landmarks(model, det, tuple(track.image_size), conf, focal=float(track.focal), principal_point=pp,
                          fixed_identity=ident).landmarks_2d.detach().numpy()
    tracked = track.landmarks_2d[ok]
    d = lambda a, sl: float(np.linalg.norm(a[:, sl] - det.numpy()[:, sl], axis=-1).mean())  # noqa: E731
    return {"dist_frames": len(ok), "dist_track_68": d(tracked, slice(0, 68)), "dist_single_68": d(single, slice(0, 68)),
            "dist_track_51": d(tracked, slice(17, 68)), "dist_single_51": d(single, slice(17, 68)),
            "dist_single_fixed_id_68": d(fixed, slice(0, 68))}


# ------------------------------------------------------------------------------------------------------ part 3
def make_long_video(src: Path, minutes: float, path: Path) -> int:
    """Loop ``src`` (forwards then backwards, so there is no jump) into ``minutes`` of video; returns frames."""
    frames = [f.image for f in VideoReader(src)]
    cycle = frames + frames[-2:0:-1]
    reader = VideoReader(src)
    n = int(round(minutes * 60 * reader.fps))
    with VideoWriter(path, reader.fps, preset="ultrafast", crf=26) as w:
        for i in range(n):
            w.write(cycle[i % len(cycle)])
    del frames, cycle
    return n


def bench_memory(minutes, solver, overlay, model, out_root, src_name):
    path = out_root / f"long_{src_name}_{minutes:g}min.mp4"
    t0 = time.perf_counter()
    if not path.exists():
        make_long_video(shared_video(src_name), minutes, path)
    t_make = time.perf_counter() - t0
    n = VideoReader(path).frame_count
    samples = []
    series = []  # (seconds, RSS) every 0.5 s over all passes
    stop = threading.Event()

    def sampler():
        t_s = time.perf_counter()
        while not stop.wait(0.5):
            series.append((time.perf_counter() - t_s, rss_mb()))

    def probe(i, res):
        if i % 50 == 0:
            samples.append((i, rss_mb()))

    before = rss_mb()
    out = out_root / "track_long"
    shutil.rmtree(out, ignore_errors=True)
    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    t0 = time.perf_counter()
    try:
        res = track_video(path, out, model, TrackConfig(), overlay=overlay, progress=False,
                          tracker_factory=stub_factory if solver == "stub" else None, callback=probe)
    finally:
        stop.set()
        th.join()
    wall = time.perf_counter() - t0
    after = rss_mb()
    tt = res.summary["timings_s"]
    t_main_end = tt.get("keyframes", 0) + tt.get("bundle", 0) + tt.get("track_wall", 0)
    ser = np.array(series) if series else np.zeros((0, 2))
    pre = ser[ser[:, 0] <= tt.get("keyframes", 0) + tt.get("bundle", 0), 1]
    main_ = ser[(ser[:, 0] > tt.get("keyframes", 0) + tt.get("bundle", 0)) & (ser[:, 0] <= t_main_end), 1]
    post = ser[ser[:, 0] > t_main_end, 1]
    idx = np.array([s[0] for s in samples])
    mem = np.array([s[1] for s in samples])
    k = max(1, len(mem) // 10)
    slope = float(np.polyfit(idx / 1000.0, mem, 1)[0]) if len(mem) > 2 else float("nan")
    row = {"minutes": minutes, "frames": n, "solver": solver, "overlay": overlay, "make_video_s": t_make,
           "wall_s": wall, "fps": res.fps, "rss_before_mb": before, "rss_first_tenth_mb": float(mem[:k].mean()),
           "rss_last_tenth_mb": float(mem[-k:].mean()), "rss_max_sampled_mb": float(mem.max()),
           "rss_slope_mb_per_1000_frames": slope, "peak_rss_mb": peak_rss_mb(), "rss_after_mb": after,
           "params_mb": (out / "params.npz").stat().st_size / 2 ** 20,
           "rss_max_keyframes_bundle_mb": float(pre.max()) if len(pre) else float("nan"),
           "rss_max_main_pass_mb": float(main_.max()) if len(main_) else float("nan"),
           "rss_max_outputs_overlay_mb": float(post.max()) if len(post) else float("nan"),
           "timings_s": res.summary["timings_s"]}
    print(f"\n3. Memory on a {minutes:g}-minute input ({n} frames, {src_name} looped; {solver} solver, overlay "
          f"{'on' if overlay else 'off'}; RSS in MB)")
    for k2 in ("rss_before_mb", "rss_max_keyframes_bundle_mb", "rss_first_tenth_mb", "rss_last_tenth_mb",
               "rss_max_sampled_mb", "rss_slope_mb_per_1000_frames", "rss_max_main_pass_mb",
               "rss_max_outputs_overlay_mb", "peak_rss_mb", "rss_after_mb", "params_mb", "fps", "wall_s"):
        print(f"  {k2:<32}{row[k2]:>10.2f}")
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frames", type=int, default=150, help="frames per clip in parts 1 and 2")
    ap.add_argument("--clips", default="talking_d3,talking_d10,expressions_d6")
    ap.add_argument("--solver", choices=["real", "stub"], default="real")
    ap.add_argument("--no-overlay", action="store_true")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: landmarks,tracking")
    ap.add_argument("--long-minutes", type=float, default=0.0, help="part 3: length of the looped input")
    ap.add_argument("--long-solver", choices=["real", "stub"], default="stub")
    ap.add_argument("--long-overlay", action="store_true")
    ap.add_argument("--long-source", default="talking_d3")
    ap.add_argument("--workdir", default=None, help="where videos and outputs go (default: a temporary folder)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--baseline", choices=sorted(BASELINES), default=None,
                    help="part 2: also track each clip with these earlier settings, in the same run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clips = [c for c in args.clips.split(",") if c]
    skip = set(args.skip.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    from morphable_models import load_ict

    model = load_ict()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_tracking_"))
    work.mkdir(parents=True, exist_ok=True)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if "landmarks" not in skip:
        out["landmarks"] = bench_landmarks(clips, args.frames, legacy=args.baseline == "legacy")
    if "tracking" not in skip:
        out["tracking"] = bench_tracking(clips, args.frames, args.solver, not args.no_overlay, model, work,
                                         args.baseline)
    if args.long_minutes > 0:
        out["memory"] = bench_memory(args.long_minutes, args.long_solver, args.long_overlay, model, work,
                                     args.long_source)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=float)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
