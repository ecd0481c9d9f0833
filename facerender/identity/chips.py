"""Aligned face chips as a differentiable warp, matching ``dlib.get_face_chip`` / ``get_face_chip_details``.

dlib's alignment (``dlib/image_transforms/interpolation.h``), reproduced step by step:

1. **Chip details.** The mean face (dlib's table of the 51 inner iBUG points, of which 33 are used: no eyebrows,
   no lower lip; or the 5 points of dlib's 5-point predictor) is placed in the chip:
   ``chip_point = (padding + mean) / (2 padding + 1) * size``. The least-squares similarity (Umeyama) from chip
   points to the image landmarks gives the angle and the scale ``s`` (image pixels per chip pixel); the chip's
   rectangle is centred on the image of the chip centre ``(size/2, size/2)`` with width ``size * s``. dlib's
   landmarks are integer pixel indices; here they are the package's continuous coordinates (pixel centres at
   ``+0.5``), converted by subtracting 0.5.
2. **Pyramid.** When the chip is much smaller than its rectangle (``((W - 1)/2**(k+1) + 1)**2 > size**2`` with
   ``W = size * s``), dlib samples from level ``k`` of a 2x image pyramid (``pyramid_down<2>``: the 5x5 filter
   ``[1 4 6 4 1]^2 / 256``, stride 2, no padding, built on the crop of the rotated rectangle grown by 2, 6, 14 ...
   pixels; its coordinate map ``p / 2 - (1.25, 0.75)``).
3. **Sampling.** Chip pixel ``(c, r)`` maps to
   ``centre + R(angle) * (W_k - 1) / (size - 1) * ((c, r) - (size - 1) / 2)`` at that level; bilinear
   interpolation, black where the 2x2 neighbourhood leaves the crop.

With ``quantize=False`` (default) everything stays in floating point and differentiable with respect to the image
(and the landmarks, through the similarity); on float64 images it equals ``dlib.get_face_chip`` run on a float64
image to 1e-9 (tested). ``quantize=True`` also rounds like dlib's uint8 path (integer pyramid, truncated samples) to
reproduce its uint8 chips exactly; it is not differentiable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import NoFaceError, ShapeError

#: dlib's mean face shape, iBUG points 17..67 (x, y in [0, 1]), from ``get_face_chip_details``.
_MEAN_X = (0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
           0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
           0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
           0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
           0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
           0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
           0.553364, 0.490127, 0.42689)
_MEAN_Y = (0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
           0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
           0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
           0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
           0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
           0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
           0.784792, 0.824182, 0.831803, 0.824182)
#: iBUG indices dlib aligns on (17..67 without the eyebrows 17-26 and the lower lip 55-59, 65-67).
ALIGN_POINTS_68 = tuple(i for i in range(17, 68) if not (17 <= i <= 26 or 55 <= i <= 59 or 65 <= i <= 67))
#: dlib's 5-point mean shape (its 5-point predictor's order: two corners of each eye, then the nose).
_MEAN_5 = ((0.8595674595992, 0.2134981538014), (0.6460604764104, 0.2289674387677),
           (0.1205750620789, 0.2137274526848), (0.3340850613712, 0.2290642403242),
           (0.4901123135679, 0.6277975316475))
#: Default smallest outer-eye-corner distance (image pixels) that :func:`face_chips` accepts.
MIN_EYE_DISTANCE = 10.0

_PYR_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)


class FaceTooSmallError(NoFaceError):
    """The face is too small in the image to be aligned (the message states the eye distance found)."""


@dataclass
class ChipDetails:
    """dlib's ``chip_details`` for a batch, plus where :func:`face_chips` samples.

    Attributes:
        matrix: ``(B, 2, 3)`` affine map from chip pixel centres ``(c + 0.5, r + 0.5)`` to image coordinates, both
            in the package convention (full resolution; the pyramid levels' half-pixel offsets are not included).
        angle: ``(B,)`` rotation in radians (dlib's ``chip_details.angle``).
        scale: ``(B,)`` image pixels per chip pixel of the similarity (``rect.width() / size``).
        center: ``(B, 2)`` centre of dlib's chip rectangle in dlib pixel coordinates (package minus 0.5).
        level: per face, the pyramid level dlib samples from (-1: the image itself).
        crop: per face, the integer crop ``(left, top, right, bottom)`` (inclusive) the pyramid is built on.
        size: chip side in pixels.
    """

    matrix: torch.Tensor
    angle: torch.Tensor
    scale: torch.Tensor
    center: torch.Tensor
    level: List[int]
    crop: List[Tuple[int, int, int, int]]
    size: int


def _mean_shape(n_points: int, size: int, padding: float, dtype, device) -> Tuple[torch.Tensor, Optional[list]]:
    if n_points == 68:
        idx = list(ALIGN_POINTS_68)
        pts = [((padding + _MEAN_X[i - 17]) / (2 * padding + 1), (padding + _MEAN_Y[i - 17]) / (2 * padding + 1))
               for i in idx]
    else:
        idx = None
        pts = [((padding + x) / (2 * padding + 1), (padding + y) / (2 * padding + 1)) for x, y in _MEAN_5]
    return torch.tensor(pts, dtype=dtype, device=device) * size, idx


def _check_landmarks(landmarks, batch: Optional[int]) -> torch.Tensor:
    if not isinstance(landmarks, torch.Tensor):
        landmarks = torch.as_tensor(np.asarray(landmarks, dtype=np.float64))
    if landmarks.ndim == 2:
        landmarks = landmarks[None]
    if landmarks.ndim != 3 or landmarks.shape[1] not in (5, 68) or landmarks.shape[2] != 2:
        raise ShapeError(f"landmarks must be (B, 68, 2) (iBUG 68) or (B, 5, 2) (dlib's 5 points), (x, y) in pixels; "
                         f"got shape {tuple(landmarks.shape)}")
    if batch is not None and landmarks.shape[0] != batch:
        raise ShapeError(f"landmarks hold {landmarks.shape[0]} faces but the images {batch}")
    if not landmarks.is_floating_point():
        landmarks = landmarks.double()
    if not torch.isfinite(landmarks).all():
        bad = (~torch.isfinite(landmarks)).any(-1).any(-1).nonzero().flatten().tolist()
        raise ShapeError(f"landmarks of face(s) {bad} hold NaN or inf")
    return landmarks


def face_chip_details(landmarks, size: int = 150, padding: float = 0.25, *,
                      image_size: Optional[Tuple[int, int]] = None) -> ChipDetails:
    """dlib's ``get_face_chip_details`` for a batch (differentiable ``matrix``/``angle``/``scale`` w.r.t. landmarks).

    Args:
        landmarks: ``(B, 68, 2)`` iBUG-68 or ``(B, 5, 2)`` dlib 5-point ``(x, y)`` in the package convention
            (numpy or torch; ``(68, 2)`` is taken as a batch of one).
        size: chip side (dlib's face recognition network: 150).
        padding: dlib's padding around the face (0.25 for the face descriptor; ``get_face_chip``'s default too).
        image_size: ``(H, W)`` of the images; needed for ``crop`` (else ``crop`` is computed unclipped).
    Returns:
        :class:`ChipDetails`.
    """
    if not (isinstance(size, (int, np.integer)) and size >= 2):
        raise ValueError(f"size must be an integer >= 2, got {size!r}")
    if not (math.isfinite(padding) and padding >= 0):
        raise ValueError(f"padding must be a finite number >= 0, got {padding!r}")
    lm = _check_landmarks(landmarks, None)
    dtype = lm.dtype if lm.dtype in (torch.float32, torch.float64) else torch.float32
    lm = lm.to(dtype)
    ref, idx = _mean_shape(lm.shape[1], int(size), float(padding), dtype, lm.device)
    to = (lm[:, idx] if idx is not None else lm) - 0.5  # dlib pixel coordinates
    # least-squares similarity chip -> image (Umeyama without reflection; a face is never mirrored)
    a = ref - ref.mean(0)
    mt = to.mean(1, keepdim=True)
    b = to - mt
    sa = (a * a).sum()
    p = (a[None, :, 0] * b[..., 0] + a[None, :, 1] * b[..., 1]).sum(-1) / sa
    q = (a[None, :, 0] * b[..., 1] - a[None, :, 1] * b[..., 0]).sum(-1) / sa
    R = torch.stack([torch.stack([p, -q], -1), torch.stack([q, p], -1)], -2)  # (B, 2, 2) = scale * rotation
    t = mt[:, 0] - R @ ref.mean(0)
    angle = torch.atan2(q, p)
    scale = torch.sqrt(p * p + q * q)
    half = torch.full((2,), size / 2.0, dtype=dtype, device=lm.device)
    center = (R @ half) + t  # dlib: tform(point(cols, rows) / 2.0)
    W = size * scale  # rect.width()
    step = (W - 1) / (size - 1)  # image pixels per chip pixel in extract_image_chips
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    lin = rot * step[:, None, None]
    # chip pixel centre (c + 0.5) -> dlib chip index c -> dlib image coordinate -> package (+0.5)
    c0 = torch.full((2,), (size - 1) / 2.0 + 0.5, dtype=dtype, device=lm.device)
    offset = center + 0.5 - lin @ c0
    matrix = torch.cat([lin, offset[..., None]], -1)
    levels, crops = [], []
    Wd = W.detach().double().cpu().numpy()
    cd = center.detach().double().cpu().numpy()
    ad = angle.detach().double().cpu().numpy()
    for i in range(lm.shape[0]):
        level, grow = -1, 2.0
        while (Wd[i] - 1) / 2.0 ** (level + 2) + 1 > size:
            level += 1
            grow = grow * 2 + 2
        e = (Wd[i] - 1) / 2 * (abs(math.cos(ad[i])) + abs(math.sin(ad[i])))
        box = [cd[i, 0] - e - grow, cd[i, 1] - e - grow, cd[i, 0] + e + grow, cd[i, 1] + e + grow]
        if image_size is not None:
            H, Wi = image_size
            box = [max(box[0], 0.0), max(box[1], 0.0), min(box[2], Wi - 1.0), min(box[3], H - 1.0)]
        crops.append(tuple(int(math.floor(v + 0.5)) for v in box))
        levels.append(level)
    return ChipDetails(matrix=matrix, angle=angle, scale=scale, center=center, level=levels, crop=crops,
                       size=int(size))


def _as_bchw(images) -> Tuple[torch.Tensor, bool]:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (B, H, W, 3) or (B, 3, H, W), got {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ShapeError(f"images must be (B, H, W, 3) or (B, 3, H, W), got shape {tuple(images.shape)}")
    if images.shape[-1] == 3:
        return images.permute(0, 3, 1, 2), True
    if images.shape[1] == 3:
        return images, False
    raise ShapeError(f"images must be RGB: (B, H, W, 3) or (B, 3, H, W), got shape {tuple(images.shape)}")


def _pyramid_down(x: torch.Tensor, quantize: bool) -> torch.Tensor:
    """dlib's ``pyramid_down<2>``: ``(B, C, H, W)`` -> ``(B, C, (H-3)//2, (W-3)//2)``,
    ``out[i, j] = sum_ab w_a w_b x[2i + a, 2j + b] / 256`` with ``w = [1, 4, 6, 4, 1]`` (strided slices: a grouped
    convolution is several times slower on the CPU)."""
    H, W = (x.shape[2] - 3) // 2, (x.shape[3] - 3) // 2
    rows = sum(w * x[:, :, :, k:k + 2 * W - 1:2] for k, w in enumerate(_PYR_TAPS))
    y = sum(w * rows[:, :, k:k + 2 * H - 1:2, :] for k, w in enumerate(_PYR_TAPS)) / 256.0
    return torch.floor(y) if quantize else y


def face_chips(images: torch.Tensor, landmarks, size: int = 150, padding: float = 0.25, *, quantize: bool = False,
               min_eye_distance: float = MIN_EYE_DISTANCE, channels_last: Optional[bool] = None) -> torch.Tensor:
    """Aligned face chips, as ``dlib.get_face_chip(img, shape, size, padding)`` makes them, differentiably.

    Args:
        images: ``(B, H, W, 3)`` or ``(B, 3, H, W)`` RGB, floating point in [0, 1] (``(H, W, 3)``: a batch of
            one). Device and dtype of the output follow it.
        landmarks: ``(B, 68, 2)`` or ``(B, 5, 2)`` ``(x, y)`` in the package convention (pixel centres at +0.5).
        size, padding: chip side and dlib's padding (150 and 0.25 for the face descriptor).
        quantize: also round as dlib's uint8 path does (exact uint8 chips; not differentiable).
        min_eye_distance: refuse faces whose outer eye corners (iBUG 36/45, or 5-point 0/2) are closer (pixels).
        channels_last: force the layout of ``images`` (default: ``(..., 3)`` last means channel-last).
    Returns:
        ``(B, 3, size, size)`` chips in [0, 1] (same dtype and device as ``images``).
    Raises:
        ShapeError: wrong shapes, non-float images, values outside [0, 1], NaN landmarks.
        FaceTooSmallError: a face whose eye distance is below ``min_eye_distance``.
    """
    if channels_last is None:
        x, _ = _as_bchw(images)
    else:
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ShapeError(f"images must be a 4-D tensor, got {getattr(images, 'shape', type(images))}")
        x = images.permute(0, 3, 1, 2) if channels_last else images
        if x.shape[1] != 3:
            raise ShapeError(f"images must have 3 channels, got shape {tuple(images.shape)}")
    if not x.is_floating_point():
        raise ShapeError(f"images must be floating point in [0, 1], got dtype {x.dtype} (divide uint8 by 255)")
    if x.numel():
        lo, hi = float(x.detach().amin()), float(x.detach().amax())
        if lo < -1e-3 or hi > 1 + 1e-3 or not (math.isfinite(lo) and math.isfinite(hi)):
            raise ShapeError(f"images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    B, _, H, W = x.shape
    lm = _check_landmarks(landmarks, B)
    eyes = (36, 45) if lm.shape[1] == 68 else (0, 2)
    dist = torch.linalg.vector_norm(lm[:, eyes[0]] - lm[:, eyes[1]], dim=-1).detach()
    small = (dist < min_eye_distance).nonzero().flatten().tolist()
    if small:
        raise FaceTooSmallError(
            f"face(s) {small} too small to align: outer-eye-corner distance "
            f"{', '.join(f'{float(dist[i]):.1f}' for i in small)} px < min_eye_distance {min_eye_distance} px")
    det = face_chip_details(lm.to(device=x.device, dtype=x.dtype if x.dtype == torch.float64 else torch.float32),
                            size, padding, image_size=(H, W))
    chips = []
    grid_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    ar = torch.arange(size, dtype=grid_dtype, device=x.device) - (size - 1) / 2.0
    gy, gx = torch.meshgrid(ar, ar, indexing="ij")
    uv = torch.stack([gx, gy], -1)  # (S, S, 2) chip offsets from the centre, (c, r)
    for i in range(B):
        l, t, r, b = det.crop[i]
        if r < l or b < t:
            raise NoFaceError(f"face {i} lies outside the {W}x{H} image (chip centre at "
                              f"{det.center[i].detach().cpu().numpy().round(1).tolist()})")
        src = x[i:i + 1, :, t:b + 1, l:r + 1].to(grid_dtype) * 255.0
        if quantize:
            src = torch.round(src)
        center = det.center[i].to(grid_dtype) - torch.tensor([l, t], dtype=grid_dtype, device=x.device)
        extent = (det.scale[i].to(grid_dtype) * size - 1)
        for _ in range(det.level[i] + 1):
            if src.shape[2] <= 8 or src.shape[3] <= 8:
                break
            src = _pyramid_down(src, quantize)
            center = center / 2 - torch.tensor([1.25, 0.75], dtype=grid_dtype, device=x.device)
            extent = extent / 2
        ang = det.angle[i].to(grid_dtype)
        rot = torch.stack([torch.stack([torch.cos(ang), -torch.sin(ang)]),
                           torch.stack([torch.sin(ang), torch.cos(ang)])])
        pos = center + (uv @ rot.T) * (extent / (size - 1))  # (S, S, 2) level coordinates, pixel centres at ints
        h, w = src.shape[2], src.shape[3]
        valid = ((pos[..., 0].detach() >= 0) & (torch.floor(pos[..., 0].detach()) + 1 < w)
                 & (pos[..., 1].detach() >= 0) & (torch.floor(pos[..., 1].detach()) + 1 < h))
        grid = torch.stack([pos[..., 0] * (2.0 / max(w - 1, 1)) - 1, pos[..., 1] * (2.0 / max(h - 1, 1)) - 1], -1)
        out = F.grid_sample(src, grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)[0]
        out = out * valid.to(out.dtype)
        if quantize:
            out = torch.floor(out)  # assign_pixel(unsigned char, double) truncates
        chips.append(out)
    res = torch.stack(chips) / 255.0
    return res.to(x.dtype)


__all__ = ["ALIGN_POINTS_68", "ChipDetails", "FaceTooSmallError", "MIN_EYE_DISTANCE", "face_chip_details",
           "face_chips"]
