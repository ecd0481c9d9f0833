"""dlib's face-recognition ResNet in torch (facerender.identity) against dlib itself: agreement and speed.

Agreement: every face of the shared photos and ``--frames`` frames of every shared video (dlib landmarks);
per face the L2 distance between the torch descriptor and dlib's ``compute_face_descriptor``
  (a) on dlib's own chip (``dlib.get_face_chip``: the network alone),
  (b) for the whole pipeline: our chips (``face_chips(quantize=True)``) + the network, against
      ``compute_face_descriptor(image, shape)``;
and whether every same/different decision at 0.6 over all pairs agrees.

Speed: descriptors per second on chips, torch batched (``--batch``) against dlib's one-at-a-time API
(``compute_face_descriptor(chip)``), in the same run and with the same number of threads; on CUDA too when
available (``--device cuda``).

Usage:
  python benchmarks/bench_identity.py [--frames 5] [--threads 2] [--batch 32] [--rounds 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np


def collect_faces(data: Path, frames_per_video: int):
    """[(name, image uint8, dlib integer landmark points (68, 2))] for every detected face."""
    import dlib

    from facerender.io import read_image
    from facerender.io.video import VideoReader
    from facerender.landmarks import detect_faces
    from facerender.landmarks.detect import DlibDetector

    det = DlibDetector()
    items = []
    for p in sorted((data / "data" / "faces").iterdir()):
        if p.suffix.lower() in (".png", ".jpg", ".ppm"):
            items.append((p.name, read_image(p)))
    for v in sorted((data / "data" / "video").glob("*.mp4")):
        r = VideoReader(v)
        want = set(np.linspace(0, max(r.frame_count - 1, 0), frames_per_video).round().astype(int).tolist())
        for f in itertools.islice(r, max(want) + 1):
            if f.index in want:
                items.append((f"{v.name}#{f.index}", f.image))
    faces = []
    for name, img in items:
        img = np.ascontiguousarray(img)
        for k, face in enumerate(detect_faces(img)):
            lm = det.landmarks_in_box(img, face.box)
            faces.append((f"{name}/{k}", img, np.floor(lm.points).astype(np.int64)))
    del dlib
    return faces


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=5, help="frames per shared video")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="speed rounds (best kept)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import dlib
    import torch

    from facerender.identity import DlibFaceNet, default_model_path, face_chips
    from morphable_models.paths import shared_data_dir

    torch.set_num_threads(args.threads)
    data = shared_data_dir()
    if data is None:
        raise SystemExit("the shared data folder is missing (FACERENDER_DATA)")
    t0 = time.perf_counter()
    faces = collect_faces(data, args.frames)
    print(f"{len(faces)} faces from the shared photos and {args.frames} frames of each shared video "
          f"({time.perf_counter() - t0:.1f} s)")
    rec = dlib.face_recognition_model_v1(str(default_model_path()))
    net = DlibFaceNet.from_dlib()

    def shape(pts):
        return dlib.full_object_detection(dlib.rectangle(0, 0, 1, 1), [dlib.point(int(x), int(y)) for x, y in pts])

    chips, d_chip, d_full, ours_full, names = [], [], [], [], []
    for name, img, pts in faces:
        s = shape(pts)
        chip = dlib.get_face_chip(img, s, 150, 0.25)
        chips.append(chip)
        d_chip.append(np.array(rec.compute_face_descriptor(chip)))
        d_full.append(np.array(rec.compute_face_descriptor(img, s, 0, 0.25)))
        x = torch.from_numpy(img).float()[None] / 255
        with torch.no_grad():
            c = face_chips(x, torch.from_numpy(pts + 0.5)[None], quantize=True, min_eye_distance=0.0)
            ours_full.append(net(c)[0].double().numpy())
        names.append(name)
    X = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        ours_chip = torch.cat([net(X[i:i + args.batch]) for i in range(0, len(X), args.batch)]).double().numpy()
    d_chip, d_full, ours_full = np.stack(d_chip), np.stack(d_full), np.stack(ours_full)
    e_chip = np.linalg.norm(ours_chip - d_chip, axis=1)
    e_full = np.linalg.norm(ours_full - d_full, axis=1)
    iu = np.triu_indices(len(faces), 1)
    D_t = np.linalg.norm(ours_chip[:, None] - ours_chip[None], axis=-1)[iu]
    D_d = np.linalg.norm(d_chip[:, None] - d_chip[None], axis=-1)[iu]
    D_tf = np.linalg.norm(ours_full[:, None] - ours_full[None], axis=-1)[iu]
    D_df = np.linalg.norm(d_full[:, None] - d_full[None], axis=-1)[iu]
    agree = int(((D_t < 0.6) == (D_d < 0.6)).sum())
    agree_full = int(((D_tf < 0.6) == (D_df < 0.6)).sum())
    same = int((D_d < 0.6).sum())
    worst = names[int(np.argmax(e_chip))]
    worst_full = names[int(np.argmax(e_full))]
    print()
    print("| agreement with dlib | faces | mean L2 | worst L2 (face) | same/different decisions at 0.6 agreeing |")
    print("|---|---|---|---|---|")
    print(f"| network on dlib's chips | {len(faces)} | {e_chip.mean():.2e} | {e_chip.max():.2e} ({worst}) | "
          f"{agree} / {len(D_d)} ({same} same-person pairs) |")
    print(f"| our chips (quantize=True) + network vs compute_face_descriptor(image, shape) | {len(faces)} | "
          f"{e_full.mean():.2e} | {e_full.max():.2e} ({worst_full}) | {agree_full} / {len(D_df)} |")

    # ---- speed
    n = max(args.batch * 2, 64)
    reps = (n + len(chips) - 1) // len(chips)
    chip_list = (chips * reps)[:n]
    Xn = torch.from_numpy(np.stack(chip_list)).permute(0, 3, 1, 2).float() / 255
    dev = torch.device(args.device)
    net_d = DlibFaceNet.from_dlib(device=dev)
    rows = []

    def timed(fn):
        best = float("inf")
        for _ in range(args.rounds):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        return best

    with torch.no_grad():
        net_d(Xn[:args.batch].to(dev))  # warm-up
        t_dlib = timed(lambda: [rec.compute_face_descriptor(c) for c in chip_list])
        t_torch = timed(lambda: [net_d(Xn[i:i + args.batch].to(dev)) for i in range(0, n, args.batch)])
        t_torch1 = timed(lambda: [net_d(Xn[i:i + 1].to(dev)) for i in range(0, min(n, 16))]) * n / min(n, 16)
        if dev.type == "cpu":
            net_bf = DlibFaceNet.from_dlib(dtype=torch.bfloat16)
            net_bf(Xn[:args.batch])
            t_bf = timed(lambda: [net_bf(Xn[i:i + args.batch]) for i in range(0, n, args.batch)])
        else:
            t_bf = None
    rows.append(("dlib compute_face_descriptor(chip), one at a time (CPU)", n / t_dlib, 1.0))
    rows.append((f"torch, batch 1 ({dev.type})", n / t_torch1, t_dlib / t_torch1))
    rows.append((f"torch, batch {args.batch} ({dev.type}, float32)", n / t_torch, t_dlib / t_torch))
    if t_bf is not None:
        rows.append((f"torch, batch {args.batch} (cpu, bfloat16)", n / t_bf, t_dlib / t_bf))
    print()
    print(f"speed: {n} chips, {args.threads} threads, best of {args.rounds} rounds, same run")
    print("| method | descriptors / s | vs dlib |")
    print("|---|---|---|")
    for name, rate, ratio in rows:
        print(f"| {name} | {rate:.1f} | {ratio:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "faces": len(faces), "l2_network_mean": float(e_chip.mean()), "l2_network_worst": float(e_chip.max()),
            "worst_face": worst, "l2_pipeline_mean": float(e_full.mean()), "l2_pipeline_worst": float(e_full.max()),
            "decisions_agree": agree, "decisions_agree_pipeline": agree_full, "pairs": int(len(D_d)),
            "speed": [{"method": a, "per_second": b, "vs_dlib": c} for a, b, c in rows],
            "threads": args.threads, "batch": args.batch, "device": args.device}, indent=1))


if __name__ == "__main__":
    main()
