"""Quality figures of a track and the checks behind them: landmark jitter (RMS second temporal difference), photometric
PSNR statistics and the photometric outlier check (:class:`PsnrMonitor`), the audit against fresh detections
(:class:`FreshDetector`, :func:`audit_summary`), and the interpolation that bridges short gaps (:func:`find_gaps`,
:func:`interpolate_gap`)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["landmark_jitter", "psnr_summary", "FreshDetector", "audit_summary", "AUDIT_TOLERANCE", "PsnrMonitor",
           "interpolate_gap", "find_gaps", "BRIDGE_KEYS"]


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
    "keyframes_n": n, "other_n": n, "other_p10": dB, "p10": dB, "median": dB}`` (the last two over all solved
    frames; None where no frame has a value). ``psnr (N,)`` and
    ``index (N,)`` per stored frame."""
    psnr = np.asarray(psnr, np.float64)
    key = np.isin(np.asarray(index), np.asarray(keyframes, dtype=np.int64))
    fin = np.isfinite(psnr)
    a, b = psnr[fin & key], psnr[fin & ~key]
    f = lambda v: float(v.mean()) if v.size else None  # noqa: E731
    both = psnr[fin]
    return {"keyframes": f(a), "other": f(b), "keyframes_n": int(a.size), "other_n": int(b.size),
            "other_p10": float(np.percentile(b, 10)) if b.size else None,
            "p10": float(np.percentile(both, 10)) if both.size else None,
            "median": float(np.median(both)) if both.size else None}


# ---------------------------------------------------------------------------------------------------------- audit
#: Fraction of the eye distance within which a frame counts as on the face (the summary's "within 10 %").
AUDIT_TOLERANCE = 0.1


