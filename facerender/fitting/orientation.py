"""Faces that are not upright in a photo (upside down, turned by 90 degrees): find the quarter turn that makes the
face upright, fit the turned image, and map the result back to the photo.

dlib's HOG detector and 68-point predictor are trained on upright faces. On a photo turned by 90 degrees they find
nothing; on an upside-down one they may find an upright "face" (eyes on the mouth) with a weak score: on video frames
turned by 180 degrees it scores about 0.4 where the upright frame scores 2.1 (takeo.ppm: -0.01 against 2.54).
:func:`find_upright_turn` therefore runs the detector on the turned images when the upright detection is missing or
weak (score below :data:`CHECK_BELOW`), and takes a turn when its detection beats the upright one by
:data:`MARGIN`. A quarter turn of the image is a rotation of the camera about its optical axis, so the fitted pose,
principal point, landmarks and SH lighting map back exactly (:func:`unturn_fit`).

Turns follow :func:`numpy.rot90`: ``k`` quarter turns counter-clockwise.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch

from ..errors import NoFaceError

__all__ = ["CHECK_BELOW", "MARGIN", "Orientation", "find_upright_turn", "turn_image", "turn_points", "unturn_points",
           "camera_turn", "sh_turn_matrix", "unturn_fit"]

#: Upright detections scoring at least this are trusted without trying the turns (dlib SVM margin; upright faces in
#: the sample photos and videos score 0.07-2.5, upside-down video frames about 0.4).
CHECK_BELOW = 1.0
#: A turn is taken when its best detection scores this much more than the upright one (or the upright image has none).
MARGIN = 0.3


@dataclass
class Orientation:
    """The outcome of :func:`find_upright_turn`.

    Attributes:
        turns: quarter turns counter-clockwise (``np.rot90``'s ``k``, 0-3) that make the face upright.
        landmarks: the detected :class:`~facerender.landmarks.detect.Landmarks` in the TURNED image.
        scores: detection score of the chosen (largest) face per turn tried (None: no face).
    """

    turns: int
    landmarks: object
    scores: Dict[int, Optional[float]] = field(default_factory=dict)


def turn_image(image: np.ndarray, k: int) -> np.ndarray:
    """``image (H, W, ...)`` turned ``k`` quarter turns counter-clockwise (a contiguous copy)."""
    return np.ascontiguousarray(np.rot90(image, k % 4))


def _turn_points_once(pts: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Points of an ``(H, W)`` image -> the image turned once counter-clockwise (size ``(W, H)``)."""
    H, W = size
    return np.stack([pts[..., 1], W - pts[..., 0]], -1)


def turn_points(points, k: int, size: Tuple[int, int]) -> np.ndarray:
    """Pixel points ``(..., 2)`` of an image of ``size (H, W)`` -> the image turned ``k`` times (package
    convention, continuous coordinates)."""
    p = np.asarray(points, dtype=np.float64)
    H, W = int(size[0]), int(size[1])
    for _ in range(k % 4):
        p = _turn_points_once(p, (H, W))
        H, W = W, H
    return p


def unturn_points(points, k: int, size: Tuple[int, int]) -> np.ndarray:
    """The inverse of :func:`turn_points`: points of the TURNED image -> the original image of ``size (H, W)``."""
    H, W = int(size[0]), int(size[1])
    return turn_points(points, (4 - k % 4) % 4, (W, H) if k % 2 else (H, W))


def camera_turn(k: int, dtype=torch.float64) -> torch.Tensor:
    """``Q (3, 3)``: camera coordinates of the image turned ``k`` times = ``Q @`` camera coordinates of the original
    (x right, y down, z forward; a rotation about the optical axis)."""
    q1 = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=dtype)
    return torch.linalg.matrix_power(q1, k % 4)


def sh_turn_matrix(Q: torch.Tensor) -> torch.Tensor:
    """``X (9, 9)`` with ``L = X @ L_turned``: SH lighting coefficients seen from a camera whose coordinates are
    ``Q @`` the original ones, expressed in the original camera (exact for rotations: the 9 functions of bands 0-2
    span a rotation-invariant space; solved by least squares on sampled directions)."""
    from ..render.lighting import sh_basis

    g = torch.Generator().manual_seed(0)
    n = torch.randn(256, 3, generator=g, dtype=torch.float64)
    n = n / n.norm(dim=-1, keepdim=True)
    Qd = Q.to(torch.float64)
    Y, Yq = sh_basis(n), sh_basis(n @ Qd.T)
    return torch.linalg.lstsq(Y, Yq).solution  # Y(Q n) = Y(n) @ X: X = M_Q^T


