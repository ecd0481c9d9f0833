"""Quality figures of a track: landmark jitter (RMS second temporal difference), photometric PSNR statistics."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

__all__ = ["landmark_jitter", "psnr_summary"]


def _second_difference_sq(s: np.ndarray) -> Tuple[float, int]:
    """Sum of the squared lengths of ``p[t+1] - 2 p[t] + p[t-1]`` over a run ``(T, L, 2)`` and the number of terms."""
    s = np.asarray(s, dtype=np.float64)
    if s.shape[0] < 3:
        return 0.0, 0
    d2 = s[2:] - 2 * s[1:-1] + s[:-2]
    return float((d2 ** 2).sum(-1).sum()), int(d2.shape[0] * d2.shape[1])


def landmark_jitter(sequences: Sequence[np.ndarray]) -> Tuple[float, int]:
    """RMS of the second temporal difference ``p[t+1] - 2 p[t] + p[t-1]`` (pixels, over points and coordinates
    together, i.e. the RMS length of the 2-D vector) over runs of consecutive frames ``(T, L, 2)``; returns
    ``(rms, number of terms)`` (one term per point and triple of frames)."""
    total, n = 0.0, 0
    for s in sequences:
        t, k = _second_difference_sq(s)
        total += t
        n += k
    return (math.sqrt(total / n) if n else float("nan")), n


#: Point series of the jitter report: summary key -> per-frame key of the chunks / params.npz.
_JITTER_SERIES = (("detector", "landmarks"), ("smoothed", "landmarks_smoothed"), ("model", "model_landmarks_2d"),
                  ("model_sliding", "landmarks_2d"))


class _JitterAccumulator:
    """Streaming :func:`landmark_jitter` of the point series of ``_JITTER_SERIES`` (the detected points, the smoothed
    points given to the solver, the model's fixed-vertex and sliding landmarks) over runs of consecutive frames where
    the face was found and the solver ran (no bridge, no loss or re-detection, no replaced values); plus the mean
    distance of the model's and the smoothed points from the detected ones over the same frames."""

    def __init__(self):
        self.acc = {name: [0.0, 0] for name, _ in _JITTER_SERIES}
        self.dist = {name: 0.0 for name in ("model", "model_inner", "model_sliding", "smoothed")}
        self.n_dist = 0
        self.iod: List[float] = []
        self.prev: List[Dict[str, np.ndarray]] = []

    def add(self, frame: Dict[str, np.ndarray], ok: bool) -> None:
        """``frame``: the per-frame arrays of one frame (keys of ``_JITTER_SERIES``); ``ok``: the frame counts."""
        pts = {name: np.asarray(frame[key], np.float64) for name, key in _JITTER_SERIES}
        if not ok or not all(np.isfinite(v).all() for v in pts.values()):
            self.prev = []
            return
        det = pts["detector"]
        d = lambda name, sl=slice(None): float(np.linalg.norm(pts[name][sl] - det[sl], axis=-1).mean())  # noqa
        self.dist["model"] += d("model")
        self.dist["model_inner"] += d("model", slice(17, None))
        self.dist["model_sliding"] += d("model_sliding")
        self.dist["smoothed"] += d("smoothed")
        self.n_dist += 1
        self.prev = (self.prev + [pts])[-3:]
        if len(self.prev) == 3:
            for name, acc in self.acc.items():
                t, k = _second_difference_sq(np.stack([p[name] for p in self.prev]))
                acc[0] += t
                acc[1] += k
            self.iod.append(float(np.linalg.norm(det[45] - det[36])))

    def result(self) -> Tuple[Dict[str, float], Dict[str, float]]:
        """``(jitter, distance)``: RMS second difference per series (px, ``_iod`` relative to the median eye-corner
        distance, ``_ratio`` relative to the detector's) and mean distances to the detected points (px)."""
        nan = float("nan")
        iod = float(np.median(self.iod)) if self.iod else nan
        rms = {name: math.sqrt(t / k) if k else nan for name, (t, k) in self.acc.items()}
        det = rms["detector"]
        jitter: Dict[str, float] = {}
        for name, v in rms.items():
            jitter[f"{name}_px"] = v
            jitter[f"{name}_iod"] = v / iod if iod > 0 else nan
            if name != "detector":
                jitter[f"{name}_ratio"] = v / det if det > 0 else nan
        jitter["ratio"] = jitter["model_ratio"]
        jitter["triples"] = len(self.iod)
        distance = {f"{k}_px": v / self.n_dist if self.n_dist else nan for k, v in self.dist.items()}
        distance["frames"] = self.n_dist
        return jitter, distance



def psnr_summary(psnr: np.ndarray, index: np.ndarray, keyframes) -> Dict[str, Any]:
    """Mean photometric PSNR (dB, ``FrameResult.psnr``) of the solved frames, split into the keyframes (whose pixels
    estimated the albedo) and the other frames (held out from the albedo): ``{"keyframes": dB, "other": dB,
    "keyframes_n": n, "other_n": n, "other_p10": dB}`` (None where no frame has a value). ``psnr (N,)`` and
    ``index (N,)`` per stored frame."""
    psnr = np.asarray(psnr, np.float64)
    key = np.isin(np.asarray(index), np.asarray(keyframes, dtype=np.int64))
    fin = np.isfinite(psnr)
    a, b = psnr[fin & key], psnr[fin & ~key]
    f = lambda v: float(v.mean()) if v.size else None  # noqa: E731
    return {"keyframes": f(a), "other": f(b), "keyframes_n": int(a.size), "other_n": int(b.size),
            "other_p10": float(np.percentile(b, 10)) if b.size else None}
