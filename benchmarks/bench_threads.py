"""Threads: 1 vs 2 torch threads for the main stages, on the machine as it is and under a parallel load (two more
CPU-bound processes), in one run; and the README's main job with the default threads next to the previous default.

    python benchmarks/bench_threads.py stages [--rounds 1] [--frames 24] [--json out.json]
    python benchmarks/bench_threads.py main [--threads 1,2] [--loads idle,busy] [--max-frames N] [--json out.json]

``stages``: each figure comes from a fresh process (``--worker``) that sets its thread count, loads the model and
times one stage (setup not timed):

* render: ``render_face`` of the full ICT head at 256^2 (forward, the default light), median of 10;
* tracking: ``track_video`` on the first ``--frames`` frames of talking_d3.mp4 (keyframes, bundling, per-frame
  solve; no overlay), frames per second of the whole call;
* face2face: ``face2face`` on tracks made once beforehand (expressions_d6 -> talking_d3, ``--frames`` frames, no
  side-by-side), the per-frame reenactment time (decode, transfer, render, composite, encode);
* dvp step: one Deep Video Portraits training step at the CPU config (128^2, base 32, max 256, discriminator 32,
  batch 4), median of 3 after one warm-up.

"busy" starts two ``while True: pass`` processes for the duration of its measurements (and stops them).
``main`` runs ``facerender reenact --source expressions_d6.mp4 --target talking_d3.mp4`` (the README's main job)
with ``--threads`` each value, on the machine as it is and busy, and reports the wall time of each.
The machine is shared: "idle" means "without the two extra processes", not an idle machine; the load average is
printed with each figure, and the ratios within a run are what to read.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("render", "tracking", "face2face", "dvp_step")


def data_dir() -> Path:
    from morphable_models.paths import shared_data_dir

    d = shared_data_dir()
    if d is None:
        raise SystemExit("sample data missing: set FACERENDER_DATA or place 'shared' beside the repository")
    return d


# ------------------------------------------------------------------------------------------------ workers
def worker(stage: str, threads: int, work: Path, frames: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from morphable_models import load_ict

    model = load_ict()
    video = data_dir() / "data" / "video"
    if stage == "render":
        from facerender.render.conditioning import region_albedo
        from facerender.render.renderer import frame_face, render_face

        cam, R, t = frame_face(model, 256)
        v = model(expression=model.rig.weights({"jawOpen": 0.5})).vertices
        alb = region_albedo(model)
        ts = []
        with torch.no_grad():
            for _ in range(11):
                t0 = time.perf_counter()
                render_face(v, model.faces, cam, R, t, albedo=alb)
                ts.append(time.perf_counter() - t0)
        return {"value": statistics.median(ts[1:]), "unit": "s per render"}
    if stage == "tracking":
        from facerender.tracking.video import track_video

        with tempfile.TemporaryDirectory(dir=work) as d:
            t0 = time.perf_counter()
            res = track_video(video / "talking_d3.mp4", Path(d) / "t", model, max_frames=frames, overlay=False,
                              resume=False, progress=False)
            wall = time.perf_counter() - t0
        return {"value": res.frames / wall, "unit": "frames/s", "wall_s": wall}
    if stage == "face2face":
        from facerender.reenact.face2face import Face2FaceConfig, face2face

        with tempfile.TemporaryDirectory(dir=work) as d:
            cfg = Face2FaceConfig(max_frames=frames, side_by_side=False, stills=())
            r = face2face(work / "src_track", work / "tgt_track", Path(d) / "f2f", model, cfg, progress=False)
        per = r.summary["per_frame_ms"]
        return {"value": sum(per.values()) / 1e3, "unit": "s per frame", "detail_ms": per}
    if stage == "dvp_step":
        from neural_renderers.dvp import DeepVideoPortraits, DVPConfig
        from neural_renderers.training.method import Nets

        torch.manual_seed(0)
        m = DeepVideoPortraits(DVPConfig(size=128, base_channels=32, max_channels=256, disc_channels=32))
        nets = Nets(m.networks())
        opt = torch.optim.Adam(m.parameters(), 2e-4, betas=(0.5, 0.999))
        b = {"condition": torch.rand(4, 128, 128, 99), "image": torch.rand(4, 128, 128, 3)}
        ts = []
        for _ in range(4):
            t0 = time.perf_counter()
            out = m.forward_train(nets, b)
            m.phase_loss("discriminator", nets, b, out)["total"].backward(retain_graph=True)
            m.phase_loss("generator", nets, b, out)["total"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            ts.append(time.perf_counter() - t0)
        return {"value": statistics.median(ts[1:]), "unit": "s per step"}
    raise SystemExit(f"unknown stage {stage!r}")


def run_worker(stage: str, threads: int, work: Path, frames: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    r = subprocess.run([sys.executable, __file__, "--worker", stage, "--threads", str(threads), "--work", str(work),
                        "--frames", str(frames)], capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"worker {stage} threads={threads} failed:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["load"] = os.getloadavg()[0]
    return out


@contextlib.contextmanager
def load(kind: str, n: int = 2):
    """``busy``: ``n`` CPU-bound processes for the duration of the block."""
    procs = []
    if kind == "busy":
        procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
        time.sleep(2)
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


def prepare_tracks(work: Path, frames: int) -> None:
    """The Face2Face stage's inputs, tracked once with one thread (not timed)."""
    code = ("import sys, torch; torch.set_num_threads(1)\n"
            "from pathlib import Path\nfrom morphable_models import load_ict\n"
            "from facerender.tracking.video import track_video\n"
            "m = load_ict(); v = Path(sys.argv[1]); w = Path(sys.argv[2]); n = int(sys.argv[3])\n"
            "track_video(v / 'expressions_d6.mp4', w / 'src_track', m, max_frames=n, overlay=False, progress=False)\n"
            "track_video(v / 'talking_d3.mp4', w / 'tgt_track', m, max_frames=n, overlay=False, progress=False)\n")
    subprocess.run([sys.executable, "-c", code, str(data_dir() / "data" / "video"), str(work), str(frames)],
                   check=True, cwd=ROOT)