class FreshDetector:
    """A fresh HOG + dlib detection per call, independent of any tracking state: the audit of a track.

    The face is found by HOG on the whole frame (upsampled once or twice when nothing is found, up to
    ``max_upsampled_pixels``, as the landmark tracker does for small faces); the predictor runs in the HOG box and
    once more in the box its own points give (side 3.85 and centre 0.75 times the RMS radius of the upper-face
    points, :func:`~facerender.tracking.facebox.box_from_landmarks`): HOG's window falls in coarse steps, and dlib
    reads a strong expression differently in different boxes (expressions_d6 frame 530: 15 % of the eye distance
    between the two readings; in the median 1.2 %). With several faces, the one nearest ``near`` is taken.

    Args:
        config: a :class:`~facerender.tracking.facebox.LandmarkTrackerConfig` (threshold, upsampling, predictor).
    """

    def __init__(self, config=None):
        from .facebox import LandmarkTracker, LandmarkTrackerConfig

        self._lt = LandmarkTracker(config or LandmarkTrackerConfig())

    def __call__(self, image: np.ndarray, near: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
        """``(68, 2)`` points of the face in ``image (H, W, 3)`` uint8 nearest ``near (68, 2)`` (or the largest),
        or None when HOG finds no face."""
        lt = self._lt  # never updated: its box rule is the configured one, and every detection may upsample
        img = np.ascontiguousarray(image)
        faces, _ = lt._detect(img)
        if not faces:
            return None
        best, best_d = None, math.inf
        for face in (faces if near is not None else [max(faces, key=lambda f: f.area)]):
            pts, _ = lt._read(img, face.box)
            d = 0.0 if near is None else float(np.linalg.norm(np.asarray(near) - pts, axis=1).mean())
            if d < best_d or best is None:
                best, best_d = pts, d
        return best


def audit_summary(errors: np.ndarray, sampled: np.ndarray, points_errors: Optional[np.ndarray] = None,
                  tolerance: float = AUDIT_TOLERANCE) -> Dict[str, Any]:
    """The audit figures of a track from per-frame arrays ``(N,)``: ``errors`` (the model landmarks' mean distance
    from a fresh detection over its eye distance; NaN where no fresh detection was made or found), ``sampled``
    (bool: a fresh detection was tried), ``points_errors`` (the same for the tracked detector points; NaN where the
    tracker had none). Returns ``{"sampled", "detected", "within" (fraction of the detected within ``tolerance``),
    "points_within", "median", "p95", "max", "worst_frames"}`` (None where undefined)."""
    e = np.asarray(errors, np.float64)
    s = np.asarray(sampled, bool)
    det = s & np.isfinite(e)
    v = e[det]
    out: Dict[str, Any] = {"tolerance": tolerance, "sampled": int(s.sum()), "detected": int(det.sum()),
                           "within": float((v <= tolerance).mean()) if v.size else None,
                           "median": float(np.median(v)) if v.size else None,
                           "p95": float(np.percentile(v, 95)) if v.size else None,
                           "max": float(v.max()) if v.size else None,
                           "worst_frames": [int(i) for i in np.flatnonzero(det)[np.argsort(-v)[:5]]] if v.size else []}
    if points_errors is not None:
        p = np.asarray(points_errors, np.float64)[det]
        # frames with a fresh detection where the tracker had no points count as misses
        out["points_within"] = float(np.mean(np.where(np.isfinite(p), p <= tolerance, False))) if p.size else None
    return out


# ---------------------------------------------------------------------------------------------------------- photometric
class PsnrMonitor:
    """The photometric check: is a frame's PSNR (``FrameResult.psnr``) an outlier of the clip's own distribution?

    Keeps the PSNRs of the last ``window`` accepted frames; once it holds ``min_frames``, a frame is an outlier when
    its PSNR is below the median by more than ``max(k * 1.4826 * MAD, min_drop)`` dB. Outliers enter the window too
    (the median and the MAD ignore a few), so a lasting change of the clip's light or framing becomes its new normal
    within half a window instead of flagging every later frame (with outliers kept out, lp_d14's bright first 50 frames
    flagged the next 64). Streaming, with :meth:`state_dict` for resuming.
    """

    def __init__(self, window: int = 150, min_frames: int = 30, k: float = 4.0, min_drop: float = 3.0):
        if window < min_frames or min_frames < 3 or not k > 0 or not min_drop >= 0:
            raise ValueError(f"PsnrMonitor needs window >= min_frames >= 3, k > 0, min_drop >= 0; got {window}, "
                             f"{min_frames}, {k}, {min_drop}")
        self.window, self.min_frames, self.k, self.min_drop = int(window), int(min_frames), float(k), float(min_drop)
        self.values: List[float] = []

    def threshold(self) -> float:
        """The PSNR below which a frame is an outlier now (-inf until ``min_frames`` are held)."""
        if len(self.values) < self.min_frames:
            return -math.inf
        v = np.asarray(self.values)
        med = float(np.median(v))
        return med - max(self.k * 1.4826 * float(np.median(np.abs(v - med))), self.min_drop)

    def update(self, psnr: float, accept: bool = True) -> bool:
        """True when ``psnr`` is an outlier; a finite value enters the window when ``accept`` (False: frames whose
        solve started afresh)."""
        if not math.isfinite(psnr):
            return False
        out = psnr < self.threshold()
        if accept:
            self.values = (self.values + [float(psnr)])[-self.window:]
        return bool(out)

    def state_dict(self) -> Dict[str, Any]:
        return {"values": np.asarray(self.values, np.float64)}

    def load_state_dict(self, d: Dict[str, Any]) -> None:
        self.values = [float(v) for v in np.asarray(d.get("values", []), np.float64).reshape(-1)]


# ---------------------------------------------------------------------------------------------------------- bridging
#: Per-frame keys interpolated across a bridged gap (rotations by spherical interpolation).
BRIDGE_KEYS = ("rotation", "translation", "expression", "sh", "landmarks_2d", "model_landmarks_2d")


def interpolate_gap(before: Dict[str, np.ndarray], after: Dict[str, np.ndarray], n: int) -> Dict[str, np.ndarray]:
    """Values for the ``n`` frames between two solved frames: ``{key: (n, ...)}`` for the keys of both dicts,
    linear in time (frame ``i`` of the gap at ``(i + 1) / (n + 1)``), the ``rotation`` (axis-angle ``(3,)``) by
    spherical interpolation."""
    t = (np.arange(n, dtype=np.float64) + 1.0) / (n + 1.0)
    out = {}
    for key in before:
        if key not in after:
            continue
        a, b = np.asarray(before[key], np.float64), np.asarray(after[key], np.float64)
        if key == "rotation":
            from scipy.spatial.transform import Rotation, Slerp

            slerp = Slerp([0.0, 1.0], Rotation.from_rotvec(np.stack([a.reshape(3), b.reshape(3)])))
            out[key] = slerp(t).as_rotvec().astype(np.float32)
        else:
            out[key] = (a[None] + t.reshape((-1,) + (1,) * a.ndim) * (b - a)[None]).astype(np.float32)
    return out


def find_gaps(bridged: np.ndarray, max_gap: int) -> List[Tuple[int, int]]:
    """Runs ``[start, stop)`` of ``bridged (N,)`` frames with an unbridged frame on both sides and at most
    ``max_gap`` frames."""
    b = np.asarray(bridged, bool)
    edges = np.flatnonzero(np.diff(np.r_[0, b.astype(np.int8), 0]))
    return [(int(s), int(e)) for s, e in zip(edges[::2], edges[1::2]) if s > 0 and e < b.size and e - s <= max_gap]
