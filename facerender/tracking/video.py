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
import inspect
import logging
import math
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np

from ..errors import VideoError
from ..io.atomic import atomic_write
from ..io.video import VideoReader
from .eyes import (BLINK_NAMES, GAZE_NAMES, EyeConfig, EyeTracker, GazeCalibration, ICT_GAZE_CALIBRATION,
                   eye_aspect_ratio, estimate_open_ear)
from .facebox import LEGACY_LANDMARKS, FaceObservation, LandmarkTracker, LandmarkTrackerConfig, landmark_agreement
from .keyframes import _fetch_frames, _keyframe_pass, keyframe_descriptor, select_keyframes
from .overlay import _load_model, _records_from_store, _write_overlay, render_overlay
from .quality import (_JITTER_SERIES, BRIDGE_KEYS, FreshDetector, PsnrMonitor, _JitterAccumulator, audit_summary,
                      find_gaps, interpolate_gap, landmark_jitter, psnr_summary)
from .smoothing import StreamingLinearSmoother, make_smoother
from .store import STATE_DIR, _Store, _fingerprint, _settings_hash, _write_json
from .streams import iter_frames as _frames, progress_bar as _progress
from .trackfile import FORMAT_VERSION, _PER_FRAME_KEYS, Track, _iter_chunks, _write_params, load_track

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# The pieces of this module live in keyframes.py, store.py, trackfile.py, quality.py, overlay.py and streams.py; the
# names below stay importable from here.
__all__ = ["TrackConfig", "TrackResult", "Track", "track_video", "load_track", "render_overlay", "select_keyframes",
           "keyframe_descriptor", "landmark_jitter", "psnr_summary", "STATE_DIR", "FORMAT_VERSION",
           "SAVGOL_SMOOTHING", "legacy_config"]

#: The landmark smoothing of the 2026-11 releases, Savitzky-Golay 5 / order 2, as ``TrackConfig`` fields
#: (``facerender track --smoothing savgol``; the benchmarks' baseline).
SAVGOL_SMOOTHING = MappingProxyType({"smoothing": "savgol", "smoothing_window": 5, "smoothing_order": 2})


#: Flags of frames whose values do not continue the previous frame's: left out of the jitter and distance figures
#: and of the photometric check's distribution.
BREAK_FLAGS = frozenset({"bridged", "reinitialised", "redetected", "reseeded", "restarted", "nan_replaced"})


def legacy_config(**changes) -> "TrackConfig":
    """The tracking of the releases before 2026-12 (the landmark tracker's :data:`LEGACY_LANDMARKS`, no photometric
    check, no solver restart on a jump, no interpolated bridges; the audit stays on, it only measures): the
    benchmarks' baseline. ``changes`` are further ``TrackConfig`` fields."""
    kw = dict(landmarks=LandmarkTrackerConfig(**LEGACY_LANDMARKS), photometric_check=False,
              reinit_distance=math.inf, bridge_max_gap=0)
    kw.update(changes)
    return TrackConfig(**kw)


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
        audit_interval: every this many frames, the model's landmarks are compared with a fresh HOG + dlib
            detection (:class:`~facerender.tracking.quality.FreshDetector`; ``audit_error`` per frame, the
            summary's ``audit``); 0 turns the audit off. It is a measurement: nothing is changed by it.
        photometric_check: a frame whose photometric PSNR falls out of the clip's own distribution
            (:class:`~facerender.tracking.quality.PsnrMonitor`) is flagged ``photometric_outlier`` and the landmark
            tracker verifies its next frame by a fresh detection.
        reinit_distance: the solver restarts from the landmarks (``reinitialised``) when a frame's points lie further
            than this fraction of the eye distance from the previous frame's model landmarks (a re-seeded or
            re-detected track, a cut); ``inf`` never.
        bridge_max_gap: runs of bridged frames (no face, lost) of at most this many frames between two solved frames
            are filled by interpolating the parameters and the projected landmarks (flag ``interpolated``;
            rotations by spherical interpolation); longer runs keep the held parameters. 0 turns it off.
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
    audit_interval: int = 5
    photometric_check: bool = True
    reinit_distance: float = 0.3
    bridge_max_gap: int = 15

    def __post_init__(self):
        if self.keyframe_candidates < 1 or self.keyframes < 1 or self.chunk_size < 1 or self.max_scan < 0:
            raise ValueError(f"keyframe_candidates, keyframes and chunk_size must be >= 1 and max_scan >= 0, got "
                             f"{self.keyframe_candidates}, {self.keyframes}, {self.chunk_size}, {self.max_scan}")
        if not 0 <= self.overlay_alpha <= 1:
            raise ValueError(f"overlay_alpha must lie in [0, 1], got {self.overlay_alpha}")
        if self.audit_interval < 0 or self.bridge_max_gap < 0 or not self.reinit_distance > 0:
            raise ValueError(f"audit_interval and bridge_max_gap must be >= 0 and reinit_distance > 0, got "
                             f"{self.audit_interval}, {self.bridge_max_gap}, {self.reinit_distance}")
        self.make_smoother()  # ValueError on bad settings

    def make_smoother(self) -> StreamingLinearSmoother:
        """A fresh landmark smoother with these settings."""
        return make_smoother(self.smoothing, self.smoothing_window, self.smoothing_order, self.smoothing_lambda)


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


