"""Deep Video Portraits benchmarks: self-reenactment quality against a nearest-frame baseline, cross-reenactment
judged by dlib alone, and training / inference speed next to Face2Face's per-frame time (same run).

  # 1. train (the CPU budget: 128^2, generator widths 32..256; the run folder is the input of 2 and 3)
  facerender train dvp --target ../shared/data/video/talking_d10.mp4 -o runs/dvp_d10 --size 128 \\
      --base-channels 32 --max-channels 256 --disc-channels 32 --steps 3000 --threads 1
  # 2. self-reenactment on the held-out last 15 % of talking_d10
  python benchmarks/bench_dvp.py self --run runs/dvp_d10 [--json out.json] [--grid out.png]
  # 3. cross-reenactment expressions_d6 -> talking_d10
  python benchmarks/bench_dvp.py cross --run runs/dvp_d10 --source ../shared/data/video/expressions_d6.mp4 -o out/dvp
  # 4. speed: training it/s and inference fps at 128^2 and 256^2, Face2Face's per-frame time in the same run
  python benchmarks/bench_dvp.py speed --target-track TRACK_DIR --source-track TRACK_DIR [--threads 2]

``self`` prints PSNR / SSIM of the network's crops against the real crops of the held-out frames, and dlib's
inner-lip opening correlation between the output composited into the real frames and the real frames; in the same
table the baseline "nearest training frame by conditioning" (the training frame whose colour render is nearest in
L2 to the held-out frame's; its real crop is the prediction). ``cross`` judges the output with
``facerender.metrics.evaluate`` (as ``facerender evaluate`` does for any method): lip-opening correlation with the
source, dlib descriptor distance to the target and to the source, seam flicker, faceless frames.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch


def dlib_lips(frames) -> np.ndarray:
    """dlib's inner-lip opening per frame (:func:`facerender.metrics.lip_opening`; NaN without a face)."""
    from facerender.errors import NoFaceError
    from facerender.landmarks.detect import detect_landmarks
    from facerender.metrics import lip_opening

    pts = []
    for img in frames:
        try:
            pts.append(np.asarray(detect_landmarks(img).points, np.float64))
        except NoFaceError:
            pts.append(np.full((68, 2), np.nan))
    return lip_opening(np.stack(pts))


def image_scores(pred: List[np.ndarray], real: List[np.ndarray]):
    """Mean PSNR and SSIM (:mod:`facerender.metrics`) of uint8 crops."""
    from facerender.metrics import psnr, ssim

    a = torch.from_numpy(np.stack(pred)).float() / 255
    b = torch.from_numpy(np.stack([np.array(r) for r in real])).float() / 255
    return float(psnr(a, b).mean()), float(ssim(a, b).mean())


# ------------------------------------------------------------------------------------------------ self-reenactment
def bench_self(run: Path, grid: Optional[Path] = None) -> Dict[str, object]:
    from facerender.io.video import VideoReader
    from facerender.reenact.common import paste_crop, square_feather
    from neural_renderers.data import ConditioningCache, WindowDataset
    from neural_renderers.dvp import load_dvp

    method, saved = load_dvp(run)
    c = method.config
    data = saved["data"]
    cache = ConditioningCache.open(data["cache"])
    val = WindowDataset(cache, c.window, "val", data["val_fraction"])
    train = WindowDataset(cache, c.window, "train", data["val_fraction"])
    # baseline: nearest training frame by the colour render (L2), its real crop as the prediction
    tr_render = np.stack([cache.read("cond", int(t))[..., :3].astype(np.float32) for t in train.frames])
    t0 = time.perf_counter()
    outs, nns, reals = [], [], []
    with torch.no_grad():
        for k in range(len(val)):
            s = val[k]
            outs.append((method.render(s["condition"][None])[0].numpy() * 255 + 0.5).astype(np.uint8))
            t = int(s["frame"])
            q = cache.read("cond", t)[..., :3].astype(np.float32)
            j = int(np.argmin(((tr_render - q[None]) ** 2).reshape(len(tr_render), -1).sum(1)))
            nns.append(cache.read("real", int(train.frames[j])))
            reals.append(cache.read("real", t))
    net_s = time.perf_counter() - t0
    frames = {fr.index: fr.image for fr in VideoReader(data["video"]) if fr.index in set(int(t) for t in val.frames)}
    boxes = cache.boxes
    alpha = square_feather(c.size, 0.12 * c.size)

    def composite(crops):
        return [paste_crop(frames[int(t)], cr.astype(np.float32) / 255, boxes.centre[int(t)],
                           float(boxes.side[int(t)]), alpha)[0] for t, cr in zip(val.frames, crops)]

    from facerender.metrics import pearson

    lip_real = dlib_lips([frames[int(t)] for t in val.frames])
    res = {"run": str(run), "checkpoint_step": saved["checkpoint_step"], "val_frames": len(val),
           "train_frames": len(train), "size": c.size, "network_ms_per_frame": 1e3 * net_s / max(len(val), 1)}
    for key, pred in (("dvp", outs), ("nearest_frame", nns)):
        lips = dlib_lips(composite(pred))
        p, q = image_scores(pred, reals)
        res[key] = {"psnr": p, "ssim": q, "lip_r": pearson(lips, lip_real), "no_face": int(np.isnan(lips).sum())}
    summary = json.loads((run / "train_summary.json").read_text()) if (run / "train_summary.json").is_file() else {}
    res["training"] = {k: summary.get(k) for k in ("steps", "train_seconds_total", "steps_per_s", "batch_size")}
    if grid is not None:
        from facerender.io.image import write_image

        pick = np.linspace(0, len(val) - 1, 4).astype(int)
        rows = [np.concatenate([val[int(k)]["condition"][..., -9:-6].numpy().__mul__(255).astype(np.uint8),
                                outs[k], nns[k], reals[k]], 1) for k in pick]
        write_image(grid, np.concatenate(rows, 0))
        res["grid"] = str(grid)
    return res