def cmd_stages(args) -> int:
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} cores; load average at the start "
          f"{os.getloadavg()[0]:.1f} (other jobs share the machine: 'idle' = without the two extra processes)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_threads_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        prepare_tracks(work, args.frames)
        print(f"tracks for the Face2Face stage prepared in {time.perf_counter() - t0:.0f} s")
        stages = [s for s in args.stages.split(",") if s]
        for kind in ("idle", "busy"):
            with load(kind):
                for rnd in range(args.rounds):
                    for stage in stages:
                        order = (1, 2) if rnd % 2 == 0 else (2, 1)
                        for th in order:
                            r = run_worker(stage, th, work, args.frames)
                            r.update(stage=stage, threads=th, load_kind=kind, round=rnd)
                            rows.append(r)
                            print(f"  {kind:4s} {stage:9s} {th} thread(s): {r['value']:.3f} {r['unit']} "
                                  f"(load {r['load']:.1f})", flush=True)
    print()
    print("| stage | unit | idle, 1 thread | idle, 2 threads | 2 / 1 | busy, 1 thread | busy, 2 threads | 2 / 1 |")
    print("|---|---|---|---|---|---|---|---|")
    summary = []
    for stage in dict.fromkeys(r["stage"] for r in rows):
        cells, unit = [], ""
        vals = {}
        for kind in ("idle", "busy"):
            for th in (1, 2):
                v = [r["value"] for r in rows if r["stage"] == stage and r["load_kind"] == kind and r["threads"] == th]
                unit = next(r["unit"] for r in rows if r["stage"] == stage)
                vals[(kind, th)] = statistics.median(v)
        higher_better = unit == "frames/s"
        for kind in ("idle", "busy"):
            a, b = vals[(kind, 1)], vals[(kind, 2)]
            speed = (b / a) if higher_better else (a / b)  # > 1: 2 threads faster
            cells += [f"{a:.3f}", f"{b:.3f}", f"{speed:.2f}x"]
        print(f"| {stage} | {unit} | " + " | ".join(cells) + " |")
        summary.append(dict(stage=stage, unit=unit, **{f"{k}_{t}": v for (k, t), v in vals.items()}))
    print("(2 / 1: the speed with 2 threads relative to 1; above 1 means 2 threads are faster)")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(rows=rows, summary=summary), indent=1))
    return 0