def _make_tracker(tracker_factory, model, cfg: TrackConfig, size, fps):
    if tracker_factory is None:
        from .tracker import FaceTracker, TrackerConfig

        return FaceTracker(model, cfg.tracker or TrackerConfig(), size, fps)
    return tracker_factory(model, cfg.tracker, size, fps)


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
        records, keys, seen = _keyframe_pass(reader, cfg, max_frames, timer, progress)
        timer["keyframes"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        frames = _fetch_frames(reader, [r["index"] for r in keys], timer)
        keys = [r for r in keys if r["index"] in frames]
        if not keys:
            raise VideoError(f"{str(video)!r}: the keyframes could not be decoded again")
        extra = {}
        if "identity_landmarks" in inspect.signature(tracker.bundle).parameters:
            # all candidates' landmarks for the identity (the solver's own choice whether to use them)
            extra = {"identity_landmarks": np.stack([r["points"] for r in records]),
                     "identity_confidences": np.stack([r["confidence"] for r in records])}
        from ..progress import stage_bar

        bar = stage_bar(f"bundling {len(keys)} keyframes (identity, albedo)", None, progress)
        if "progress" in inspect.signature(tracker.bundle).parameters:
            extra["progress"] = bar  # the tracker sets the bar's total and steps it
        try:
            vp = tracker.bundle([frames[r["index"]] for r in keys], [np.array(r["points"]) for r in keys],
                                [np.array(r["confidence"]) for r in keys], **extra)
        finally:
            bar.close()
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
    monitor = PsnrMonitor() if cfg.photometric_check else None
    pos = {"consumed": start, "observed": start}
    prev = None
    if state is not None:
        tracker.load_state_dict(state["tracker"])
        lt.load_state_dict(state["landmarks"])
        et.load_state_dict(state["eyes"])
        smoother.load_state_dict(state["smoother"])
        if monitor is not None and state.get("psnr_monitor") is not None:
            monitor.load_state_dict(state["psnr_monitor"])
        prev = state["prev"]
        pos["observed"] = int(state["observed"])
    if not manifest.get("complete"):
        _main_pass(reader, store, manifest, tracker, lt, et, smoother, model, cfg, pos, max_frames, progress,
                   callback, timer, prev, monitor)
    if cfg.bridge_max_gap and not manifest.get("gaps_bridged"):
        _bridge_gaps(store, manifest, cfg.bridge_max_gap)
        manifest["gaps_bridged"] = True
        store.write_manifest(manifest)
    timer["track_wall"] = timer.get("track_wall", 0.0)
    return _finish(reader, video, out_dir, store, manifest, model, vid, cfg, overlay, progress, timer, start,
                   t_start, fps)


def _main_pass(reader, store: _Store, manifest, tracker, lt, et, smoother: StreamingLinearSmoother, model,
               cfg: TrackConfig, pos: Dict[str, int], max_frames, progress, callback, timer, prev, monitor=None):
    """The tracking pass, a producer and a consumer with the landmark smoother between them.

    Producer, per decoded frame: :meth:`LandmarkTracker.update`; the frame, its detected points and their
    details go into the smoother. Consumer, per frame the smoother hands on (``smoother.delay`` frames later, with
    the smoothed points): :meth:`EyeTracker.update` (on the detected points, with the previous frame's solved head
    rotation), :meth:`FaceTracker.track_frame` on the smoothed points, storing. ``pos``: ``consumed`` (frames
    stored; the first frame handed on next) and ``observed`` (frames read; the next frame to decode). After each
    consumed frame the states are snapshot: the solver, the landmark tracker (at the producer position), the eye
    tracker, the smoother with its pending frames (images included: at most ``delay`` of them) and both positions.

    The consumer also restarts the solver when the points jumped away from the last model landmarks
    (``cfg.reinit_distance``), runs the photometric check (``monitor``: an outlier asks the landmark tracker for a
    fresh verification) and, every ``cfg.audit_interval`` frames, the audit against a fresh detection.
    """
    K = int(getattr(model, "num_expression", 0))
    auditor = FreshDetector(cfg.landmarks) if cfg.audit_interval else None
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
        restart = []
        # points far from where the model was (a re-seeded or re-detected track, a cut): start the solver afresh
        if (face and prev is not None and math.isfinite(cfg.reinit_distance) and hasattr(tracker, "restart")
                and landmark_agreement(prev["landmarks_2d"], smoothed) > cfg.reinit_distance):
            tracker.restart()
            restart = ["restarted"]
        res = tracker.track_frame(img if face else None, smoothed if face else None, conf, gaze)
        t_solve = time.perf_counter() - t0
        flags = list(item["flags"]) + restart + list(getattr(res, "flags", []))
        solved = face and not {"bridged", "no_face"} & set(flags)
        if solved and monitor is not None:  # the photometric check: the clip's own PSNR distribution
            if monitor.update(float(getattr(res, "psnr", float("nan"))),
                              accept=not BREAK_FLAGS & set(flags)):
                flags.append("photometric_outlier")
                lt.request_verification()
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
        # the audit: the model's landmarks against a fresh detection (a measurement only)
        a_err = a_pts = float("nan")
        sampled = auditor is not None and int(item["index"]) % cfg.audit_interval == 0
        if sampled:
            t0 = time.perf_counter()
            fresh = auditor(img, vals["landmarks_2d"])
            if fresh is not None:
                a_err = landmark_agreement(vals["landmarks_2d"], fresh)
                a_pts = landmark_agreement(pts, fresh) if face else float("inf")
            timer["audit"] = timer.get("audit", 0.0) + time.perf_counter() - t0
        buf["audit_sampled"].append(np.bool_(sampled))
        buf["audit_error"].append(np.float32(a_err))
        buf["audit_points_error"].append(np.float32(a_pts))
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
        cur["snapshot"] = {"psnr_monitor": monitor.state_dict() if monitor is not None else None,
                           "tracker": copy.deepcopy(tracker.state_dict()),
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


def _bridge_gaps(store: _Store, manifest, max_gap: int) -> int:
    """Fill the short bridged gaps of the stored track in place (:func:`~facerender.tracking.quality.find_gaps`,
    :func:`~facerender.tracking.quality.interpolate_gap`): the parameters and projected landmarks of each run of at
    most ``max_gap`` bridged frames between two solved frames are interpolated and the frames flagged
    ``interpolated``. Reads the flags chunk by chunk, then rewrites only the chunks that hold a gap (each atomically;
    rerunning gives the same result, the gap ends are never changed). Returns the number of frames filled."""
    spans = [(c["start"], c["stop"]) for c in manifest["chunks"]]
    bridged = np.concatenate([np.array(["bridged" in str(f).split(",") for f in store.read_chunk_key(k, "flags")],
                                       bool) for k in range(len(spans))]) if spans else np.zeros(0, bool)
    gaps = find_gaps(bridged, max_gap)
    if not gaps:
        return 0
    start0 = spans[0][0]

    def chunk_of(i):
        return next(k for k, (a, b) in enumerate(spans) if a <= i + start0 < b)

    cache: Dict[int, Dict[str, np.ndarray]] = {}

    def get(k):
        if k not in cache:
            cache[k] = store.read_chunk(k)
        return cache[k]

    filled = 0
    for g0, g1 in gaps:
        ends = []
        for i in (g0 - 1, g1):
            k = chunk_of(i)
            ends.append({key: get(k)[key][i + start0 - spans[k][0]] for key in BRIDGE_KEYS})
        vals = interpolate_gap(ends[0], ends[1], g1 - g0)
        for j, i in enumerate(range(g0, g1)):
            k = chunk_of(i)
            ch, r = get(k), i + start0 - spans[k][0]
            for key, v in vals.items():
                ch[key][r] = v[j]
            names = [x for x in str(ch["flags"][r]).split(",") if x]
            if "interpolated" not in names:
                ch["flags"] = ch["flags"].astype(object)
                ch["flags"][r] = ",".join(names + ["interpolated"])
            filled += 1
    for k, ch in cache.items():
        ch["flags"] = np.array(ch["flags"], dtype=str)
        store.rewrite_chunk(k, ch)
    return filled




def _collect(store: _Store, manifest) -> Dict[str, Any]:
    """Per-frame series for the plot and the summary (small), flag and status counts, jitter and distances, the
    per-frame sums of the timings."""
    keys = ("energy", "frame_ms", "time", "face_found", "psnr", "index", "audit_error", "audit_sampled",
            "audit_points_error")
    series: Dict[str, list] = {k: [] for k in keys}
    flag_count: Dict[str, int] = {}
    status_count: Dict[str, int] = {}
    jit = _JitterAccumulator()
    sums = {k: 0.0 for k in ("solve_ms", "landmarks_ms", "eyes_ms")}
    for ch in _iter_chunks(store, manifest):
        for k in keys:
            series[k].append(ch[k])
        for k in sums:
            sums[k] += float(ch[k].astype(np.float64).sum())
        for s in ch["status"]:
            status_count[str(s)] = status_count.get(str(s), 0) + 1
        for i, f in enumerate(ch["flags"]):
            names = [x for x in str(f).split(",") if x]
            for x in names:
                flag_count[x] = flag_count.get(x, 0) + 1
            ok = (bool(ch["face_found"][i]) and not (BREAK_FLAGS & set(names))
                  and not any(x.startswith("lost:") for x in names))
            jit.add({key: ch[key][i] for _, key in _JITTER_SERIES}, ok)
    out: Dict[str, Any] = {k: np.concatenate(v) if v else np.zeros(0) for k, v in series.items()}
    out["face_found"] = out["face_found"].astype(bool)
    out["audit_sampled"] = out["audit_sampled"].astype(bool)
    out["index"] = out["index"].astype(np.int64)
    out.update(flag_count=flag_count, status_count=status_count, jitter=jit.result(), sums=sums)
    return out


def _events(flag_count: Dict[str, int], status_count: Dict[str, int]) -> Dict[str, int]:
    """The summary's count of the frames where tracking was not plain: ``lost_frames`` (no usable face after one
    was seen: bridged), ``drops`` (a track dropped by a check), ``reseeded`` (re-seeded from a fresh detection that
    disagreed), ``redetected``, ``reinitialised`` (the solver started from the landmarks), ``suspect`` (verified at
    once), ``verified`` / ``verify_failed``, ``photometric_outliers``, ``interpolated`` (bridged by interpolation),
    ``no_face``."""
    c = flag_count.get
    return {"lost_frames": c("lost", 0), "drops": sum(v for k, v in flag_count.items() if k.startswith("lost:")),
            "reseeded": c("reseeded", 0), "redetected": c("redetected", 0),
            "reinitialised": c("reinitialised", 0), "suspect": c("suspect", 0), "verified": c("verified", 0),
            "verify_failed": c("verify_failed", 0), "photometric_outliers": c("photometric_outlier", 0),
            "interpolated": c("interpolated", 0), "no_face": status_count.get("no_face", 0)}


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
    col = _collect(store, manifest)
    energy, frame_ms, times, face = col["energy"], col["frame_ms"], col["time"], col["face_found"]
    flag_count, status_count, sums = col["flag_count"], col["status_count"], col["sums"]
    jitter, distance = col["jitter"]
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
    per_frame["audit"] = 1e3 * timer.get("audit", 0.0) / max(n, 1)
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
        "psnr": psnr_summary(col["psnr"], col["index"], vid["keyframes"]),
        "audit": {**audit_summary(col["audit_error"], col["audit_sampled"], col["audit_points_error"]),
                  "interval": cfg.audit_interval,
                  "ms_per_sampled_frame": 1e3 * timer.get("audit", 0.0) / max(int(col["audit_sampled"].sum()), 1)},
        "events": _events(flag_count, status_count),
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


