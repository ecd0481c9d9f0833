"""How close to the raw detections can a tracker with a FIXED identity and smoothed landmarks get? (docs/tracking.md)

For tracks written by ``facerender track`` (or the README's main job), on every ``--every``-th solved frame, the mean
distance (px, 68 points) from the raw detected landmarks of:

* ``tracked``: the track's fitted landmarks;
* ``single free``: an independent single-image landmark fit per frame (shipped priors, identity free per frame);
* ``single, track id``: the same with the track's bundled identity held fixed;
* ``single, best fixed id``: the same with the landmark-optimal fixed identity: alternating per-frame fits and a joint
  Gauss-Newton step on one identity over all the frames (the lowest distance any fixed identity reaches with this
  energy, up to the alternation's local optimum);
* ``free id, smoothed pts``: single-image fits (identity free) of the smoothed points the tracker solves against,
  measured to the RAW detections: what the smoothing alone costs.

With ``--sweep``, a family of fixed-identity trackers on every frame of the longest run of consecutive solved
frames: per-frame landmark fits with the best fixed identity on the detections smoothed by Savitzky-Golay windows of
1 (none) to 15 frames (order 1 for 3 frames, 2 above; and the raw points blended with the 3-frame mean) and by
Whittaker-Henderson smoothers of weight 0.1 to 1 (whole-run solves); for each,
the jitter of the model's fixed iBUG-68 vertices relative to the detector's (RMS second temporal difference, as the
tracker reports it) and the mean distance from the raw detections. The issue asks
for both a jitter ratio <= 0.5 and a distance within the single-image fit's.

With ``--checks`` too: two more families on the unsmoothed fits, a robust (iteratively reweighted, L1-like) Whittaker
smoother and Whittaker smoothing plus an oracle per-point offset (each landmark's mean offset from the detections over
the run, i.e. the best per-video correction of the landmark correspondences).

With ``--frontier``: the restated steadiness figure of each track (docs/tracking.md): over its longest run of
solved frames, the tracker's distance to the raw detections against the fixed-identity frontier (the Whittaker family
above with the best fixed identity, interpolated at the tracker's own jitter ratio), and its distance to the smoothed
detections it solved against next to the single-image fit's distance to the raw ones.

Usage: python benchmarks/tracking_distance_floor.py TRACK_DIR [TRACK_DIR ...] [--every 5] [--rounds 6] [--sweep]
       [--checks] [--frontier]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from facerender.fitting.landmark_fit import fit_landmarks
from facerender.fitting.landmark_np import LandmarkEnergyNp, rodrigues_np
from facerender.tracking.tracker import landmark_identity
from facerender.tracking.video import landmark_jitter, load_track
from morphable_models import load_ict


def best_fixed_identity(model, det, conf, pp, size, focal, start, rounds=6, cfg=None):
    """The landmark-optimal fixed identity of the frames (:func:`facerender.tracking.tracker.landmark_identity`:
    alternating per-frame fits and joint Gauss-Newton identity steps) and its mean distance."""
    return landmark_identity(model, det.double().numpy(), conf.double().numpy(), size, focal,
                             pp[0].double().numpy(), start.double().numpy(), rounds, cfg)


def solved_mask(tr) -> np.ndarray:
    """Frames of a track with a face and no break flag (``BREAK_FLAGS``): ``(N,)`` bool."""
    from facerender.tracking.video import BREAK_FLAGS

    return np.array([bool(tr.face_found[i]) and not BREAK_FLAGS & set(str(tr.flags[i]).split(","))
                     for i in range(len(tr.index))])


def floor_row(model, path, every, rounds):
    tr = load_track(path)
    ok = np.flatnonzero(solved_mask(tr))[::every]
    det = torch.as_tensor(tr.landmarks[ok], dtype=torch.float32)
    smooth = torch.as_tensor(tr.landmarks_smoothed[ok], dtype=torch.float32)
    conf = torch.as_tensor(tr.landmark_confidence[ok], dtype=torch.float32)
    n = len(ok)
    pp = torch.as_tensor(np.asarray(tr.principal_point, np.float32))[None].expand(n, 2)
    size, f = tuple(int(v) for v in tr.image_size), float(tr.focal)

    def dist(uv):
        return float(np.linalg.norm(np.asarray(uv)[:, :68] - det.numpy(), axis=-1).mean())

    ident = torch.as_tensor(np.asarray(tr.identity, np.float32))
    t0 = time.perf_counter()
    row = {"track": str(path), "frames": n, "tracked": dist(tr.landmarks_2d[ok]),
           "single_free": dist(fit_landmarks(model, det, size, conf, focal=f, principal_point=pp).landmarks_2d),
           "single_track_id": dist(fit_landmarks(model, det, size, conf, focal=f, principal_point=pp,
                                                 fixed_identity=ident[None].expand(n, -1)).landmarks_2d),
           "free_id_smoothed": dist(fit_landmarks(model, smooth, size, conf, focal=f,
                                                  principal_point=pp).landmarks_2d)}
    a, d = best_fixed_identity(model, det, conf, pp, size, f, ident, rounds)
    row.update(single_best_id=d, best_id_norm=float(np.linalg.norm(a)), track_id_norm=float(ident.norm()),
               seconds=time.perf_counter() - t0, best_identity=a)
    return row


def second_difference(n):
    """The sparse ``(n - 2, n)`` second-difference operator ``D2``."""
    import scipy.sparse as sp

    return sp.diags([np.ones(n - 2), -2 * np.ones(n - 2), np.ones(n - 2)], [0, 1, 2], shape=(n - 2, n))


def whittaker_series(y, lam):
    """Whittaker-Henderson smoothing of a whole series ``(T, ...)``: the minimiser of ``|x - y|^2 + lam |D2 x|^2``."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    n = y.shape[0]
    d = second_difference(n)
    return splu(sp.csc_matrix(sp.eye(n) + lam * (d.T @ d))).solve(y.reshape(n, -1)).reshape(y.shape)


