"""Face detection, 68-point landmarks and face descriptors behind one small interface.

Backends (registry: :func:`available_detectors`, :func:`get_detector`):

* ``"dlib"`` (default, extra ``landmarks``): HOG face detector, the 68-point shape predictor and the 128-d
  ResNet face descriptor from ``face-recognition-models``. Defaults: no upsampling, detection threshold -0.2.
* ``"mediapipe"`` (optional extra ``mediapipe``): MediaPipe face detection (full-range model) and the 468-point
  face mesh, reduced to the 68 iBUG points with :data:`MEDIAPIPE_TO_IBUG68`.
* user-supplied points: :meth:`Landmarks.from_array`, :meth:`Landmarks.from_file`, :func:`as_landmarks`.

Every coordinate is in the package's pixel convention (x right, y down, the centre of pixel (col i, row j) at
``(i + 0.5, j + 0.5)``); boxes are ``(x0, y0, x1, y1)`` pixel EDGES (a box covering pixel columns 10..19 is
``x0 = 10, x1 = 20``). Models are loaded on first use and cached for the process (:func:`clear_model_cache`).

Per-point confidence: neither dlib's predictor nor MediaPipe's mesh report one. :class:`Landmarks` carries a
``(68,)`` ``confidence`` so that detectors that do estimate it can pass it on; for dlib and MediaPipe it is a
fixed, documented prior: 1.0 for the 51 inner points (brows, nose, eyes, mouth) and ``jaw_confidence`` (0.5) for
the 17 jawline points 0-16. Jawline points are contour points whose position ALONG the contour is not defined by
the image; on the four annotated sample photos their mean dlib error is 1.1-3.0 times (pooled 1.7 times) that of
the inner points, and 1.3-5.3 times (pooled 2.4) for MediaPipe, whose jaw points are fixed on its mesh rather than
on the silhouette. How sure the
detector is that a face is there is ``Landmarks.score`` (dlib: SVM margin, > threshold; MediaPipe: [0, 1]).
"""
from __future__ import annotations

import abc
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import BackendUnavailableError, NoFaceError
from ..io.image import read_image, to_uint8_rgb
from .files import box_from_dlib_rect, box_to_dlib_ltrb, from_dlib_points, read_landmarks, to_dlib_points

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
Box = Tuple[float, float, float, float]

N_IBUG = 68
JAW = slice(0, 17)

#: Distance below which two dlib face descriptors are taken to show the same person (dlib's documented value:
#: 99.38 % accuracy on LFW).
SAME_PERSON_THRESHOLD = 0.6

DLIB_PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
DLIB_RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"