# ------------------------------------------------------------------------------------------------ cross-reenactment
def bench_cross(run: Path, source: Path, out: Path, max_frames: Optional[int] = None) -> Dict[str, object]:
    """Reenact the run's target with ``source`` and judge the output with ``facerender.metrics.evaluate``."""
    from facerender.metrics import evaluate
    from neural_renderers.dvp import DVPReenactConfig, dvp_reenact

    t0 = time.perf_counter()
    r = dvp_reenact(run, source, None, out, DVPReenactConfig(max_frames=max_frames), progress=True)
    wall = time.perf_counter() - t0
    ev = evaluate(r.summary["source"], r.summary["target"], r.result_path)
    return {"frames": r.frames, "lip_r_with_source": ev.lip_correlation,
            "descriptor_to_target": ev.identity_distance_target, "descriptor_to_source": ev.identity_distance_source,
            "seam_ratio": r.summary["seam_stability"]["ratio"], "seam_ratio_evaluate": ev.seam_ratio,
            "frames_without_face": len(ev.faceless_result), "pose_error_source": ev.pose_error_source,
            "per_frame_ms": r.summary["per_frame_ms"], "reenactment_fps": r.summary["reenactment_fps"],
            "peak_memory_mb": r.summary["peak_memory_mb"], "wall_s": wall, "out": str(out),
            "evaluation": ev.table()}


