"""Video tracking (``docs/tracking.md``): :func:`track_video` and its outputs (:func:`load_track`), landmark tracking
across frames (:class:`LandmarkTracker`), gaze and blinks (:class:`EyeTracker`), and the per-frame solver
(:class:`FaceTracker`, imported on first use).

Importing this package loads no model and imports neither dlib nor PyAV.
"""
from .eyes import (
    BLINK_NAMES,
    GAZE_NAMES,
    ICT_GAZE_CALIBRATION,
    EyeConfig,
    EyeResult,
    EyeState,
    EyeTracker,
    GazeCalibration,
    IrisEstimate,
    blink_weights,
    estimate_open_ear,
    eye_aspect_ratio,
    gaze_angles,
    gaze_weights,
    locate_iris,
    predict_offsets,
    weights_to_angles,
)
from .facebox import FaceObservation, LandmarkTracker, LandmarkTrackerConfig
from .video import (
    Track,
    TrackConfig,
    TrackResult,
    keyframe_descriptor,
    landmark_jitter,
    load_track,
    render_overlay,
    select_keyframes,
    track_video,
)

_SOLVER = ("FaceTracker", "TrackerConfig", "FrameResult")


def __getattr__(name):
    if name in _SOLVER:
        from . import tracker

        return getattr(tracker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "track_video", "load_track", "render_overlay", "Track", "TrackConfig", "TrackResult", "select_keyframes",
    "keyframe_descriptor", "landmark_jitter",
    "LandmarkTracker", "LandmarkTrackerConfig", "FaceObservation",
    "EyeTracker", "EyeConfig", "EyeResult", "EyeState", "IrisEstimate", "GazeCalibration", "ICT_GAZE_CALIBRATION",
    "GAZE_NAMES", "BLINK_NAMES", "eye_aspect_ratio", "locate_iris", "gaze_angles", "gaze_weights",
    "weights_to_angles", "blink_weights", "predict_offsets", "estimate_open_ear",
    "FaceTracker", "TrackerConfig", "FrameResult",
]
