"""Gaze and blinks from a frame and its 68 landmarks (dlib's 68 points have no pupils).

Per eye (iBUG 36-41 = the subject's RIGHT eye, on the image left of a frontal face; 42-47 = the subject's LEFT eye):

1. **Iris centre** (:func:`locate_iris`): the eye region is resampled into a patch aligned with the eye
   (x along the corner-to-corner line, ``samples`` = 40 samples per eye width, grey = Rec. 601 luma in [0, 1]); only
   samples inside the eye polygon (the six landmarks) count. The dark level is the mean of the darkest
   ``dark_fraction`` (35 %) of them, the bright level the median of the rest, ``t`` their midpoint. The iris is the
   disc of radius ``iris_radius`` (0.22 eye widths; ICT's iris: 21 degrees on a 1.53 cm eyeball, 0.22 of its 2.69 cm
   eye) whose polygon samples are darkest in total, ``score(c) = sum over polygon & disc(c) of (t - grey)`` (a
   convolution); the centre is the centroid of the score above 95 % of its maximum. Samples hidden by the lids are
   outside the polygon and count nothing, so the visible arcs of the iris place the disc; a plain dark-blob centroid
   (``method="centroid"``: intensity-weighted centroid of the darkest samples, then mean-shift in the disc) is
   pulled towards the visible part and under-reads vertical gaze by about 40 % on the renders of the tests.
   Confidence: the contrast between the median grey of the polygon outside the disc and the mean inside (0 at
   ``min_contrast``, 1 at ``full_contrast``), times a factor that falls to 0 when the polygon holds fewer than 12
   samples (a closed eye).
2. **Normalised offsets**: ``horizontal`` = position of the iris centre projected on the corner-to-corner line, -1 at
   the corner on the image LEFT (36 / 42), +1 at the corner on the image right (39 / 45); ``vertical`` = signed
   distance from that line (positive = image down) divided by the eye width.
3. **Angles** (:func:`gaze_angles`): the offsets are inverted through a small 3-D eye model
   (:class:`GazeCalibration`: eyeball rotation centres, iris-disc centres and eye corners of the face model): the
   eyeball is turned exactly as :func:`facerender.render.conditioning.rotate_eyes` turns it (``out`` = towards the
   eye's own side, ``up``), the iris centre and the corners are projected with the head rotation (orthographic: the
   offsets are ratios, the eye is small against its distance), and Gauss-Newton (forward differences) solves for
   the two angles that reproduce the measured offsets. With ``conjugate=True`` (default) the two eyes' angles are fused
   into one gaze direction (confidence-weighted), so a wink or a poorly seen eye takes the other eye's gaze.
4. **Weights** (:func:`gaze_weights`): ``eyeLookOut_X = max(out, 0) / 25 deg``, ``eyeLookIn_X = max(-out, 0) / 25``,
   ``eyeLookUp_X = max(up, 0) / 20``, ``eyeLookDown_X = max(-up, 0) / 25`` clipped to [0, 1]: the inverse of
   :data:`~facerender.render.conditioning.GAZE_ANGLES`, so image -> weights -> rendered iris position round-trips.
   Looking towards the image left = the subject looks to their right = ``eyeLookOut_R`` + ``eyeLookIn_L``.
5. **Blinks**: eye aspect ratio ``EAR = (|p2 - p6| + |p3 - p5|) / (2 |p1 - p4|)`` (Soukupova & Cech 2016) over its
   open-eye value ``EAR_open`` (per video and eye, :func:`estimate_open_ear`: the median of the sampled frames' EARs
   above 0.7 x their 90th percentile; 0.32 before an estimate exists). On the ICT model the ratio is nearly linear
   in the weights (least-squares slopes): ``EAR / EAR_open = 1 - 0.90 eyeBlink - 0.53 eyeLookDown + 0.20
   eyeLookUp`` (measured on the model's landmarks, :meth:`GazeCalibration.from_model`), so
   ``eyeBlink = clip((1 - 0.53 down + 0.20 up - EAR / EAR_open) / 0.90, 0, 1)``: looking down lowers the lid
   without counting as a blink. An eye is flagged CLOSED when ``EAR / EAR_open`` is below ``closed_ratio`` (0.4),
   or below ``lowered_ratio`` (0.5) unless its iris is clearly seen (confidence >= ``visible_confidence``, 0.9: a
   lid lowered by looking down; ICT's full eyeLookDown gives 0.44-0.57 with the head pitched +-11 deg, the closed
   eyes of the sample clips 0.24-0.38), or below ``uncertain_ratio`` (0.65) while its iris is not seen (confidence
   < ``min_confidence``, 0.3). A closed eye's gaze is not measured (the other eye's is used, and the previous gaze
   is held when both are closed).
6. **Smoothing**: the gaze angles are smoothed over frames, ``g_t = (1 - a) m_t + a g_(t-1)``, ``a = smoothing``
   (0.5): the solver holds the gaze weights fixed, so this is the only temporal filter they get.

Everything is numpy (one small FFT convolution per eye): about 2 ms per frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from ..render.conditioning import GAZE_ANGLES, IRIS_HALF_ANGLE, eye_geometry

__all__ = [
    "EyeConfig", "IrisEstimate", "EyeState", "EyeResult", "GazeCalibration", "EyeTracker", "ICT_GAZE_CALIBRATION",
    "GAZE_NAMES", "BLINK_NAMES", "eye_aspect_ratio", "locate_iris", "gaze_angles", "gaze_weights", "weights_to_angles",
    "blink_weights", "predict_offsets", "estimate_open_ear", "RIGHT_EYE", "LEFT_EYE",
]

#: iBUG-68 indices of the subject's right eye (image left in a frontal view) and left eye.
RIGHT_EYE = tuple(range(36, 42))
LEFT_EYE = tuple(range(42, 48))
#: The eight gaze blendshapes of ICT-FaceKit (ARKit names), in the order of :func:`gaze_weights`'s values.
GAZE_NAMES: Tuple[str, ...] = ("eyeLookDown_L", "eyeLookDown_R", "eyeLookIn_L", "eyeLookIn_R", "eyeLookOut_L",
                               "eyeLookOut_R", "eyeLookUp_L", "eyeLookUp_R")
#: The blink blendshapes, subject's left then right.
BLINK_NAMES: Tuple[str, ...] = ("eyeBlink_L", "eyeBlink_R")


@dataclass(frozen=True)
class EyeConfig:
    """Settings of the eye analysis (see the module docstring).

    Attributes:
        samples: samples per eye width in the eye-aligned patch.
        dark_fraction: fraction of the eye polygon's samples taken as iris candidates (the darkest).
        iris_radius: iris radius in eye widths.
        refine_iterations: mean-shift steps of ``method="centroid"``.
        method: ``"disc"`` (default, disc matching) or ``"centroid"`` (dark-blob centroid + mean-shift).
        min_eye_width: eyes narrower than this (pixels, corner to corner) are not analysed (confidence 0).
        min_contrast, full_contrast: grey contrast (in [0, 1]) giving confidence 0 and 1.
        closed_ratio, lowered_ratio, uncertain_ratio: EAR / open EAR thresholds of the closed flag (module
            docstring, step 5).
        min_confidence: iris confidence below which an eye's gaze is not used (and, below ``uncertain_ratio``,
            the eye counts as closed).
        visible_confidence: iris confidence at which an eye below ``closed_ratio`` still counts as open.
        default_open_ear: open-eye EAR before a per-video estimate exists.
        open_ear_percentile, open_ear_frames: the running per-video estimate (when none is given):
            :func:`estimate_open_ear` of the EARs of the first ``open_ear_frames`` frames with a face.
        conjugate: fuse the two eyes into one gaze direction.
        smoothing: exponential smoothing of the gaze angles over frames (weight of the previous frame's gaze;
            0 = none). The solver holds the gaze fixed, so this is the only temporal filter the gaze gets.
        angles: degrees at weight 1 (:data:`~facerender.render.conditioning.GAZE_ANGLES`).
        max_angle: angles are clipped to +-this (degrees).
    """

    samples: int = 40
    dark_fraction: float = 0.35
    iris_radius: float = 0.22
    refine_iterations: int = 3
    method: str = "disc"
    min_eye_width: float = 6.0
    min_contrast: float = 0.04
    full_contrast: float = 0.2
    closed_ratio: float = 0.4
    lowered_ratio: float = 0.5
    uncertain_ratio: float = 0.65
    min_confidence: float = 0.3
    visible_confidence: float = 0.9
    default_open_ear: float = 0.32
    open_ear_percentile: float = 90.0
    open_ear_frames: int = 150
    conjugate: bool = True
    smoothing: float = 0.5
    angles: Mapping[str, float] = field(default_factory=lambda: dict(GAZE_ANGLES))
    max_angle: float = 40.0

    def __post_init__(self):
        if self.samples < 8:
            raise ValueError(f"samples must be >= 8, got {self.samples}")
        if not 0 < self.dark_fraction < 1:
            raise ValueError(f"dark_fraction must lie in (0, 1), got {self.dark_fraction}")
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"smoothing must lie in [0, 1), got {self.smoothing}")
        if self.method not in ("disc", "centroid"):
            raise ValueError(f"method must be 'disc' or 'centroid', got {self.method!r}")
        if not self.full_contrast > self.min_contrast >= 0:
            raise ValueError(f"need full_contrast > min_contrast >= 0, got {self.full_contrast}, {self.min_contrast}")
        if not 0 < self.closed_ratio <= self.lowered_ratio <= self.uncertain_ratio < 1:
            raise ValueError(f"need 0 < closed_ratio <= lowered_ratio <= uncertain_ratio < 1, got "
                             f"{self.closed_ratio}, {self.lowered_ratio}, {self.uncertain_ratio}")
        missing = {"out", "in", "up", "down"} - set(self.angles)
        if missing or not all(float(self.angles[k]) > 0 for k in ("out", "in", "up", "down")):
            raise ValueError(f"angles needs positive 'out', 'in', 'up', 'down', got {dict(self.angles)}")


# ------------------------------------------------------------------------------------------------------ EAR
def _points68(points) -> np.ndarray:
    p = points.detach().cpu().numpy() if hasattr(points, "detach") else np.asarray(points)
    p = np.asarray(getattr(points, "points", p), dtype=np.float64)
    if p.shape[-2:] != (68, 2):
        raise ValueError(f"points must be (68, 2) iBUG landmarks, got shape {p.shape}")
    return p


def eye_aspect_ratio(points) -> np.ndarray:
    """EAR of both eyes, ``[right, left]`` (subject's), of ``(68, 2)`` or ``(..., 68, 2)`` points.

    ``EAR = (|p2 - p6| + |p3 - p5|) / (2 |p1 - p4|)`` with ``p1..p6`` the eye's six points in iBUG order.
    NaN for a degenerate eye (coincident corners).
    """
    p = _points68(points)
    out = []
    for ids in (RIGHT_EYE, LEFT_EYE):
        e = p[..., ids, :]
        a = np.linalg.norm(e[..., 1, :] - e[..., 5, :], axis=-1)
        b = np.linalg.norm(e[..., 2, :] - e[..., 4, :], axis=-1)
        w = np.linalg.norm(e[..., 0, :] - e[..., 3, :], axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append(np.where(w > 1e-9, (a + b) / (2 * w), np.nan))
    return np.stack(out, -1)


# ------------------------------------------------------------------------------------------------------ iris
@dataclass(frozen=True)
class IrisEstimate:
    """One eye's iris: ``centre (2,)`` pixels (NaN when not found), ``horizontal`` in [-1, 1] (image left corner to
    image right corner), ``vertical`` (image down, in eye widths), ``confidence`` in [0, 1], ``contrast``."""

    centre: np.ndarray
    horizontal: float
    vertical: float
    confidence: float
    contrast: float


def _eye_frame(eye: np.ndarray):
    a, b = eye[0], eye[3]
    d = b - a
    w = float(np.hypot(*d))
    u = d / max(w, 1e-9)
    n = np.array([-u[1], u[0]])  # image "down" for a level eye
    return (a + b) / 2, u, n, w


def _inside_polygon(x: np.ndarray, y: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test of the points ``(x, y)`` (any shape) against ``poly (N, 2)``."""
    inside = np.zeros(x.shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        x0, y0 = poly[i]
        x1, y1 = poly[(i + 1) % n]
        cond = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xc = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= cond & (x < xc)
    return inside


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``img (H, W[, C])`` at continuous pixel coordinates (centres at +0.5), edge-clamped."""
    H, W = img.shape[:2]
    x = np.clip(x - 0.5, 0, W - 1)
    y = np.clip(y - 0.5, 0, H - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), max(W - 2, 0))
    y0 = np.minimum(np.floor(y).astype(np.int64), max(H - 2, 0))
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    fx, fy = x - x0, y - y0
    if img.ndim == 3:
        fx, fy = fx[..., None], fy[..., None]
    return (img[y0, x0] * (1 - fx) * (1 - fy) + img[y0, x1] * fx * (1 - fy) + img[y1, x0] * (1 - fx) * fy
            + img[y1, x1] * fx * fy)


def _convolve_same(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """2-D convolution of ``a`` with an odd-sized kernel ``k``, output of ``a``'s shape (zero padding), by FFT."""
    sh = (a.shape[0] + k.shape[0] - 1, a.shape[1] + k.shape[1] - 1)
    full = np.fft.irfft2(np.fft.rfft2(a, sh) * np.fft.rfft2(k, sh), sh)
    oy, ox = k.shape[0] // 2, k.shape[1] // 2
    return full[oy:oy + a.shape[0], ox:ox + a.shape[1]]


def locate_iris(image: np.ndarray, eye_points, config: Optional[EyeConfig] = None) -> IrisEstimate:
    """Iris centre inside one eye (see the module docstring, step 1).

    Args:
        image: ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` grey).
        eye_points: ``(6, 2)`` the eye's six iBUG points in order (36-41 or 42-47), package pixel convention.
        config: :class:`EyeConfig`.
    Returns:
        :class:`IrisEstimate`; confidence 0 and NaN centre when the eye is degenerate or too thin.
    """
    cfg = config or EyeConfig()
    eye = np.asarray(eye_points, dtype=np.float64).reshape(6, 2)
    nan = IrisEstimate(np.full(2, np.nan), float("nan"), float("nan"), 0.0, 0.0)
    if not np.isfinite(eye).all():
        return nan
    mid, u, n, w = _eye_frame(eye)
    if w < cfg.min_eye_width:
        return nan
    step = w / cfg.samples
    # eye-aligned grid: a along u in [-0.65, 0.65] w, b along n in [-0.4, 0.4] w
    na, nb = int(round(1.3 * cfg.samples)), int(round(0.8 * cfg.samples))
    a = (np.arange(na) + 0.5) * step - 0.65 * w
    b = (np.arange(nb) + 0.5) * step - 0.4 * w
    A, B = np.meshgrid(a, b)
    X = mid[0] + A * u[0] + B * n[0]
    Y = mid[1] + A * u[1] + B * n[1]
    # local region of the image only
    H, W = image.shape[:2]
    x0, y0 = int(max(0, math.floor(X.min()) - 1)), int(max(0, math.floor(Y.min()) - 1))
    x1, y1 = int(min(W, math.ceil(X.max()) + 2)), int(min(H, math.ceil(Y.max()) + 2))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return nan
    region = image[y0:y1, x0:x1].astype(np.float32) / 255.0
    if region.ndim == 3:
        region = region[..., 0] * 0.299 + region[..., 1] * 0.587 + region[..., 2] * 0.114
    g = _bilinear(region, X - x0, Y - y0)
    pa = (eye - mid) @ u
    pb = (eye - mid) @ n
    mask = _inside_polygon(A, B, np.stack([pa, pb], 1))
    npix = int(mask.sum())
    if npix < 4:
        return nan
    vals = g[mask]
    r = cfg.iris_radius * w
    if cfg.method == "disc":
        # dark / bright levels of the eye (Otsu-like split at the dark_fraction percentile), then the disc of radius
        # r whose masked pixels are darkest in total: score(c) = sum over mask & disc(c) of (t - g)
        thr = float(np.quantile(vals, cfg.dark_fraction))
        dark = vals[vals <= thr].mean()
        bright = np.median(vals[vals > thr]) if (vals > thr).any() else thr
        t = 0.5 * (dark + bright)
        d = np.where(mask, t - g, 0.0)
        rs = r / step
        k = int(math.ceil(rs))
        yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
        ker = np.clip(rs + 0.5 - np.hypot(xx, yy), 0.0, 1.0)
        score = _convolve_same(d, ker)
        # sub-sample peak: centroid of the score above 95 % of its maximum (a plateau's centre when the lids hide
        # part of the disc and several centres explain the visible pixels equally well)
        smax = float(score.max())
        wpk = np.clip(score - (smax - 0.05 * max(abs(smax), 1e-9)), 0.0, None)
        ca, cb = float((wpk * A).sum() / wpk.sum()), float((wpk * B).sum() / wpk.sum())
        disc = mask & ((A - ca) ** 2 + (B - cb) ** 2 <= r * r)
    else:
        thr = float(np.quantile(vals, cfg.dark_fraction))
        wts = np.where(mask, np.clip(thr - g, 0, None), 0.0) + np.where(mask & (g <= thr), 1e-6, 0.0)
        if wts.sum() <= 0:
            return nan
        ca, cb = float((wts * A).sum() / wts.sum()), float((wts * B).sum() / wts.sum())
        disc = mask
        for _ in range(cfg.refine_iterations):
            disc = mask & ((A - ca) ** 2 + (B - cb) ** 2 <= r * r)
            wd = np.where(disc, np.clip(thr - g, 0, None), 0.0)
            if wd.sum() <= 0:
                break
            ca, cb = float((wd * A).sum() / wd.sum()), float((wd * B).sum() / wd.sum())
        disc = mask & ((A - ca) ** 2 + (B - cb) ** 2 <= r * r)
    rest = mask & ~disc
    if disc.sum() == 0 or rest.sum() == 0:
        contrast = 0.0
    else:
        contrast = float(np.median(g[rest]) - np.mean(g[disc]))
    conf = float(np.clip((contrast - cfg.min_contrast) / (cfg.full_contrast - cfg.min_contrast), 0.0, 1.0))
    conf *= float(np.clip((npix - 12) / 24.0, 0.0, 1.0))
    centre = mid + ca * u + cb * n
    t = float((centre - eye[0]) @ (eye[3] - eye[0]) / (w * w))
    return IrisEstimate(centre, 2.0 * t - 1.0, cb / w, conf, contrast)


# ------------------------------------------------------------------------------------------------------ 3-D eye model
@dataclass(frozen=True)
class GazeCalibration:
    """The 3-D eye model that maps eyeball angles to image offsets (model space, cm; index 0 = the subject's RIGHT
    eye, 1 = LEFT).

    Attributes:
        centre: ``(2, 3)`` eyeball rotation centres (as :func:`~facerender.render.conditioning.rotate_eyes`).
        iris: ``(2, 3)`` iris-disc centres at rest (centroid of the outer-shell cap within
            :data:`~facerender.render.conditioning.IRIS_HALF_ANGLE` of the optical axis).
        corners: ``(2, 2, 3)`` eye corners: per eye, the iBUG point on the image left of a frontal face (36 / 42),
            then the one on the image right (39 / 45).
        ear_blink, ear_down, ear_up: change of ``EAR / EAR_open`` per unit of eyeBlink, eyeLookDown, eyeLookUp.
    """

    centre: np.ndarray
    iris: np.ndarray
    corners: np.ndarray
    ear_blink: float = -0.902
    ear_down: float = -0.527
    ear_up: float = 0.197

    @classmethod
    def from_model(cls, model, identity=None) -> "GazeCalibration":
        """Measure the eye model on a face model (ICT-FaceKit: regions ``eyeball_*`` / ``sclera_*``, landmarks
        ``ibug68``, blendshapes ``eyeBlink_*``, ``eyeLook*``), optionally with an identity ``(K_id,)``."""
        import torch

        with torch.no_grad():
            kw = {}
            if identity is not None:
                kw["identity"] = torch.as_tensor(np.asarray(identity), dtype=model.dtype).reshape(1, -1)
            base = model(**kw).vertices[0].double().cpu().numpy()
        T = model.template.detach().double().cpu().numpy()
        shift = base - T
        centre, iris = [], []
        regions = model.regions
        for side in ("right", "left"):
            g = eye_geometry(model, side)
            shell = next(n for n in (f"sclera_{side}", f"eyeball_{side}") if n in regions)
            ids = regions[shell].vertex_ids
            v = T[ids] - g.centre
            cos = v @ g.axis / np.maximum(np.linalg.norm(v, axis=1), 1e-12)
            cap = ids[cos > math.cos(math.radians(IRIS_HALF_ANGLE))]
            d = shift[regions[f"eyeball_{side}"].vertex_ids].mean(0)  # the eyeball moves rigidly with the identity
            centre.append(g.centre + d)
            iris.append(T[cap].mean(0) + d)
        lm = np.asarray(model.landmarks["ibug68"].vertex_index)
        P = base[lm]
        corners = np.array([[P[36], P[39]], [P[42], P[45]]])

        def ratio(name_w: Dict[str, float]) -> float:
            x = torch.zeros(1, len(model.expression_names), dtype=model.dtype)
            for k, w in name_w.items():
                x[0, model.expression_names.index(k)] = w
            with torch.no_grad():
                V = model(expression=x, **kw).vertices[0].double().cpu().numpy()
            return float(np.nanmean(eye_aspect_ratio(V[lm][:, :2])))

        coef = {}
        names = set(model.expression_names)
        if {"eyeBlink_L", "eyeBlink_R", "eyeLookDown_L", "eyeLookDown_R", "eyeLookUp_L", "eyeLookUp_R"} <= names:
            e0 = ratio({})
            ws = np.array([0.25, 0.5, 0.75, 1.0])
            for key, shape in (("ear_blink", "eyeBlink"), ("ear_down", "eyeLookDown"), ("ear_up", "eyeLookUp")):
                r = np.array([ratio({f"{shape}_L": w, f"{shape}_R": w}) / e0 - 1.0 for w in ws])
                coef[key] = float(ws @ r / (ws @ ws))  # least-squares slope through the origin
        return cls(np.array(centre), np.array(iris), corners, **coef)


#: Measured on ICT-FaceKit's mean face (``GazeCalibration.from_model(load_ict())``; tests check it).
ICT_GAZE_CALIBRATION = GazeCalibration(
    centre=np.array([[-3.1109, 3.6071, 7.9273], [3.1109, 3.6071, 7.9273]]),
    iris=np.array([[-3.2750, 3.5980, 9.5794], [3.2750, 3.5980, 9.5794]]),
    corners=np.array([[[-4.4590, 3.4321, 8.6029], [-1.8438, 3.2519, 9.1957]],
                      [[1.8441, 3.2524, 9.1955], [4.4590, 3.4321, 8.6029]]]),
    ear_blink=-0.902, ear_down=-0.527, ear_up=0.197,
)

_FLIP = np.array([1.0, -1.0, -1.0])  # model -> camera axes (morphable_models.geometry.AXIS_FLIP)


def _axis_angle_matrix(r) -> np.ndarray:
    r = np.asarray(r, dtype=np.float64).reshape(3)
    th = float(np.linalg.norm(r))
    if th < 1e-12:
        return np.eye(3)
    k = r / th
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(th) * K + (1 - math.cos(th)) * (K @ K)


def _head_matrix(head_rotation) -> np.ndarray:
    """Model -> camera rotation (with the axis flip) from None, an axis-angle ``(3,)`` or a matrix ``(3, 3)``."""
    if head_rotation is None:
        R = np.eye(3)
    else:
        h = np.asarray(head_rotation.detach().cpu().numpy() if hasattr(head_rotation, "detach") else head_rotation,
                       dtype=np.float64)
        R = h.reshape(3, 3) if h.size == 9 else _axis_angle_matrix(h)
    return _FLIP[:, None] * R


def _eye_rotation(out_deg, up_deg, eye: int) -> np.ndarray:
    """``(..., 3, 3)`` eyeball rotation as :func:`~facerender.render.conditioning.eye_rotations` builds it."""
    sign = -1.0 if eye == 0 else 1.0  # eye 0 = right: its "out" is towards -x
    yaw = np.radians(np.asarray(out_deg, dtype=np.float64)) * sign
    pitch = np.radians(np.asarray(up_deg, dtype=np.float64))
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(-pitch), np.sin(-pitch)
    one, nil = np.ones_like(yaw), np.zeros_like(yaw)
    Ry = np.stack([cy, nil, sy, nil, one, nil, -sy, nil, cy], -1).reshape(yaw.shape + (3, 3))
    Rx = np.stack([one, nil, nil, nil, cp, -sp, nil, sp, cp], -1).reshape(yaw.shape + (3, 3))
    return Ry @ Rx


def predict_offsets(out_deg, up_deg, head_rotation=None, calibration: GazeCalibration = ICT_GAZE_CALIBRATION
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """Image offsets ``(horizontal (..., 2), vertical (..., 2))`` of both eyes ([right, left]) for eyeball angles
    ``out_deg``, ``up_deg`` ``(..., 2)`` in degrees (see the module docstring) and a head rotation (model space
    axis-angle ``(3,)`` or matrix; None = frontal)."""
    M = _head_matrix(head_rotation)
    out_deg = np.asarray(out_deg, dtype=np.float64)
    up_deg = np.asarray(up_deg, dtype=np.float64)
    hs, vs = [], []
    for e in range(2):
        c, p0 = calibration.centre[e], calibration.iris[e]
        R = _eye_rotation(out_deg[..., e], up_deg[..., e], e)
        P = c + (R @ (p0 - c)[:, None])[..., 0]
        q = P @ M.T
        a, b = calibration.corners[e] @ M.T
        d = (b - a)[:2]
        w2 = float(d @ d)
        u = d / math.sqrt(w2)
        n = np.array([-u[1], u[0]])
        rel = q[..., :2] - a[:2]
        hs.append(2.0 * (rel @ d) / w2 - 1.0)
        vs.append(((q[..., :2] - (a[:2] + b[:2]) / 2) @ n) / math.sqrt(w2))
    return np.stack(hs, -1), np.stack(vs, -1)


def gaze_angles(horizontal, vertical, head_rotation=None, calibration: GazeCalibration = ICT_GAZE_CALIBRATION,
                iterations: int = 8, max_angle: float = 40.0) -> Tuple[np.ndarray, np.ndarray]:
    """Eyeball angles ``(out (2,), up (2,))`` in degrees ([right, left] eye) that reproduce the measured offsets
    (Gauss-Newton on :func:`predict_offsets`, numeric derivatives, angles clipped to ``+-max_angle``). NaN offsets
    give NaN angles."""
    h = np.asarray(horizontal, dtype=np.float64).reshape(2)
    v = np.asarray(vertical, dtype=np.float64).reshape(2)
    x = np.zeros((2, 2))  # (eye, [out, up])
    ok = np.isfinite(h) & np.isfinite(v)
    if not ok.any():
        return np.full(2, np.nan), np.full(2, np.nan)
    target = np.stack([np.where(ok, h, 0.0), np.where(ok, v, 0.0)], 1)
    eps = 0.5
    probe = np.array([[0.0, 0.0], [eps, 0.0], [0.0, eps]])  # the point and its two forward differences
    for _ in range(iterations):
        X = x[None] + probe[:, None, :]  # (3, eye, 2)
        ph, pv = predict_offsets(X[..., 0], X[..., 1], head_rotation, calibration)  # (3, 2) each
        F = np.stack([ph, pv], -1)  # (3, eye, 2)
        r = F[0] - target
        J = np.stack([(F[1] - F[0]) / eps, (F[2] - F[0]) / eps], -1)  # (eye, 2 residuals, 2 params)
        det = J[:, 0, 0] * J[:, 1, 1] - J[:, 0, 1] * J[:, 1, 0]
        safe = np.abs(det) > 1e-12
        d = np.where(safe, det, 1.0)
        step = np.stack([(J[:, 1, 1] * r[:, 0] - J[:, 0, 1] * r[:, 1]) / d,
                         (-J[:, 1, 0] * r[:, 0] + J[:, 0, 0] * r[:, 1]) / d], -1)
        x = np.clip(x - np.where(safe[:, None], step, 0.0), -max_angle, max_angle)
        if np.abs(step).max() < 1e-3:
            break
    x[~ok] = np.nan
    return x[:, 0], x[:, 1]


def gaze_weights(out_deg, up_deg, angles: Mapping[str, float] = GAZE_ANGLES) -> Dict[str, float]:
    """``eyeLook*`` weights in [0, 1] from per-eye angles ``out (2,)``, ``up (2,)`` in degrees ([right, left]):
    the inverse of :func:`~facerender.render.conditioning.eye_rotations` (``out`` and ``in`` are exclusive, as are
    ``up`` and ``down``). NaN angles give 0 weights."""
    out_deg = np.nan_to_num(np.asarray(out_deg, dtype=np.float64).reshape(2))
    up_deg = np.nan_to_num(np.asarray(up_deg, dtype=np.float64).reshape(2))
    w: Dict[str, float] = {}
    for e, s in ((1, "L"), (0, "R")):
        o, u = out_deg[e], up_deg[e]
        w[f"eyeLookDown_{s}"] = float(np.clip(-u / angles["down"], 0, 1))
        w[f"eyeLookIn_{s}"] = float(np.clip(-o / angles["in"], 0, 1))
        w[f"eyeLookOut_{s}"] = float(np.clip(o / angles["out"], 0, 1))
        w[f"eyeLookUp_{s}"] = float(np.clip(u / angles["up"], 0, 1))
    return {k: w[k] for k in GAZE_NAMES}


def weights_to_angles(weights: Mapping[str, float], angles: Mapping[str, float] = GAZE_ANGLES
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """``(out (2,), up (2,))`` degrees ([right, left]) from ``eyeLook*`` weights (missing names count 0)."""
    out, up = np.zeros(2), np.zeros(2)
    for e, s in ((0, "R"), (1, "L")):
        g = lambda k: float(weights.get(f"{k}_{s}", 0.0))  # noqa: E731
        out[e] = g("eyeLookOut") * angles["out"] - g("eyeLookIn") * angles["in"]
        up[e] = g("eyeLookUp") * angles["up"] - g("eyeLookDown") * angles["down"]
    return out, up


def blink_weights(ear, open_ear, gaze: Optional[Mapping[str, float]] = None,
                  calibration: GazeCalibration = ICT_GAZE_CALIBRATION) -> np.ndarray:
    """``eyeBlink`` weights ``[right, left]`` in [0, 1] from the EARs ``(2,)`` and open-eye EARs ``(2,)``
    (module docstring, step 5); ``gaze`` (eyeLook* weights) removes the lid motion that looking up / down causes."""
    ear = np.asarray(ear, dtype=np.float64).reshape(2)
    op = np.broadcast_to(np.asarray(open_ear, dtype=np.float64), (2,))
    expected = np.ones(2)
    if gaze:
        for e, s in ((0, "R"), (1, "L")):
            expected[e] += (calibration.ear_down * float(gaze.get(f"eyeLookDown_{s}", 0.0))
                            + calibration.ear_up * float(gaze.get(f"eyeLookUp_{s}", 0.0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        w = (ear / op - expected) / calibration.ear_blink
    return np.clip(np.nan_to_num(w, nan=0.0), 0.0, 1.0)


def estimate_open_ear(ears, percentile: float = 90.0, default: float = 0.32) -> np.ndarray:
    """The open-eye EAR ``(2,)`` [right, left] of a video from EARs ``(N, 2)`` of sampled frames: per eye, the median
    of the EARs at or above 0.7 x their ``percentile``-th percentile (the open frames: closed eyes and blinks are
    left out, and wide-eyed frames do not set the reference alone). ``default`` where no value is finite."""
    e = np.asarray(ears, dtype=np.float64).reshape(-1, 2)
    out = np.full(2, float(default))
    for k in range(2):
        v = e[:, k][np.isfinite(e[:, k])]
        if len(v):
            hi = np.percentile(v, percentile)
            out[k] = float(np.median(v[v >= 0.7 * hi]))
    return out


# ------------------------------------------------------------------------------------------------------ streaming
@dataclass(frozen=True)
class EyeState:
    """One eye in one frame: ``iris`` :class:`IrisEstimate`, ``ear``, ``ratio`` (EAR / open EAR), ``closed``,
    ``out`` / ``up`` angles in degrees as measured (NaN when not measured), ``used`` (the measurement entered the
    gaze)."""

    iris: IrisEstimate
    ear: float
    ratio: float
    closed: bool
    out: float
    up: float
    used: bool


@dataclass(frozen=True)
class EyeResult:
    """Eyes of one frame.

    Attributes:
        right, left: :class:`EyeState` of the subject's right (36-41) and left (42-47) eye.
        weights: ``{eyeLook*_L/R: w}`` (8, :data:`GAZE_NAMES`) and ``{eyeBlink_L/R: w}``, all in [0, 1].
        out, up: the gaze used, degrees ``(2,)`` [right, left].
        closed: ``(2,)`` bool [right, left].
        flags: ``"blink"`` (both eyes closed), ``"wink"`` (one), ``"gaze_held"`` (no eye measured: previous gaze).
    """

    right: EyeState
    left: EyeState
    weights: Dict[str, float]
    out: np.ndarray
    up: np.ndarray
    closed: np.ndarray
    flags: Tuple[str, ...]

    @property
    def gaze(self) -> Dict[str, float]:
        """Only the eight ``eyeLook*`` weights."""
        return {k: self.weights[k] for k in GAZE_NAMES}

    @property
    def blink(self) -> np.ndarray:
        """``(2,)`` eyeBlink weights [left, right] (the order of :data:`BLINK_NAMES`)."""
        return np.array([self.weights["eyeBlink_L"], self.weights["eyeBlink_R"]])


class EyeTracker:
    """Gaze and blink per frame, with the per-video state (open-eye EAR, last gaze).

    Args:
        config: :class:`EyeConfig`.
        calibration: :class:`GazeCalibration` (default: ICT's mean face).
        open_ear: ``(2,)`` or a number: the open-eye EAR of this video [right, left]; None: a running estimate
            (the ``open_ear_percentile`` of the first ``open_ear_frames`` frames; ``default_open_ear`` until 15
            frames were seen).
    """

    def __init__(self, config: Optional[EyeConfig] = None, calibration: Optional[GazeCalibration] = None,
                 open_ear=None):
        self.config = config or EyeConfig()
        self.calibration = calibration or ICT_GAZE_CALIBRATION
        self.fixed_open_ear = None if open_ear is None else np.broadcast_to(
            np.asarray(open_ear, dtype=np.float64), (2,)).copy()
        self.reset()

    def reset(self) -> None:
        self._ears: list = []
        self._out = np.zeros(2)
        self._up = np.zeros(2)
        self._seen = False

    def state_dict(self) -> dict:
        return {"ears": np.asarray(self._ears, dtype=np.float64).reshape(-1, 2), "out": self._out.copy(),
                "up": self._up.copy(), "seen": self._seen, "open_ear": self.fixed_open_ear}

    def load_state_dict(self, d: dict) -> None:
        self._ears = [tuple(e) for e in np.asarray(d["ears"], dtype=np.float64).reshape(-1, 2)]
        self._out = np.asarray(d["out"], dtype=np.float64).reshape(2).copy()
        self._up = np.asarray(d["up"], dtype=np.float64).reshape(2).copy()
        self._seen = bool(d.get("seen", True))
        if d.get("open_ear") is not None:
            self.fixed_open_ear = np.asarray(d["open_ear"], dtype=np.float64).reshape(2).copy()

    @property
    def open_ear(self) -> np.ndarray:
        """``(2,)`` the open-eye EAR in use [right, left]."""
        if self.fixed_open_ear is not None:
            return self.fixed_open_ear
        cfg = self.config
        if len(self._ears) < 15:
            return np.full(2, cfg.default_open_ear)
        return estimate_open_ear(np.asarray(self._ears), cfg.open_ear_percentile, cfg.default_open_ear)

    def update(self, image: np.ndarray, points, head_rotation=None) -> EyeResult:
        """Analyse one frame. ``points`` ``(68, 2)`` (or :class:`~facerender.landmarks.Landmarks`); ``head_rotation``
        the head's model-space rotation (axis-angle ``(3,)`` or ``(3, 3)``; None = frontal), e.g. the previous
        frame's tracked pose."""
        cfg = self.config
        p = _points68(points)
        ear = eye_aspect_ratio(p)
        if self.fixed_open_ear is None and len(self._ears) < cfg.open_ear_frames and np.isfinite(ear).all():
            self._ears.append(tuple(ear))
        op = self.open_ear
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.nan_to_num(ear / op, nan=0.0)
        irises = [locate_iris(image, p[list(ids)], cfg) for ids in (RIGHT_EYE, LEFT_EYE)]
        hs = np.array([ir.horizontal for ir in irises])
        vs = np.array([ir.vertical for ir in irises])
        conf = np.array([ir.confidence for ir in irises])
        closed = ((ratio < cfg.closed_ratio)
                  | ((ratio < cfg.lowered_ratio) & (conf < cfg.visible_confidence))
                  | ((ratio < cfg.uncertain_ratio) & (conf < cfg.min_confidence)))
        use = ~closed & (conf >= cfg.min_confidence) & np.isfinite(hs) & np.isfinite(vs)
        out_m, up_m = gaze_angles(np.where(use, hs, np.nan), np.where(use, vs, np.nan), head_rotation,
                                  self.calibration, max_angle=cfg.max_angle)
        flags = []
        if use.any():
            if cfg.conjugate:
                # one gaze direction: subject's-left yaw = out_L = -out_R; the same pitch for both eyes
                wts = np.where(use, conf, 0.0)
                yaw = float(np.nansum(wts * np.array([-out_m[0], out_m[1]])) / wts.sum())
                pitch = float(np.nansum(wts * up_m) / wts.sum())
                out, up = np.array([-yaw, yaw]), np.array([pitch, pitch])
            else:
                out = np.where(use, out_m, self._out)
                up = np.where(use, up_m, self._up)
            if self._seen and cfg.smoothing > 0:
                out = (1.0 - cfg.smoothing) * out + cfg.smoothing * self._out
                up = (1.0 - cfg.smoothing) * up + cfg.smoothing * self._up
            self._seen = True
        else:
            out, up = self._out.copy(), self._up.copy()
            flags.append("gaze_held")
        self._out, self._up = out, up
        weights = gaze_weights(out, up, cfg.angles)
        blink = blink_weights(ear, op, weights, self.calibration)
        weights["eyeBlink_L"], weights["eyeBlink_R"] = float(blink[1]), float(blink[0])
        if closed.all():
            flags.append("blink")
        elif closed.any():
            flags.append("wink")
        states = [EyeState(irises[e], float(ear[e]), float(ratio[e]), bool(closed[e]), float(out_m[e]),
                           float(up_m[e]), bool(use[e])) for e in range(2)]
        return EyeResult(states[0], states[1], weights, out.copy(), up.copy(), closed.copy(), tuple(flags))
