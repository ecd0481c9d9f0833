"""Checks of a Face2Face reenactment on real video: a thin wrapper over ``facerender evaluate``
(:func:`facerender.metrics.evaluate`), with Face2Face's pass marks.

1. Expression transferred: dlib's inner-lip opening (|p62 - p66| / |p36 - p45|) on the output frames correlates with
   the same on the time-matched source frames (target: r >= 0.8).
2. Identity kept: the mean face-descriptor distance (dlib's ResNet, run in torch by facerender.identity) between
   every 10th output frame and every 15th target frame is below 0.6 and smaller than to the source's frames.
3. Stable: seam flicker measured from the videos (the band around the face-anchored region where the output differs
   from the target; output / target frame-to-frame difference there; target <= 1.2); no output frame without a
   face. Face2Face's own figure from its blend mask (summary.json) is printed beside it.

Usage:
  python benchmarks/check_face2face.py --source SRC.mp4 --target TGT.mp4 -o DIR [--max-frames N]   # runs face2face
  python benchmarks/check_face2face.py --result DIR                                                # checks only
The figures equal ``facerender evaluate --source SRC --target TGT --result DIR/result.mp4`` (which prints more).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional


def check(result_dir, max_frames: Optional[int] = None, expression: bool = False) -> dict:
    """The Face2Face checks on a reenactment folder (``result.mp4`` + ``summary.json``), via ``evaluate``."""
    from facerender.metrics import EvaluateConfig, evaluate

    d = Path(result_dir)
    summary = json.loads((d / "summary.json").read_text())
    ev = evaluate(summary["source"], summary["target"], d / "result.mp4",
                  config=EvaluateConfig(max_frames=max_frames, expression=expression))
    r = ev.lip_correlation if ev.lip_correlation is not None else float("nan")
    d_tgt, d_src = ev.identity_distance_target, ev.identity_distance_source
    seam = ev.seam_ratio
    res = {
        "frames_checked": ev.frames,
        "lip_opening_correlation": r,
        "identity_distance_to_target": d_tgt,
        "identity_distance_to_source": d_src,
        "seam_ratio": seam,
        "seam_ratio_face2face_summary": summary.get("seam_stability", {}).get("ratio"),
        "output_frames_without_face": ev.faceless_result,
        "seconds": ev.seconds,
        "evaluation": ev.to_dict(),
    }
    res["pass"] = {
        "expression (r >= 0.8)": bool(r >= 0.8),
        "identity (< 0.6 and closer to the target)": bool(d_tgt is not None and d_src is not None and d_tgt < 0.6
                                                          and d_tgt < d_src),
        "stable (seam ratio <= 1.2)": bool(seam is not None and seam <= 1.2),
        "no frame without the face": not ev.faceless_result,
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
    p = res["pass"]
    sr, sf = res["seam_ratio"], res["seam_ratio_face2face_summary"]
    print("| check | value | target | pass |")
    print("|---|---|---|---|")
    print(f"| inner-lip opening correlation (output vs source) | {res['lip_opening_correlation']:.3f} | >= 0.8 | "
          f"{p['expression (r >= 0.8)']} |")
    print(f"| descriptor distance to the target / to the source | {res['identity_distance_to_target']:.3f} / "
          f"{res['identity_distance_to_source']:.3f} | < 0.6 and smaller | "
          f"{p['identity (< 0.6 and closer to the target)']} |")
    print(f"| seam band frame-to-frame difference, output / target (from the videos; Face2Face's blend mask: "
          f"{'-' if sf is None else round(sf, 3)}) | {'-' if sr is None else round(sr, 3)} | <= 1.2 | "
          f"{p['stable (seam ratio <= 1.2)']} |")
    print(f"| output frames without a face | {len(res['output_frames_without_face'])} | 0 | "
          f"{p['no frame without the face']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
