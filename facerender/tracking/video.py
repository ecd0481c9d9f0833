"""Track a face through a video: keyframe bundling, then a streaming per-frame pass, resumable, with overlays.

:func:`track_video` runs three passes over the file (each decodes the video as a stream: frames are never held,
so memory does not grow with the video's length):

1. **Keyframes.** Up to ``keyframe_candidates`` (60) frames evenly spaced over the video are decoded, the
   face is detected in each (HOG + the 68-point predictor, :class:`~facerender.tracking.facebox.LandmarkTracker`
   from scratch per candidate) and only the landmarks are kept. ``keyframes`` (8) of them are chosen for pose and
   expression diversity by farthest-point sampling on a descriptor of the normalised landmarks
   (:func:`keyframe_descriptor`: the 68 points minus their inner-point centroid, divided by their RMS radius,
   turned so that the eye line is level; jaw points weighted 0.5), starting from the candidate nearest the median
   descriptor. In 2-D, yaw and pitch change that shape as much as expressions do, so the spread covers both. The
   chosen frames are decoded again (only those are held) and the solver's :meth:`FaceTracker.bundle` estimates
   identity, albedo and the camera from them jointly (Face2Face's model-based bundling). The open-eye EAR of the
   video comes from the candidates too (:func:`~facerender.tracking.eyes.estimate_open_ear`).
2. **Main pass.** Per frame: landmarks (:class:`~facerender.tracking.facebox.LandmarkTracker`: predictor in a box
   following the face, HOG only on loss), smoothed over time by a fixed-delay Whittaker-Henderson smoother
   (:class:`~facerender.tracking.smoothing.StreamingWhittaker`, ``smoothing_window`` 11: frame ``i`` goes on
   when frame ``i + 5`` has been read; gaps and fresh detections break the window), then gaze and blink
   (:class:`~facerender.tracking.eyes.EyeTracker`, on the detected points, with the previous frame's head rotation)
   and :meth:`FaceTracker.track_frame` on the smoothed points (pose, expression, lighting, warm-started, temporal
   term; frames without a face are bridged by the solver and flagged). Results go to an append-only chunk store in
   ``DIR/.track/`` every ``chunk_size`` frames, with the trackers' and the smoother's states (its pending frames
   included); on an exception (including Ctrl-C) the frames finished so far are written as a last chunk, so a later
   call resumes from the last written frame and gives the same parameters as an uninterrupted run.
3. **Outputs.** ``params.npz`` (assembled key by key from the chunks), ``overlay.mp4`` (a third pass: each frame
   with the tracked face rendered over it and the landmarks drawn; the overlay is always rendered from the stored
   parameters, so an interrupted run needs no overlay state), ``energy_fps.png`` and ``summary.json``. Every file
   is written atomically; the chunk store is removed once all of them exist.

Bad input never crashes the tracker: an unreadable, empty or non-video file raises
:class:`~facerender.errors.VideoError` before anything is written (a folder created for the run is removed again);
a video in which none of the sampled frames (and none of up to 600 frames scanned after that) shows a face raises
:class:`~facerender.errors.NoFaceError`; frames without a face are flagged and bridged; non-finite solver output is
replaced by the previous frame's and flagged ``nan_replaced``; a decoding error after some frames ends the video
there (flagged in the summary). Timestamps are the container's (variable frame rates are kept).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import NoFaceError, VideoError
from ..io.atomic import atomic_write
from ..io.video import VideoReader, VideoWriter
from .eyes import (BLINK_NAMES, GAZE_NAMES, EyeConfig, EyeTracker, GazeCalibration, ICT_GAZE_CALIBRATION,
                   eye_aspect_ratio, estimate_open_ear)
from .facebox import FaceObservation, LandmarkTracker, LandmarkTrackerConfig, face_frame
from .smoothing import StreamingLinearSmoother, make_smoother

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

__all__ = ["TrackConfig", "TrackResult", "Track", "track_video", "load_track", "render_overlay", "select_keyframes",
           "keyframe_descriptor", "landmark_jitter", "psnr_summary", "STATE_DIR", "FORMAT_VERSION",
           "SAVGOL_SMOOTHING"]

#: The landmark smoothing of the 2026-11 releases, Savitzky-Golay 5 / order 2, as ``TrackConfig`` fields
#: (``facerender track --smoothing savgol``; the benchmarks' baseline).
SAVGOL_SMOOTHING = MappingProxyType({"smoothing": "savgol", "smoothing_window": 5, "smoothing_order": 2})
#: Name of the chunk store inside the output folder.
STATE_DIR = ".track"
#: Version of params.npz and of the chunk store (2: smoothed landmarks, fixed-vertex model landmarks, the smoother's
#: state in the snapshots).
FORMAT_VERSION = 3
_MAX_AUDIO_BYTES = 64 * 1024 * 1024


# ---------------------------------------------------------------------------------------------------------- config
@dataclass
class TrackConfig:
    """Settings of :func:`track_video`.

    Attributes:
        tracker: the solver's :class:`~facerender.tracking.tracker.TrackerConfig` (None: its defaults).
        landmarks: :class:`~facerender.tracking.facebox.LandmarkTrackerConfig`.
        eyes: :class:`~facerender.tracking.eyes.EyeConfig`.
        keyframe_candidates: frames sampled for keyframe selection (evenly spaced).
        keyframes: keyframes given to the bundling.
        chunk_size: frames per chunk of the resumable store.
        fix_blink: pass the EAR-based ``eyeBlink_L/R`` to the solver as fixed weights (default: the solver fits the
            blinks from the eyelid landmarks; the EAR-based weights are stored either way).
        overlay_alpha: opacity of the render in the overlay video.
        overlay_crf, overlay_preset: x264 settings of the overlay video.
        max_scan: frames scanned for a face when no sampled candidate shows one.
        smoothing: the fixed-delay smoother of the detected landmarks before the solver
            (:mod:`~facerender.tracking.smoothing`): ``"whittaker"`` (Whittaker-Henderson with weight
            ``smoothing_lambda`` on the squared second differences; the default) or ``"savgol"`` (Savitzky-Golay of
            polynomial order ``smoothing_order``).
        smoothing_window: odd window in frames; the solver sees frame ``i`` when frame ``i + smoothing_window // 2``
            has been read. Window 1 turns the smoothing off (the solver gets the detected points, frame by frame).
        smoothing_lambda, smoothing_order: the Whittaker weight and the Savitzky-Golay order (each used by its
            method only).
    """

    tracker: Any = None
    landmarks: LandmarkTrackerConfig = field(default_factory=LandmarkTrackerConfig)
    eyes: EyeConfig = field(default_factory=EyeConfig)
    keyframe_candidates: int = 60
    keyframes: int = 8
    chunk_size: int = 100
    fix_blink: bool = False
    overlay_alpha: float = 0.6
    overlay_crf: float = 20
    overlay_preset: str = "veryfast"
    max_scan: int = 600
    smoothing: str = "whittaker"
    smoothing_window: int = 11
    smoothing_lambda: float = 0.5
    smoothing_order: int = 2

    def __post_init__(self):
        if self.keyframe_candidates < 1 or self.keyframes < 1 or self.chunk_size < 1 or self.max_scan < 0:
            raise ValueError(f"keyframe_candidates, keyframes and chunk_size must be >= 1 and max_scan >= 0, got "
                             f"{self.keyframe_candidates}, {self.keyframes}, {self.chunk_size}, {self.max_scan}")
        if not 0 <= self.overlay_alpha <= 1:
            raise ValueError(f"overlay_alpha must lie in [0, 1], got {self.overlay_alpha}")
        self.make_smoother()  # ValueError on bad settings

    def make_smoother(self) -> StreamingLinearSmoother:
        """A fresh landmark smoother with these settings."""
        return make_smoother(self.smoothing, self.smoothing_window, self.smoothing_order, self.smoothing_lambda)


def _jsonable(obj):
    if is_dataclass(obj) and not isinstance(obj, type):
        return {k: _jsonable(v) for k, v in asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON: NaN / inf become null
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


# ---------------------------------------------------------------------------------------------------------- results
@dataclass
class TrackResult:
    """What :func:`track_video` wrote.

    Attributes:
        out_dir, params_path, overlay_path (None without overlay), plot_path, summary_path.
        frames: frames tracked; frames_with_face: frames where landmarks were found.
        resumed_from: the frame the main pass started at (0 for a fresh run).
        timings: seconds per stage (see ``summary.json``); fps: frames per second of the main pass.
        summary: the content of ``summary.json``.
    """

    out_dir: Path
    params_path: Path
    overlay_path: Optional[Path]
    plot_path: Optional[Path]
    summary_path: Path
    frames: int
    frames_with_face: int
    resumed_from: int
    timings: Dict[str, float]
    fps: float
    summary: Dict[str, Any]


@dataclass
class Track:
    """A tracked video as stored in ``params.npz`` (:func:`load_track`). ``N`` frames, ``K`` expressions.

    Per frame: ``index (N,)``, ``time (N,)`` seconds (the container's timestamps), ``rotation (N, 3)`` axis-angle
    (model space), ``translation (N, 3)`` cm (camera space), ``expression (N, K)``, ``sh (N, 9, 3)``, ``gaze (N, 8)``
    (``gaze_names``, eyeLook* weights given to the solver), ``blink (N, 2)`` (EAR-based eyeBlink_L, eyeBlink_R),
    ``eyes_closed (N, 2)`` bool (left, right), ``iris (N, 2, 2)`` pixels (right, left eye; NaN when not found),
    ``landmarks (N, 68, 2)`` the detected points (raw, NaN without a face), ``landmarks_smoothed (N, 68, 2)`` the
    smoothed points given to the solver (NaN without a face; equal to ``landmarks`` with smoothing off and in files
    written before it existed), ``landmark_confidence (N, 68)``, ``landmarks_2d (N, 68, 2)`` the model's fitted
    landmarks (the jaw points slide along the contour), ``model_landmarks_2d (N, 68, 2)`` the projection of the
    model's fixed iBUG-68 vertices (a copy of ``landmarks_2d`` in files written before it existed, or when the
    solver gives none), ``face_found (N,)`` bool, ``status (N,)``
    (``detected`` / ``tracked`` / ``no_face``), ``flags (N,)`` comma-separated strings (also ``flag_bits`` over
    ``flag_names``), ``energy (N,)`` (NaN where no solve ran), ``solve_ms (N,)``, ``frame_ms (N,)``.

    Per video: ``identity (K_id,)``, ``albedo (V_face, 3)`` or None, ``focal`` px, ``principal_point (2,)`` px,
    ``image_size (H, W)``, ``fps``, ``model_name``, ``expression_names``, ``keyframes`` (frame indices), ``video``.
    """

    index: np.ndarray
    time: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    expression: np.ndarray
    sh: np.ndarray
    gaze: np.ndarray
    blink: np.ndarray
    eyes_closed: np.ndarray
    iris: np.ndarray
    landmarks: np.ndarray
    landmarks_smoothed: np.ndarray
    landmark_confidence: np.ndarray
    landmarks_2d: np.ndarray
    model_landmarks_2d: np.ndarray
    face_found: np.ndarray
    status: np.ndarray
    flags: np.ndarray
    flag_bits: np.ndarray
    flag_names: Tuple[str, ...]
    energy: np.ndarray
    psnr: np.ndarray
    solve_ms: np.ndarray
    frame_ms: np.ndarray
    identity: np.ndarray
    albedo: Optional[np.ndarray]
    focal: float
    principal_point: np.ndarray
    image_size: Tuple[int, int]
    fps: float
    model_name: str
    expression_names: Tuple[str, ...]
    gaze_names: Tuple[str, ...]
    keyframes: np.ndarray
    video: str

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def has_flag(self, name: str) -> np.ndarray:
        """``(N,)`` bool: frames carrying the flag ``name``."""
        if name in self.flag_names:
            return (self.flag_bits >> self.flag_names.index(name)) & 1 == 1
        return np.array([name in str(f).split(",") for f in self.flags], dtype=bool)

    def camera(self, dtype=None):
        """The :class:`~facerender.cameras.PinholeCamera` of the video (batch 1)."""
        import torch

        from ..cameras import PinholeCamera

        dt = dtype or torch.float32
        t = lambda v: torch.tensor([float(v)], dtype=dt)  # noqa: E731
        return PinholeCamera(fx=t(self.focal), fy=t(self.focal), cx=t(self.principal_point[0]),
                             cy=t(self.principal_point[1]), image_size=tuple(self.image_size))


_PER_FRAME_KEYS = ("index", "time", "rotation", "translation", "expression", "sh", "gaze", "blink", "eyes_closed",
                   "iris", "iris_confidence", "ear", "landmarks", "landmarks_smoothed", "landmark_confidence",
                   "landmarks_2d", "model_landmarks_2d", "box", "face_found", "status", "flags", "energy", "psnr",
                   "solve_ms", "frame_ms", "decode_ms", "landmarks_ms", "eyes_ms")


def load_track(path: PathLike) -> Track:
    """Read ``params.npz`` written by :func:`track_video` (a folder or the file itself).

    Raises:
        FileNotFoundError: no params.npz there.
        ValueError: the file is not a track written by this package (the message names what is missing).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "params.npz"
    if not p.is_file():
        raise FileNotFoundError(f"no tracking parameters at {str(p)!r} (run 'facerender track VIDEO -o DIR' first)")
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{str(p)!r} is not a readable .npz file: {e}") from e
    with z:
        need = {"index", "rotation", "translation", "expression", "sh", "identity", "focal", "format_version"}
        missing = sorted(need - set(z.files))
        if missing:
            raise ValueError(f"{str(p)!r} is not a facerender track: missing {missing}")
        d = {k: z[k] for k in z.files}
    albedo = d.get("albedo")
    if albedo is not None and albedo.size == 0:
        albedo = None
    return Track(
        index=d["index"], time=d["time"], rotation=d["rotation"], translation=d["translation"],
        expression=d["expression"], sh=d["sh"], gaze=d["gaze"], blink=d["blink"], eyes_closed=d["eyes_closed"],
        iris=d["iris"], landmarks=d["landmarks"],
        landmarks_smoothed=d["landmarks_smoothed"] if "landmarks_smoothed" in d else d["landmarks"].copy(),
        landmark_confidence=d["landmark_confidence"], landmarks_2d=d["landmarks_2d"],
        model_landmarks_2d=d["model_landmarks_2d"] if "model_landmarks_2d" in d else d["landmarks_2d"].copy(),
        face_found=d["face_found"], status=d["status"], flags=d["flags"],
        flag_bits=d["flag_bits"], flag_names=tuple(str(s) for s in d["flag_names"]), energy=d["energy"],
        psnr=d["psnr"] if "psnr" in d else np.full(len(d["index"]), np.nan, np.float32),
        solve_ms=d["solve_ms"], frame_ms=d["frame_ms"], identity=d["identity"], albedo=albedo,
        focal=float(d["focal"]), principal_point=d["principal_point"],
        image_size=tuple(int(v) for v in d["image_size"]), fps=float(d["fps"]), model_name=str(d["model_name"]),
        expression_names=tuple(str(s) for s in d["expression_names"]),
        gaze_names=tuple(str(s) for s in d["gaze_names"]), keyframes=d["keyframes"], video=str(d["video"]))


