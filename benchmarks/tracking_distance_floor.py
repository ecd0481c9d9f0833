"""How close to the raw detections can a tracker with a FIXED identity and smoothed landmarks get? (docs/tracking.md)

For tracks written by ``facerender track`` (or the README's main job), on every ``--every``-th solved frame, the mean
distance (px, 68 points) from the raw detected landmarks of:

* ``tracked``: the track's fitted landmarks;
* ``single free``: an independent single-image landmark fit per frame (shipped priors, identity free per frame);
* ``single, track id``: the same with the track's bundled identity held fixed;
* ``single, best fixed id``: the same with the landmark-optimal fixed identity: alternating per-frame fits and a joint
  Gauss-Newton step on one identity over all the frames (the lowest distance any fixed identity reaches with this
  energy, up to the alternation's local optimum);
* ``free id, smoothed pts``: single-image fits (identity free) of the Savitzky-Golay-smoothed points the tracker
  solves against, measured to the RAW detections: what the smoothing alone costs.

Usage: python benchmarks/tracking_distance_floor.py TRACK_DIR [TRACK_DIR ...] [--every 5] [--rounds 6]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from facerender.fitting.landmark_fit import LandmarkFitConfig, fit_landmarks
from facerender.fitting.landmark_np import LandmarkEnergyNp, rodrigues_np
from facerender.fitting.params import Block, ParameterLayout
from facerender.tracking.video import load_track
from morphable_models import load_ict


def best_fixed_identity(model, det, conf, pp, size, focal, start, rounds=6, cfg=None):
    """Alternate per-frame fits (identity fixed) and one joint Gauss-Newton identity step over all frames (pose,
    expression and the contour held); returns the identity with the lowest mean distance and that distance."""
    cfg = cfg or LandmarkFitConfig()
    n = det.shape[0]
    T, C, PP = det.double().numpy(), conf.double().numpy(), pp.double().numpy()
    dp = cfg.w_identity / model.identity_std.double().numpy() ** 2
    lay = ParameterLayout([Block("identity", model.num_identity)])
    a = start.double().numpy().copy()
    best = (np.inf, a)
    for _ in range(rounds):
        res = fit_landmarks(model, det, size, conf, focal=focal, principal_point=pp,
                            fixed_identity=torch.as_tensor(a, dtype=det.dtype)[None].expand(n, -1))
        d = float(np.linalg.norm(res.landmarks_2d.double().numpy() - T, axis=-1).mean())
        if d < best[0]:
            best = (d, a.copy())
        for _ in range(2):
            Hs, gs = np.zeros((a.size, a.size)), np.zeros(a.size)
            for k in range(n):
                term = LandmarkEnergyNp(model, T[k], C[k], cfg.w_landmark, cfg.sliding_contour, cfg.huber, {})
                rot, t = res.rotation[k].double().numpy(), res.translation[k].double().numpy()
                ex = res.expression[k].double().numpy()
                term.freeze(rodrigues_np(rot)[0], t, np.concatenate([a, ex]), focal, PP[k])
                H, g, _ = term.normal_equations(a.copy(), lay, {"rotation": rot, "translation": t, "expression": ex,
                                                                "focal": np.array([focal])}, PP[k])
                Hs += H
                gs += g
            Hs[np.diag_indices(a.size)] += dp + 1e-6 * np.diagonal(Hs)
            a = a - np.linalg.solve(Hs, gs + dp * a)
    return best[1], best[0]


def floor_row(model, path, every, rounds):
    tr = load_track(path)
    ok = [i for i in range(len(tr.index)) if tr.face_found[i]
          and not {"bridged", "reinitialised", "nan_replaced"} & set(str(tr.flags[i]).split(","))][::every]
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
               seconds=time.perf_counter() - t0)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tracks", nargs="+")
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
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


if __name__ == "__main__":
    main()
