"""Face2Face mouth-interior retrieval: a database of the TARGET's own mouth crops, queried per output frame with the
desired (reenacted) mouth shape, temporally coherent, and warped into place.

A rendered morphable model has no convincing teeth or tongue, and a dark hole where the lips part looks wrong.
Face2Face instead takes the mouth interior from the target video itself: the frame whose mouth best matches the
reenacted expression, warped onto the reenacted lips.

**Normalised mouth frame.** Everything is measured in the frame of the outer mouth corners (iBUG-68 points 48 and
54, 0-based): origin at their midpoint, x along the corner-to-corner line, y perpendicular to it (downwards in an
upright face), unit = the corner distance. Descriptors are invariant to translation, in-plane rotation and scale.

**Database** (:class:`MouthDatabase`, built from the target's tracked frames): per frame

* a crop of the mouth region at a fixed small size (default ``64 x 96`` pixels, ``extent = 1.6`` corner distances
  wide, centred ``center_offset`` below the corner midpoint), uint8, resampled in the normalised frame
  (supersampled 2x2 to 4x4 when the frame's mouth is larger than the crop); 18 KB per frame (18.8 KB with the
  descriptors), so 3,000 frames take 56 MB;
* the SHAPE descriptor: the 18 mouth landmarks (48-67 without the two corners, whose normalised position is fixed)
  in normalised coordinates (36 numbers);
* the EXPRESSION descriptor: the weights of the mouth and jaw blendshapes (names starting with ``jaw`` or ``mouth``,
  e.g. ICT-FaceKit's ``jawOpen``, ``mouthSmile_L``...) when expressions are given;
* the APPEARANCE descriptor: the crop in grey at ``8 x 12``, zero mean, unit norm;
* the landmarks in crop pixels (for the warp) and the frame id (consecutive ids are successors in time).

**Matching cost.** The unary cost of entry ``j`` for a query ``q`` is ``w_shape * sum ||s_q - s_j||^2 +
w_expression * sum (e_q - e_j)^2`` (sums over the 18 points / the mouth weights). The temporal cost of going from
entry ``i`` (the previous output frame's match) to ``j`` is 0 when ``j`` is ``i`` itself or ``i``'s successor in the
target video (Face2Face: prefer the previous match or the frame after it), else ``w_switch +
w_appearance * ||a_i - a_j||^2`` (a switch, dearer the more it changes the mouth's appearance).
:meth:`MouthDatabase.retrieve` minimises the total cost over a whole sequence of queries by a beam Viterbi (per
frame the ``candidates`` best unary entries plus the previous frame's best states and their successors), so there
are no isolated jumps or flip-flops; :meth:`MouthDatabase.query` is the greedy online form (one query, optionally the
previous match). A query whose best
unary cost exceeds ``max_cost`` gets ``None``: nothing in the database fits, and the caller falls back to the
model-rendered mouth.

**Warp** (:meth:`MouthDatabase.warp`): a thin-plate spline through the 20 mouth landmarks maps every output pixel
near the desired mouth to the retrieved crop, which is sampled bilinearly (``grid_sample``). The returned alpha is
the inside of the desired INNER-lip polygon (points 60-67), grown by ``grow`` pixels and feathered over ``feather``
pixels (from the exact distance to the polygon), so only teeth, tongue and the dark interior are replaced and the lips
stay the render's; with ``MouthConfig.region = "lips"`` it is the OUTER-lip polygon (48-59): the retrieved lips too.
A desired opening wider than ``max_stretch`` times the entry's is not stretched: the entry's teeth follow each lip
and the extra opening is a mouth cavity shaded from the target's lip colour (:meth:`MouthDatabase.warp`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ShapeError

__all__ = [
    "MouthConfig",
    "MouthDatabase",
    "MouthMatch",
    "MouthWarp",
    "mouth_frame",
    "mouth_shape_descriptor",
    "mouth_expression_indices",
    "inner_mouth_alpha",
    "tps_fit",
    "tps_transform",
    "MOUTH_POINTS",
    "INNER_LIP_POINTS",
    "OUTER_LIP_POINTS",
    "MOUTH_CORNERS",
]

#: iBUG-68 (0-based) indices of the mouth: outer lip 48-59, inner lip 60-67.
MOUTH_POINTS: Tuple[int, ...] = tuple(range(48, 68))
#: The inner-lip polygon (60-67, in order around the opening).
INNER_LIP_POINTS: Tuple[int, ...] = tuple(range(60, 68))
#: The outer-lip polygon (48-59, in order around the mouth).
OUTER_LIP_POINTS: Tuple[int, ...] = tuple(range(48, 60))
#: The outer mouth corners that define the normalised mouth frame.
MOUTH_CORNERS: Tuple[int, int] = (48, 54)
_SHAPE_POINTS = tuple(i for i in MOUTH_POINTS if i not in MOUTH_CORNERS)  # 18 points
_CORNERS_IN_MOUTH = (0, 6)  # positions of 48 and 54 within MOUTH_POINTS
# positions within MOUTH_POINTS (48-67): inner-lip pairs (upper 61, 62, 63 over lower 67, 66, 65), the outer-lip
# points above / below them (50, 51, 52 and 58, 57, 56), the outer points next to the corners ((49, 59), (53, 55)),
# and the inner corners 60 and 64
_INNER_PAIRS = ((13, 14, 15), (19, 18, 17))
_OUTER_PAIRS = ((2, 3, 4), (10, 9, 8))
_OUTER_ENDS = ((1, 11), (5, 7))
_INNER_CORNERS = (12, 16)


# ------------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class MouthConfig:
    """Settings of :class:`MouthDatabase`.

    Attributes:
        crop_size: ``(h, w)`` of the stored crops.
        extent: crop width in corner distances (the crop's height is ``extent * h / w``).
        center_offset: crop centre below the corner midpoint, in corner distances.
        appearance_size: ``(h, w)`` of the grey appearance descriptor.
        w_shape, w_expression: weights of the unary cost terms.
        w_appearance, w_switch: weights of the temporal cost (appearance change; switching to an entry that is
            neither the previous match nor its successor).
        max_cost: a best unary cost above this means "nothing fits" (query returns None).
        candidates: unary candidates per frame in :meth:`MouthDatabase.retrieve`'s beam.
        max_stretch: how far :meth:`MouthDatabase.warp` may stretch the retrieved opening vertically (desired
            inner-lip gap / retrieved gap, per column). A wider desired opening keeps the retrieved teeth at this
            stretch next to each lip and fills the rest with the mouth cavity (``inf``: one thin-plate spline
            stretches the whole crop, the plain Face2Face warp).
        region: what :meth:`MouthDatabase.warp` replaces: ``"inner"`` the inside of the inner lips (teeth, tongue,
            cavity; the lips stay the caller's), ``"lips"`` the whole mouth inside the outer lips, the retrieved
            lips included.
        cavity_shading: ``(back, tongue)``: the cavity's brightness relative to the target's lip colour at its
            top (the dark back of the mouth) and its bottom (the tongue).

    Scale of the shape cost, measured on ``talking_d3.mp4`` (354 frames, dlib landmarks): the best match of a frame
    among the frames more than 15 frames away costs 0.013 (median; 90 % below 0.059), two consecutive frames differ
    by 0.003 (median; 90 % below 0.025), two random frames by about 0.4. The defaults make a switch cost about one
    frame-to-frame change and call a mouth "not in the database" from a shape cost of 0.15 (an RMS deviation of
    about 0.09 corner distances per point).
    """

    crop_size: Tuple[int, int] = (64, 96)
    extent: float = 1.6
    center_offset: float = 0.12
    appearance_size: Tuple[int, int] = (8, 12)
    w_shape: float = 1.0
    w_expression: float = 0.25
    w_appearance: float = 0.05
    w_switch: float = 0.02
    max_cost: float = 0.15
    candidates: int = 16
    max_stretch: float = 1.3
    region: str = "inner"
    cavity_shading: Tuple[float, float] = (0.3, 0.9)

    def __post_init__(self) -> None:
        for name in ("crop_size", "appearance_size"):
            v = getattr(self, name)
            ok = isinstance(v, (tuple, list)) and len(v) == 2 and all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 2 for s in v)
            if not ok:
                raise ValueError(f"{name} must be (h, w) with two ints >= 2, got {v!r}")
        for name in ("extent", "max_cost"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a number > 0, got {v!r}")
        for name in ("w_shape", "w_expression", "w_appearance", "w_switch"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if not isinstance(self.center_offset, (int, float)):
            raise ValueError(f"center_offset must be a number, got {self.center_offset!r}")
        if isinstance(self.candidates, bool) or not isinstance(self.candidates, int) or self.candidates < 1:
            raise ValueError(f"candidates must be an int >= 1, got {self.candidates!r}")
        if not isinstance(self.max_stretch, (int, float)) or not self.max_stretch >= 1:
            raise ValueError(f"max_stretch must be a number >= 1 (inf: no cavity), got {self.max_stretch!r}")
        if self.region not in ("inner", "lips"):
            raise ValueError(f"region must be 'inner' or 'lips', got {self.region!r}")
        cs = self.cavity_shading
        if not (isinstance(cs, (tuple, list)) and len(cs) == 2
                and all(isinstance(v, (int, float)) and 0 <= v <= 2 for v in cs)):
            raise ValueError(f"cavity_shading must be (back, tongue) with two numbers in [0, 2], got {cs!r}")


class MouthMatch(NamedTuple):
    """One retrieval result.

    Attributes:
        index: entry of the database.
        frame_id: the target frame the entry came from.
        cost: total cost (unary + temporal) of the choice.
        unary: unary cost (descriptor distance to the query).
        score: ``exp(-unary / max_cost)`` in (0, 1]: 1 for an exact match, ``1/e`` at the ``max_cost`` limit.
    """

    index: int
    frame_id: int
    cost: float
    unary: float
    score: float


class MouthWarp(NamedTuple):
    """What :meth:`MouthDatabase.warp` returns.

    Attributes:
        image: ``(H, W, 3)`` float32 warped mouth crop (0 outside ``box``).
        alpha: ``(H, W)`` float32 feathered inner-mouth mask (composite with
            ``alpha * image + (1 - alpha) * frame``).
        box: ``(top, bottom, left, right)`` the pixel box that was computed (exclusive ends).
    """

    image: torch.Tensor
    alpha: torch.Tensor
    box: Tuple[int, int, int, int]


# ------------------------------------------------------------------------------------------------- geometry
def _landmarks(x, name: str, batched: Optional[bool] = None) -> torch.Tensor:
    """``(N, 68, 2)`` float64 from ``(68, 2)`` / ``(N, 68, 2)`` (numpy or torch)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.asarray(x, dtype=np.float64))
    if not isinstance(x, torch.Tensor) or x.ndim not in (2, 3) or tuple(x.shape[-2:]) != (68, 2):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        want = "(N, 68, 2)" if batched else "(68, 2)" if batched is False else "(68, 2) or (N, 68, 2)"
        raise ShapeError(f"{name} must be iBUG-68 landmarks {want} in pixels, got {got}")
    if batched is True and x.ndim != 3 or batched is False and x.ndim != 2:
        raise ShapeError(f"{name} must have shape {'(N, 68, 2)' if batched else '(68, 2)'}, got {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise ShapeError(f"{name} must be numeric, got {x.dtype}")
    x = x.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(x[..., MOUTH_POINTS, :]).all()):
        raise ShapeError(f"{name} has NaN or inf among the mouth points 48-67")
    return x[None] if x.ndim == 2 else x


def mouth_frame(landmarks) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The normalised mouth frame of iBUG-68 landmarks.

    Args:
        landmarks: ``(..., 68, 2)`` pixels.
    Returns:
        ``(origin (..., 2), axes (..., 2, 2), scale (...,))``: the corner midpoint, the rows ``ex`` (corner 48 to 54)
        and ``ey`` (``ex`` turned by +90 degrees in the y-down image: downwards for an upright face), the corner
        distance. A point ``p`` has normalised coordinates ``axes @ (p - origin) / scale``.
    Raises:
        ShapeError when the corners coincide.
    """
    lm = landmarks
    c0, c1 = lm[..., MOUTH_CORNERS[0], :], lm[..., MOUTH_CORNERS[1], :]
    origin = (c0 + c1) / 2
    v = c1 - c0
    scale = v.norm(dim=-1)
    if bool((scale <= 1e-9).any()):
        raise ShapeError("landmarks: the mouth corners 48 and 54 coincide (no mouth frame)")
    ex = v / scale[..., None]
    ey = torch.stack([-ex[..., 1], ex[..., 0]], -1)
    return origin, torch.stack([ex, ey], -2), scale


def _normalise(points: torch.Tensor, landmarks: torch.Tensor, frame=None) -> torch.Tensor:
    """``points (..., P, 2)`` in the normalised mouth frame of ``landmarks`` (or of a given ``mouth_frame``)."""
    o, A, s = mouth_frame(landmarks) if frame is None else frame
    return torch.einsum("...ij,...pj->...pi", A, points - o[..., None, :]) / s[..., None, None]


def mouth_shape_descriptor(landmarks) -> torch.Tensor:
    """``(..., 36)`` float64: the 18 mouth landmarks other than the corners, in the normalised mouth frame."""
    lm = landmarks if isinstance(landmarks, torch.Tensor) else torch.as_tensor(np.asarray(landmarks, np.float64))
    lm = lm.to(torch.float64)
    return _normalise(lm[..., _SHAPE_POINTS, :], lm).flatten(-2)


def mouth_expression_indices(names: Sequence[str]) -> List[int]:
    """Indices of the mouth / jaw blendshapes (names starting with ``jaw`` or ``mouth``, any case)."""
    return [i for i, n in enumerate(names) if n.lower().startswith(("jaw", "mouth"))]


# ------------------------------------------------------------------------------------------------------ TPS
def _tps_kernel(d2: torch.Tensor) -> torch.Tensor:
    return 0.5 * d2 * torch.log(d2.clamp_min(1e-30))  # r^2 log r


def tps_fit(source: torch.Tensor, target: torch.Tensor, regularization: float = 0.0) -> Dict[str, torch.Tensor]:
    """Fit a 2D thin-plate spline mapping ``source (N, 2)`` points onto ``target (N, 2)`` (interpolating when
    ``regularization = 0``). Coordinates are normalised internally (mean, RMS radius) for conditioning.

    Returns:
        parameters for :func:`tps_transform`.
    """
    src = torch.as_tensor(source, dtype=torch.float64)
    dst = torch.as_tensor(target, dtype=torch.float64)
    if src.ndim != 2 or src.shape[1] != 2 or dst.shape != src.shape or src.shape[0] < 3:
        raise ShapeError(f"tps_fit needs source and target of the same shape (N >= 3, 2), got "
                         f"{tuple(src.shape)} and {tuple(dst.shape)}")
    mu = src.mean(0)
    sc = (src - mu).square().sum(1).mean().sqrt().clamp_min(1e-12)
    p = (src - mu) / sc
    n = p.shape[0]
    K = _tps_kernel(_sqdist(p, p)) + regularization * torch.eye(n, dtype=torch.float64)
    P = torch.cat([torch.ones(n, 1, dtype=torch.float64), p], 1)
    A = torch.zeros(n + 3, n + 3, dtype=torch.float64)
    A[:n, :n], A[:n, n:], A[n:, :n] = K, P, P.t()
    b = torch.zeros(n + 3, 2, dtype=torch.float64)
    b[:n] = dst
    sol = torch.linalg.lstsq(A, b).solution if n > 64 else torch.linalg.solve(A, b)
    return {"centers": p, "mu": mu, "scale": sc, "w": sol[:n], "a": sol[n:]}


def _sqdist(p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``(M, N)`` squared distances of 2D points (explicit components: a reduction over a length-2 axis is slow)."""
    dx = p[:, 0:1] - c[None, :, 0]
    dy = p[:, 1:2] - c[None, :, 1]
    return dx * dx + dy * dy


def tps_transform(params: Dict[str, torch.Tensor], points: torch.Tensor) -> torch.Tensor:
    """Apply a spline of :func:`tps_fit` to ``points (M, 2)``; returns ``(M, 2)`` (dtype of ``points``)."""
    pts = torch.as_tensor(points)
    q = (pts.to(torch.float64) - params["mu"]) / params["scale"]
    U = _tps_kernel(_sqdist(q, params["centers"]))
    out = params["a"][0] + q @ params["a"][1:] + U @ params["w"]
    return out.to(pts.dtype if pts.is_floating_point() else torch.float64)


# ----------------------------------------------------------------------------------------------- inner mouth
def _polygon_signed_distance(px: torch.Tensor, poly: torch.Tensor) -> torch.Tensor:
    """Signed distance of points ``(M, 2)`` to a closed polygon ``(K, 2)``: positive inside (even-odd rule)."""
    ax, ay = poly[None, :, 0], poly[None, :, 1]
    b = torch.roll(poly, -1, 0)
    abx, aby = b[None, :, 0] - ax, b[None, :, 1] - ay  # (1, K)
    apx, apy = px[:, 0:1] - ax, px[:, 1:2] - ay  # (M, K)
    t = ((apx * abx + apy * aby) / (abx * abx + aby * aby).clamp_min(1e-12)).clamp_(0, 1)
    ex, ey = apx - t * abx, apy - t * aby
    dist = (ex * ex + ey * ey).amin(1).sqrt()
    # crossing number (even-odd)
    y = px[:, 1:2]
    cond = (ay > y) != (b[None, :, 1] > y)
    xint = ax + (y - ay) * abx / torch.where(aby == 0, torch.full_like(aby, 1e-30), aby)
    inside = ((cond & (px[:, 0:1] < xint)).sum(1) % 2) == 1
    return torch.where(inside, dist, -dist)


def inner_mouth_alpha(landmarks, image_size: Tuple[int, int], *, grow: float = 1.0, feather: float = 2.0,
                      box: Optional[Tuple[int, int, int, int]] = None,
                      polygon: Sequence[int] = INNER_LIP_POINTS) -> torch.Tensor:
    """Feathered mask of the inside of the inner-lip polygon (iBUG points 60-67; ``polygon``: other points in
    order, e.g. :data:`OUTER_LIP_POINTS` for the whole mouth with the lips).

    Args:
        landmarks: ``(68, 2)`` pixels (package convention: pixel centres at +0.5).
        image_size: ``(H, W)``.
        grow: pixels the polygon is grown by (negative: shrunk).
        feather: width of the linear ramp in pixels (alpha 0 at ``grow`` pixels outside the polygon, 1 at
            ``feather - grow`` pixels inside).
        box: ``(top, bottom, left, right)`` to evaluate (default: the whole image); 0 elsewhere.
    Returns:
        ``(H, W)`` float32 alpha in [0, 1].
    """
    lm = _landmarks(landmarks, "landmarks", batched=False)[0]
    H, W = int(image_size[0]), int(image_size[1])
    if not isinstance(feather, (int, float)) or feather < 0:
        raise ValueError(f"feather must be a number >= 0, got {feather!r}")
    top, bottom, left, right = box if box is not None else (0, H, 0, W)
    alpha = torch.zeros(H, W, dtype=torch.float32)
    if bottom <= top or right <= left:
        return alpha
    ys = torch.arange(top, bottom, dtype=torch.float64) + 0.5
    xs = torch.arange(left, right, dtype=torch.float64) + 0.5
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    sd = _polygon_signed_distance(grid, lm[list(polygon)])
    a = ((sd + grow) / max(float(feather), 1e-6)).clamp(0, 1) if feather > 0 else (sd + grow >= 0).to(torch.float64)
    alpha[top:bottom, left:right] = a.reshape(bottom - top, right - left).to(torch.float32)
    return alpha


# --------------------------------------------------------------------------------------------------- database
def _frames(x, name: str = "frames") -> torch.Tensor:
    """``(N, H, W, 3)`` float32 in [0, 1] from uint8 / float, numpy / torch, batched or not."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4) or x.shape[-1] != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(f"{name} must be (N, H, W, 3) or (H, W, 3) RGB, got {got}")
    if x.dtype == torch.uint8:
        x = x.to(torch.float32) / 255.0
    elif x.is_floating_point():
        x = x.to(torch.float32)
    else:
        raise ShapeError(f"{name} must be uint8 or float, got {x.dtype}")
    return x[None] if x.ndim == 3 else x


class MouthDatabase:
    """The target's mouth crops with shape / expression / appearance descriptors (see the module docstring).

    Build it from the target's tracked frames::

        db = MouthDatabase(expression_names=model.expression_names)
        for i, (frame, result) in enumerate(zip(frames, track_results)):
            db.add(frame, result.landmarks_2d, result.expression, frame_id=i)

    or ``MouthDatabase.build(frames, landmarks, expressions, expression_names=...)``. Then per output frame
    ``db.query(desired_landmarks, desired_expression, previous=last)`` (online) or once for the whole sequence
    ``db.retrieve(desired_landmarks (T, 68, 2), desired_expressions (T, K))`` (beam Viterbi), and
    ``db.warp(match.index, desired_landmarks, (H, W))`` for the crop and its alpha.

    Args:
        config: :class:`MouthConfig`.
        expression_names: names of the expression coefficients passed to :meth:`add` / :meth:`query`; the mouth
            and jaw ones (:func:`mouth_expression_indices`) form the expression descriptor. None: every given
            coefficient is used.
    """

    def __init__(self, config: Optional[MouthConfig] = None, expression_names: Optional[Sequence[str]] = None):
        self.config = config if config is not None else MouthConfig()
        if not isinstance(self.config, MouthConfig):
            raise ValueError(f"config must be a MouthConfig, got {type(self.config).__name__}")
        self.expression_names = tuple(expression_names) if expression_names is not None else None
        self._expr_idx = mouth_expression_indices(self.expression_names) if self.expression_names else None
        self._crops: List[torch.Tensor] = []  # uint8 (n, h, w, 3) chunks
        self._shape: List[torch.Tensor] = []
        self._expr: List[Optional[torch.Tensor]] = []
        self._app: List[torch.Tensor] = []
        self._crop_lm: List[torch.Tensor] = []
        self._ids: List[torch.Tensor] = []
        self._stacked: Optional[dict] = None
        self._lip_colour: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------------------------------- building
    def __len__(self) -> int:
        return int(sum(s.shape[0] for s in self._shape))

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the crops and descriptors."""
        tensors = self._crops + self._shape + self._app + self._crop_lm + self._ids + [
            e for e in self._expr if e is not None]
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def _crop_grid(self, landmarks: torch.Tensor, ss: int) -> torch.Tensor:
        """Frame pixel positions ``(N, h * ss, w * ss, 2)`` of the crop's (sub)pixel centres."""
        cfg = self.config
        h, w = cfg.crop_size
        hs, ws = h * ss, w * ss
        u = ((torch.arange(ws, dtype=torch.float64) + 0.5) / ws - 0.5) * cfg.extent
        v = ((torch.arange(hs, dtype=torch.float64) + 0.5) / hs - 0.5) * cfg.extent * h / w + cfg.center_offset
        o, A, s = mouth_frame(landmarks)  # (N, 2), (N, 2, 2), (N,)
        nx = u[None, None, :, None] * A[:, None, None, 0, :]  # (N, 1, ws, 2)
        ny = v[None, :, None, None] * A[:, None, None, 1, :]  # (N, hs, 1, 2)
        return o[:, None, None, :] + s[:, None, None, None] * (nx + ny)

    def _to_crop(self, points: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        """Crop pixel coordinates (centres at +0.5) of frame points ``(N, P, 2)``."""
        cfg = self.config
        h, w = cfg.crop_size
        n = _normalise(points, landmarks)
        cx = (n[..., 0] / cfg.extent + 0.5) * w
        cy = ((n[..., 1] - cfg.center_offset) / (cfg.extent * h / w) + 0.5) * h
        return torch.stack([cx, cy], -1)

    def add_frames(self, frames, landmarks, expressions=None, frame_ids=None, *, chunk: int = 64) -> None:
        """Add frames (see :meth:`add`), in chunks of ``chunk`` frames.

        Args:
            frames: ``(N, H, W, 3)`` uint8 or float in [0, 1] (numpy or torch), or a sequence of ``(H, W, 3)``.
            landmarks: ``(N, 68, 2)`` pixels (e.g. the tracked model's projected landmarks).
            expressions: ``(N, K)`` expression weights or None (then the database ignores expressions; every
                frame must then come without).
            frame_ids: ``(N,)`` ints (default: continuing from the last id); consecutive ids are successors.
        """
        lm = _landmarks(landmarks, "landmarks", batched=True)
        n = lm.shape[0]
        if isinstance(frames, (list, tuple)):
            if len(frames) != n:
                raise ShapeError(f"got {len(frames)} frames but {n} landmark sets")
            for i in range(0, n, chunk):
                self._add(_frames(np.stack([np.asarray(f) for f in frames[i:i + chunk]]) if not isinstance(
                    frames[0], torch.Tensor) else torch.stack(list(frames[i:i + chunk]))), lm[i:i + chunk],
                    self._slice(expressions, i, i + chunk, n), self._slice(frame_ids, i, i + chunk, n))
            return
        fr = frames if isinstance(frames, (np.ndarray, torch.Tensor)) else None
        if fr is None or fr.ndim != 4 or fr.shape[0] != n:
            got = tuple(fr.shape) if fr is not None else type(frames).__name__
            raise ShapeError(f"frames must be (N, H, W, 3) with N = {n} (the landmarks' N), got {got}")
        for i in range(0, n, chunk):
            self._add(_frames(fr[i:i + chunk]), lm[i:i + chunk], self._slice(expressions, i, i + chunk, n),
                      self._slice(frame_ids, i, i + chunk, n))

    @staticmethod
    def _slice(x, i, j, n):
        if x is None:
            return None
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        if t.shape[0] != n:
            raise ShapeError(f"expected {n} rows (one per frame), got {tuple(t.shape)}")
        return t[i:j]

    def add(self, frame, landmarks, expression=None, frame_id: Optional[int] = None) -> int:
        """Add one target frame; returns its entry index.

        Args:
            frame: ``(H, W, 3)`` uint8 or float in [0, 1] (numpy or torch).
            landmarks: ``(68, 2)`` iBUG-68 landmarks in the frame's pixels (pixel centres at +0.5).
            expression: ``(K,)`` expression weights (``expression_names`` order) or None.
            frame_id: the frame number (default: the last id + 1).
        """
        lm = _landmarks(landmarks, "landmarks", batched=False)
        fr = _frames(frame, "frame")
        if fr.shape[0] != 1:
            raise ShapeError(f"frame must be one (H, W, 3) image, got {tuple(fr.shape)}")
        ex = None if expression is None else torch.as_tensor(np.asarray(expression) if not isinstance(
            expression, torch.Tensor) else expression)[None]
        ids = None if frame_id is None else torch.tensor([int(frame_id)])
        self._add(fr, lm, ex, ids)
        return len(self) - 1

    def _expression_desc(self, ex: Optional[torch.Tensor], n: int, name: str) -> Optional[torch.Tensor]:
        if ex is None:
            return None
        ex = ex.detach().to("cpu", torch.float64).reshape(n, -1)
        if self.expression_names is not None and ex.shape[1] != len(self.expression_names):
            raise ShapeError(f"{name} has {ex.shape[1]} coefficients but expression_names has "
                             f"{len(self.expression_names)}")
        if not bool(torch.isfinite(ex).all()):
            raise ShapeError(f"{name} holds NaN or inf")
        return ex[:, self._expr_idx] if self._expr_idx is not None else ex

    def _add(self, fr: torch.Tensor, lm: torch.Tensor, ex, ids) -> None:
        n = lm.shape[0]
        if fr.shape[0] != n:
            raise ShapeError(f"got {fr.shape[0]} frames but {n} landmark sets")
        e = self._expression_desc(ex, n, "expressions")
        has_expr = [x is not None for x in self._expr]
        if has_expr and has_expr[0] != (e is not None):
            raise ValueError("expressions must be given for every frame or for none (the database "
                             f"{'has' if has_expr[0] else 'has no'} expressions)")
        if e is not None and self._expr and self._expr[0].shape[1] != e.shape[1]:
            raise ShapeError(f"expressions have {e.shape[1]} mouth coefficients, the database {self._expr[0].shape[1]}")
        cfg = self.config
        h, w = cfg.crop_size
        H, W = fr.shape[1:3]
        _, _, s = mouth_frame(lm)
        ss = int(min(4, max(1, np.ceil(float(s.max()) * cfg.extent / w - 0.25))))
        pos = self._crop_grid(lm, ss)  # (n, h ss, w ss, 2) frame pixels
        grid = torch.stack([2 * pos[..., 0] / W - 1, 2 * pos[..., 1] / H - 1], -1).to(torch.float32)
        crop = F.grid_sample(fr.permute(0, 3, 1, 2), grid, mode="bilinear", padding_mode="border",
                             align_corners=False)
        if ss > 1:
            crop = F.avg_pool2d(crop, ss)
        crops = (crop.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8)
        ah, aw = cfg.appearance_size
        grey = F.adaptive_avg_pool2d((crop * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, True),
                                     (ah, aw)).reshape(n, -1).to(torch.float64)
        grey = grey - grey.mean(1, keepdim=True)
        grey = grey / grey.norm(dim=1, keepdim=True).clamp_min(1e-6)
        if ids is None:
            start = int(self._ids[-1][-1]) + 1 if self._ids else 0
            ids = torch.arange(start, start + n)
        ids = torch.as_tensor(ids).to(torch.int64).reshape(-1)
        if ids.shape[0] != n:
            raise ShapeError(f"frame_ids must have {n} entries, got {tuple(ids.shape)}")
        self._crops.append(crops)
        self._shape.append(mouth_shape_descriptor(lm).to(torch.float32))
        self._expr.append(e.to(torch.float32) if e is not None else None)
        self._app.append(grey.to(torch.float32))
        self._crop_lm.append(self._to_crop(lm[:, MOUTH_POINTS], lm).to(torch.float32))
        self._ids.append(ids)
        self._stacked = None
        self._lip_colour = None

    @classmethod
    def build(cls, frames, landmarks, expressions=None, *, expression_names: Optional[Sequence[str]] = None,
              frame_ids=None, config: Optional[MouthConfig] = None) -> "MouthDatabase":
        """A database from ``frames (N, H, W, 3)``, ``landmarks (N, 68, 2)`` and optional ``expressions (N, K)``."""
        db = cls(config, expression_names)
        db.add_frames(frames, landmarks, expressions, frame_ids)
        return db

    def _data(self) -> dict:
        if self._stacked is None:
            if not self._shape:
                raise ValueError("the mouth database is empty")
            ids = torch.cat(self._ids)
            succ = torch.full_like(ids, -1)
            nxt = torch.nonzero(ids[1:] == ids[:-1] + 1).flatten()
            succ[nxt] = nxt + 1
            self._stacked = dict(
                crops=torch.cat(self._crops), shape=torch.cat(self._shape),
                expr=torch.cat(self._expr) if self._expr[0] is not None else None,
                app=torch.cat(self._app), crop_lm=torch.cat(self._crop_lm), ids=ids, succ=succ)
        return self._stacked

    def entry(self, index: int) -> Dict[str, torch.Tensor]:
        """The stored data of one entry: ``crop (h, w, 3)`` uint8, ``shape (36,)``, ``expression`` or None,
        ``appearance``, ``crop_landmarks (20, 2)`` (mouth points 48-67 in crop pixels), ``frame_id``."""
        d = self._data()
        n = d["shape"].shape[0]
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -n <= index < n:
            raise IndexError(f"entry index {index!r} out of range for a database of {n}")
        return dict(crop=d["crops"][index], shape=d["shape"][index],
                    expression=None if d["expr"] is None else d["expr"][index], appearance=d["app"][index],
                    crop_landmarks=d["crop_lm"][index], frame_id=int(d["ids"][index]))

    # ---------------------------------------------------------------------------------------------- queries
    def unary_costs(self, landmarks, expressions=None) -> torch.Tensor:
        """Unary costs ``(T, N)`` of queries ``landmarks (T, 68, 2)`` / ``(68, 2)`` (and ``expressions (T, K)``)
        against every entry."""
        d = self._data()
        lm = _landmarks(landmarks, "landmarks")
        T = lm.shape[0]
        cfg = self.config
        q = mouth_shape_descriptor(lm).to(torch.float32)
        cost = cfg.w_shape * torch.cdist(q, d["shape"]).square()
        if d["expr"] is not None and expressions is not None and cfg.w_expression > 0:
            ex = torch.as_tensor(np.asarray(expressions) if not isinstance(expressions, torch.Tensor)
                                 else expressions)
            e = self._expression_desc(ex, T, "expressions").to(torch.float32)
            cost = cost + cfg.w_expression * torch.cdist(e, d["expr"]).square()
        return cost

    def _transition(self, prev: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """``(P, Q)`` temporal cost between entries ``prev (P,)`` and ``cand (Q,)``."""
        d = self._data()
        cfg = self.config
        same = (cand[None] == prev[:, None]) | (cand[None] == d["succ"][prev][:, None])
        cost = torch.full(same.shape, float(cfg.w_switch))
        if cfg.w_appearance > 0:
            a = d["app"]
            cost = cost + cfg.w_appearance * (a[prev][:, None] - a[cand][None]).square().sum(-1)
        return torch.where(same, torch.zeros(()), cost)

    def _match(self, j: int, total: float, unary: float) -> MouthMatch:
        d = self._data()
        return MouthMatch(int(j), int(d["ids"][j]), float(total), float(unary),
                          float(np.exp(-unary / self.config.max_cost)))

    def query(self, landmarks, expression=None, previous=None) -> Optional[MouthMatch]:
        """The best entry for one desired mouth (greedy, online).

        Args:
            landmarks: ``(68, 2)`` desired landmarks (e.g. the reenacted model's projected iBUG-68 points).
            expression: ``(K,)`` desired expression weights or None.
            previous: the previous output frame's :class:`MouthMatch` (or entry index) for temporal coherence.
        Returns:
            :class:`MouthMatch`, or None when the database is empty or no entry's unary cost is within
            ``config.max_cost`` (use the model-rendered mouth then).
        """
        if len(self) == 0:
            return None
        lm = _landmarks(landmarks, "landmarks", batched=False)
        ex = None if expression is None else torch.as_tensor(
            np.asarray(expression) if not isinstance(expression, torch.Tensor) else expression).reshape(1, -1)
        u = self.unary_costs(lm, ex)[0]
        if float(u.min()) > self.config.max_cost:
            return None
        total = u
        if previous is not None:
            p = previous.index if isinstance(previous, MouthMatch) else int(previous)
            if not 0 <= p < u.shape[0]:
                raise IndexError(f"previous entry {p} out of range for a database of {u.shape[0]}")
            total = u + self._transition(torch.tensor([p]), torch.arange(u.shape[0]))[0]
            total = torch.where(u <= self.config.max_cost, total, torch.full_like(total, float("inf")))
        j = int(torch.argmin(total))
        return self._match(j, float(total[j]), float(u[j]))

    def retrieve(self, landmarks, expressions=None) -> List[Optional[MouthMatch]]:
        """Temporally coherent matches for a whole sequence of desired mouths (beam Viterbi).

        Minimises ``sum_t unary(t, j_t) + sum_t transition(j_{t-1}, j_t)`` over the sequence. Per frame the states
        are the ``config.candidates`` best unary entries plus the ``candidates`` best states of the previous frame
        and their successors, so "stay on the same target frame" and "play the target on" are always available.

        Args:
            landmarks: ``(T, 68, 2)`` desired landmarks per output frame.
            expressions: ``(T, K)`` desired expression weights or None.
        Returns:
            ``T`` :class:`MouthMatch` (``cost`` = the accumulated cost up to that frame), None where the best unary
            cost exceeds ``config.max_cost`` (such frames also break the chain: the next frame starts afresh).
        """
        lm = _landmarks(landmarks, "landmarks", batched=True)
        T = lm.shape[0]
        if len(self) == 0:
            return [None] * T
        U = self.unary_costs(lm, expressions)  # (T, N)
        N = U.shape[1]
        K = min(self.config.candidates, N)
        d = self._data()
        out: List[Optional[MouthMatch]] = [None] * T
        t = 0
        while t < T:
            if float(U[t].min()) > self.config.max_cost:
                t += 1
                continue
            # a run of frames that fit
            states: List[torch.Tensor] = []
            acc: List[torch.Tensor] = []
            back: List[torch.Tensor] = []
            s = 0
            while t + s < T and float(U[t + s].min()) <= self.config.max_cost:
                u = U[t + s]
                top = torch.topk(u, K, largest=False).indices
                if s == 0:
                    cand = top
                    cost = u[cand]
                    bp = torch.full_like(cand, -1)
                else:
                    prev, pacc = states[-1], acc[-1]
                    best = torch.topk(pacc, min(K, pacc.numel()), largest=False).indices
                    keep = prev[best]
                    nxt = d["succ"][keep]
                    cand = torch.unique(torch.cat([top, keep, nxt[nxt >= 0]]))
                    trans = self._transition(prev, cand)  # (P, Q)
                    tot = pacc[:, None] + trans
                    m, bp = tot.min(0)
                    cost = m + u[cand]
                    cost = torch.where(u[cand] <= self.config.max_cost, cost, torch.full_like(cost, float("inf")))
                states.append(cand)
                acc.append(cost)
                back.append(bp)
                s += 1
            k = int(torch.argmin(acc[-1]))
            for r in range(s - 1, -1, -1):
                j = int(states[r][k])
                out[t + r] = self._match(j, float(acc[r][k]), float(U[t + r, j]))
                k = int(back[r][k])
            t += s
        return out

    # ------------------------------------------------------------------------------------------------- warp
    def warp(self, index, landmarks, image_size: Tuple[int, int], *, grow: float = 1.0, feather: float = 2.0,
             regularization: float = 1e-3, margin: int = 4, max_stretch: Optional[float] = None) -> MouthWarp:
        """Warp entry ``index``'s crop onto the desired mouth.

        A thin-plate spline through the 20 mouth landmarks (desired positions -> the entry's landmarks in crop
        pixels) gives, for every pixel of the box around the desired inner lips (outer lips with
        ``config.region = "lips"``), where to sample the crop.

        **Wider openings than the entry's.** Where the desired inner-lip gap exceeds ``max_stretch`` times the
        entry's (per column, at the three inner-lip pairs 61/67, 62/66, 63/65), one spline would stretch the
        entry's few dark pixels between its lips into a large dark hole. Instead two splines are fitted: one with the
        desired lower lip moved up by the excess (it carries the upper teeth along the upper lip, stretched at most
        ``max_stretch``), one with the upper lip moved down (the lower teeth along the lower lip); each pixel takes
        the spline of its lip, and the band of the excess between them is the mouth cavity, shaded from the
        target's own lip colour (:attr:`lip_colour`): dark at the back (top), tongue-coloured at the bottom
        (``config.cavity_shading``), darker towards the corners. Without excess the result is the single spline's.

        Args:
            index: entry index or :class:`MouthMatch`.
            landmarks: ``(68, 2)`` desired landmarks in the output image's pixels.
            image_size: ``(H, W)`` of the output image.
            grow, feather: the inner-mouth alpha (:func:`inner_mouth_alpha`).
            regularization: TPS smoothing (0: exact interpolation of the landmarks).
            margin: extra pixels around the inner-lip (outer-lip) box.
            max_stretch: overrides ``config.max_stretch`` (``inf``: one spline, no cavity).
        Returns:
            :class:`MouthWarp` ``(image (H, W, 3), alpha (H, W), box)``.
        """
        idx = index.index if isinstance(index, MouthMatch) else index
        if idx is None or isinstance(idx, bool) or not isinstance(idx, (int, np.integer)):
            raise ValueError(f"index must be an entry index or a MouthMatch, got {index!r} (a query that found "
                             f"nothing returns None: use the model-rendered mouth then)")
        stretch = self.config.max_stretch if max_stretch is None else max_stretch
        if not isinstance(stretch, (int, float)) or not stretch >= 1:
            raise ValueError(f"max_stretch must be a number >= 1, got {stretch!r}")
        e = self.entry(int(idx))
        lm = _landmarks(landmarks, "landmarks", batched=False)[0]
        H, W = int(image_size[0]), int(image_size[1])
        if H <= 0 or W <= 0:
            raise ValueError(f"image_size must be positive (H, W), got {image_size!r}")
        polygon = INNER_LIP_POINTS if self.config.region == "inner" else OUTER_LIP_POINTS
        outline = lm[list(polygon)]
        pad = float(max(grow, 0.0)) + margin + 1
        top = max(int(np.floor(float(outline[:, 1].min()) - pad)), 0)
        bottom = min(int(np.ceil(float(outline[:, 1].max()) + pad)), H)
        left = max(int(np.floor(float(outline[:, 0].min()) - pad)), 0)
        right = min(int(np.ceil(float(outline[:, 0].max()) + pad)), W)
        image = torch.zeros(H, W, 3, dtype=torch.float32)
        box = (top, bottom, left, right)
        if bottom <= top or right <= left:
            return MouthWarp(image, torch.zeros(H, W, dtype=torch.float32), box)
        dst = lm[list(MOUTH_POINTS)]
        src_lm = e["crop_landmarks"].to(torch.float64)
        ys = torch.arange(top, bottom, dtype=torch.float64) + 0.5
        xs = torch.arange(left, right, dtype=torch.float64) + 0.5
        pts = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
        # excess of the desired inner-lip gap over the stretched entry gap, per inner-lip pair (normalised units)
        frame = mouth_frame(lm)
        nd = _normalise(dst, lm, frame)
        ne = self._from_crop(src_lm)
        up_i, lo_i = list(_INNER_PAIRS[0]), list(_INNER_PAIRS[1])
        gap_e = (ne[lo_i, 1] - ne[up_i, 1]).clamp_min(0)
        excess = (nd[lo_i, 1] - nd[up_i, 1] - stretch * gap_e).clamp_min(0) if math.isfinite(stretch) else None
        if excess is None or float(excess.max()) * float(frame[2]) < 0.5:  # under half a pixel
            src = tps_transform(tps_fit(dst, src_lm, regularization), pts)
            cavity = None
        else:
            src, cavity = self._cavity_warp(frame, dst, nd, src_lm, excess, pts, regularization)
        h, w = self.config.crop_size
        grid = torch.stack([2 * src[:, 0] / w - 1, 2 * src[:, 1] / h - 1], -1).reshape(1, bottom - top, right - left, 2)
        crop = e["crop"].permute(2, 0, 1)[None].to(torch.float32) / 255.0
        patch = F.grid_sample(crop, grid.to(torch.float32), mode="bilinear", padding_mode="border",
                              align_corners=False)[0].permute(1, 2, 0)
        if cavity is not None:
            weight, shade = cavity
            colour = self.lip_colour.to(torch.float64) * shade.reshape(-1, 1)
            patch = torch.lerp(patch, colour.to(torch.float32).reshape(patch.shape),
                               weight.to(torch.float32).reshape(bottom - top, right - left, 1))
        image[top:bottom, left:right] = patch
        alpha = inner_mouth_alpha(lm, (H, W), grow=grow, feather=feather, box=box, polygon=polygon)
        return MouthWarp(image, alpha, box)

    def _cavity_warp(self, frame, dst: torch.Tensor, nd: torch.Tensor, src_lm: torch.Tensor,
                     excess: torch.Tensor, pts: torch.Tensor, regularization: float
                     ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Crop positions ``(M, 2)`` of the pixel centres ``pts (M, 2)`` from the two lip-following splines, and the
        cavity's ``(weight (M,), shade (M,))`` (see :meth:`warp`). ``frame``: the desired landmarks'
        :func:`mouth_frame`; ``nd``: the desired mouth points (20, 2) in it; ``excess``: ``(3,)`` per inner-lip pair,
        normalised units."""
        _, A, s = frame
        move = excess[:, None] * s * A[1]  # (3, 2) pixels along the mouth's downward axis
        up_idx, lo_idx = _INNER_PAIRS
        up_outer, lo_outer = _OUTER_PAIRS
        dst_u, dst_l = dst.clone(), dst.clone()
        for k in range(3):  # the lower lip (inner and outer) moved up by the excess; the upper lip down
            dst_u[[lo_idx[k], lo_outer[k]]] -= move[k]
            dst_l[[up_idx[k], up_outer[k]]] += move[k]
        for end, k in ((_OUTER_ENDS[0], 0), (_OUTER_ENDS[1], 2)):  # 59 / 55 and 49 / 53: half their neighbour's
            dst_u[end[1]] -= 0.5 * move[k]
            dst_l[end[0]] += 0.5 * move[k]
        src_u = tps_transform(tps_fit(dst_u, src_lm, regularization), pts)
        src_l = tps_transform(tps_fit(dst_l, src_lm, regularization), pts)
        # the desired inner lips as curves over the normalised x axis (corners 60 and 64 at both ends)
        q = _normalise(pts, None, frame)
        qx, qy = q[:, 0].numpy(), q[:, 1].numpy()
        c0, c1 = nd[_INNER_CORNERS[0]].numpy(), nd[_INNER_CORNERS[1]].numpy()
        upper = np.concatenate([[c0], nd[list(up_idx)].numpy(), [c1]])
        lower = np.concatenate([[c0], nd[list(lo_idx)].numpy(), [c1]])

        def curve(knots_x, knots_y):
            order = np.argsort(knots_x, kind="stable")
            return np.interp(qx, knots_x[order], knots_y[order])

        up = curve(upper[:, 0], upper[:, 1])
        lo = curve(lower[:, 0], lower[:, 1])
        ex = curve(np.concatenate([[c0[0]], (upper[1:4, 0] + lower[1:4, 0]) / 2, [c1[0]]]),
                   np.concatenate([[0.0], excess.numpy(), [0.0]]))
        half = np.maximum(lo - up - ex, 0) / 2  # each lip's band (its teeth), normalised units
        d_up, d_lo = qy - up, lo - qy
        upper_side = torch.from_numpy(d_up <= d_lo)
        src = torch.where(upper_side[:, None], src_u, src_l)
        ramp = 1.5 / float(s)  # 1.5 px from teeth to cavity
        weight = np.clip((np.minimum(d_up, d_lo) - half) / ramp + 0.5, 0, 1) * (ex > 0)
        r = np.clip((qy - (up + half)) / np.maximum(ex, 1e-9), 0, 1)
        r = r * r * (3 - 2 * r)
        u = np.clip(2 * (qx - c0[0]) / max(c1[0] - c0[0], 1e-9) - 1, -1, 1)
        back, tongue = self.config.cavity_shading
        shade = (back + (tongue - back) * r) * (1 - 0.35 * u * u)
        return src, (torch.from_numpy(weight), torch.from_numpy(shade))

    def _from_crop(self, points: torch.Tensor) -> torch.Tensor:
        """Normalised mouth-frame coordinates of crop pixel positions ``(..., 2)`` (the inverse of the crop map)."""
        cfg = self.config
        h, w = cfg.crop_size
        nx = (points[..., 0] / w - 0.5) * cfg.extent
        ny = (points[..., 1] / h - 0.5) * (cfg.extent * h / w) + cfg.center_offset
        return torch.stack([nx, ny], -1)

    @property
    def lip_colour(self) -> torch.Tensor:
        """``(3,)`` float32 in [0, 1]: the target's lip colour, the median over (up to 48 evenly spaced) entries of
        the median colour between each entry's outer (48-59) and inner (60-67) lip polygons; the base colour of
        the cavity in :meth:`warp` (a generic lip red, (0.55, 0.3, 0.3), when no entry shows 8 lip pixels). Computed
        once per database."""
        if self._lip_colour is None:
            d = self._data()
            n = d["crops"].shape[0]
            h, w = self.config.crop_size
            ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5,
                                    torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij")
            grid = torch.stack([xs, ys], -1).reshape(-1, 2)
            cols = []
            for i in np.unique(np.linspace(0, n - 1, min(n, 48)).round().astype(np.int64)):
                clm = d["crop_lm"][i].to(torch.float64)
                outer = _polygon_signed_distance(grid, clm[:12])
                inner_sd = _polygon_signed_distance(grid, clm[12:])
                sel = (outer > 0.5) & (inner_sd < -0.5)
                if int(sel.sum()) >= 8:
                    cols.append(d["crops"][i].reshape(-1, 3)[sel].to(torch.float32).median(0).values / 255.0)
            self._lip_colour = (torch.stack(cols).median(0).values if cols
                                else torch.tensor([0.55, 0.3, 0.3], dtype=torch.float32))
        return self._lip_colour

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to rebuild the database (tensors and the config), for ``torch.save``."""
        d = self._data() if len(self) else None
        return {"config": asdict(self.config), "expression_names": self.expression_names,
                "data": None if d is None else {k: v for k, v in d.items() if k != "succ"}}

    @classmethod
    def from_state_dict(cls, state: dict) -> "MouthDatabase":
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()}
        db = cls(MouthConfig(**cfg), state.get("expression_names"))
        d = state.get("data")
        if d is not None:
            db._crops, db._shape, db._app = [d["crops"]], [d["shape"]], [d["app"]]
            db._expr, db._crop_lm, db._ids = [d["expr"]], [d["crop_lm"]], [d["ids"]]
        return db