# MediaPipe face-mesh vertex(es) of each iBUG-68 point (0-based, in iBUG order); a pair is averaged, a single
# index is repeated. Published by P. Yan, "Mediapipe_2_Dlib_Landmarks" (github.com/PeizhiYan/Mediapipe_2_Dlib_Landmarks,
# linked from google-ai-edge/mediapipe issue #4490). Measured against the human annotations of the sample photos
# (faces cropped around the detector box): NME 7.2 / 5.1 / 11.0 / 13.7 % on lenna / takeo / einstein /
# breakingbad (inner points 17-67: 3.5 / 4.1 / 10.3 / 9.5 %); the jawline indices are mesh vertices near the face
# oval, not the silhouette, and are 1.3-5.3 times less accurate than the inner points.
_MP_PAIRS = (
    # jawline 0-16 (subject's right ear -> chin -> left ear)
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,), (400,), (379,), (365,),
    (397, 288), (361,), (323,), (454,), (356,),
    # right brow 17-21, left brow 22-26
    (70,), (63,), (105,), (66,), (107,), (336,), (296,), (334,), (293,), (300,),
    # nose bridge 27-30, nose base 31-35
    (168, 6), (197, 195), (5,), (4,), (75,), (97,), (2,), (326,), (305,),
    # right eye 36-41, left eye 42-47
    (33,), (160,), (158,), (133,), (153,), (144,), (362,), (385,), (387,), (263,), (373,), (380,),
    # outer mouth 48-59
    (61,), (39,), (37,), (0,), (267,), (269,), (291,), (321,), (314,), (17,), (84,), (91,),
    # inner mouth 60-67
    (78,), (82,), (13,), (312,), (308,), (317,), (14,), (87,),
)
#: ``(68, 2)`` int64: MediaPipe face-mesh indices whose mean gives each iBUG-68 point.
MEDIAPIPE_TO_IBUG68 = np.array([p if len(p) == 2 else (p[0], p[0]) for p in _MP_PAIRS], dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class FaceDetection:
    """One detected face.

    Attributes:
        box: ``(x0, y0, x1, y1)`` pixel edges in the package convention.
        score: detector confidence on the detector's own scale (dlib: SVM margin; MediaPipe: [0, 1]).
        detector: name of the detector.
    """

    box: Box
    score: float
    detector: str = "dlib"

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


@dataclass(frozen=True, eq=False)
class Landmarks:
    """Facial landmarks of one face.

    Attributes:
        points: ``(L, 2)`` float64 ``(x, y)`` in the package pixel convention (NaN for missing points).
        confidence: ``(L,)`` float64 in ``[0, 1]``; a weight per point (see the module notes for what the
            detectors put here).
        box: the face box ``(x0, y0, x1, y1)`` the points were found in, or None.
        score: the face detection score (detector-specific scale), or None (user-supplied points or box).
        detector: who produced the points (``"dlib"``, ``"mediapipe"``, ``"user"``, a file name ...).
        image_size: ``(H, W)`` of the image, when known.
    """

    points: np.ndarray
    confidence: np.ndarray = None
    box: Optional[Box] = None
    score: Optional[float] = None
    detector: str = "user"
    image_size: Optional[Tuple[int, int]] = None

    def __post_init__(self):
        pts = self.points
        if isinstance(pts, torch.Tensor):
            pts = pts.detach().cpu().numpy()
        pts = np.array(pts, dtype=np.float64)  # a copy: never share the caller's buffer
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"Landmarks.points must be (L, 2) (x, y), got shape {pts.shape}")
        conf = self.confidence
        if conf is None:
            conf = np.where(np.isfinite(pts).all(1), 1.0, 0.0)
        if isinstance(conf, torch.Tensor):
            conf = conf.detach().cpu().numpy()
        conf = np.array(conf, dtype=np.float64).reshape(-1)
        if conf.shape != (pts.shape[0],):
            raise ValueError(f"Landmarks.confidence must be ({pts.shape[0]},) for {pts.shape[0]} points, "
                             f"got shape {conf.shape}")
        if not np.all((conf >= 0) & (conf <= 1)):
            raise ValueError(f"Landmarks.confidence must lie in [0, 1], got the range [{conf.min()}, {conf.max()}]")
        box = self.box
        if box is not None:
            box = tuple(float(v) for v in box)
            if len(box) != 4:
                raise ValueError(f"Landmarks.box must be (x0, y0, x1, y1), got {self.box!r}")
        pts.setflags(write=False)
        conf.setflags(write=False)
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "confidence", conf)
        object.__setattr__(self, "box", box)
        if self.score is not None:
            object.__setattr__(self, "score", float(self.score))
        if self.image_size is not None:
            object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @classmethod
    def from_array(cls, points, confidence=None, *, box: Optional[Sequence[float]] = None,
                   image_size: Optional[Tuple[int, int]] = None, detector: str = "user") -> "Landmarks":
        """Wrap user-supplied ``(L, 2)`` points (numpy or torch, ALREADY in the package convention).

        ``confidence`` defaults to 1 for every finite point (0 for NaN points). Points from other conventions:
        convert first with :mod:`facerender.landmarks.files` (``from_dlib_points``, ``PTS_OFFSET`` ...).
        """
        return cls(points, confidence, box=box, score=None, detector=detector, image_size=image_size)

    @classmethod
    def from_file(cls, path: PathLike, confidence=None, *, image_size: Optional[Tuple[int, int]] = None
                  ) -> "Landmarks":
        """Read a ``.pts`` / ``.ljson`` file (see :func:`facerender.landmarks.files.read_landmarks`)."""
        path = Path(path)
        return cls(read_landmarks(path), confidence, detector=f"file:{path.name}", image_size=image_size)

    def to_tensor(self, dtype: torch.dtype = torch.float32, device: Optional[Union[str, torch.device]] = None
                  ) -> torch.Tensor:
        """The points as an ``(L, 2)`` tensor."""
        return torch.tensor(self.points, dtype=dtype, device=device)

    def bounding_box(self) -> Box:
        """The box ``(x0, y0, x1, y1)`` spanned by the finite points."""
        return points_box(self.points)