def find_upright_turn(image: np.ndarray, detector: Union[str, object] = "dlib", *, check_below: float = CHECK_BELOW,
                      margin: float = MARGIN, **settings) -> Orientation:
    """Detect the face in ``image`` upright and, when that detection is missing or weaker than ``check_below``, in
    the image turned by 90, 180 and 270 degrees; return the turn whose (largest) face scores best (a turn must beat
    the upright detection by ``margin``).

    Raises:
        NoFaceError when no turn shows a face (the message says that the turns were tried).
    """
    from ..landmarks.detect import _as_rgb, _resolve

    det = _resolve(detector, settings)
    img = _as_rgb(image)
    scores: Dict[int, Optional[float]] = {}
    found = {}

    def detect(k: int):
        im = turn_image(img, k) if k else img
        faces = det.detect_faces(im)
        if not faces:
            scores[k] = None
            return
        face = max(faces, key=lambda f: f.area)
        scores[k] = float(face.score)
        found[k] = (im, face)

    detect(0)
    if scores[0] is None or scores[0] < check_below:
        for k in (2, 1, 3):
            detect(k)
    best = 0
    for k in (2, 1, 3):
        s = scores.get(k)
        if s is not None and (scores[0] is None or s > scores[0] + margin) and (best == 0 or s > scores[best]):
            best = k
    if best not in found:
        h, w = img.shape[:2]
        raise NoFaceError(f"no face found in the {w}x{h} image, upright or turned by 90, 180 or 270 degrees "
                          f"({det.settings()}); pass a box, or lower the threshold / upsample")
    im, face = found[best]
    return Orientation(best, det.landmarks_in_box(im, face.box, score=face.score), scores)


def unturn_fit(result, k: int, size: Tuple[int, int]):
    """A :class:`~facerender.fitting.fit_image.FitResult` of the image turned ``k`` times -> the same fit in the
    original image of ``size (H, W)``: head rotation and translation (the camera turns about its axis), principal
    point, landmarks, box and SH lighting. Identity, expression, albedo and focal length do not change."""
    from morphable_models.geometry import AXIS_FLIP
    from morphable_models.rotation import axis_angle_to_matrix, matrix_to_axis_angle

    if k % 4 == 0:
        return result
    dt = result.rotation.dtype
    Q = camera_turn(k, torch.float64)
    F = torch.diag(torch.tensor(AXIS_FLIP, dtype=torch.float64))
    R_t = axis_angle_to_matrix(result.rotation.double())  # (1, 3, 3), model space
    # turned camera: X' = F R' X + t' = Q (F R X + t)  =>  R = F Q^T F R',  t = Q^T t'
    R = (F @ Q.T @ F) @ R_t
    t = result.translation.double() @ Q  # (Q^T t')^T = t'^T Q
    X = sh_turn_matrix(Q)
    sh = torch.einsum("jk,bkc->bjc", X, result.sh.double())
    size = (int(size[0]), int(size[1]))
    pp = torch.as_tensor(unturn_points(result.principal_point.detach().cpu().double().numpy(), k, size))
    box = result.box
    if box is not None:
        c = unturn_points(np.array([[box[0], box[1]], [box[2], box[3]]], dtype=np.float64), k, size)
        box = (float(c[:, 0].min()), float(c[:, 1].min()), float(c[:, 0].max()), float(c[:, 1].max()))
    dev = result.rotation.device
    return dataclasses.replace(
        result, rotation=matrix_to_axis_angle(R).to(dt).to(dev), translation=t.to(dt).to(dev),
        sh=sh.to(result.sh.dtype).to(dev), principal_point=pp.to(result.principal_point.dtype).to(dev),
        image_size=size, landmarks=unturn_points(result.landmarks, k, size),
        landmarks_2d=unturn_points(result.landmarks_2d, k, size), box=box, flags=list(result.flags))