def sweep(model, path, identity, windows=("1", "3x0.25", "3x0.5", "3x0.75", "3", "5", "7", "9", "11", "15",
                                          "wh0.1", "wh0.2", "wh0.3", "wh0.5", "wh1"), checks=False, max_len=None):
    """Per-frame fixed-identity landmark fits on smoothed detections: [(window, jitter ratio, distance)]. A window
    ``"3xm"`` blends the raw points with the 3-frame mean by the fraction m (the filter ``[m/3, 1 - 2m/3, m/3]``): the
    lightest smoothings between none and the 3-frame mean; ``"whL"`` is Whittaker-Henderson smoothing with weight L
    over the whole run (the optimum of the squared-distance / squared-jitter trade-off for a linear filter). With
    ``checks``, two more families on the unsmoothed fits: a robust (L1-like) Whittaker smoother and Whittaker plus an
    oracle per-point offset (each point's mean offset from the detections over the run)."""
    from scipy.signal import savgol_filter

    tr = load_track(path)
    sel = longest_run(tr, max_len)  # the longest run of consecutive solved frames
    raw = np.asarray(tr.landmarks[sel], np.float64)
    conf = torch.as_tensor(tr.landmark_confidence[sel], dtype=torch.float32)
    n = raw.shape[0]
    pp = np.asarray(tr.principal_point, np.float64)
    size, f = tuple(int(v) for v in tr.image_size), float(tr.focal)
    det_jit = landmark_jitter([raw])[0]
    fixed_rows = LandmarkEnergyNp(model, raw[0], np.ones(68), 1.0, False, None, {})
    def fit(pts):
        """Per-frame fits of ``pts``: the fitted landmarks (sliding jaw) and the fixed iBUG-68 vertices."""
        res = fit_landmarks(model, torch.as_tensor(pts, dtype=torch.float32), size, conf, focal=f,
                            principal_point=torch.as_tensor(pp, dtype=torch.float32)[None].expand(n, 2),
                            fixed_identity=torch.as_tensor(identity, dtype=torch.float32)[None].expand(n, -1))
        fixed_uv = np.stack([fixed_rows.project(rodrigues_np(res.rotation[k].double().numpy())[0],
                                                res.translation[k].double().numpy(),
                                                np.concatenate([identity, res.expression[k].double().numpy()]), f, pp)
                             for k in range(n)])
        return res.landmarks_2d.double().numpy(), fixed_uv

    def row(name, fitted, fixed_uv):
        return name, landmark_jitter([fixed_uv])[0] / det_jit, float(np.linalg.norm(fitted - raw, axis=-1).mean())

    out = []
    for name in windows:
        if name.startswith("wh"):
            pts = whittaker_series(raw, float(name[2:]))
        else:
            w, _, m = name.partition("x")
            w, m = int(w), float(m or 1.0)
            pts = raw if w == 1 else savgol_filter(raw, w, 2 if w >= 5 else 1, axis=0)
            pts = (1 - m) * raw + m * pts
        out.append(row(name, *fit(pts)))
    if checks:
        fitted, fixed_uv = fit(raw)
        # a robust smoother: jitter is an RMS (dominated by a few large jumps), distance a mean
        for lam in (0.05, 0.1, 0.2):
            out.append(row(f"robust wh{lam}", *robust_whittaker([fitted, fixed_uv], fitted, lam)))
        # an oracle per-video correction of the landmark correspondences: each point's mean offset from the
        # detections over the run, added to the smoothed fits (jitter unchanged)
        for lam in (0.1, 0.2, 0.3):
            sm, sm_fixed = whittaker_series(fitted, lam), whittaker_series(fixed_uv, lam)
            out.append(row(f"wh{lam} + mean offsets", sm + (raw - sm).mean(0), sm_fixed))
    return n, out