# ------------------------------------------------------------------------------------------------ speed
def bench_speed(target_track: Path, source_track: Path, threads: int, steps: int = 5, frames: int = 24
                ) -> List[Dict[str, object]]:
    """Training it/s (batch 4) and inference fps for the CPU config and the paper's at 128^2 and 256^2, and
    Face2Face's per-frame reenactment time, all in this process."""
    import tempfile

    from facerender.reenact.face2face import Face2FaceConfig, face2face
    from neural_renderers.dvp import DeepVideoPortraits, DVPConfig
    from neural_renderers.training.method import Nets
    from neural_renderers.training.trainer import peak_memory_mb

    torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        cfg = Face2FaceConfig(max_frames=frames, side_by_side=False, stills=())
        r = face2face(source_track, target_track, Path(d) / "f2f", config=cfg, progress=False)
        per = r.summary["per_frame_ms"]
        rows.append({"what": "Face2Face reenactment (256^2 crop)", "per_frame_ms": sum(per.values()),
                     "detail": per})
    for size, base, mx, label in [(128, 32, 256, "CPU config"), (128, 64, 512, "paper widths"),
                                  (256, 64, 512, "paper widths")]:
        m = DeepVideoPortraits(DVPConfig(size=size, base_channels=base, max_channels=mx,
                                         disc_channels=32 if mx == 256 else 64))
        nets = Nets(m.networks())
        opt = torch.optim.Adam(m.parameters(), 2e-4, betas=(0.5, 0.999))
        b = {"condition": torch.rand(4, size, size, 99), "image": torch.rand(4, size, size, 3)}
        ts = []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            out = m.forward_train(nets, b)
            m.phase_loss("discriminator", nets, b, out)["total"].backward(retain_graph=True)
            m.phase_loss("generator", nets, b, out)["total"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            ts.append(time.perf_counter() - t0)
        m.eval()
        x = torch.rand(1, size, size, 99)
        with torch.no_grad():
            m.render(x)
            t0 = time.perf_counter()
            for _ in range(3):
                m.render(x)
            inf = (time.perf_counter() - t0) / 3
        rows.append({"what": f"DVP {label} {size}^2", "train_it_s_batch4": 1 / float(np.median(ts[1:])),
                     "network_ms_per_frame": 1e3 * inf, "generator_params_M":
                     sum(p.numel() for p in m.generator.parameters()) / 1e6})
    rows.append({"what": "peak RSS of this process (MB)", "value": peak_memory_mb(torch.device("cpu"))})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("self")
    a.add_argument("--run", required=True, type=Path)
    a.add_argument("--grid", type=Path, default=None)
    a.add_argument("--json", type=Path, default=None)
    b = sub.add_parser("cross")
    b.add_argument("--run", required=True, type=Path)
    b.add_argument("--source", required=True, type=Path)
    b.add_argument("-o", "--output", required=True, type=Path)
    b.add_argument("--max-frames", type=int, default=None)
    b.add_argument("--json", type=Path, default=None)
    c = sub.add_parser("speed")
    c.add_argument("--target-track", required=True, type=Path)
    c.add_argument("--source-track", required=True, type=Path)
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.cmd == "self":
        res = bench_self(args.run, args.grid)
        tr = res["training"]
        print(f"self-reenactment, talking_d10 held-out last 15 % ({res['val_frames']} frames), {res['size']}^2, "
              f"checkpoint step {res['checkpoint_step']} ({tr.get('train_seconds_total') or 0:.0f} s of training)")
        print("| method | PSNR dB | SSIM | dlib inner-lip r (vs real) | frames without a face |")
        print("|---|---|---|---|---|")
        for k, name in (("dvp", "Deep Video Portraits"), ("nearest_frame", "nearest training frame (baseline)")):
            v = res[k]
            print(f"| {name} | {v['psnr']:.2f} | {v['ssim']:.3f} | {v['lip_r']:.3f} | {v['no_face']} |")
        print(f"PSNR gain over the baseline: {res['dvp']['psnr'] - res['nearest_frame']['psnr']:+.2f} dB "
              f"(target >= +1.5); lip r target >= 0.8")
    elif args.cmd == "cross":
        res = bench_cross(args.run, args.source, args.output, args.max_frames)
        print("| check | value | target |")
        print("|---|---|---|")
        print(f"| inner-lip opening correlation with the source | {res['lip_r_with_source']:.3f} | >= 0.8 |")
        print(f"| descriptor distance to the target / to the source | {res['descriptor_to_target']:.3f} / "
              f"{res['descriptor_to_source']:.3f} | < 0.45 and smaller |")
        print(f"| seam flicker, output / target (blend band; from the videos) | {res['seam_ratio']:.3f}; "
              f"{res['seam_ratio_evaluate']:.3f} | <= 1.2 |")
        print(f"| output frames without a face | {res['frames_without_face']} | 0 |")
        print(f"per frame: {json.dumps({k: round(v, 1) for k, v in res['per_frame_ms'].items()})}; "
              f"{res['reenactment_fps']:.1f} fps; peak memory {res['peak_memory_mb']:.0f} MB")
    else:
        res = bench_speed(args.target_track, args.source_track, args.threads)
        print(f"speed, CPU, {args.threads} threads, batch 4 for training, batch 1 for inference")
        print("| what | training it/s | network ms/frame | Face2Face ms/frame |")
        print("|---|---|---|---|")
        for r in res:
            if "train_it_s_batch4" in r:
                print(f"| {r['what']} ({r['generator_params_M']:.1f} M) | {r['train_it_s_batch4']:.2f} | "
                      f"{r['network_ms_per_frame']:.0f} | |")
            elif "per_frame_ms" in r:
                print(f"| {r['what']} | | | {r['per_frame_ms']:.0f} |")
            else:
                print(f"| {r['what']} | {r['value']:.0f} | | |")
    if getattr(args, "json", None):
        args.json.write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
