"""Face landmarks through a video: dlib's shape predictor in a box that follows the face, HOG only when needed.

:class:`LandmarkTracker` is STREAMING: :meth:`LandmarkTracker.update` takes one frame and returns a
:class:`FaceObservation` (the 68 iBUG points as :class:`~facerender.landmarks.Landmarks`, or None, plus flags and
timings). It keeps a few numbers and two 32 x 32 patches between frames, never frames.

Per frame:

1. **Tracked**: the predictor runs in a box derived from the PREVIOUS frame's landmarks: centre = centroid ``c`` of the
   31 upper-face points (brows, nose, eyes: 17-47) moved down by ``offset * s``, side ``scale * s``, where ``s`` is
   the RMS distance of those points from ``c`` (rotation-invariant, smooth, and independent of the mouth and jaw: a
   box from all inner points grows and drops when the mouth opens or the tongue comes out, and dlib reads the mouth
   differently in a different box; see :func:`box_frame`); ``scale`` 3.85 and ``offset`` 0.75 are the medians of the
   HOG boxes on the sample clips (``measure_box=True`` measures them on each detection's HOG box instead, the
   behaviour before 2026-12). The box is TIED TO THE FACE'S SCALE: its ``s`` follows the points' by at most
   ``box_growth`` per frame and stays within ``box_drift`` of the reference scale (that of the last fresh detection
   that agreed with the track), so a box cannot run away to twice the face with the points spread over hair and
   collar; its centre moves on by the last frame's motion when that was fast (``motion_threshold``); and the
   predictor reads the face once more in the box of its own points when that box moved (``refine_box``).
2. **Checks** (any failure = "lost", then step 3 runs in the same frame): too small (``s < min_radius``), too few
   points inside the image (the face leaves), implausible geometry (mouth not below the eyes in the face's own
   frame, or a similarity-aligned shape change from the previous frame above ``max_shape_error * s``), a large jump
   (mean inner-point motion beyond the box's predicted motion above ``max_jump * s`` or a scale change beyond
   ``max_scale_change``), low appearance agreement (normalised cross-correlation of a 32 x 32 grey patch sampled in
   the face's frame, ``c`` / ``s`` / eye-line angle, against the previous frame's patch below ``min_ncc``).
   **Verification by fresh landmarks**: every ``verify_interval`` frames, and at once on a SUSPECT frame (a jump above
   ``suspect_jump``, a patch NCC below ``suspect_ncc``, a shape change above ``suspect_shape``, the scale out of the
   ``box_drift`` band, or :meth:`LandmarkTracker.request_verification`), HOG runs on a crop around the box resampled
   so that the face box is ``verify_size`` pixels, and the predictor reads the face it finds (in its HOG box, then
   in the box of those points by the track's rule). Within ``agreement`` of the eye distance of the tracked points the
   frame is ``verified``; beyond it the track is re-seeded from the fresh points (``reseeded``, status
   ``detected``). No face found: a suspect frame is dropped (``lost:unverified``); a periodic verification drops the
   track when it is the ``max_failed_verifications``-th miss in a row, or when the patch also disagrees with the
   patch of the last verified frame (NCC below ``min_reference_ncc``): HOG misses turned faces that the predictor
   still follows, so one miss alone is not a loss. Frames without points after a face was seen are flagged ``lost``.
3. **Detected**: HOG on the whole frame (threshold -0.2, the package default). When nothing is found and
   ``detect_upsample="auto"``, HOG is run again on the image doubled once (faces down to about 40 px) and, for
   small frames, twice (about 20 px; ``max_upsample``, ``max_upsampled_pixels``), on every lost frame while the
   last face seen was small, else every ``upsample_interval`` lost frames (each doubling costs about 4x).
   The face chosen: the one nearest the last known box when it was lost less than ``nearest_window`` frames ago
   (and overlaps or lies within one box size of it, of half to twice its size), else the largest.

Small faces: when the predictor's box is below ``small_face`` (80) pixels, the box and a margin are cropped and
upsampled by an integer factor (bilinear) so that the box is about ``predictor_size`` (160) pixels, and the points
are mapped back (dlib returns integer pixel positions, so this also gives sub-pixel points on small faces).

No temporal smoothing is done here (it belongs to the solver). Timings per frame: ``detect_ms`` (HOG, full frame),
``predict_ms`` (shape predictor), ``check_ms`` (patches and checks) and ``verify_ms`` (the fresh detection).
:data:`LEGACY_LANDMARKS` holds the settings of the earlier releases (the benchmarks' baseline).
Measured on the sample clips (``docs/tracking.md``).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from ..landmarks.detect import (
    FaceDetection,
    Landmarks,
    _import_dlib,
    _dlib_face_detector,
    PREDICTOR_MARGIN,
    _dlib_predictor,
    box_iou,
    edge_padded_crop,
    predict_shape,
)
from ..landmarks.files import box_from_dlib_rect, box_to_dlib_ltrb, from_dlib_points
from ..landmarks.metrics import nme
from ..io.image import to_uint8_rgb

log = logging.getLogger(__name__)

Box = Tuple[float, float, float, float]

__all__ = ["LandmarkTracker", "LandmarkTrackerConfig", "FaceObservation", "box_frame", "face_frame", "face_patch",
           "ncc", "box_from_landmarks", "landmark_agreement", "LEGACY_LANDMARKS"]

INNER = slice(17, 68)
PATCH_SIZE = 32
PATCH_HALF = 1.3  # half side of the appearance patch in units of s


@dataclass(frozen=True)
class LandmarkTrackerConfig:
    """Settings of :class:`LandmarkTracker` (see the module docstring for what each check does).

    Attributes:
        threshold: HOG detection threshold (package default -0.2).
        detect_upsample: 0, 1 or ``"auto"`` (retry with one upsampling when nothing is found, see the module notes).
        upsample_interval: lost frames between upsampled retries when the last face was not small.
        max_upsample: most doublings of the image in the retries (1: faces down to about 40 px, 2: about 20 px).
        max_upsampled_pixels: a retry level is skipped when the upsampled image would have more pixels (cost: 1 level
            on frames up to 1 Mpx, e.g. 720p; 2 levels up to 250 kpx, e.g. 480 x 480).
        box_scale, box_offset: predictor box side / ``s`` and downward centre offset / ``s`` (with ``measure_box``:
            before a detection has measured them; measured values are clipped to ``box_scale_range`` and
            ``box_offset_range``).
        small_face, predictor_size: predictor boxes below ``small_face`` px are upsampled to about
            ``predictor_size`` px.
        verify_interval: frames between HOG verifications of a tracked face (0: never).
        verify_size: side (px) of the face box in the resampled verification crop.
        max_failed_verifications: consecutive failed verifications that drop the track.
        min_radius: smallest plausible ``s`` (px).
        min_inside: smallest fraction of the 68 points inside the image.
        max_shape_error: largest RMS residual of the similarity-aligned inner points against the previous frame's,
            in units of ``s``.
        max_jump: largest mean motion of the inner points between frames beyond the motion the box was moved on by
            (``motion_threshold``), in units of ``s``.
        max_scale_change: largest relative change of ``s`` between frames.
        min_ncc: smallest patch NCC against the previous frame.
        min_reference_ncc: smallest patch NCC against the last verified frame, when a verification failed.
        nearest_window: frames after a loss during which re-detection prefers the face nearest the last box.
        jaw_confidence: confidence of the jawline points (package default 0.5, see ``docs/conventions.md``).
        predictor_path: a 68-point predictor file (default from ``face-recognition-models``).
        box_growth: largest relative change of the predictor box's scale ``s`` from one frame to the next (the box
            follows the points' scale only this fast; ``inf``: no limit, the behaviour before 2026-12).
        box_drift: largest relative departure of the box's scale from the reference scale (the scale of the last
            fresh detection that agreed with the track); the box is held within it, and points beyond it make the
            frame suspect (a verification runs at once and re-seeds the box).
        motion_threshold: the box centre moves on by the last frame's motion when that motion exceeds this
            fraction of ``s`` (fast moves; below it the box stays at the last points, which keeps slow motion
            steady).
        verify_landmarks: verify by the LANDMARKS of the fresh detection: within ``agreement`` of the tracked
            points (mean distance over the outer-eye-corner distance) the frame is ``verified``, beyond it the
            track is re-seeded from the fresh detection (``reseeded``); False: the pre-2026-12 test (a HOG box
            overlapping the predictor box, IoU >= 0.3).
        agreement: see ``verify_landmarks``.
        suspect_jump, suspect_ncc, suspect_shape: a frame whose inner points moved by more than ``suspect_jump *
            s``, whose patch NCC against the previous frame is below ``suspect_ncc`` or whose shape changed by
            more than ``suspect_shape * s`` (or whose scale left ``box_drift``) is verified at once; when the fresh
            detection finds no face there, the track is dropped (``lost:unverified``) and the frame re-detected.
        refine_box: when the box of the predicted points differs from the box they were predicted in by more than
            this fraction of its side (an edge moved), the predictor runs once more in the new box (the box of
            the previous frame lags a moving face); 0 never.
        measure_box: measure ``scale`` and ``offset`` on the HOG box of each detection (the behaviour before
            2026-12); by default the box always has ``box_scale`` and ``box_offset`` (the medians of those
            measurements on the sample clips), the same rule as the audit's fresh detections
            (:class:`~facerender.tracking.quality.FreshDetector`): on lp_d12 (fast head shakes, glasses) the points
            read in boxes measured per detection differed from the audit's by up to 12 % of the eye distance, with
            the one rule by at most 7 %.
    """

    threshold: float = -0.2
    detect_upsample: Union[int, str] = "auto"
    upsample_interval: int = 5
    max_upsample: int = 2
    max_upsampled_pixels: int = 4_000_000
    box_scale: float = 3.85
    box_offset: float = 0.75
    box_scale_range: Tuple[float, float] = (3.0, 4.8)
    box_offset_range: Tuple[float, float] = (0.3, 1.2)
    small_face: float = 80.0
    predictor_size: float = 160.0
    verify_interval: int = 5
    verify_size: float = 120.0
    max_failed_verifications: int = 2
    min_radius: float = 4.0
    min_inside: float = 0.6
    max_shape_error: float = 0.35
    max_jump: float = 0.6
    max_scale_change: float = 0.3
    min_ncc: float = 0.25
    min_reference_ncc: float = 0.3
    nearest_window: int = 90
    jaw_confidence: float = 0.5
    predictor_path: Optional[str] = None
    box_growth: float = 0.1
    box_drift: float = 0.25
    motion_threshold: float = 0.15
    verify_landmarks: bool = True
    agreement: float = 0.08
    suspect_jump: float = 0.3
    suspect_ncc: float = 0.7
    suspect_shape: float = 0.12
    refine_box: float = 0.03
    measure_box: bool = False

    def __post_init__(self):
        if self.detect_upsample not in (0, 1, "auto"):
            raise ValueError(f"detect_upsample must be 0, 1 or 'auto', got {self.detect_upsample!r}")
        for name in ("small_face", "predictor_size", "verify_size", "min_radius"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.verify_interval < 0 or self.upsample_interval < 1 or self.max_failed_verifications < 1:
            raise ValueError("verify_interval must be >= 0, upsample_interval and max_failed_verifications >= 1; got "
                             f"{self.verify_interval}, {self.upsample_interval}, {self.max_failed_verifications}")
        if not 0 <= self.jaw_confidence <= 1:
            raise ValueError(f"jaw_confidence must lie in [0, 1], got {self.jaw_confidence}")
        for name in ("box_growth", "box_drift", "motion_threshold", "agreement"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive (inf: no limit), got {getattr(self, name)!r}")


#: The landmark tracker of the releases before 2026-12 (no limit on the box's growth, no motion prediction, a
#: verification every 10 frames by an overlapping HOG box, no suspect frames), as ``LandmarkTrackerConfig`` fields:
#: the benchmarks' baseline (``bench_tracking.py --baseline``).
LEGACY_LANDMARKS = MappingProxyType({
    "box_growth": math.inf, "box_drift": math.inf, "motion_threshold": math.inf, "verify_landmarks": False,
    "verify_interval": 10, "refine_box": 0.0, "measure_box": True, "suspect_jump": math.inf,
    "suspect_ncc": -math.inf, "suspect_shape": math.inf})


@dataclass(frozen=True)
class FaceObservation:
    """What :meth:`LandmarkTracker.update` found in one frame.

    Attributes:
        landmarks: the 68 points (``Landmarks.points (68, 2)``, ``confidence (68,)``, ``box`` = the predictor's box,
            ``score`` = HOG score on detected frames, None on tracked ones), or None when no face was found.
        status: ``"detected"`` (HOG), ``"tracked"`` (predictor in the box from the previous frame) or ``"no_face"``.
        flags: e.g. ``"lost:appearance"`` (why a track was dropped: ``too_small``, ``left_image``, ``geometry``,
            ``jump``, ``appearance``, ``verification``, ``unverified``), ``"lost"`` (no face found after one was
            seen), ``"redetected"``, ``"suspect"`` (verified at once), ``"verified"`` (a fresh detection agreed),
            ``"verify_failed"``, ``"reseeded"`` (a fresh detection disagreed and replaced the points),
            ``"upsampled_detection"``, ``"small_face"`` (the predictor crop was upsampled).
        detect_ms, predict_ms, check_ms, verify_ms: time spent on each step in this frame.
        ncc: patch NCC against the previous frame (NaN when not computed).
        shape_error, jump: the geometry and motion measures in units of ``s`` (NaN when not computed).
    """

    landmarks: Optional[Landmarks]
    status: str
    flags: Tuple[str, ...] = ()
    detect_ms: float = 0.0
    predict_ms: float = 0.0
    check_ms: float = 0.0
    verify_ms: float = 0.0
    ncc: float = float("nan")
    shape_error: float = float("nan")
    jump: float = float("nan")

    @property
    def found(self) -> bool:
        return self.landmarks is not None

    @property
    def total_ms(self) -> float:
        return self.detect_ms + self.predict_ms + self.check_ms + self.verify_ms


# ----------------------------------------------------------------------------------------------------- geometry
def _centroid_radius(q: np.ndarray) -> Tuple[np.ndarray, float]:
    """Centroid ``(2,)`` and RMS distance from it of points ``(N, 2)``."""
    c = q.mean(0)
    return c, float(np.sqrt(((q - c) ** 2).sum(1).mean()))


def face_frame(points: np.ndarray) -> Tuple[np.ndarray, float, float]:
    """``(c (2,), s, angle)`` of 68 points: centroid and RMS radius of the inner points 17-67, and the angle of the
    line from the right eye's centre (36-41) to the left eye's (42-47), radians (0 for an upright face)."""
    c, s = _centroid_radius(points[INNER])
    e = points[42:48].mean(0) - points[36:42].mean(0)
    return c, s, float(math.atan2(e[1], e[0]))


#: The points that place the predictor's box: brows, nose and eyes (they do not move with the mouth or the jaw).
BOX_POINTS = slice(17, 48)


def box_frame(points: np.ndarray) -> Tuple[np.ndarray, float]:
    """``(c (2,), s)``: centroid and RMS radius of the upper-face points 17-47 (:data:`BOX_POINTS`), the frame of the
    predictor's box. Measured on expressions_d6 (1,008 frames of strong expressions, tongue out included): the
    tracked inner-lip opening agrees with dlib's from a fresh HOG box on every frame at r = 0.914 with this box,
    0.861 with a box from all 51 inner points."""
    return _centroid_radius(points[BOX_POINTS])


def box_from_landmarks(points: np.ndarray, scale: float, offset: float) -> Box:
    """The predictor box of 68 points: a square of side ``scale * s`` centred ``offset * s`` below ``c``
    (:func:`box_frame`)."""
    c, s = box_frame(points)
    return _box_at(c, s, scale, offset)


def _box_at(c: np.ndarray, s: float, scale: float, offset: float) -> Box:
    h = 0.5 * scale * s
    cy = c[1] + offset * s
    return (float(c[0] - h), float(cy - h), float(c[0] + h), float(cy + h))


def landmark_agreement(points: np.ndarray, reference: np.ndarray) -> float:
    """Mean distance of 68 ``points (68, 2)`` from ``reference (68, 2)`` (e.g. a fresh detection) over the
    reference's outer-eye-corner distance (iBUG 36-45): the measure of "within 10 % of the eye distance".
    ``inf`` when the reference's eye corners coincide or any point is not finite."""
    p, q = np.asarray(points, np.float64), np.asarray(reference, np.float64)
    if p.shape != (68, 2) or q.shape != (68, 2):
        raise ValueError(f"landmark_agreement needs two (68, 2) arrays, got {p.shape} and {q.shape}")
    if not (np.isfinite(p).all() and np.isfinite(q).all()):
        return float("inf")
    try:
        return nme(p, q)
    except ValueError:  # the reference's eye corners coincide
        return float("inf")