FRONTIER_WEIGHTS = ("wh0.02", "wh0.05", "wh0.1", "wh0.2", "wh0.3", "wh0.5", "wh0.7", "wh1", "wh1.5", "wh2", "wh3",
                    "wh5")


def longest_run(tr, max_len=None):
    """The longest run of consecutive solved frames of a track (a slice; its first ``max_len`` frames)."""
    good = solved_mask(tr)
    edges = np.flatnonzero(np.diff(np.r_[0, good.astype(np.int8), 0]))
    starts, ends = edges[::2], edges[1::2]
    k = int(np.argmax(ends - starts))
    stop = int(ends[k]) if max_len is None else min(int(ends[k]), int(starts[k]) + int(max_len))
    return slice(int(starts[k]), stop)


def frontier_row(model, path, identity, every=1, max_len=None):
    """The restated steadiness figure of a track (docs/tracking.md): over its longest run of solved frames, the
    tracker's jitter ratio and its distance to the raw detections against the fixed-identity frontier at that
    jitter (per-frame fits with ``identity`` on Whittaker-smoothed detections, the weights of
    :data:`FRONTIER_WEIGHTS`, interpolated linearly in the jitter ratio), and its distance to the smoothed
    detections it was given against the single-image fit's distance to the raw ones (identity free, every
    ``every``-th frame of the run)."""
    tr = load_track(path)
    sel = longest_run(tr, max_len)
    raw = np.asarray(tr.landmarks[sel], np.float64)
    det_jit = landmark_jitter([raw])[0]
    ratio = landmark_jitter([np.asarray(tr.model_landmarks_2d[sel], np.float64)])[0] / det_jit
    fitted = np.asarray(tr.landmarks_2d[sel], np.float64)
    dist = float(np.linalg.norm(fitted - raw, axis=-1).mean())
    dist_smooth = float(np.linalg.norm(fitted - np.asarray(tr.landmarks_smoothed[sel], np.float64), axis=-1).mean())
    idx = np.arange(sel.start, sel.stop)[::every]
    n = len(idx)
    det = torch.as_tensor(tr.landmarks[idx], dtype=torch.float32)
    pp = torch.as_tensor(np.asarray(tr.principal_point, np.float32))[None].expand(n, 2)
    single = fit_landmarks(model, det, tuple(int(v) for v in tr.image_size),
                           torch.as_tensor(tr.landmark_confidence[idx], dtype=torch.float32), focal=float(tr.focal),
                           principal_point=pp).landmarks_2d.double().numpy()
    single_d = float(np.linalg.norm(single - det.double().numpy(), axis=-1).mean())
    _, rows = sweep(model, path, identity, windows=FRONTIER_WEIGHTS, max_len=max_len)
    pts = sorted((j, d) for _, j, d in rows)
    js, ds = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    front = float(np.interp(ratio, js, ds))
    return {"track": str(path), "frames": sel.stop - sel.start, "ratio": ratio, "dist_raw": dist, "frontier": front,
            "gap": dist - front, "dist_smoothed": dist_smooth, "single": single_d, "frontier_points": pts,
            "extrapolated": bool(ratio < js.min() or ratio > js.max())}