def as_landmarks(obj, *, image_size: Optional[Tuple[int, int]] = None) -> Landmarks:
    """Coerce a :class:`Landmarks`, an ``(L, 2)`` array / tensor (package convention) or a ``.pts`` / ``.ljson``
    path to :class:`Landmarks`."""
    if isinstance(obj, Landmarks):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return Landmarks.from_file(obj, image_size=image_size)
    return Landmarks.from_array(obj, image_size=image_size)


def points_box(points) -> Box:
    """The tight box ``(x0, y0, x1, y1)`` of ``(L, 2)`` points (NaN points ignored)."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    p = p[np.isfinite(p).all(1)]
    if len(p) == 0:
        raise ValueError("points_box: no finite points")
    return (float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max()))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes ``(x0, y0, x1, y1)`` (0 when they do not overlap)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _point_prior(jaw_confidence: float) -> np.ndarray:
    conf = np.ones(N_IBUG)
    conf[JAW] = jaw_confidence
    return conf


def _as_rgb(image) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    return np.ascontiguousarray(to_uint8_rgb(image))


def _check_box(box, image: np.ndarray) -> Box:
    try:
        b = tuple(float(v) for v in box)
    except TypeError:
        raise ValueError(f"box must be (x0, y0, x1, y1), got {box!r}") from None
    if len(b) != 4 or not all(np.isfinite(b)) or b[2] <= b[0] or b[3] <= b[1]:
        raise ValueError(f"box must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {box!r}")
    h, w = image.shape[:2]
    if b[2] <= 0 or b[3] <= 0 or b[0] >= w or b[1] >= h:
        raise ValueError(f"box {b} lies outside the {w}x{h} image")
    return b


# ----------------------------------------------------------------------------------------------------------------
# Backends


_MODEL_CACHE: Dict[tuple, object] = {}


def clear_model_cache() -> None:
    """Forget every loaded detector / predictor / descriptor model (they are reloaded on next use)."""
    _MODEL_CACHE.clear()


def _import_dlib():
    try:
        import dlib
    except ImportError as e:
        raise BackendUnavailableError(
            'the dlib landmark detector needs dlib and its models: pip install "facerender[landmarks]" '
            f"(import failed: {e})"
        ) from e
    return dlib


def dlib_model_path(filename: str = DLIB_PREDICTOR_FILE) -> Path:
    """Path of a model file shipped by the ``face-recognition-models`` package (located without importing it,
    since its ``__init__`` needs ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError(
            f'the dlib model file {filename!r} comes with face-recognition-models: pip install "facerender[landmarks]"'
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / filename
    if not path.is_file():
        raise BackendUnavailableError(f"dlib model file not found: {str(path)!r} (reinstall face-recognition-models)")
    return path


def _cached(key: tuple, load):
    model = _MODEL_CACHE.get(key)
    if model is None:
        logger.debug("loading model %s", key)
        model = load()
        _MODEL_CACHE[key] = model
    return model


def _dlib_face_detector():
    dlib = _import_dlib()
    return _cached(("dlib", "hog"), dlib.get_frontal_face_detector)


def _dlib_predictor(path: Optional[PathLike]):
    dlib = _import_dlib()
    p = Path(path) if path is not None else dlib_model_path(DLIB_PREDICTOR_FILE)
    if not p.is_file():
        raise FileNotFoundError(f"dlib shape predictor not found: {str(p)!r}")
    return _cached(("dlib", "predictor", str(p.resolve())), lambda: dlib.shape_predictor(str(p)))


def edge_padded_crop(image: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """``image[y0:y1, x0:x1]`` for any integer window, parts outside the image filled by repeating its border
    pixels (edge replication). ``(y1 - y0, x1 - x0, C)``, a new contiguous array."""
    H, W = image.shape[:2]
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty window x [{x0}, {x1}), y [{y0}, {y1})")
    if x0 >= 0 and y0 >= 0 and x1 <= W and y1 <= H:
        return np.ascontiguousarray(image[y0:y1, x0:x1])
    # the part inside the image (at least its nearest row / column), then edge padding
    ya, yb = min(max(y0, 0), H - 1), max(min(y1, H), 1)
    xa, xb = min(max(x0, 0), W - 1), max(min(x1, W), 1)
    ya, xa = min(ya, yb - 1), min(xa, xb - 1)
    inside = image[ya:yb, xa:xb]
    pad = ((ya - y0, y1 - yb), (xa - x0, x1 - xb)) + ((0, 0),) * (image.ndim - 2)
    out = np.pad(inside, tuple((max(a, 0), max(b, 0)) for a, b in pad), mode="edge")
    # windows entirely beside the image: cut the padded block to the window
    oy, ox = max(0, -(ya - y0)), max(0, -(xa - x0))
    return np.ascontiguousarray(out[oy:oy + (y1 - y0), ox:ox + (x1 - x0)])


#: Predictor margin (times the box side) that must lie inside the image; beyond it the image is edge-padded.
PREDICTOR_MARGIN = 0.5


def predict_shape(predictor, image: np.ndarray, box: Box, margin: float = PREDICTOR_MARGIN) -> np.ndarray:
    """Run a dlib shape predictor in ``box`` and return its points ``(P, 2)`` in the package convention.

    dlib's predictor reads pixels outside the image as black. A face cut by the image border (a chin below the
    bottom of a talking-head frame) is then regressed against a black band, and the whole shape suffers: on the four
    annotated photos cut at or below the mouth, NME 8.4 % on average with the black border against 5.2 % when
    the image is extended by repeating its border pixels (4.6 % uncut). So when ``box`` grown by ``margin`` times
    its side crosses the image border, the predictor runs on that window cut from the edge-padded image
    (:func:`edge_padded_crop`); boxes well inside the image are run as they are (identical results).
    """
    if not isinstance(margin, (int, float)) or not margin >= 0:
        raise ValueError(f"margin must be a number >= 0 (times the box side), got {margin!r}")
    dlib = _import_dlib()
    H, W = image.shape[:2]
    side = max(box[2] - box[0], box[3] - box[1])
    m = margin * side
    x0, y0 = int(np.floor(box[0] - m)), int(np.floor(box[1] - m))
    x1, y1 = int(np.ceil(box[2] + m)), int(np.ceil(box[3] + m))
    if x0 >= 0 and y0 >= 0 and x1 <= W and y1 <= H:
        return from_dlib_points(predictor(image, dlib.rectangle(*box_to_dlib_ltrb(box))))
    crop = edge_padded_crop(image, x0, y0, x1, y1)
    shifted = (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)
    return from_dlib_points(predictor(crop, dlib.rectangle(*box_to_dlib_ltrb(shifted)))) + np.array(
        [x0, y0], dtype=np.float64)


def _dlib_recognizer(path: Optional[PathLike]):
    dlib = _import_dlib()
    p = Path(path) if path is not None else dlib_model_path(DLIB_RECOGNITION_FILE)
    if not p.is_file():
        raise FileNotFoundError(f"dlib face recognition model not found: {str(p)!r}")
    return _cached(("dlib", "recognizer", str(p.resolve())), lambda: dlib.face_recognition_model_v1(str(p)))


class FaceLandmarkDetector(abc.ABC):
    """Interface of a detector backend. Images are ``(H, W, 3)`` uint8 RGB (callers go through :func:`detect_faces`
    and :func:`detect_landmarks`, which normalise any image first)."""

    name: str = "?"

    @abc.abstractmethod
    def detect_faces(self, image: np.ndarray) -> List[FaceDetection]:
        """All faces, most confident first (an empty list when there is none)."""

    @abc.abstractmethod
    def landmarks_in_box(self, image: np.ndarray, box: Box, score: Optional[float] = None) -> Landmarks:
        """The 68 iBUG points of the face in ``box``."""

    def settings(self) -> str:
        """The settings named in error messages."""
        return ""


@dataclass(frozen=True)
class DlibDetector(FaceLandmarkDetector):
    """dlib HOG face detector + 68-point shape predictor (2 ms per face).

    Attributes:
        upsample: times the image is doubled before detection (finds smaller faces, 4x slower per step).
        threshold: detection score threshold (dlib's own default is 0; -0.2 keeps breakingbad's annotated
            face, which scores -0.15).
        predictor_path: a 68-point ``shape_predictor`` file; default from ``face-recognition-models``.
        jaw_confidence: the confidence given to jawline points 0-16 (others get 1; see the module notes).
    """

    upsample: int = 0
    threshold: float = -0.2
    predictor_path: Optional[str] = None
    jaw_confidence: float = 0.5
    name: str = field(default="dlib", init=False)

    def __post_init__(self):
        if int(self.upsample) != self.upsample or self.upsample < 0:
            raise ValueError(f"upsample must be a non-negative integer, got {self.upsample!r}")
        if not 0 <= self.jaw_confidence <= 1:
            raise ValueError(f"jaw_confidence must lie in [0, 1], got {self.jaw_confidence}")

    def settings(self) -> str:
        return f"dlib HOG, upsample={self.upsample}, threshold={self.threshold}"

    def detect_faces(self, image: np.ndarray) -> List[FaceDetection]:
        rects, scores, _ = _dlib_face_detector().run(image, int(self.upsample), float(self.threshold))
        dets = [FaceDetection(box_from_dlib_rect(r), float(s), self.name) for r, s in zip(rects, scores)]
        return sorted(dets, key=lambda d: -d.score)

    def landmarks_in_box(self, image: np.ndarray, box: Box, score: Optional[float] = None) -> Landmarks:
        pts = predict_shape(_dlib_predictor(self.predictor_path), image, box)
        if len(pts) != N_IBUG:
            raise ValueError(f"the shape predictor {self.predictor_path!r} gives {len(pts)} points, not 68")
        return Landmarks(pts, _point_prior(self.jaw_confidence), box=box, score=score, detector=self.name,
                         image_size=image.shape[:2])


def _import_mediapipe():
    try:
        import mediapipe as mp
        _ = mp.solutions.face_mesh  # the legacy solutions API (mediapipe 0.10.x) ships the models
    except (ImportError, AttributeError) as e:
        raise BackendUnavailableError(
            'the MediaPipe face mesh needs mediapipe 0.10.x with its legacy solutions: '
            f'pip install "facerender[mediapipe]" (import failed: {e})'
        ) from e
    return mp


@dataclass(frozen=True)
class MediaPipeDetector(FaceLandmarkDetector):
    """MediaPipe face detection (full-range model) + face mesh, reduced to the 68 iBUG points.

    The mesh runs on a square crop around the face box (side ``crop_scale`` times the box's larger side), so a
    caller's box selects the face and small faces in large photos are found. MediaPipe's normalised coordinates
    (``x * W`` with the image spanning ``[0, W]``) are already pixel-edge based, as in the package convention.

    Attributes:
        min_detection_confidence: face detector threshold in [0, 1].
        crop_scale: crop side / box side for the mesh.
        jaw_confidence: the confidence given to jawline points 0-16 (others get 1).
    """

    min_detection_confidence: float = 0.5
    crop_scale: float = 2.0
    jaw_confidence: float = 0.5
    name: str = field(default="mediapipe", init=False)

    def __post_init__(self):
        if not 0 <= self.min_detection_confidence <= 1:
            raise ValueError(f"min_detection_confidence must lie in [0, 1], got {self.min_detection_confidence}")
        if self.crop_scale < 1:
            raise ValueError(f"crop_scale must be >= 1, got {self.crop_scale}")
        if not 0 <= self.jaw_confidence <= 1:
            raise ValueError(f"jaw_confidence must lie in [0, 1], got {self.jaw_confidence}")

    def settings(self) -> str:
        return f"MediaPipe full-range face detection, min_detection_confidence={self.min_detection_confidence}"

    def _face_detection(self):
        mp = _import_mediapipe()
        return _cached(("mediapipe", "detection", self.min_detection_confidence),
                       lambda: mp.solutions.face_detection.FaceDetection(
                           model_selection=1, min_detection_confidence=self.min_detection_confidence))

    def _face_mesh(self):
        mp = _import_mediapipe()
        return _cached(("mediapipe", "mesh"), lambda: mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=False, min_detection_confidence=0.3))

    def detect_faces(self, image: np.ndarray) -> List[FaceDetection]:
        h, w = image.shape[:2]
        result = self._face_detection().process(image)
        dets = []
        for d in result.detections or []:
            b = d.location_data.relative_bounding_box
            box = (b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h)
            dets.append(FaceDetection(tuple(float(v) for v in box), float(d.score[0]), self.name))
        return sorted(dets, key=lambda d: -d.score)

    def mesh_in_box(self, image: np.ndarray, box: Box) -> np.ndarray:
        """The ``(468, 2)`` face-mesh points (package convention) of the face in ``box``."""
        h, w = image.shape[:2]
        side = self.crop_scale * max(box[2] - box[0], box[3] - box[1])
        cx, cy = 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])
        x0, y0 = max(int(np.floor(cx - side / 2)), 0), max(int(np.floor(cy - side / 2)), 0)
        x1, y1 = min(int(np.ceil(cx + side / 2)), w), min(int(np.ceil(cy + side / 2)), h)
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        result = self._face_mesh().process(crop)
        if not result.multi_face_landmarks:
            raise NoFaceError(f"MediaPipe face mesh found no face in the box {tuple(round(v, 1) for v in box)} "
                              f"of the {w}x{h} image")
        lm = result.multi_face_landmarks[0].landmark
        pts = np.array([(p.x, p.y) for p in lm], dtype=np.float64)
        return pts * [x1 - x0, y1 - y0] + [x0, y0]

    def landmarks_in_box(self, image: np.ndarray, box: Box, score: Optional[float] = None) -> Landmarks:
        mesh = self.mesh_in_box(image, box)
        return Landmarks(mediapipe_to_ibug68(mesh), _point_prior(self.jaw_confidence), box=box, score=score,
                         detector=self.name, image_size=image.shape[:2])