# ---------------------------------------------------------------------------------------------------------- keyframes
def keyframe_descriptor(points) -> np.ndarray:
    """``(136,)`` descriptor of 68 landmarks for keyframe selection: the points minus the centroid of the inner
    points, divided by their RMS radius, rotated so that the eye line is level; the 17 jaw points weighted 0.5."""
    p = np.asarray(points, dtype=np.float64).reshape(68, 2)
    c, s, a = face_frame(p)
    ca, sa = math.cos(-a), math.sin(-a)
    q = (p - c) @ np.array([[ca, sa], [-sa, ca]]) / max(s, 1e-9)
    q[:17] *= 0.5
    return q.reshape(-1)


def select_keyframes(descriptors, k: int) -> List[int]:
    """Farthest-point sampling of ``k`` rows of ``descriptors (M, D)``, starting from the row nearest the median.
    Returns row indices in selection order (all rows when ``M <= k``)."""
    D = np.asarray(descriptors, dtype=np.float64)
    M = D.shape[0]
    if M == 0:
        return []
    first = int(np.argmin(np.linalg.norm(D - np.median(D, 0), axis=1)))
    chosen = [first]
    dist = np.linalg.norm(D - D[first], axis=1)
    while len(chosen) < min(k, M):
        i = int(np.argmax(dist))
        if dist[i] <= 0:
            break
        chosen.append(i)
        dist = np.minimum(dist, np.linalg.norm(D - D[i], axis=1))
    return chosen