def robust_whittaker(series, anchor, lam, eps=0.05, iterations=30):
    """Whittaker smoothing of each of ``series`` (arrays ``(T, P, 2)``) with an L1-like fidelity per point: iteratively
    reweighted by ``1 / max(|x_t - anchor_t|, eps)`` (the weights from the smoothed ``anchor``, the first series)."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    n, P = anchor.shape[:2]
    d = second_difference(n)
    dd = lam * (d.T @ d)
    out = [x.copy() for x in series]
    for _ in range(iterations):
        for p in range(P):
            w = 1.0 / np.maximum(np.linalg.norm(out[0][:, p] - anchor[:, p], axis=-1), eps)
            lu = splu(sp.csc_matrix(sp.diags(w) + dd))
            for x, src in zip(out, series):
                x[:, p] = lu.solve(w[:, None] * src[:, p])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tracks", nargs="+")
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--checks", action="store_true", help="with --sweep: the robust smoother and the offset oracle")
    ap.add_argument("--max-run", type=int, default=None, help="--sweep / --frontier: at most this many frames of "
                    "the longest run of solved frames")
    ap.add_argument("--frontier", action="store_true",
                    help="the restated steadiness figure: the tracker against the fixed-identity frontier at its "
                         "jitter, and its distance to the smoothed detections against the single-image fit's")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_ict()
    rows = [floor_row(model, p, args.every, args.rounds) for p in args.tracks]
    print("| track | frames | tracked | single free | single, track id | single, best fixed id | free id, smoothed pts "
          "| identity norm (track / best) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['track']} | {r['frames']} | {r['tracked']:.2f} | {r['single_free']:.2f} | "
              f"{r['single_track_id']:.2f} | {r['single_best_id']:.2f} | {r['free_id_smoothed']:.2f} | "
              f"{r['track_id_norm']:.1f} / {r['best_id_norm']:.1f} |")
    if args.frontier:
        print("\nThe steadiness figure (longest run of solved frames): the tracker's distance to the raw detections "
              "against the fixed-identity frontier at the tracker's jitter (target: gap <= 0.15 px), and its distance "
              "to the smoothed detections against the single-image fit's to the raw ones (target: <=)")
        print("| track | frames | jitter ratio | tracked, raw | frontier | gap | tracked, smoothed "
              "| single-image, raw |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            f = frontier_row(model, r["track"], r["best_identity"], max_len=args.max_run)
            print(f"| {f['track']} | {f['frames']} | {f['ratio']:.2f} | {f['dist_raw']:.2f} | {f['frontier']:.2f}"
                  f"{' (extrapolated)' if f['extrapolated'] else ''} | {f['gap']:+.2f} | {f['dist_smoothed']:.2f} | "
                  f"{f['single']:.2f} |")
            print("  frontier (ratio / px): " + ", ".join(f"{j:.2f} / {d:.2f}" for j, d in f["frontier_points"]))
    if args.sweep:
        print("\nFixed-identity trackers (best fixed identity, per-frame landmark fits of smoothed detections: "
              "Savitzky-Golay windows, 3-frame blends, Whittaker weights): jitter ratio / distance to the raw "
              "detections (px)")
        for r in rows:
            n, res = sweep(model, r["track"], r["best_identity"], checks=args.checks, max_len=args.max_run)
            print(f"{r['track']} ({n} frames; single-image fit {r['single_free']:.2f} px): "
                  + ", ".join(f"{'w' + w if w[0].isdigit() else w}: {j:.2f} / {d:.2f}" for w, j, d in res))


if __name__ == "__main__":
    main()
