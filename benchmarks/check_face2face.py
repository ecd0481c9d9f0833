"""Checks of a Face2Face reenactment on real video, measured independently of our tracker (dlib).

1. Expression transferred: dlib's inner-lip opening (distance between iBUG points 62 and 66 over the outer-eye-corner
   distance) on the output frames correlates with the same on the source frames (target: r >= 0.8).
2. Identity kept: the dlib face-descriptor distance between output frames and the target's own frames is below 0.6
   and smaller than the distance to the source actor.
3. Stable: the mean absolute frame-to-frame difference in an 8-px band around the blend border, output vs the target
   video itself over the same band (from summary.json; target <= 1.2x); no output frame without a face.

Usage:
  python benchmarks/check_face2face.py --source SRC.mp4 --target TGT.mp4 -o DIR [--max-frames N]   # runs face2face
  python benchmarks/check_face2face.py --result DIR                                                # checks only
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np


def lip_opening(landmarks: np.ndarray) -> float:
    """Inner-lip opening ``|p62 - p66| / |p36 - p45|`` (iBUG 68, 0-based)."""
    return float(np.linalg.norm(landmarks[62] - landmarks[66]) / np.linalg.norm(landmarks[36] - landmarks[45]))


def measure_video(path, indices: Optional[np.ndarray] = None, descriptors_every: int = 10) -> Dict[str, list]:
    """dlib landmarks (lip opening) for every frame (or ``indices``) and face descriptors every few frames."""
    from facerender.errors import NoFaceError
    from facerender.io.video import VideoReader
    from facerender.landmarks.detect import detect_landmarks, face_descriptor

    want = None if indices is None else set(int(i) for i in indices)
    out = {"index": [], "lip": [], "descriptor": [], "no_face": []}
    for fr in VideoReader(path):
        if want is not None and fr.index not in want:
            continue
        if want is not None and fr.index > max(want):
            break
        try:
            lm = detect_landmarks(fr.image)
        except NoFaceError:
            out["no_face"].append(fr.index)
            out["index"].append(fr.index)
            out["lip"].append(np.nan)
            continue
        out["index"].append(fr.index)
        out["lip"].append(lip_opening(np.asarray(lm.points)))
        if len(out["index"]) % descriptors_every == 1:
            out["descriptor"].append(np.asarray(face_descriptor(fr.image, lm)))
    return out


def check(result_dir, max_frames: Optional[int] = None) -> dict:
    from facerender.landmarks.detect import descriptor_distance

    d = Path(result_dir)
    summary = json.loads((d / "summary.json").read_text())
    src_video, tgt_video = summary["source"], summary["target"]
    n = summary["frames"]
    if max_frames:
        n = min(n, max_frames)
    t = time.perf_counter()
    out = measure_video(d / "result.mp4", np.arange(n))
    # the source frames shown in each output frame (time-matched; identical indices when following the source)
    src = measure_video(src_video, np.arange(n))
    tgt = measure_video(tgt_video, None, descriptors_every=15)
    a, b = np.asarray(out["lip"]), np.asarray(src["lip"][: len(out["lip"])])
    ok = np.isfinite(a) & np.isfinite(b)
    r = float(np.corrcoef(a[ok], b[ok])[0, 1]) if ok.sum() > 2 else float("nan")
    D_out = np.stack(out["descriptor"])
    d_tgt = float(np.mean([descriptor_distance(x, y) for x in D_out for y in tgt["descriptor"]]))
    d_src = float(np.mean([descriptor_distance(x, y) for x in D_out for y in src["descriptor"]]))
    seam = summary.get("seam_stability", {})
    res = {
        "frames_checked": len(out["lip"]),
        "lip_opening_correlation": r,
        "identity_distance_to_target": d_tgt,
        "identity_distance_to_source": d_src,
        "seam_ratio": seam.get("ratio"),
        "output_frames_without_face": out["no_face"],
        "seconds": time.perf_counter() - t,
    }
    res["pass"] = {
        "expression (r >= 0.8)": bool(r >= 0.8),
        "identity (< 0.6 and closer to the target)": bool(d_tgt < 0.6 and d_tgt < d_src),
        "stable (seam ratio <= 1.2)": bool(seam.get("ratio") is not None and seam["ratio"] <= 1.2),
        "no frame without the face": not out["no_face"],
    }
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source")
    ap.add_argument("--target")
    ap.add_argument("-o", "--output", help="output folder of the reenactment")
    ap.add_argument("--result", help="an existing reenactment folder to check")
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    folder = args.result
    if folder is None:
        if not (args.source and args.target and args.output):
            ap.error("give --result DIR, or --source, --target and -o")
        from facerender.reenact.face2face import Face2FaceConfig, face2face

        r = face2face(args.source, args.target, args.output, config=Face2FaceConfig(max_frames=args.max_frames))
        print(json.dumps(r.summary.get("per_frame_ms"), indent=1))
        folder = args.output
    res = check(folder, args.max_frames)
    print("| check | value | target | pass |")
    print("|---|---|---|---|")
    print(f"| inner-lip opening correlation (output vs source) | {res['lip_opening_correlation']:.3f} | >= 0.8 | "
          f"{res['pass']['expression (r >= 0.8)']} |")
    print(f"| descriptor distance to the target / to the source | {res['identity_distance_to_target']:.3f} / "
          f"{res['identity_distance_to_source']:.3f} | < 0.6 and smaller | "
          f"{res['pass']['identity (< 0.6 and closer to the target)']} |")
    sr = res["seam_ratio"]
    print(f"| seam band frame-to-frame difference, output / target | {sr if sr is None else round(sr, 3)} | <= 1.2 | "
          f"{res['pass']['stable (seam ratio <= 1.2)']} |")
    print(f"| output frames without a face | {len(res['output_frames_without_face'])} | 0 | "
          f"{res['pass']['no frame without the face']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