# ---------------------------------------------------------------------------------------------------------- state store
def _pack(obj, arrays: Dict[str, np.ndarray], prefix: str = "s"):
    """A JSON tree of ``obj`` with numpy arrays / tensors moved into ``arrays`` (referenced by key)."""
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        key = f"{prefix}_{len(arrays)}"
        arrays[key] = np.array(obj)
        return {"__array__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_pack(k, arrays, prefix), _pack(v, arrays, prefix)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {("__tuple__" if isinstance(obj, tuple) else "__list__"): [_pack(v, arrays, prefix) for v in obj]}
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in the tracking state")


def _unpack(tree, arrays):
    if isinstance(tree, dict):
        if "__array__" in tree:
            return np.array(arrays[tree["__array__"]])
        if "__dict__" in tree:
            return {_unpack(k, arrays): _unpack(v, arrays) for k, v in tree["__dict__"]}
        if "__tuple__" in tree:
            return tuple(_unpack(v, arrays) for v in tree["__tuple__"])
        if "__list__" in tree:
            return [_unpack(v, arrays) for v in tree["__list__"]]
        if "__float__" in tree:
            return float(tree["__float__"])
    return tree


def _write_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _write_json(path: Path, obj) -> None:
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False)
    with atomic_write(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


class _Store:
    """The resumable chunk store ``DIR/.track/``: ``manifest.json``, ``video.npz`` (bundling), ``chunk_NNNNNN.npz``
    (per-frame arrays) and ``state_NNNNNN.npz`` (trackers after that chunk; only the newest is kept)."""

    def __init__(self, out_dir: Path):
        self.dir = out_dir / STATE_DIR
        self.manifest_path = self.dir / "manifest.json"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def clear(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    def create(self, manifest: dict) -> None:
        self.clear()
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.manifest_path, manifest)

    def read_manifest(self) -> Optional[dict]:
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write_manifest(self, manifest: dict) -> None:
        _write_json(self.manifest_path, manifest)

    def write_video(self, arrays: Dict[str, np.ndarray]) -> None:
        _write_npz(self.dir / "video.npz", arrays)

    def read_video(self) -> Dict[str, np.ndarray]:
        with np.load(self.dir / "video.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def chunk_path(self, k: int) -> Path:
        return self.dir / f"chunk_{k:06d}.npz"

    def state_path(self, k: int) -> Path:
        return self.dir / f"state_{k:06d}.npz"

    def write_chunk(self, k: int, arrays: Dict[str, np.ndarray], state: dict) -> None:
        _write_npz(self.chunk_path(k), arrays)
        packed: Dict[str, np.ndarray] = {}
        tree = _pack(state, packed)
        packed["__tree__"] = np.array(json.dumps(tree))
        _write_npz(self.state_path(k), packed)

    def read_chunk(self, k: int) -> Dict[str, np.ndarray]:
        with np.load(self.chunk_path(k), allow_pickle=False) as z:
            return {key: z[key] for key in z.files}

    def read_chunk_key(self, k: int, key: str) -> np.ndarray:
        with np.load(self.chunk_path(k), allow_pickle=False) as z:
            return z[key]

    def read_state(self, k: int) -> dict:
        with np.load(self.state_path(k), allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
        return _unpack(json.loads(str(arrays.pop("__tree__"))), arrays)

    def drop_state(self, k: int) -> None:
        try:
            self.state_path(k).unlink()
        except OSError:
            pass


def _fingerprint(video: Path, reader: VideoReader) -> dict:
    st = video.stat()
    return {"path": str(video.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
            "size": list(reader.size), "fps": reader.fps}


def _settings_hash(config: TrackConfig, max_frames, model) -> str:
    blob = json.dumps({"config": _jsonable(config), "max_frames": max_frames,
                       "model": [getattr(model, "name", "?"), int(getattr(model, "num_expression", 0)),
                                 int(getattr(model, "num_identity", 0))], "version": FORMAT_VERSION},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------- helpers
def _frames(reader: VideoReader, start: int = 0, stop: Optional[int] = None,
            timer: Optional[Dict[str, float]] = None) -> Iterator:
    """Frames ``start <= index < stop`` of a reader; decoding time (including skipped frames) goes to ``timer``.
    A decoding error after the first frame ends the stream (recorded in ``timer["decode_error"]``)."""
    it = iter(reader)
    while True:
        t0 = time.perf_counter()
        try:
            fr = next(it)
        except StopIteration:
            return
        except VideoError as e:
            if timer is not None:
                timer["decode_error"] = str(e)
            log.warning("%s; the video is treated as ending there", e)
            return
        finally:
            if timer is not None:
                timer["decode"] = timer.get("decode", 0.0) + time.perf_counter() - t0
        if stop is not None and fr.index >= stop:
            it.close()
            return
        if fr.index >= start:
            yield fr


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


def _finite_or(value: np.ndarray, fallback: np.ndarray) -> Tuple[np.ndarray, bool]:
    v = np.asarray(value)
    if v.shape == np.shape(fallback) and np.isfinite(v).all():
        return v, False
    return np.array(fallback, copy=True), True


# ---------------------------------------------------------------------------------------------------------- main
def track_video(video: PathLike, out_dir: PathLike, model=None, config: Optional[TrackConfig] = None, *,
                max_frames: Optional[int] = None, overlay: bool = True, resume: bool = True,
                progress: bool = True, tracker_factory: Optional[Callable] = None,
                callback: Optional[Callable[[int, Any], None]] = None) -> TrackResult:
    """Track the face of a video and write ``params.npz``, ``overlay.mp4``, ``energy_fps.png``, ``summary.json``.

    Args:
        video: the video file.
        out_dir: output folder (created; existing outputs are replaced atomically at the end).
        model: the face model (default ``morphable_models.load_ict()``).
        config: :class:`TrackConfig`.
        max_frames: track only the first ``max_frames`` frames.
        overlay: write ``overlay.mp4``.
        resume: continue a previous interrupted run found in ``out_dir`` (same video file and settings); False
            discards it.
        progress: show a progress bar (tqdm, frames per second) on stderr.
        tracker_factory: ``(model, tracker_config, image_size, fps) -> tracker`` with the interface of
            :class:`~facerender.tracking.tracker.FaceTracker` (default: that class).
        callback: called as ``callback(frame_index, frame_result)`` after each tracked frame (an exception raised
            there interrupts the run like Ctrl-C: the finished frames are kept for resuming).
    Returns:
        :class:`TrackResult`.
    Raises:
        VideoError: the video cannot be read or holds no frame (nothing is left in ``out_dir``).
        NoFaceError: no face in any sampled frame.
        FileNotFoundError: no such video.
    """
    cfg = config or TrackConfig()
    video = Path(video)
    out_dir = Path(out_dir)
    if max_frames is not None and int(max_frames) < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    reader = VideoReader(video)  # VideoError / FileNotFoundError before anything is written
    created = not out_dir.exists()
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"output {str(out_dir)!r} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _track(reader, video, out_dir, model, cfg, max_frames, overlay, resume, progress, tracker_factory,
                      callback)
    except BaseException:
        # nothing worth resuming yet (no frame tracked): leave nothing behind
        store = _Store(out_dir)
        done = (store.read_manifest() or {}).get("frames_done", 0) if store.exists() else 0
        if not done:
            store.clear()
            if created and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()
        raise


def _load_model(model):
    if model is None:
        from morphable_models import load_ict

        model = load_ict()
    return model


def _make_tracker(tracker_factory, model, cfg: TrackConfig, size, fps):
    if tracker_factory is None:
        from .tracker import FaceTracker, TrackerConfig

        return FaceTracker(model, cfg.tracker or TrackerConfig(), size, fps)
    return tracker_factory(model, cfg.tracker, size, fps)


def _keyframe_pass(reader: VideoReader, cfg: TrackConfig, limit: Optional[int], timer: Dict[str, float]):
    """Sample candidates, detect, select keyframes. Returns (candidate records, selected records, frames seen)."""
    n = reader.frame_count if limit is None else min(reader.frame_count or limit, limit)
    if n <= 0:
        n = limit or cfg.keyframe_candidates
    m = min(cfg.keyframe_candidates, n)
    wanted = set(np.unique(np.round(np.linspace(0, n - 1, m)).astype(int)).tolist())
    lt = LandmarkTracker(cfg.landmarks)
    records, seen = [], 0
    for fr in _frames(reader, 0, limit, timer):
        seen += 1
        if fr.index not in wanted:
            continue
        t0 = time.perf_counter()
        lt.reset()
        obs = lt.update(fr.image)
        timer["keyframe_landmarks"] = timer.get("keyframe_landmarks", 0.0) + time.perf_counter() - t0
        if obs.found:
            records.append({"index": fr.index, "points": obs.landmarks.points.copy(),
                            "confidence": obs.landmarks.confidence.copy()})
    if seen == 0:
        raise VideoError(f"{str(reader.path)!r} holds no decodable video frame")
    if not records and cfg.max_scan > 0:
        # a face may show only between the samples: scan up to max_scan frames evenly
        step = max(1, int(math.ceil(seen / cfg.max_scan)))
        log.info("no face in %d sampled frames; scanning every %d-th frame", len(wanted), step)
        for fr in _frames(reader, 0, limit, timer):
            if fr.index % step or fr.index in wanted:
                continue
            lt.reset()
            obs = lt.update(fr.image)
            if obs.found:
                records.append({"index": fr.index, "points": obs.landmarks.points.copy(),
                                "confidence": obs.landmarks.confidence.copy()})
                if len(records) >= cfg.keyframes:
                    break
    if not records:
        raise NoFaceError(f"no face found in {str(reader.path)!r}: none of {len(wanted)} sampled frames (and none of "
                          f"the frames scanned after them) shows a face that the dlib detector finds "
                          f"({reader.width}x{reader.height}, threshold {cfg.landmarks.threshold})")
    desc = np.stack([keyframe_descriptor(r["points"]) for r in records])
    chosen = sorted(select_keyframes(desc, cfg.keyframes), key=lambda i: records[i]["index"])
    return records, [records[i] for i in chosen], seen


def _fetch_frames(reader: VideoReader, indices: Sequence[int], timer) -> Dict[int, np.ndarray]:
    want = set(int(i) for i in indices)
    out: Dict[int, np.ndarray] = {}
    last = max(want)
    for fr in _frames(reader, 0, last + 1, timer):
        if fr.index in want:
            out[fr.index] = fr.image
    return out


def _track(reader, video, out_dir, model, cfg, max_frames, overlay, resume, progress, tracker_factory, callback):
    t_start = time.perf_counter()
    timer: Dict[str, float] = {}
    model = _load_model(model)
    H, W = reader.size
    fps = reader.fps if reader.fps > 0 else 30.0
    store = _Store(out_dir)
    fp = _fingerprint(video, reader)
    shash = _settings_hash(cfg, max_frames, model)
    manifest = store.read_manifest() if (resume and store.exists()) else None
    if manifest is not None and (manifest.get("video") != fp or manifest.get("settings") != shash
                                 or manifest.get("version") != FORMAT_VERSION):
        log.warning("the partial run in %s was made with another video or other settings; starting again",
                    store.dir)
        manifest = None
    if manifest is not None:
        try:
            vid = store.read_video()
            k_last = len(manifest["chunks"]) - 1
            state = store.read_state(k_last) if k_last >= 0 else None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            log.warning("the partial run in %s is unreadable (%s); starting again", store.dir, e)
            manifest = None
    tracker = _make_tracker(tracker_factory, model, cfg, (H, W), fps)
    if manifest is None:
        store.create({"version": FORMAT_VERSION, "video": fp, "settings": shash, "frames_done": 0, "chunks": [],
                      "complete": False})
        manifest = store.read_manifest()
        t0 = time.perf_counter()
        records, keys, seen = _keyframe_pass(reader, cfg, max_frames, timer)
        timer["keyframes"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        frames = _fetch_frames(reader, [r["index"] for r in keys], timer)
        keys = [r for r in keys if r["index"] in frames]
        if not keys:
            raise VideoError(f"{str(video)!r}: the keyframes could not be decoded again")
        vp = tracker.bundle([frames[r["index"]] for r in keys], [np.array(r["points"]) for r in keys],
                            [np.array(r["confidence"]) for r in keys])
        del frames
        timer["bundle"] = time.perf_counter() - t0
        ears = np.stack([eye_aspect_ratio(r["points"]) for r in records])
        open_ear = estimate_open_ear(ears) if len(records) >= 5 else np.full(2, np.nan)
        vid = {"identity": np.asarray(vp.get("identity", np.zeros(0)), dtype=np.float32),
               "albedo": np.asarray(vp["albedo"], dtype=np.float32) if vp.get("albedo") is not None
               else np.zeros((0, 3), np.float32),
               "focal": np.float64(vp.get("focal", getattr(tracker, "focal", 0.0))),
               "principal_point": np.asarray(vp.get("principal_point", (W / 2.0, H / 2.0)), dtype=np.float64),
               "keyframes": np.array([r["index"] for r in keys], dtype=np.int64),
               "candidates": np.array([r["index"] for r in records], dtype=np.int64),
               "open_ear": open_ear.astype(np.float64)}
        store.write_video(vid)
        manifest.update({"keyframes": vid["keyframes"].tolist(), "timings": dict(timer)})
        store.write_manifest(manifest)
        state = None
        start = 0
    else:
        start = int(manifest["frames_done"])
        timer.update({k: v for k, v in manifest.get("timings", {}).items() if isinstance(v, (int, float))})
        log.info("resuming %s at frame %d", video, start)
    # eye model of this face
    try:
        calib = GazeCalibration.from_model(model, vid["identity"] if vid["identity"].size else None)
    except (KeyError, ValueError, AttributeError, StopIteration, RuntimeError) as e:
        log.info("eye model from the face model failed (%s); using ICT's mean face", e)
        calib = ICT_GAZE_CALIBRATION
    open_ear = vid["open_ear"] if np.isfinite(vid["open_ear"]).all() else None
    lt = LandmarkTracker(cfg.landmarks)
    et = EyeTracker(cfg.eyes, calib, open_ear)
    smoother = cfg.make_smoother()
    pos = {"consumed": start, "observed": start}
    prev = None
    if state is not None:
        tracker.load_state_dict(state["tracker"])
        lt.load_state_dict(state["landmarks"])
        et.load_state_dict(state["eyes"])
        smoother.load_state_dict(state["smoother"])
        prev = state["prev"]
        pos["observed"] = int(state["observed"])
    if not manifest.get("complete"):
        _main_pass(reader, store, manifest, tracker, lt, et, smoother, model, cfg, pos, max_frames, progress,
                   callback, timer, prev)
    timer["track_wall"] = timer.get("track_wall", 0.0)
    return _finish(reader, video, out_dir, store, manifest, model, vid, cfg, overlay, progress, timer, start,
                   t_start, fps)


def _main_pass(reader, store: _Store, manifest, tracker, lt, et, smoother: StreamingLinearSmoother, model,
               cfg: TrackConfig, pos: Dict[str, int], max_frames, progress, callback, timer, prev):
    """The tracking pass, a producer and a consumer with the landmark smoother between them.

    Producer, per decoded frame: :meth:`LandmarkTracker.update`; the frame, its detected points and their
    details go into the smoother. Consumer, per frame the smoother hands on (``smoother.delay`` frames later, with
    the smoothed points): :meth:`EyeTracker.update` (on the detected points, with the previous frame's solved head
    rotation), :meth:`FaceTracker.track_frame` on the smoothed points, storing. ``pos``: ``consumed`` (frames
    stored; the first frame handed on next) and ``observed`` (frames read; the next frame to decode). After each
    consumed frame the states are snapshot: the solver, the landmark tracker (at the producer position), the eye
    tracker, the smoother with its pending frames (images included: at most ``delay`` of them) and both positions.
    """
    K = int(getattr(model, "num_expression", 0))
    start = pos["consumed"]
    total = reader.frame_count if max_frames is None else min(reader.frame_count or max_frames, max_frames)
    bar = _progress(total, start, progress, "tracking")
    buf: Dict[str, list] = {k: [] for k in _PER_FRAME_KEYS}
    t_wall = time.perf_counter()
    dec: Dict[str, float] = {}
    cur = {"snapshot": None, "snap_done": start, "chunk_start": start, "prev": prev,
           "last_gaze": (np.asarray(prev["gaze"], np.float32) if prev is not None and "gaze" in prev
                         else np.zeros(len(GAZE_NAMES), np.float32))}

    def flush(final_state, keep: Optional[int] = None):
        nonlocal buf
        if keep is not None:
            buf = {key: v[:keep] for key, v in buf.items()}
        n = len(buf["index"])
        if n == 0 or any(len(v) != n for v in buf.values()):
            return
        t0 = time.perf_counter()
        arrays = {k: np.stack(v) if k not in ("status", "flags") else np.array(v, dtype=str) for k, v in buf.items()}
        k = len(manifest["chunks"])
        c0 = cur["chunk_start"]
        store.write_chunk(k, arrays, final_state)
        manifest["chunks"].append({"file": store.chunk_path(k).name, "start": c0, "stop": c0 + n})
        manifest["frames_done"] = c0 + n
        manifest["timings"] = {k2: v for k2, v in timer.items() if isinstance(v, (int, float))}
        store.write_manifest(manifest)
        if k > 0:
            store.drop_state(k - 1)
        cur["chunk_start"] = c0 + n
        buf = {key: [] for key in _PER_FRAME_KEYS}
        timer["write"] = timer.get("write", 0.0) + time.perf_counter() - t0

    def consume(item: Dict[str, Any], smoothed: Optional[np.ndarray]) -> None:
        """Eyes, solve and store one frame handed on by the smoother."""
        t_c0 = time.perf_counter()
        prev = cur["prev"]
        img, face = item["image"], bool(item["found"])
        pts, conf = item["points"], item["confidence"]
        t0 = time.perf_counter()
        eyes = None
        if face:
            head = None if prev is None else prev["rotation"]
            eyes = et.update(img, pts, head)
        t_eyes = time.perf_counter() - t0
        gaze = None
        if eyes is not None:
            gaze = dict(eyes.gaze)
            if cfg.fix_blink:
                gaze.update({k: eyes.weights[k] for k in BLINK_NAMES})
        t0 = time.perf_counter()
        res = tracker.track_frame(img if face else None, smoothed if face else None, conf, gaze)
        t_solve = time.perf_counter() - t0
        flags = list(item["flags"]) + list(getattr(res, "flags", []))
        if eyes is not None:
            flags += list(eyes.flags)
        # never NaN parameters: fall back on the previous frame's
        fb = dict(prev) if prev is not None else {
            "rotation": np.zeros(3, np.float32), "translation": np.array([0, 0, 60], np.float32),
            "expression": np.zeros(K, np.float32), "sh": np.zeros((9, 3), np.float32),
            "landmarks_2d": np.zeros((68, 2), np.float32)}
        fb.setdefault("model_landmarks_2d", fb["landmarks_2d"])
        fixed = getattr(res, "model_landmarks_2d", None)
        vals = {}
        bad = False
        for key in ("rotation", "translation", "expression", "sh", "landmarks_2d", "model_landmarks_2d"):
            want_shape = np.shape(fb[key])
            src = getattr(res, key) if key != "model_landmarks_2d" else (fixed if fixed is not None
                                                                          else res.landmarks_2d)
            v = np.asarray(src, dtype=np.float32).reshape(want_shape)
            vals[key], b = _finite_or(v, fb[key])
            bad |= b
        if bad:
            flags.append("nan_replaced")
        prev = {k: np.array(v) for k, v in vals.items()}
        dedup = list(dict.fromkeys(f for f in flags if f))
        buf["index"].append(np.int64(item["index"]))
        buf["time"].append(np.float64(item["time"]))
        for key in ("rotation", "translation", "expression", "sh", "landmarks_2d", "model_landmarks_2d"):
            buf[key].append(vals[key])
        if eyes is not None:
            cur["last_gaze"] = np.array([eyes.weights[k] for k in GAZE_NAMES], np.float32)
            buf["gaze"].append(cur["last_gaze"].copy())
            buf["blink"].append(np.array([eyes.weights[k] for k in BLINK_NAMES], np.float32))
            buf["eyes_closed"].append(np.array([eyes.closed[1], eyes.closed[0]], bool))
            buf["iris"].append(np.stack([eyes.right.iris.centre, eyes.left.iris.centre]).astype(np.float32))
            buf["iris_confidence"].append(np.array([eyes.right.iris.confidence, eyes.left.iris.confidence],
                                                   np.float32))
            buf["ear"].append(np.array([eyes.right.ear, eyes.left.ear], np.float32))
        else:
            buf["gaze"].append(cur["last_gaze"].copy())
            buf["blink"].append(np.zeros(2, np.float32))
            buf["eyes_closed"].append(np.zeros(2, bool))
            buf["iris"].append(np.full((2, 2), np.nan, np.float32))
            buf["iris_confidence"].append(np.zeros(2, np.float32))
            buf["ear"].append(np.full(2, np.nan, np.float32))
        nan_pts = np.full((68, 2), np.nan, np.float32)
        buf["landmarks"].append(np.asarray(pts, np.float32) if face else nan_pts)
        buf["landmarks_smoothed"].append(np.asarray(smoothed, np.float32) if face else nan_pts.copy())
        buf["landmark_confidence"].append(np.asarray(conf, np.float32) if face else np.zeros(68, np.float32))
        buf["box"].append(np.asarray(item["box"], np.float32) if item["box"] is not None
                          else np.full(4, np.nan, np.float32))
        buf["face_found"].append(np.bool_(face))
        buf["status"].append(item["status"])
        buf["flags"].append(",".join(dedup))
        e = getattr(res, "energy", float("nan"))
        buf["energy"].append(np.float64(e if e is not None else np.nan))
        buf["psnr"].append(np.float32(getattr(res, "psnr", np.nan)))
        buf["solve_ms"].append(np.float32(t_solve * 1e3))
        buf["landmarks_ms"].append(np.float32(item["landmarks_ms"]))
        buf["eyes_ms"].append(np.float32(t_eyes * 1e3))
        buf["decode_ms"].append(np.float32(item["decode_ms"]))
        buf["frame_ms"].append(np.float32(item["produce_ms"] + (time.perf_counter() - t_c0) * 1e3))
        timer["landmarks"] = timer.get("landmarks", 0.0) + item["landmarks_ms"] / 1e3
        timer["eyes"] = timer.get("eyes", 0.0) + t_eyes
        timer["solve"] = timer.get("solve", 0.0) + t_solve
        pos["consumed"] += 1
        prev["gaze"] = cur["last_gaze"].copy()
        cur["prev"] = prev
        # the pending items are never changed after they are made, so the snapshot shares them (no image copies)
        cur["snapshot"] = {"tracker": copy.deepcopy(tracker.state_dict()),
                           "landmarks": copy.deepcopy(lt.state_dict()), "eyes": copy.deepcopy(et.state_dict()),
                           "smoother": smoother.state_dict(), "prev": {k: v.copy() for k, v in prev.items()},
                           "consumed": pos["consumed"], "observed": pos["observed"]}
        cur["snap_done"] = pos["consumed"]
        if bar is not None:
            bar.update(1)
            done = pos["consumed"]
            if done % 10 == 0:
                el = time.perf_counter() - t_wall
                bar.set_postfix(fps=f"{(done - start) / max(el, 1e-9):.1f}", solve_ms=f"{t_solve * 1e3:.0f}",
                                face="yes" if face else "no", refresh=False)
        if callback is not None:
            callback(int(item["index"]), res)
        if len(buf["index"]) >= cfg.chunk_size:
            flush(cur["snapshot"])

    try:
        t_prev_end = time.perf_counter()
        for fr in _frames(reader, pos["observed"], max_frames, dec):
            t_frame0 = t_prev_end
            t_decode = time.perf_counter() - t_frame0
            t0 = time.perf_counter()
            obs: FaceObservation = lt.update(fr.image)
            t_lm = time.perf_counter() - t0
            face = bool(obs.found)
            pts = np.array(obs.landmarks.points, dtype=np.float64) if face else None
            item = {"index": int(fr.index), "time": float(fr.time), "image": fr.image, "found": face,
                    "points": pts,
                    "confidence": np.array(obs.landmarks.confidence, dtype=np.float64) if face else None,
                    "box": (np.asarray(obs.landmarks.box, np.float64) if face and obs.landmarks.box is not None
                            else None),
                    "status": str(obs.status), "flags": [str(f) for f in obs.flags],
                    "decode_ms": t_decode * 1e3, "landmarks_ms": t_lm * 1e3,
                    "produce_ms": (time.perf_counter() - t_frame0) * 1e3}
            pos["observed"] = int(fr.index) + 1
            # a fresh detection starts a new track: the smoothing window does not reach back across it
            for ready in smoother.push(item, pts, restart=face and obs.status == "detected"):
                consume(*ready)
            t_prev_end = time.perf_counter()
        while smoother.pending:  # the end of the stream: the last `delay` frames, one at a time
            for ready in smoother.flush(1):
                consume(*ready)
    except BaseException:
        # keep the frames finished so far (their states are consistent) for a later resume
        snapshot, snap_done = cur["snapshot"], cur["snap_done"]
        if snapshot is not None and snap_done > cur["chunk_start"]:
            try:
                flush(snapshot, keep=snap_done - cur["chunk_start"])
            except Exception as e:  # pragma: no cover - disk trouble while already failing
                log.warning("could not save the last %d frames for resuming: %s", len(buf["index"]), e)
        if bar is not None:
            bar.close()
        raise
    flush(cur["snapshot"])
    if bar is not None:
        bar.close()
    timer["decode"] = timer.get("decode", 0.0) + dec.get("decode", 0.0)
    if "decode_error" in dec:
        manifest["decode_error"] = dec["decode_error"]
    timer["track_wall"] = timer.get("track_wall", 0.0) + time.perf_counter() - t_wall
    if manifest["frames_done"] == 0:
        raise VideoError(f"{str(reader.path)!r}: no frame could be tracked")
    manifest["complete"] = True
    manifest["timings"] = {k: v for k, v in timer.items() if isinstance(v, (int, float))}
    store.write_manifest(manifest)


def _progress(total, initial, enabled, desc):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total or None, initial=initial, unit="frame", desc=desc, dynamic_ncols=True, file=sys.stderr,
                smoothing=0.1)


# ---------------------------------------------------------------------------------------------------------- outputs
def _iter_chunks(store: _Store, manifest) -> Iterator[Dict[str, np.ndarray]]:
    for k in range(len(manifest["chunks"])):
        yield store.read_chunk(k)


def _write_params(path: Path, store: _Store, manifest, model, vid, reader: VideoReader, fps: float, video: Path,
                  flag_names: List[str]) -> None:
    """params.npz, assembled one key at a time from the chunks (peak memory: one per-frame array)."""
    n_chunks = len(manifest["chunks"])
    with atomic_write(path) as tmp:
        with zipfile.ZipFile(tmp, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            def put(name, arr):
                with zf.open(name + ".npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)

            for key in _PER_FRAME_KEYS:
                parts = [store.read_chunk_key(k, key) for k in range(n_chunks)]
                put(key, np.concatenate(parts) if parts else np.zeros(0))
                del parts
            bits = []
            for k in range(n_chunks):
                for f in store.read_chunk_key(k, "flags"):
                    b = 0
                    for name in str(f).split(","):
                        if name in flag_names:
                            b |= 1 << flag_names.index(name)
                    bits.append(b)
            put("flag_bits", np.array(bits, dtype=np.int64))
            put("flag_names", np.array(flag_names, dtype=str))
            put("identity", vid["identity"])
            put("albedo", vid["albedo"])
            put("focal", np.float64(vid["focal"]))
            put("principal_point", vid["principal_point"])
            put("image_size", np.array(reader.size, dtype=np.int64))
            put("fps", np.float64(fps))
            put("model_name", np.array(str(getattr(model, "name", "?"))))
            put("expression_names", np.array(list(getattr(model, "expression_names", ())), dtype=str))
            put("gaze_names", np.array(GAZE_NAMES, dtype=str))
            put("blink_names", np.array(BLINK_NAMES, dtype=str))
            put("keyframes", vid["keyframes"])
            put("video", np.array(str(video.resolve())))
            put("format_version", np.int64(FORMAT_VERSION))


def _collect(store: _Store, manifest):
    """Per-frame series for the plot and the summary (small), flag names, counts and jitter."""
    energy, fms, times, face, psnr, index = [], [], [], [], [], []
    flag_count: Dict[str, int] = {}
    status_count: Dict[str, int] = {}
    jit = _JitterAccumulator()
    sums = {k: 0.0 for k in ("solve_ms", "landmarks_ms", "eyes_ms")}
    for ch in _iter_chunks(store, manifest):
        energy.append(ch["energy"])
        psnr.append(ch["psnr"])
        index.append(ch["index"])
        fms.append(ch["frame_ms"])
        times.append(ch["time"])
        face.append(ch["face_found"])
        for k in sums:
            sums[k] += float(ch[k].astype(np.float64).sum())
        for s in ch["status"]:
            status_count[str(s)] = status_count.get(str(s), 0) + 1
        for i, f in enumerate(ch["flags"]):
            names = [x for x in str(f).split(",") if x]
            for x in names:
                flag_count[x] = flag_count.get(x, 0) + 1
            ok = bool(ch["face_found"][i]) and not ({"bridged", "reinitialised", "redetected", "nan_replaced"}
                                                    & set(names)) and not any(x.startswith("lost:") for x in names)
            jit.add({key: ch[key][i] for _, key in _JITTER_SERIES}, ok)
    cat = lambda x: np.concatenate(x) if x else np.zeros(0)  # noqa: E731
    return (cat(energy), cat(fms), cat(times), cat(face).astype(bool), flag_count, status_count, jit.result(), sums,
            cat(psnr), cat(index).astype(np.int64))


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


def _plot(path: Path, energy: np.ndarray, frame_ms: np.ndarray, face: np.ndarray, title: str) -> Optional[Path]:
    fps = 1000.0 / np.maximum(frame_ms.astype(np.float64), 1e-3)
    x = np.arange(len(energy))
    try:
        from matplotlib.figure import Figure
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError:
        from ..render.overlay import plot_energy

        hist = {"energy": energy, "fps": fps}
        try:
            return plot_energy(hist, path, title=title, xlabel="frame")
        except ValueError:
            return None
    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    fin = np.isfinite(energy)
    if fin.any():
        ax1.plot(x[fin], energy[fin], lw=0.8, color="tab:blue")
        if (energy[fin] > 0).all():
            ax1.set_yscale("log")
    nf = ~face
    if nf.any():
        for a in (ax1, ax2):
            a.fill_between(x, 0, 1, where=nf, color="tab:red", alpha=0.15, transform=a.get_xaxis_transform(),
                           step="mid", label="no face")
    ax1.set_ylabel("energy")
    ax1.set_title(title, fontsize=10)
    ax2.plot(x, fps, lw=0.8, color="tab:green")
    ax2.axhline(float(len(frame_ms) / max(frame_ms.astype(np.float64).sum() / 1000.0, 1e-9)), color="k", lw=0.8,
                ls="--", label="mean")
    ax2.set_ylabel("frames / s")
    ax2.set_xlabel("frame")
    ax2.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(str(tmp), format="png")
    return path


def _finish(reader, video, out_dir, store, manifest, model, vid, cfg, overlay, progress, timer, start, t_start,
            fps) -> TrackResult:
    (energy, frame_ms, times, face, flag_count, status_count, (jitter, distance), sums, psnr,
     index) = _collect(store, manifest)
    flag_names = sorted(flag_count)[:63]
    n_frames = int(len(energy))
    t0 = time.perf_counter()
    params_path = out_dir / "params.npz"
    _write_params(params_path, store, manifest, model, vid, reader, fps, video, flag_names)
    timer["write_params"] = time.perf_counter() - t0
    overlay_path = None
    if overlay:
        t0 = time.perf_counter()
        overlay_path = _write_overlay(
            _records_from_store(store, manifest), n_frames, reader.size, video, out_dir / "overlay.mp4", model,
            vid["identity"], vid["albedo"] if vid["albedo"].size else None, float(vid["focal"]),
            vid["principal_point"], fps, cfg.overlay_alpha, cfg.overlay_crf, cfg.overlay_preset, progress, timer)
        timer["overlay"] = time.perf_counter() - t0
    n = int(len(energy))
    track_time = timer.get("track_wall", float("nan"))
    main_fps = n / track_time if track_time and track_time > 0 and n else float("nan")
    plot_path = _plot(out_dir / "energy_fps.png", energy, frame_ms, face,
                      f"{video.name}: {n} frames, {main_fps:.1f} frames/s (tracking pass)")
    per_frame = {k.replace("_ms", ""): v / max(n, 1) for k, v in sums.items()}
    summary = {
        "video": str(video.resolve()), "frames": n, "frames_with_face": int(face.sum()),
        "image_size": list(reader.size), "fps_video": fps, "resumed_from": start,
        "keyframes": [int(i) for i in vid["keyframes"]],
        "timings_s": {k: v for k, v in timer.items() if isinstance(v, (int, float))},
        "per_frame_ms": {**{k: v for k, v in per_frame.items()}, "frame": float(frame_ms.astype(np.float64).mean())
                         if n else float("nan")},
        "tracking_fps": main_fps,
        "status_counts": status_count, "flag_counts": flag_count,
        "jitter": jitter, "landmark_distance": distance,
        "psnr": psnr_summary(psnr, index, vid["keyframes"]),
        "smoothing": {"method": cfg.smoothing, "window": cfg.smoothing_window,
                      **({"lambda": cfg.smoothing_lambda} if cfg.smoothing == "whittaker"
                         else {"order": cfg.smoothing_order}),
                      "delay_frames": cfg.smoothing_window // 2},
        "energy": {"median": float(np.nanmedian(energy)) if np.isfinite(energy).any() else None,
                   "max": float(np.nanmax(energy)) if np.isfinite(energy).any() else None},
        "decode_error": manifest.get("decode_error"),
        "timestamps": {"first": float(times[0]) if n else None, "last": float(times[-1]) if n else None,
                       "variable_rate": bool(n > 2 and np.ptp(np.diff(times)) > 1e-3)},
        "total_wall_s": time.perf_counter() - t_start,
    }
    summary_path = out_dir / "summary.json"
    _write_json(summary_path, summary)
    store.clear()
    log.info("tracked %d frames of %s (%.1f frames/s)", n, video, main_fps)
    return TrackResult(out_dir, params_path, overlay_path, plot_path, summary_path, n, int(face.sum()), start,
                       summary["timings_s"], main_fps, summary)


# ---------------------------------------------------------------------------------------------------------- overlay
def _label(img: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, 7 * len(text) + 6, 14], fill=(0, 0, 0))
    d.text((3, 2), text, fill=(255, 80, 80))
    return np.asarray(im)


class _OverlayRenderer:
    """Renders the tracked face (region ``face`` of the identity model) into a crop around it and blends it."""

    def __init__(self, model, track_identity: np.ndarray, albedo: Optional[np.ndarray], focal: float,
                 pp: np.ndarray, size: Tuple[int, int], alpha: float):
        import torch

        self.torch = torch
        region = model.submodel("face") if "face" in (getattr(model, "regions", {}) or {}) else model
        self.model = region
        dt = region.dtype
        with torch.no_grad():
            idt = torch.as_tensor(track_identity, dtype=dt).reshape(1, -1) if track_identity.size else None
            self.base_kw = {"identity": idt} if idt is not None and idt.shape[1] == region.num_identity else {}
        self.albedo = (torch.as_tensor(albedo, dtype=dt) if albedo is not None and albedo.shape[0] ==
                       region.num_vertices else None)
        self.focal, self.pp, self.size, self.alpha = float(focal), np.asarray(pp, np.float64), size, alpha

    def __call__(self, image: np.ndarray, rotation, translation, expression, sh, points2d) -> np.ndarray:
        torch = self.torch
        from ..cameras import PinholeCamera
        from ..render.overlay import blend_overlay
        from ..render.renderer import render_face

        H, W = self.size
        p = np.asarray(points2d, np.float64)
        if not np.isfinite(p).all():
            return image
        lo, hi = p.min(0), p.max(0)
        c, side = (lo + hi) / 2, float(max(hi - lo)) * 1.8 + 8
        x0, y0 = int(max(0, math.floor(c[0] - side / 2))), int(max(0, math.floor(c[1] - side / 2)))
        x1, y1 = int(min(W, math.ceil(c[0] + side / 2))), int(min(H, math.ceil(c[1] + side / 2)))
        if x1 - x0 < 4 or y1 - y0 < 4:
            return image
        dt = self.model.dtype
        with torch.no_grad():
            ex = torch.as_tensor(np.asarray(expression), dtype=dt).reshape(1, -1)
            verts = self.model(expression=ex, **self.base_kw).vertices
            t1 = lambda v: torch.tensor([float(v)], dtype=dt)  # noqa: E731
            cam = PinholeCamera(fx=t1(self.focal), fy=t1(self.focal), cx=t1(self.pp[0] - x0), cy=t1(self.pp[1] - y0),
                                image_size=(y1 - y0, x1 - x0))
            out = render_face(verts, self.model.faces, cam, torch.as_tensor(np.asarray(rotation), dtype=dt)[None],
                              torch.as_tensor(np.asarray(translation), dtype=dt)[None], albedo=self.albedo,
                              sh=torch.as_tensor(np.asarray(sh), dtype=dt).reshape(1, 9, 3), antialias=False)
        crop = image[y0:y1, x0:x1]
        mask = out.mask[0].to(torch.float64).numpy()
        if mask.ndim == 3:
            mask = mask[..., 0]
        blended = blend_overlay(crop, out.image[0].clamp(0, 1).numpy(), mask, self.alpha)
        res = image.copy()
        res[y0:y1, x0:x1] = blended
        return res


_RECORD_KEYS = ("index", "time", "rotation", "translation", "expression", "sh", "landmarks", "landmarks_2d",
                "face_found")


def _records_from_arrays(arrays: Dict[str, np.ndarray]) -> Iterator[Dict[str, Any]]:
    for i in range(len(arrays["index"])):
        yield {k: arrays[k][i] for k in _RECORD_KEYS}


def _records_from_store(store: _Store, manifest) -> Iterator[Dict[str, Any]]:
    for k in range(len(manifest["chunks"])):
        yield from _records_from_arrays(store.read_chunk(k))


def render_overlay(track: Union[PathLike, Track], video: PathLike, path: PathLike, model=None, *, alpha: float = 0.6,
                   crf: float = 20, preset: str = "veryfast", progress: bool = True,
                   timings: Optional[Dict[str, float]] = None) -> Path:
    """Write the overlay video of a track: each frame with the tracked face rendered over it (``alpha``), the
    detected landmarks (green) and the model's projected landmarks (red) drawn, and a label on frames without a face.

    The video is streamed (frames are never held). The audio of the video is copied when it decodes to less than
    64 MB (longer audio is left out to keep memory bounded). Written atomically; frame times are the video's own.

    Args:
        track: a :class:`Track` or the folder / ``params.npz`` of one.
        video: the tracked video.
        path: the output ``.mp4``.
        model: the face model of the track (default ``load_ict()``).
        alpha: opacity of the render; crf, preset: x264 settings; progress: a progress bar.
        timings: a dict receiving ``overlay_decode``, ``overlay_render``, ``overlay_encode`` seconds.
    Raises:
        ValueError: the track is for another frame size. VideoError: the video cannot be read.
    """
    tr = track if isinstance(track, Track) else load_track(track)
    arrays = {k: getattr(tr, k) for k in _RECORD_KEYS}
    return _write_overlay(_records_from_arrays(arrays), len(tr), tr.image_size, video, path, _load_model(model),
                          tr.identity, tr.albedo, tr.focal, tr.principal_point, tr.fps, alpha, crf, preset, progress,
                          timings)


def _write_overlay(records: Iterator[Dict[str, Any]], n: int, image_size, video: PathLike, path: PathLike, model,
                   identity, albedo, focal, pp, fps_track, alpha, crf, preset, progress, timings) -> Path:
    from ..render.overlay import draw_landmarks

    reader = VideoReader(video)
    H, W = reader.size
    if tuple(int(v) for v in image_size) != (H, W):
        raise ValueError(f"the track is for {image_size[1]}x{image_size[0]} frames but {str(video)!r} is {W}x{H}")
    if n == 0:
        raise ValueError("the track holds no frame")
    renderer = _OverlayRenderer(model, np.asarray(identity), albedo, focal, pp, (H, W), alpha)
    audio = None
    if reader.has_audio and reader.duration > 0:
        est = reader.duration * (reader.info.audio_sample_rate or 48000) * (reader.info.audio_channels or 2) * 4
        if est <= _MAX_AUDIO_BYTES:
            audio = Path(video)
        else:
            log.info("audio not copied into the overlay (%.0f MB decoded; limit %d MB)", est / 2 ** 20,
                     _MAX_AUDIO_BYTES // 2 ** 20)
    t = timings if timings is not None else {}
    radius = max(1.0, round(min(H, W) / 320.0, 1))
    dec: Dict[str, float] = {}
    last_t = -1.0
    fps_w = reader.fps if reader.fps > 0 else (fps_track or 30.0)
    try:
        writer = VideoWriter(path, fps_w, (H, W), audio_from=audio, crf=crf, preset=preset)
    except (VideoError, ValueError):
        if audio is None:
            raise
        log.info("the audio of %s could not be read; the overlay has none", video)
        writer = VideoWriter(path, fps_w, (H, W), crf=crf, preset=preset)
    bar = _progress(n, 0, progress, "overlay")
    written = 0
    try:
        rec = next(records, None)
        for fr in _frames(reader, 0, None, dec):
            if rec is None:
                break
            if fr.index < int(rec["index"]):
                continue
            while rec is not None and int(rec["index"]) < fr.index:  # a frame the video no longer has
                rec = next(records, None)
            if rec is None or int(rec["index"]) != fr.index:
                continue
            t0 = time.perf_counter()
            img = renderer(fr.image, rec["rotation"], rec["translation"], rec["expression"], rec["sh"],
                           rec["landmarks_2d"])
            if rec["face_found"]:
                img = draw_landmarks(img, rec["landmarks"], (0, 255, 0), radius)
            img = draw_landmarks(img, rec["landmarks_2d"], (255, 40, 40), radius)
            if not rec["face_found"]:
                img = _label(img, "no face (bridged)")
            t1 = time.perf_counter()
            ts = float(rec["time"])
            if not math.isfinite(ts) or ts <= last_t:
                ts = last_t + 1e-3 if last_t >= 0 else 0.0
            ts = max(ts, 0.0)
            writer.write(img, time=ts)
            last_t = ts
            t2 = time.perf_counter()
            t["overlay_render"] = t.get("overlay_render", 0.0) + (t1 - t0)
            t["overlay_encode"] = t.get("overlay_encode", 0.0) + (t2 - t1)
            written += 1
            if bar is not None:
                bar.update(1)
            rec = next(records, None)
        if written == 0:
            raise VideoError(f"no frame of {str(video)!r} matched the track")
        t0 = time.perf_counter()
        writer.close()
        t["overlay_encode"] = t.get("overlay_encode", 0.0) + time.perf_counter() - t0
    except BaseException as e:
        writer.abort(e)
        raise
    finally:
        if bar is not None:
            bar.close()
    t["overlay_decode"] = t.get("overlay_decode", 0.0) + dec.get("decode", 0.0)
    return Path(path)