def cmd_main(args) -> int:
    video = data_dir() / "data" / "video"
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    print(f"{os.cpu_count()} cores; load average at the start {os.getloadavg()[0]:.1f} (other jobs share the machine)")
    with tempfile.TemporaryDirectory(prefix="bench_main_") as tmp:
        for kind in args.loads.split(","):
            with load(kind):
                for th in threads:
                    out = Path(tmp) / f"{kind}_{th}"
                    cmd = [sys.executable, "-m", "facerender.cli", "--threads", str(th), "reenact", "--source",
                           str(video / "expressions_d6.mp4"), "--target", str(video / "talking_d3.mp4"), "-o",
                           str(out)]
                    if args.max_frames:
                        cmd += ["--max-frames", str(args.max_frames)]
                    l0 = os.getloadavg()[0]
                    t0 = time.perf_counter()
                    stopped = False
                    try:
                        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=args.timeout)
                        if r.returncode != 0:
                            raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
                        out_text = r.stdout[-1500:]
                    except subprocess.TimeoutExpired:
                        stopped, out_text = True, ""
                    wall = time.perf_counter() - t0
                    rows.append(dict(load_kind=kind, threads=th, wall_s=wall, stopped=stopped, load_start=l0,
                                     load_end=os.getloadavg()[0], stdout=out_text))
                    print(f"  {kind:4s} --threads {th}: {'>' if stopped else ''}{wall:.0f} s"
                          f"{' (stopped at the time limit)' if stopped else ''} (load {l0:.1f} -> "
                          f"{os.getloadavg()[0]:.1f})", flush=True)
    print()
    print("| machine | " + " | ".join(f"--threads {t} (s)" for t in threads) + " | ratio |")
    print("|---|" + "---|" * len(threads) + "---|")
    for kind in args.loads.split(","):
        rr = [next(r for r in rows if r["load_kind"] == kind and r["threads"] == t) for t in threads]
        w = [r["wall_s"] for r in rr]
        gt = ">" if any(r["stopped"] for r in rr) else ""
        print(f"| {kind} | " + " | ".join(f"{'>' if r['stopped'] else ''}{r['wall_s']:.0f}" for r in rr)
              + f" | {gt}{w[-1] / w[0]:.2f} |")
    print(f"(ratio: the last column's time over the first's; '>' where a run was stopped at --timeout "
          f"{args.timeout} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def main(argv=None) -> int:
    if argv is None and "--worker" in sys.argv:
        ap = argparse.ArgumentParser()
        ap.add_argument("--worker")
        ap.add_argument("--threads", type=int)
        ap.add_argument("--work", type=Path)
        ap.add_argument("--frames", type=int)
        a = ap.parse_args()
        print(json.dumps(worker(a.worker, a.threads, a.work, a.frames)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stages")
    s.add_argument("--rounds", type=int, default=1)
    s.add_argument("--frames", type=int, default=24)
    s.add_argument("--stages", default=",".join(STAGES))
    s.add_argument("--json", default=None)
    m = sub.add_parser("main")
    m.add_argument("--threads", default="1,2", help="thread counts, the new default first")
    m.add_argument("--loads", default="idle,busy")
    m.add_argument("--max-frames", type=int, default=None)
    m.add_argument("--timeout", type=float, default=None, help="stop a run after this many seconds")
    m.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    return cmd_stages(args) if args.cmd == "stages" else cmd_main(args)


if __name__ == "__main__":
    sys.exit(main())