def mediapipe_to_ibug68(mesh_points) -> np.ndarray:
    """Reduce MediaPipe face-mesh points ``(468 or 478, D)`` (numpy) to the 68 iBUG points ``(68, D)`` with
    :data:`MEDIAPIPE_TO_IBUG68` (the mean of each pair)."""
    pts = np.asarray(mesh_points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] < 468:
        raise ValueError(f"expected (468, D) or (478, D) face-mesh points, got shape {pts.shape}")
    return pts[MEDIAPIPE_TO_IBUG68].mean(axis=1)


_REGISTRY = {"dlib": DlibDetector, "mediapipe": MediaPipeDetector}


def get_detector(name: str = "dlib", **settings) -> FaceLandmarkDetector:
    """A detector by name (``"dlib"``, ``"mediapipe"``) with its settings (see :class:`DlibDetector`,
    :class:`MediaPipeDetector`). Constructing one loads nothing; models load on first use."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown detector {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**settings)


def available_detectors() -> List[str]:
    """Names of the detectors whose dependencies are installed (checked without importing them)."""
    out = []
    if importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models"):
        out.append("dlib")
    if importlib.util.find_spec("mediapipe") is not None:
        out.append("mediapipe")
    return out


def _resolve(detector, settings) -> FaceLandmarkDetector:
    if isinstance(detector, FaceLandmarkDetector):
        if settings:
            raise ValueError(f"settings {sorted(settings)} given with a detector instance; set them on the instance")
        return detector
    return get_detector(detector, **settings)


# ----------------------------------------------------------------------------------------------------------------
# Public functions


def detect_faces(image, detector: Union[str, FaceLandmarkDetector] = "dlib", **settings) -> List[FaceDetection]:
    """Detect faces.

    Args:
        image: ``(H, W, 3)`` uint8 RGB, or anything :func:`facerender.io.to_uint8_rgb` accepts (grayscale, RGBA,
            16-bit, float, a tensor), or an image path.
        detector: a name from :func:`available_detectors` or a detector instance.
        **settings: detector settings when ``detector`` is a name (dlib: ``upsample``, ``threshold``).

    Returns:
        The faces, most confident first; an empty list when there is none.
    """
    det = _resolve(detector, settings)
    return det.detect_faces(_as_rgb(image))


def detect_landmarks(image, box: Optional[Sequence[float]] = None, index: Optional[int] = None,
                     detector: Union[str, FaceLandmarkDetector] = "dlib", **settings) -> Landmarks:
    """The 68 iBUG landmarks of one face.

    Which face: the caller's ``box`` (no detection is run: the predictor works in that box), else the
    ``index``-th face of :func:`detect_faces` (most confident first), else the LARGEST detected face.

    Args:
        image: as for :func:`detect_faces`.
        box: ``(x0, y0, x1, y1)`` pixel edges of the face (e.g. a :class:`FaceDetection`'s ``box``).
        index: which detected face; not together with ``box``.
        detector, settings: as for :func:`detect_faces`.

    Returns:
        :class:`Landmarks` with ``(68, 2)`` points in the package convention.

    Raises:
        NoFaceError: no face detected (the message names the image size and the detector settings), or ``index``
            past the number of faces.
        ValueError: bad ``box`` or both ``box`` and ``index``.
    """
    if box is not None and index is not None:
        raise ValueError("give either box or index, not both")
    det = _resolve(detector, settings)
    img = _as_rgb(image)
    if box is not None:
        return det.landmarks_in_box(img, _check_box(box, img))
    faces = det.detect_faces(img)
    h, w = img.shape[:2]
    if not faces:
        raise NoFaceError(f"no face found in the {w}x{h} image ({det.settings()}); pass box=, or lower the "
                          "threshold / upsample")
    if index is not None:
        if not -len(faces) <= index < len(faces):
            raise NoFaceError(f"face index {index} requested but {len(faces)} face(s) found in the {w}x{h} image "
                              f"({det.settings()})")
        face = faces[index]
    else:
        face = max(faces, key=lambda f: f.area)
    return det.landmarks_in_box(img, face.box, score=face.score)


def face_descriptor(image, landmarks_or_box=None, *, num_jitters: int = 0, padding: float = 0.25,
                    recognizer_path: Optional[PathLike] = None, predictor_path: Optional[PathLike] = None
                    ) -> np.ndarray:
    """dlib's 128-d face descriptor (ResNet, 99.38 % on LFW); compare with :func:`descriptor_distance`.

    Args:
        image: as for :func:`detect_faces`.
        landmarks_or_box: the face: :class:`Landmarks` / ``(68, 2)`` points (package convention), a box
            ``(x0, y0, x1, y1)`` or :class:`FaceDetection` (landmarks are predicted in it), or None (the largest
            face detected with the dlib defaults).
        num_jitters: >0 averages over that many jittered crops (slower, slightly more stable).
        padding: dlib's crop padding around the aligned face.
        recognizer_path, predictor_path: model files; defaults from ``face-recognition-models``.

    Returns:
        ``(128,)`` float64 descriptor (unit-free; same person below :data:`SAME_PERSON_THRESHOLD` = 0.6 distance).
    """
    dlib = _import_dlib()
    img = _as_rgb(image)
    face = landmarks_or_box
    if isinstance(face, FaceDetection):
        face = face.box
    if face is None:
        lm = detect_landmarks(img, detector=DlibDetector(predictor_path=predictor_path))
    elif not isinstance(face, (Landmarks, str, os.PathLike)) and np.shape(face) == (4,):
        lm = DlibDetector(predictor_path=predictor_path).landmarks_in_box(img, _check_box(face, img))
    else:
        lm = as_landmarks(face)
    if len(lm) != N_IBUG or not np.all(np.isfinite(lm.points)):
        raise ValueError(f"face_descriptor needs 68 finite landmarks, got {len(lm)} points")
    ipts = to_dlib_points(lm.points)
    l, t, r, b = box_to_dlib_ltrb(lm.box if lm.box is not None else lm.bounding_box())
    shape = dlib.full_object_detection(dlib.rectangle(l, t, r, b), [dlib.point(int(x), int(y)) for x, y in ipts])
    desc = _dlib_recognizer(recognizer_path).compute_face_descriptor(img, shape, int(num_jitters), float(padding))
    return np.array(desc, dtype=np.float64)


def descriptor_distance(a, b):
    """Euclidean distance between face descriptors ``(..., 128)`` (numpy or torch, broadcast): ``(...)``.

    Below :data:`SAME_PERSON_THRESHOLD` (0.6) dlib's descriptors are taken to show the same person.
    """
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        if a.shape[-1] != b.shape[-1]:
            raise ValueError(f"descriptors differ in length: {tuple(a.shape)} and {tuple(b.shape)}")
        return torch.linalg.vector_norm(a - b, dim=-1)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"descriptors differ in length: {a.shape} and {b.shape}")
    d = np.linalg.norm(a - b, axis=-1)
    return float(d) if d.ndim == 0 else d


__all__ = [
    "FaceDetection",
    "Landmarks",
    "FaceLandmarkDetector",
    "DlibDetector",
    "MediaPipeDetector",
    "MEDIAPIPE_TO_IBUG68",
    "SAME_PERSON_THRESHOLD",
    "as_landmarks",
    "available_detectors",
    "box_iou",
    "clear_model_cache",
    "descriptor_distance",
    "detect_faces",
    "detect_landmarks",
    "dlib_model_path",
    "edge_padded_crop",
    "face_descriptor",
    "get_detector",
    "mediapipe_to_ibug68",
    "points_box",
    "predict_shape",
]
