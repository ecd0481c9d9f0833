"""Facial landmarks: files (``.pts``, ``.ljson``, dlib conventions), detectors (dlib default, MediaPipe optional,
user-supplied points) and the NME metric. All coordinates in the package pixel convention (see
``docs/conventions.md``). Importing this package loads no model and imports neither dlib nor MediaPipe.
"""
from .detect import (
    MEDIAPIPE_TO_IBUG68,
    SAME_PERSON_THRESHOLD,
    DlibDetector,
    FaceDetection,
    FaceLandmarkDetector,
    Landmarks,
    MediaPipeDetector,
    as_landmarks,
    available_detectors,
    box_iou,
    clear_model_cache,
    descriptor_distance,
    detect_faces,
    detect_landmarks,
    dlib_model_path,
    edge_padded_crop,
    face_descriptor,
    get_detector,
    mediapipe_to_ibug68,
    points_box,
    predict_shape,
)
from .files import (
    box_from_dlib_rect,
    box_to_dlib_ltrb,
    from_dlib_points,
    read_landmarks,
    read_ljson,
    read_ljson_groups,
    read_pts,
    to_dlib_points,
    write_pts,
)
from .metrics import OUTER_EYE_CORNERS, nme, normalized_point_errors, outer_eye_distance

__all__ = [
    "FaceDetection", "Landmarks", "FaceLandmarkDetector", "DlibDetector", "MediaPipeDetector",
    "MEDIAPIPE_TO_IBUG68", "SAME_PERSON_THRESHOLD", "as_landmarks", "available_detectors", "box_iou",
    "clear_model_cache", "descriptor_distance", "detect_faces", "detect_landmarks", "dlib_model_path",
    "face_descriptor", "get_detector", "mediapipe_to_ibug68", "points_box", "predict_shape", "edge_padded_crop",
    "read_pts", "write_pts", "read_ljson", "read_ljson_groups", "read_landmarks", "from_dlib_points",
    "to_dlib_points", "box_from_dlib_rect", "box_to_dlib_ltrb",
    "nme", "normalized_point_errors", "outer_eye_distance", "OUTER_EYE_CORNERS",
]
