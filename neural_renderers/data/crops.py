"""Face crops that are stable over time, from a tracked video (not from the raw detections).

The crop of frame ``i`` is a square of side ``side_i`` centred at ``centre_i`` (pixels, our convention):

* ``centre_i`` is the projection of a fixed point of the tracked head (the centroid of the model's iBUG-68
  landmark vertices on the NEUTRAL identity shape, moved by the tracked pose), so it does not move when the jaw
  opens or the brows rise; it is offset by ``vertical_offset * side`` (positive: down) to frame the head;
* ``side_i = scale * s_med * z_med / z_i``: the median face size ``s_med`` (the larger side of the tracked model
  landmarks' box) over the video, times ``scale``, corrected by the head's depth ``z_i`` relative to its median, so
  the crop follows a face that walks towards the camera but not the per-frame noise of the landmark box;
* both are smoothed over time with a zero-phase Gaussian of ``sigma`` frames (offline: a whole track is known).

Frames the tracker did not track (no face) take the values of their nearest tracked neighbours.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["CropBoxes", "CropReference", "crop_reference", "crop_boxes_from_pose", "stable_crop_boxes", "crop_camera"]


@dataclass
class CropBoxes:
    """Per-frame square crops: ``centre (N, 2)`` pixels, ``side (N,)`` pixels (see the module docstring)."""

    centre: np.ndarray
    side: np.ndarray

    def __len__(self) -> int:
        return int(self.side.shape[0])

    def origin(self, i: int):
        """Top-left corner ``(x0, y0)`` of crop ``i`` in pixels."""
        return float(self.centre[i, 0] - self.side[i] / 2), float(self.centre[i, 1] - self.side[i] / 2)


def _fill_invalid(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Replace rows where ``valid`` is False by the nearest valid row (linear interpolation inside gaps)."""
    out = np.array(x, dtype=np.float64)
    idx = np.nonzero(valid)[0]
    if idx.size == 0:
        raise ValueError("no tracked frame: cannot place a face crop")
    allidx = np.arange(len(valid))
    for c in range(out.shape[1]):
        out[:, c] = np.interp(allidx, idx, out[idx, c])
    return out


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0 or len(x) < 3:
        return x
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(x, sigma, axis=0, mode="nearest")


@dataclass(frozen=True)
class CropReference:
    """What fixes a video's crops: the model-space ``head_point (3,)`` whose projection is the centre, and the crop
    ``side`` (pixels) when the head is at camera depth ``depth`` (cm); the side scales with ``depth / z``."""

    head_point: tuple
    side: float
    depth: float


