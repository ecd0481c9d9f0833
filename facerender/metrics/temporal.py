"""Seam flicker of any face-editing method, measured from the videos alone.

A method that edits the face of a target video (Face2Face, a neural renderer pasting a face back) leaves the rest
of the frame as it was; where the edited region meets the untouched frame a seam can flicker. The region is found
from the videos, not from the method:

1. **Face-aligned canvas.** Every result frame is mapped to a canvas by the similarity that puts its landmarks'
   stable points (iBUG 17-47: brows, nose, eyes) onto those of the first frame with a face (canvas: 3 outer-eye-
   corner distances wide, the points centred, so canvas pixels are about frame pixels).
2. **Edited region.** The per-pixel change ``|result - target|`` (mean over RGB, 5x5 box-blurred) counts as an
   edit where it exceeds ``threshold`` grey levels (H.264 re-encoding noise stays below about 2 levels on skin).
   The region is the set of canvas pixels edited in at least ``fraction`` of the frames that see them: a
   face-anchored region, stable although single frames are not (a seamless blend leaves little difference near
   its border in any one frame, and compression noise on hair comes and goes); its largest connected part, holes
   filled.
3. **Band and flicker.** The band is the region's border +-``band`` canvas pixels, mapped into every frame. The seam
   flicker is the mean absolute frame-to-frame difference (mean over RGB, 0-255) of the result inside the band over
   the frames, divided by the same for the target video's matched frames: 1 means the seam adds no flicker.

On Face2Face's main job this gives 1.049 where Face2Face's own figure, from its blend mask before encoding, is
1.069; docs/evaluation.md has the sensitivity to ``threshold`` and ``fraction``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from ..errors import ShapeError

#: iBUG points the canvas is aligned on (brows, nose, eyes: little affected by expressions of the mouth).
STABLE_POINTS = tuple(range(17, 48))


@dataclass
class SeamConfig:
    """Settings of the seam-flicker measurement (see the module docstring).

    Attributes:
        threshold: grey levels of ``|result - target|`` (5x5 box blur) above which a pixel counts as edited.
        fraction: share of the frames in which a canvas pixel must be edited to belong to the region.
        band: half-width of the band around the region's border, in canvas pixels (about frame pixels).
        blur: box-blur side applied to the difference before thresholding.
        canvas_scale: canvas width in outer-eye-corner distances of the first face.
    """

    threshold: float = 2.0
    fraction: float = 0.75
    band: int = 4
    blur: int = 5
    canvas_scale: float = 3.0

    def __post_init__(self):
        if not self.threshold > 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")
        if not 0 < self.fraction < 1:
            raise ValueError(f"fraction must lie in (0, 1), got {self.fraction}")
        if self.band < 1 or self.blur < 1:
            raise ValueError(f"band and blur must be >= 1, got {self.band}, {self.blur}")


@dataclass
class SeamFlicker:
    """Result of the seam-flicker measurement.

    Attributes:
        ratio: mean band difference of the result / of the target (None if no frame could be measured).
        output_band_mad, target_band_mad: the two means (grey levels, 0-255).
        frames: frames measured.
        region_area: share of the canvas in the edited region (0: nothing edited; 1: everything).
        region: ``(C, C)`` bool canvas mask of the edited region (None if none).
    """

    ratio: Optional[float]
    output_band_mad: Optional[float]
    target_band_mad: Optional[float]
    frames: int
    region_area: float
    region: Optional[np.ndarray] = None


def _absdiff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean over RGB of ``|a - b|`` in grey levels (0-255): ``(H, W, 3)`` x2 -> ``(H, W)``."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 3 or a.shape[-1] != 3 or a.shape != b.shape:
        raise ShapeError(f"frames must both be (H, W, 3) of one size, got {a.shape} and {b.shape}")
    if a.dtype == np.uint8 and b.dtype == np.uint8:
        return np.abs(a.astype(np.int16) - b.astype(np.int16)).sum(-1, dtype=np.int16).astype(np.float32) / 3.0
    return np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(-1) * np.float32(255.0)


_GRIDS: dict = {}


def _warp_to_canvas(img: np.ndarray, A: np.ndarray, t: np.ndarray, size: int) -> np.ndarray:
    """Bilinear samples of ``img`` ``(H, W)`` at the frame positions ``A @ canvas + t`` of the ``size^2`` canvas
    pixel centres (package convention); NaN where the position falls outside the frame. (SciPy, one thread: a
    torch ``grid_sample`` here is slower on a busy 2-core machine.)"""
    from scipy import ndimage as ndi

    grid = _GRIDS.get(size)
    if grid is None:
        c = np.arange(size, dtype=np.float64) + 0.5
        grid = _GRIDS.setdefault(size, np.meshgrid(c, c, indexing="xy"))  # u (columns), v (rows)
    u, v = grid
    x = A[0, 0] * u + A[0, 1] * v + (t[0] - 0.5)  # array index coordinates: pixel centres at integers
    y = A[1, 0] * u + A[1, 1] * v + (t[1] - 0.5)
    return ndi.map_coordinates(np.asarray(img, dtype=np.float32), [y, x], order=1, cval=np.nan,
                               prefilter=False)


class SeamMeter:
    """Streaming seam-flicker measurement in two passes over the frames (``add_edit`` for every frame, then
    ``region()``, then ``add_flicker`` for every frame; :func:`seam_flicker` does both on arrays).

    Frames are ``(H, W, 3)`` (uint8 0-255 or float in [0, 1]); landmarks ``(68, 2)`` of the RESULT frame (package
    convention) or None when it has no face (the frame is skipped).
    """

    def __init__(self, config: Optional[SeamConfig] = None):
        self.cfg = config or SeamConfig()
        self.ref: Optional[np.ndarray] = None
        self.size = 0
        self.count: Optional[np.ndarray] = None
        self.total: Optional[np.ndarray] = None
        self._band: Optional[np.ndarray] = None
        self._region: Optional[np.ndarray] = None
        self.out: List[float] = []
        self.tgt: List[float] = []

    # -- geometry
    def _init_canvas(self, lm: np.ndarray) -> None:
        p = lm[list(STABLE_POINTS)]
        io = float(np.linalg.norm(lm[36] - lm[45]))
        self.size = int(max(32, round(self.cfg.canvas_scale * io / 2) * 2))
        self.ref = p - p.mean(0) + np.array([self.size / 2.0, self.size * 0.4])
        self.count = np.zeros((self.size, self.size), np.float32)
        self.total = np.zeros((self.size, self.size), np.float32)

    def _similarity(self, lm: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """``(A, t)`` with frame = A @ canvas + t (package pixel coordinates)."""
        p = lm[list(STABLE_POINTS)]
        a = self.ref - self.ref.mean(0)
        b = p - p.mean(0)
        sa = (a * a).sum()
        pp = (a * b).sum() / sa
        qq = (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum() / sa
        A = np.array([[pp, -qq], [qq, pp]])
        return A, p.mean(0) - A @ self.ref.mean(0)

    @staticmethod
    def _usable(lm) -> bool:
        return lm is not None and np.isfinite(np.asarray(lm, dtype=np.float64)[list(STABLE_POINTS) + [36, 45]]).all()

    # -- pass 1
    def add_edit(self, result: np.ndarray, target: np.ndarray, landmarks) -> None:
        """Accumulate where ``result`` differs from ``target`` (pass 1)."""
        from scipy import ndimage as ndi

        if not self._usable(landmarks):
            return
        lm = np.asarray(landmarks, dtype=np.float64)
        if self.ref is None:
            self._init_canvas(lm)
        d = ndi.uniform_filter(_absdiff(result, target), self.cfg.blur)
        A, tr = self._similarity(lm)
        w = _warp_to_canvas(d, A, tr, self.size)
        seen = np.isfinite(w)
        self.total += seen
        self.count += seen & (w > self.cfg.threshold)
        self._region = self._band = None

    def region(self) -> Optional[np.ndarray]:
        """``(C, C)`` bool: the edited region (largest part, holes filled), or None."""
        from scipy import ndimage as ndi

        if self._region is not None or self.count is None:
            return self._region
        frac = self.count / np.maximum(self.total, 1)
        m = (frac >= self.cfg.fraction) & (self.total > 0)
        lab, n = ndi.label(m)
        if n == 0:
            return None
        sizes = ndi.sum(m, lab, range(1, n + 1))
        self._region = ndi.binary_fill_holes(lab == 1 + int(np.argmax(sizes)))
        r = self.cfg.band
        self._band = ndi.binary_dilation(self._region, iterations=r) & ~ndi.binary_erosion(
            self._region, iterations=r, border_value=1)
        return self._region

    # -- pass 2
    def add_flicker(self, result: np.ndarray, prev_result: np.ndarray, target: np.ndarray,
                    prev_target: np.ndarray, landmarks) -> None:
        """Frame-to-frame differences of the result and the target inside the band (pass 2)."""
        from scipy import ndimage as ndi

        if not self._usable(landmarks) or self.region() is None or not self._band.any():
            return
        lm = np.asarray(landmarks, dtype=np.float64)
        A, tr = self._similarity(lm)
        H, W = result.shape[:2]
        # frame box of the band
        vv, uu = np.nonzero(self._band)
        corners = A @ np.stack([uu + 0.5, vv + 0.5]) + tr[:, None]
        x0 = max(int(np.floor(corners[0].min())) - 1, 0)
        x1 = min(int(np.ceil(corners[0].max())) + 1, W)
        y0 = max(int(np.floor(corners[1].min())) - 1, 0)
        y1 = min(int(np.ceil(corners[1].max())) + 1, H)
        if x1 <= x0 or y1 <= y0:
            return
        Ai = np.linalg.inv(A)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
        cu = Ai[0, 0] * (xx - tr[0]) + Ai[0, 1] * (yy - tr[1]) - 0.5
        cv = Ai[1, 0] * (xx - tr[0]) + Ai[1, 1] * (yy - tr[1]) - 0.5
        band = ndi.map_coordinates(self._band.astype(np.float32), [cv, cu], order=0, cval=0.0) > 0.5
        if not band.any():
            return
        sl = (slice(y0, y1), slice(x0, x1))
        self.out.append(float(_absdiff(result[sl], prev_result[sl])[band].mean()))
        self.tgt.append(float(_absdiff(target[sl], prev_target[sl])[band].mean()))

    def result(self) -> SeamFlicker:
        region = self.region()
        area = float(region.mean()) if region is not None else 0.0
        if not self.out:
            return SeamFlicker(None, None, None, 0, area, region)
        o, t = float(np.mean(self.out)), float(np.mean(self.tgt))
        return SeamFlicker(o / max(t, 1e-6), o, t, len(self.out), area, region)


def seam_flicker(results, targets, landmarks, config: Optional[SeamConfig] = None) -> SeamFlicker:
    """Seam flicker of a result video against its target (see the module docstring).

    Args:
        results: ``(T, H, W, 3)`` result frames (uint8, or float in [0, 1]).
        targets: ``(T, H, W, 3)`` the target frames matched to them.
        landmarks: ``(T, 68, 2)`` landmarks of the result frames (NaN rows: no face, skipped).
        config: :class:`SeamConfig`.
    Returns:
        :class:`SeamFlicker`.
    """
    res, tgt = np.asarray(results), np.asarray(targets)
    lm = np.asarray(landmarks, dtype=np.float64)
    if res.ndim != 4 or res.shape != tgt.shape or res.shape[-1] != 3:
        raise ShapeError(f"results and targets must both be (T, H, W, 3), got {res.shape} and {tgt.shape}")
    if lm.shape != (res.shape[0], 68, 2):
        raise ShapeError(f"landmarks must be ({res.shape[0]}, 68, 2), got {lm.shape}")
    meter = SeamMeter(config)
    for k in range(len(res)):
        meter.add_edit(res[k], tgt[k], lm[k])
    for k in range(1, len(res)):
        meter.add_flicker(res[k], res[k - 1], tgt[k], tgt[k - 1], lm[k])
    return meter.result()


__all__ = ["STABLE_POINTS", "SeamConfig", "SeamFlicker", "SeamMeter", "seam_flicker"]