def _similarity_residual(a: np.ndarray, b: np.ndarray) -> float:
    """RMS residual of ``a`` after the least-squares similarity transform onto ``b`` (both ``(N, 2)``)."""
    ac, bc = a - a.mean(0), b - b.mean(0)
    za = ac[:, 0] + 1j * ac[:, 1]
    zb = bc[:, 0] + 1j * bc[:, 1]
    denom = float((np.abs(za) ** 2).sum())
    if denom <= 0:
        return float("inf")
    k = (np.conj(za) * zb).sum() / denom
    return float(np.sqrt((np.abs(k * za - zb) ** 2).mean()))


def face_patch(grey: np.ndarray, points: np.ndarray, size: int = PATCH_SIZE, half: float = PATCH_HALF) -> np.ndarray:
    """A ``(size, size)`` float32 patch of ``grey (H, W)`` sampled bilinearly on a square grid of half side
    ``half * s`` around ``c``, turned by the eye-line angle (:func:`face_frame`); outside the image: edge values."""
    c, s, a = face_frame(points)
    u = ((np.arange(size) + 0.5) / size * 2.0 - 1.0) * half * s
    gx, gy = np.meshgrid(u, u)
    ca, sa = math.cos(a), math.sin(a)
    x = c[0] + ca * gx - sa * gy - 0.5  # pixel-centre convention -> array index
    y = c[1] + sa * gx + ca * gy - 0.5
    H, W = grey.shape
    x = np.clip(x, 0, W - 1)
    y = np.clip(y, 0, H - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), W - 2 if W > 1 else 0)
    y0 = np.minimum(np.floor(y).astype(np.int64), H - 2 if H > 1 else 0)
    fx, fy = x - x0, y - y0
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    g = grey
    out = (g[y0, x0] * (1 - fx) * (1 - fy) + g[y0, x1] * fx * (1 - fy) + g[y1, x0] * (1 - fx) * fy
           + g[y1, x1] * fx * fy)
    return out.astype(np.float32)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two patches in [-1, 1] (0 when either is constant)."""
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    d = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / d) if d > 1e-9 else 0.0


def _grey(img: np.ndarray) -> np.ndarray:
    img = img.astype(np.float32)
    return img[..., 0] * np.float32(0.299) + img[..., 1] * np.float32(0.587) + img[..., 2] * np.float32(0.114)


def image_patch(img: np.ndarray, points: np.ndarray) -> np.ndarray:
    """:func:`face_patch` of an RGB uint8 image, converting only the region the patch reads to grey."""
    H, W = img.shape[:2]
    c, s, _ = face_frame(points)
    r = PATCH_HALF * s * math.sqrt(2.0) + 2.0
    x0, y0 = int(max(0, math.floor(c[0] - r))), int(max(0, math.floor(c[1] - r)))
    x1, y1 = int(min(W, math.ceil(c[0] + r))), int(min(H, math.ceil(c[1] + r)))
    if x1 - x0 < 2 or y1 - y0 < 2:  # the face lies outside the image: sample the whole (edge-clamped) image
        return face_patch(_grey(img), points)
    return face_patch(_grey(img[y0:y1, x0:x1]), points - np.array([x0, y0], dtype=np.float64))


def _resize(img: np.ndarray, size_wh: Tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize(size_wh, Image.BILINEAR))


# ----------------------------------------------------------------------------------------------------- tracker
class LandmarkTracker:
    """Streaming 68-point landmark tracker (see the module docstring).

    Example:
        >>> lt = LandmarkTracker()
        >>> for image, t, i in VideoReader("talk.mp4"):       # doctest: +SKIP
        ...     obs = lt.update(image)
        ...     if obs.found:
        ...         points = obs.landmarks.points              # (68, 2)

    Attributes:
        config: :class:`LandmarkTrackerConfig`.
        stats: running totals ``{"frames", "detected", "tracked", "no_face", "lost", "reseeded", "suspect",
            "detect_ms", "predict_ms", "check_ms", "verify_ms", "detections_run", "verifications_run"}``.
    """

    def __init__(self, config: Optional[LandmarkTrackerConfig] = None):
        self.config = config or LandmarkTrackerConfig()
        _import_dlib()  # fail early and clearly when dlib is missing
        self.reset()

    # ---------------------------------------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget the current face (the next frame runs detection)."""
        cfg = self.config
        self._points: Optional[np.ndarray] = None
        self._patch: Optional[np.ndarray] = None
        self._ref_patch: Optional[np.ndarray] = None
        self._scale = cfg.box_scale
        self._offset = cfg.box_offset
        self._since_verify = 0
        self._failed_verifications = 0
        self._last_box: Optional[Box] = None
        self._lost_frames = 0
        self._small = False
        self._frame = 0
        self._ref_s = float("nan")  # scale s of the last fresh detection that agreed with the track
        self._box_s = float("nan")  # scale s of the last predictor box
        self._motion = np.zeros(2)  # the last frame's motion of the box centre (px)
        self._verify_now = False
        self.stats: Dict[str, float] = {k: 0 for k in (
            "frames", "detected", "tracked", "no_face", "lost", "reseeded", "suspect", "detect_ms", "predict_ms",
            "check_ms", "verify_ms", "detections_run", "verifications_run")}

    def state_dict(self) -> dict:
        """Everything :meth:`update` depends on (numpy arrays and numbers), for resuming a video."""
        return {"points": self._points, "patch": self._patch, "ref_patch": self._ref_patch, "scale": self._scale,
                "offset": self._offset, "since_verify": self._since_verify,
                "failed_verifications": self._failed_verifications,
                "last_box": None if self._last_box is None else np.asarray(self._last_box, dtype=np.float64),
                "lost_frames": self._lost_frames, "small": self._small, "frame": self._frame,
                "ref_s": self._ref_s, "box_s": self._box_s, "motion": self._motion.copy(),
                "verify_now": self._verify_now, "stats": dict(self.stats)}

    def load_state_dict(self, d: dict) -> None:
        """Restore :meth:`state_dict` (states saved before 2026-12 load with no reference scale and no motion)."""
        def arr(x, dtype):
            return None if x is None else np.array(x, dtype=dtype)

        self._points = arr(d.get("points"), np.float64)
        self._patch = arr(d.get("patch"), np.float32)
        self._ref_patch = arr(d.get("ref_patch"), np.float32)
        self._scale = float(d["scale"])
        self._offset = float(d["offset"])
        self._since_verify = int(d["since_verify"])
        self._failed_verifications = int(d["failed_verifications"])
        lb = d.get("last_box")
        self._last_box = None if lb is None else tuple(float(v) for v in np.asarray(lb).reshape(4))
        self._lost_frames = int(d["lost_frames"])
        self._small = bool(d["small"])
        self._frame = int(d["frame"])
        self._ref_s = float(d.get("ref_s", float("nan")))
        self._box_s = float(d.get("box_s", float("nan")))
        self._motion = np.array(d.get("motion", np.zeros(2)), dtype=np.float64).reshape(2)
        self._verify_now = bool(d.get("verify_now", False))
        self.stats.update({k: float(v) for k, v in dict(d.get("stats", {})).items()})

    @property
    def tracking(self) -> bool:
        """Whether a face is being tracked (the next frame starts from the predictor, not HOG)."""
        return self._points is not None

    def request_verification(self) -> None:
        """Verify the next tracked frame by a fresh detection whatever the checks say (e.g. when the solver's
        photometric error left the clip's own distribution)."""
        self._verify_now = True

    # ---------------------------------------------------------------------------------------------- steps
    def _predict(self, img: np.ndarray, box: Box) -> Tuple[np.ndarray, bool]:
        """68 points of the predictor in ``box`` (small boxes go through an upsampled crop): (points, upsampled)."""
        cfg = self.config
        dlib = _import_dlib()
        predictor = _dlib_predictor(cfg.predictor_path)
        side = min(box[2] - box[0], box[3] - box[1])
        if side >= cfg.small_face:
            return predict_shape(predictor, img, box), False  # edge-padded where the face crosses the border
        f = int(min(8, max(2, math.ceil(cfg.predictor_size / max(side, 1.0)))))
        m = PREDICTOR_MARGIN * side
        x0, y0 = int(math.floor(box[0] - m)), int(math.floor(box[1] - m))
        x1, y1 = int(math.ceil(box[2] + m)), int(math.ceil(box[3] + m))
        if x1 - x0 < 2 or y1 - y0 < 2:
            return predict_shape(predictor, img, box), False
        crop = _resize(edge_padded_crop(img, x0, y0, x1, y1), ((x1 - x0) * f, (y1 - y0) * f))
        b = ((box[0] - x0) * f, (box[1] - y0) * f, (box[2] - x0) * f, (box[3] - y0) * f)
        shape = predictor(np.ascontiguousarray(crop), dlib.rectangle(*box_to_dlib_ltrb(b)))
        pts = from_dlib_points(shape) / f + np.array([x0, y0], dtype=np.float64)
        return pts, True

    def _next_box(self) -> Tuple[Box, bool, np.ndarray]:
        """The predictor box for this frame from the last points, tied to the face's scale: its scale follows the
        points' by at most ``box_growth`` per frame and stays within ``box_drift`` of the reference scale; its centre
        moves on by the last motion when that was fast. Returns (box, drifted: the points' scale left the band,
        the motion (2,) the box was moved on by)."""
        cfg = self.config
        c, s = box_frame(self._points)
        drifted = False
        if math.isfinite(self._box_s) and self._box_s > 0:
            s = float(np.clip(s, self._box_s / (1 + cfg.box_growth), self._box_s * (1 + cfg.box_growth)))
        if math.isfinite(self._ref_s) and self._ref_s > 0:
            lo, hi = self._ref_s / (1 + cfg.box_drift), self._ref_s * (1 + cfg.box_drift)
            drifted = not lo <= box_frame(self._points)[1] <= hi
            s = float(np.clip(s, lo, hi))
        shift = self._motion if float(np.linalg.norm(self._motion)) > cfg.motion_threshold * s else np.zeros(2)
        self._box_s = s
        return _box_at(c + shift, s, self._scale, self._offset), drifted, shift

    def _hog(self, img: np.ndarray, upsample: int) -> List[FaceDetection]:
        rects, scores, _ = _dlib_face_detector().run(img, int(upsample), float(self.config.threshold))
        return [FaceDetection(box_from_dlib_rect(r), float(s), "dlib") for r, s in zip(rects, scores)]

    def _detect(self, img: np.ndarray) -> Tuple[List[FaceDetection], bool]:
        cfg = self.config
        up = cfg.detect_upsample
        faces = self._hog(img, 0 if up == "auto" else int(up))
        self.stats["detections_run"] += 1
        if faces or up != "auto":
            return faces, False
        H, W = img.shape[:2]
        if not (self._small or self._lost_frames % cfg.upsample_interval == 0):
            return faces, False
        tried = False
        for level in range(1, cfg.max_upsample + 1):
            if H * W * 4 ** level > cfg.max_upsampled_pixels:
                break
            faces = self._hog(img, level)
            self.stats["detections_run"] += 1
            tried = True
            if faces:
                break
        return faces, tried

    def _choose(self, faces: List[FaceDetection]) -> FaceDetection:
        """The face to (re)start on: within ``nearest_window`` frames of a loss, the one nearest the last box among
        those overlapping it or within one box size, of a plausible size (half to twice the last box; the
        face-box counterpart of the tied predictor box, off when ``box_drift`` is inf); else the largest."""
        lb = self._last_box
        if lb is not None and self._lost_frames <= self.config.nearest_window:
            side = max(lb[2] - lb[0], lb[3] - lb[1])
            lc = np.array([(lb[0] + lb[2]) / 2, (lb[1] + lb[3]) / 2])

            def dist(f):
                c = np.array([(f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2])
                return float(np.linalg.norm(c - lc))

            sized = lambda f: not math.isfinite(self.config.box_drift) or 0.5 * side <= f.width <= 2.0 * side  # noqa
            near = [f for f in faces if (box_iou(f.box, lb) > 0.1 or dist(f) < side) and sized(f)]
            if near:
                return min(near, key=dist)
        return max(faces, key=lambda f: f.area)

    def _crop_faces(self, img: np.ndarray, box: Box) -> List[FaceDetection]:
        """HOG on a crop of twice ``box`` around it, resampled so that the box is ``verify_size`` px; the faces in
        full-image coordinates."""
        cfg = self.config
        H, W = img.shape[:2]
        side = max(box[2] - box[0], box[3] - box[1])
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        x0, y0 = int(max(0, math.floor(cx - side))), int(max(0, math.floor(cy - side)))
        x1, y1 = int(min(W, math.ceil(cx + side))), int(min(H, math.ceil(cy + side)))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return []
        f = cfg.verify_size / side
        crop = np.ascontiguousarray(img[y0:y1, x0:x1])
        if abs(f - 1.0) > 0.05:
            crop = _resize(crop, (max(8, int(round((x1 - x0) * f))), max(8, int(round((y1 - y0) * f)))))
            fx, fy = crop.shape[1] / (x1 - x0), crop.shape[0] / (y1 - y0)
        else:
            fx = fy = 1.0
        self.stats["verifications_run"] += 1
        return [FaceDetection((d.box[0] / fx + x0, d.box[1] / fy + y0, d.box[2] / fx + x0, d.box[3] / fy + y0),
                              d.score, "dlib") for d in self._hog(crop, 0)]

    def _verify(self, img: np.ndarray, box: Box) -> bool:
        """The pre-2026-12 verification: a HOG face in the crop overlapping ``box`` (IoU >= 0.3)."""
        return any(box_iou(d.box, box) >= 0.3 for d in self._crop_faces(img, box))

    def _fresh(self, img: np.ndarray, box: Box) -> Optional[Tuple[np.ndarray, FaceDetection, bool]]:
        """A fresh detection near ``box``: the HOG face in the crop around it nearest its centre, of half to twice
        its size, the predictor's points in that face's own HOG box, read again in the box those points give by the
        track's rule: ``(points, face, upsampled)`` or None."""
        side = max(box[2] - box[0], box[3] - box[1])
        c = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
        faces = [d for d in self._crop_faces(img, box) if 0.5 * side <= d.width <= 2.0 * side]
        if not faces:
            return None
        face = min(faces, key=lambda d: float(np.linalg.norm(
            np.array([(d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2]) - c)))
        pts, up = self._read(img, face.box)
        return pts, face, up

    def _read(self, img: np.ndarray, face_box: Box) -> Tuple[np.ndarray, float]:
        """The 68 points of the face in ``face_box`` (a HOG box), read again in the box the track's rule gives them:
        the HOG window falls in coarse steps and dlib reads strong expressions differently in different boxes (on
        expressions_d6 the HOG-box and the re-read points differ by 1.2 % of the eye distance in the median, up to
        15 %), so like is compared with like (the verification and the audit's fresh detections)."""
        pts, _ = self._predict(img, face_box)
        return self._predict(img, box_from_landmarks(pts, self._scale, self._offset))

    def _check(self, img: np.ndarray, pts: np.ndarray, patch: np.ndarray,
               shift: Optional[np.ndarray] = None) -> Tuple[Optional[str], float, float, float]:
        """Why the tracked points are not acceptable (None when they are), and (ncc, shape_error, jump); the jump is
        the inner points' motion beyond ``shift`` (the motion the box was moved on by)."""
        cfg = self.config
        H, W = img.shape[:2]
        c, s, a = face_frame(pts)
        if not np.isfinite(pts).all() or s < cfg.min_radius:
            return "too_small", float("nan"), float("nan"), float("nan")
        inside = ((pts[:, 0] >= 0) & (pts[:, 0] <= W) & (pts[:, 1] >= 0) & (pts[:, 1] <= H)).mean()
        if inside < cfg.min_inside:
            return "left_image", float("nan"), float("nan"), float("nan")
        # upright order in the face's own frame: the mouth below the eyes and the nose
        ca, sa = math.cos(a), math.sin(a)
        down = np.array([-sa, ca])
        eyes = pts[36:48].mean(0)
        if float((pts[48:68].mean(0) - eyes) @ down) < 0.5 * s or float((pts[30] - eyes) @ down) < 0.1 * s:
            return "geometry", float("nan"), float("nan"), float("nan")
        prev = self._points
        pc, ps, _ = face_frame(prev)
        shape_error = _similarity_residual(pts[INNER], prev[INNER]) / s
        jump = float(np.linalg.norm(pts[INNER] - prev[INNER] - (0.0 if shift is None else shift), axis=1).mean()) / ps
        n = ncc(patch, self._patch) if self._patch is not None else 1.0
        if shape_error > cfg.max_shape_error:
            return "geometry", n, shape_error, jump
        if jump > cfg.max_jump or abs(s / ps - 1.0) > cfg.max_scale_change:
            return "jump", n, shape_error, jump
        if n < cfg.min_ncc:
            return "appearance", n, shape_error, jump
        return None, n, shape_error, jump

    def _landmarks(self, pts, box, score, img) -> Landmarks:
        conf = np.ones(68)
        conf[:17] = self.config.jaw_confidence
        return Landmarks(pts, conf, box=box, score=score, detector="dlib-track", image_size=img.shape[:2])

    def _start(self, pts: np.ndarray, face: FaceDetection) -> None:
        """Start (or re-seed) the track on ``pts`` predicted in the HOG box of ``face``: the box's scale and offset
        are measured on that box, and the reference scale set."""
        cfg = self.config
        c, s = box_frame(pts)
        if s > 0 and cfg.measure_box:
            lo, hi = cfg.box_scale_range
            self._scale = float(np.clip(face.width / s, lo, hi))
            lo, hi = cfg.box_offset_range
            self._offset = float(np.clip(((face.box[1] + face.box[3]) / 2 - c[1]) / s, lo, hi))
        self._ref_s = self._box_s = float(s)
        self._motion = np.zeros(2)
        self._since_verify = 0
        self._failed_verifications = 0
        self._lost_frames = 0
        self._small = face.width < cfg.small_face * 1.25
        self._last_box = face.box

    # ---------------------------------------------------------------------------------------------- update
    def update(self, image) -> FaceObservation:
        """Landmarks of the face in one frame (``(H, W, 3)`` uint8 RGB, or anything
        :func:`~facerender.io.to_uint8_rgb` accepts)."""
        cfg = self.config
        img = np.ascontiguousarray(to_uint8_rgb(image))
        if img.ndim != 3 or img.shape[0] < 2 or img.shape[1] < 2:
            raise ValueError(f"image must be (H, W, 3) with H, W >= 2, got {img.shape}")
        self._frame += 1
        self.stats["frames"] += 1
        flags: List[str] = []
        t_pred = t_check = t_verify = t_det = 0.0
        n = se = jp = float("nan")
        had_track = self._points is not None
        if had_track:
            box, drifted, shift = self._next_box()
            t0 = time.perf_counter()
            pts, up = self._predict(img, box)
            if cfg.refine_box > 0:
                # read again in the box the new points give when it moved or grew (the box from the previous frame
                # lags a moving face, and dlib reads a face differently in a box off its centre)
                c0, s0 = box_frame(pts)
                b1 = _box_at(c0, float(np.clip(s0, self._box_s / (1 + cfg.box_growth),
                                                self._box_s * (1 + cfg.box_growth))), self._scale, self._offset)
                side = box[2] - box[0]
                if max(abs(b1[0] - box[0]), abs(b1[1] - box[1]), abs(b1[2] - box[2])) > cfg.refine_box * side:
                    box = b1
                    pts, up = self._predict(img, box)
            t_pred += time.perf_counter() - t0
            t0 = time.perf_counter()
            patch = image_patch(img, pts)
            # the motion beyond the predicted one (a steady fast move is not suspect; a sudden one is)
            reason, n, se, jp = self._check(img, pts, patch, shift)
            t_check += time.perf_counter() - t0
            suspect = reason is None and (drifted or self._verify_now or jp > cfg.suspect_jump
                                          or n < cfg.suspect_ncc or se > cfg.suspect_shape)
            periodic = bool(cfg.verify_interval) and self._since_verify + 1 >= cfg.verify_interval
            status, score = "tracked", None
            if suspect:
                flags.append("suspect")
                self.stats["suspect"] += 1
            self._verify_now = False
            if reason is None and (suspect or periodic):
                t0 = time.perf_counter()
                self._since_verify = 0
                if cfg.verify_landmarks:
                    fresh = self._fresh(img, box)
                    if fresh is None:
                        ok = False
                    else:
                        fpts, face, fup = fresh
                        ok = landmark_agreement(pts, fpts) <= cfg.agreement
                        if not ok:  # the fresh detection wins: re-seed the track from it
                            flags.append("reseeded")
                            self.stats["reseeded"] += 1
                            pts, up, box, status, score = fpts, fup, face.box, "detected", face.score
                            patch = image_patch(img, pts)
                            self._start(pts, face)
                            self._ref_patch = patch
                else:
                    fresh, ok = None, self._verify(img, box_from_landmarks(pts, self._scale, self._offset))
                t_verify += time.perf_counter() - t0
                if ok:
                    flags.append("verified")
                    self._failed_verifications = 0
                    self._ref_patch = patch
                    self._ref_s = float(box_frame(pts)[1])
                elif "reseeded" not in flags:
                    flags.append("verify_failed")
                    self._failed_verifications += 1
                    ref_ncc = ncc(patch, self._ref_patch) if self._ref_patch is not None else 1.0
                    if suspect and cfg.verify_landmarks:
                        reason = "unverified"
                    elif (self._failed_verifications >= cfg.max_failed_verifications
                            or ref_ncc < cfg.min_reference_ncc):
                        reason = "verification"
            else:
                self._since_verify += 1
            if reason is None:
                if up:
                    flags.append("small_face")
                if status == "tracked":
                    self._motion = box_frame(pts)[0] - box_frame(self._points)[0]
                    self.stats["tracked"] += 1
                else:
                    self.stats["detected"] += 1
                self._points, self._patch = pts, patch
                self._last_box = box_from_landmarks(pts, self._scale, self._offset)
                return self._finish(FaceObservation(self._landmarks(pts, box, score, img), status, tuple(flags),
                                                    t_det, t_pred, t_check, t_verify, n, se, jp))
            flags.append(f"lost:{reason}")
            self.stats["lost"] += 1
            log.debug("frame %d: track lost (%s)", self._frame - 1, reason)
            self._points = self._patch = None
            self._lost_frames = 0
        # (re)detection
        t0 = time.perf_counter()
        faces, upsampled = self._detect(img)
        t_det += time.perf_counter() - t0
        if upsampled:
            flags.append("upsampled_detection")
        if not faces:
            self._lost_frames += 1
            self.stats["no_face"] += 1
            if self._last_box is not None:
                flags.append("lost")  # a face was seen before and is not found now
            return self._finish(FaceObservation(None, "no_face", tuple(flags), t_det, t_pred, t_check, t_verify,
                                                n, se, jp))
        face = self._choose(faces)
        t0 = time.perf_counter()
        pts, up = self._predict(img, face.box)
        t_pred += time.perf_counter() - t0
        if up:
            flags.append("small_face")
        t0 = time.perf_counter()
        redetected = had_track or self._last_box is not None
        self._start(pts, face)
        patch = image_patch(img, pts)
        t_check += time.perf_counter() - t0
        if redetected:
            flags.append("redetected")
        self._points, self._patch, self._ref_patch = pts, patch, patch
        self.stats["detected"] += 1
        return self._finish(FaceObservation(self._landmarks(pts, face.box, face.score, img), "detected", tuple(flags),
                                            t_det, t_pred, t_check, t_verify, n, se, jp))

    def _finish(self, obs: FaceObservation) -> FaceObservation:
        st = self.stats
        st["detect_ms"] += obs.detect_ms * 1e3
        st["predict_ms"] += obs.predict_ms * 1e3
        st["check_ms"] += obs.check_ms * 1e3
        st["verify_ms"] += obs.verify_ms * 1e3
        return replace(obs, detect_ms=obs.detect_ms * 1e3, predict_ms=obs.predict_ms * 1e3,
                       check_ms=obs.check_ms * 1e3, verify_ms=obs.verify_ms * 1e3)