def crop_reference(track, model=None, *, scale: float = 1.7, head_point: Optional[np.ndarray] = None
                   ) -> CropReference:
    """The :class:`CropReference` of a track: ``side = scale * median face size`` at the median depth (see the
    module docstring). ``head_point`` defaults to the centroid of the model's iBUG-68 landmark vertices on the
    track's identity (the model-space origin without a model)."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    valid = _valid(track)
    if not valid.any():
        raise ValueError("no tracked frame: cannot place a face crop")
    if head_point is None:
        if model is not None and "ibug68" in (getattr(model, "landmarks", {}) or {}):
            import torch

            with torch.no_grad():
                idt = torch.as_tensor(np.asarray(track.identity), dtype=model.dtype)[None]
                v = model(identity=idt if idt.shape[1] == model.num_identity else None).vertices
                head_point = model.landmarks["ibug68"].gather(v)[0].mean(0).cpu().double().numpy()
        else:
            head_point = np.zeros(3)
    lm = np.asarray(track.landmarks_2d, np.float64)[valid]
    size = np.max(lm.max(1) - lm.min(1), axis=1)
    z = _project(np.asarray(head_point), track.rotation[valid], track.translation[valid], 1.0, (0.0, 0.0))[1]
    return CropReference(tuple(float(v) for v in head_point), float(scale * np.median(size)), float(np.median(z)))


def _valid(track) -> np.ndarray:
    return (np.asarray(track.face_found, dtype=bool) & np.isfinite(track.translation).all(1)
            & np.isfinite(track.rotation).all(1) & np.isfinite(track.landmarks_2d).all((1, 2)))


def _project(point: np.ndarray, rotation: np.ndarray, translation: np.ndarray, focal: float, pp):
    """Pixel position ``(N, 2)`` and depth ``(N,)`` of a model-space point under per-frame poses."""
    import torch

    from morphable_models.geometry import model_to_camera

    n = len(rotation)
    if n == 0:
        return np.zeros((0, 2)), np.zeros(0)
    hp = torch.as_tensor(np.asarray(point, np.float64)).reshape(1, 1, 3).expand(n, 1, 3)
    p = model_to_camera(hp, torch.as_tensor(np.asarray(rotation), dtype=torch.float64),
                        torch.as_tensor(np.asarray(translation), dtype=torch.float64))[:, 0].numpy()
    z = np.maximum(p[:, 2], 1e-6)
    return np.stack([focal * p[:, 0] / z + pp[0], focal * p[:, 1] / z + pp[1]], 1), z


def crop_boxes_from_pose(rotation: np.ndarray, translation: np.ndarray, focal: float, principal_point,
                         reference: CropReference, valid: Optional[np.ndarray] = None, *,
                         vertical_offset: float = 0.02, sigma: float = 1.5) -> CropBoxes:
    """Crops for head poses ``rotation (N, 3)`` axis-angle, ``translation (N, 3)`` (e.g. a reenactment's output
    poses) with a video's :class:`CropReference` (see the module docstring); rows where ``valid`` is False take their
    neighbours' values."""
    rotation, translation = np.asarray(rotation, np.float64), np.asarray(translation, np.float64)
    n = len(rotation)
    ok = (np.ones(n, bool) if valid is None else np.asarray(valid, bool)) & np.isfinite(rotation).all(1) \
        & np.isfinite(translation).all(1)
    centre, z = _project(np.asarray(reference.head_point), np.where(ok[:, None], rotation, 0.0),
                         np.where(ok[:, None], translation, 1.0), float(focal),
                         np.asarray(principal_point, np.float64))
    side = reference.side * reference.depth / z
    centre = _fill_invalid(centre, ok)
    side = _fill_invalid(side[:, None], ok)[:, 0]
    centre, side = _smooth(centre, sigma), _smooth(side, sigma)
    centre[:, 1] += vertical_offset * side
    return CropBoxes(centre=centre, side=side)


def stable_crop_boxes(track, model=None, *, scale: float = 1.7, vertical_offset: float = 0.02,
                      sigma: float = 1.5, head_point: Optional[np.ndarray] = None) -> CropBoxes:
    """Stable square crops of a :class:`~facerender.tracking.Track`, one per frame (see the module docstring).

    Args:
        track: the track (``rotation``, ``translation``, ``focal``, ``principal_point``, ``landmarks_2d``,
            ``face_found``, ``identity``).
        model: the face model the track was made with (for the head point).
        scale: crop side / median face size.
        vertical_offset: shift of the centre downwards, as a fraction of the side.
        sigma: temporal smoothing (frames).
        head_point: ``(3,)`` model-space point whose projection is the centre (default: the landmark centroid).
    """
    ref = crop_reference(track, model, scale=scale, head_point=head_point)
    return crop_boxes_from_pose(track.rotation, track.translation, track.focal, track.principal_point, ref,
                                _valid(track), vertical_offset=vertical_offset, sigma=sigma)


def crop_camera(focal: float, principal_point, centre, side: float, size: int, dtype=None):
    """The :class:`~facerender.cameras.PinholeCamera` of a square crop (``centre``, ``side`` pixels) resampled to
    ``size x size``: the focal length and the principal point scaled and shifted into the crop (batch 1)."""
    import torch

    from facerender.cameras import PinholeCamera

    s = size / float(side)
    x0, y0 = float(centre[0]) - side / 2, float(centre[1]) - side / 2
    dt = dtype or torch.float32
    t = lambda v: torch.tensor([float(v)], dtype=dt)  # noqa: E731
    return PinholeCamera(fx=t(focal * s), fy=t(focal * s), cx=t((principal_point[0] - x0) * s),
                         cy=t((principal_point[1] - y0) * s), image_size=(size, size))
