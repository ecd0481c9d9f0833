"""Sensitivity of the video-based seam flicker (facerender.metrics.temporal) to its two settings.

Runs the seam measurement of ``facerender evaluate`` with several (threshold, fraction) settings on one output
video and its target, and prints the ratio of each beside the figure the method reported itself (e.g. Face2Face's
``summary.json`` seam ratio, from its own blend mask).

Usage:
  python benchmarks/seam_sensitivity.py --result out/face2face/result.mp4 --target TGT.mp4 [--summary out/face2face/summary.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--result", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--summary", default=None, help="a summary.json with seam_stability.ratio to compare with")
    ap.add_argument("--thresholds", default="1.5,2,3")
    ap.add_argument("--fractions", default="0.65,0.75,0.85")
    ap.add_argument("--max-frames", type=int, default=None)
    args = ap.parse_args(argv)

    import numpy as np

    from facerender.io.video import VideoReader
    from facerender.metrics.temporal import SeamConfig, SeamMeter
    from facerender.metrics.video import _choose_order, _count_frames, _Frames, _landmarks, match_frames

    t0 = time.perf_counter()
    rr, rt = VideoReader(args.result), VideoReader(args.target)
    n = _count_frames(rr)
    n = min(n, args.max_frames) if args.max_frames else n
    nt = _count_frames(rt)
    order, sentence = _choose_order("target", n, rr.fps, nt, rt.fps, "auto", args.result, args.target)
    ti = match_frames(n, rr.fps, nt, rt.fps, order)
    print(sentence)
    ths = [float(x) for x in args.thresholds.split(",")]
    frs = [float(x) for x in args.fractions.split(",")]
    meters = {(t, f): SeamMeter(SeamConfig(threshold=t, fraction=f)) for t in ths for f in frs}
    lms = {}
    frames = _Frames(rt, ti)
    for fr in rr:
        if fr.index >= n:
            break
        lm = _landmarks(fr.image)
        lms[fr.index] = lm
        tf = frames.get(int(ti[fr.index]))
        for m in meters.values():
            m.add_edit(fr.image, tf, lm)
    prev = None
    for fr in rr:
        if fr.index >= n:
            break
        tf = frames.get(int(ti[fr.index]))
        if prev is not None:
            for m in meters.values():
                m.add_flicker(fr.image, prev[0], tf, prev[1], lms[fr.index])
        prev = (fr.image, tf)
    own = None
    if args.summary:
        own = json.loads(Path(args.summary).read_text()).get("seam_stability", {}).get("ratio")
    print(f"\n{n} frames, {time.perf_counter() - t0:.0f} s; the method's own figure: {own}")
    print("| threshold (grey levels) \\ fraction | " + " | ".join(f"{f:g}" for f in frs) + " |")
    print("|---|" + "---|" * len(frs))
    for t in ths:
        cells = []
        for f in frs:
            r = meters[(t, f)].result()
            cells.append("-" if r.ratio is None else f"{r.ratio:.3f} (area {r.region_area:.2f})")
        print(f"| {t:g} | " + " | ".join(cells) + " |")
    del np


if __name__ == "__main__":
    main()
