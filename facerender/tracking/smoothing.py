"""Streaming landmark smoothing with a fixed delay (Savitzky-Golay).

Detector landmarks jitter from frame to frame by about a pixel. A Savitzky-Golay filter (least-squares polynomial of
``order`` over a centred ``window``) removes that jitter without the lag of a causal filter for motion up to the
polynomial's order, at the price of a fixed delay of ``window // 2`` frames. The tracker fits the smoothed
landmarks; frames without landmarks break the window (the filter restarts after a gap, so no point is ever smoothed
across frames where the face was not seen).
"""
from __future__ import annotations

from collections import deque
from typing import Deque, List, Optional, Tuple

import numpy as np
from scipy.signal import savgol_coeffs


class StreamingSavitzkyGolay:
    """Push per-frame points ``(L, 2)`` (or None); get back the smoothed points of the frame ``delay`` frames ago.

    Args:
        window: odd window length (1 disables smoothing); order: polynomial order (< window).
    ``push(item, points)`` returns a list of ``(item, smoothed_points_or_None)`` that are ready (in order); call
    ``flush()`` at the end of the stream. ``item`` is any payload (e.g. the frame) carried along with the points.
    """

    def __init__(self, window: int = 5, order: int = 2):
        if window < 1 or window % 2 == 0:
            raise ValueError(f"window must be a positive odd number, got {window}")
        if window > 1 and not 0 <= order < window:
            raise ValueError(f"order must be in [0, window), got {order} for window {window}")
        self.window, self.order = window, order
        self.delay = window // 2
        self.buf: Deque[Tuple[object, Optional[np.ndarray]]] = deque()
        self._coeffs = {}

    def _coef(self, n: int, pos: int) -> np.ndarray:
        """Weights of a length-``n`` window evaluated at index ``pos`` (edges use shorter, one-sided fits)."""
        key = (n, pos)
        if key not in self._coeffs:
            order = min(self.order, n - 1)
            self._coeffs[key] = savgol_coeffs(n, order, pos=pos, use="dot") if n > 1 else np.ones(1)
        return self._coeffs[key]

    def _smooth_at(self, seg: List[np.ndarray], i: int) -> np.ndarray:
        n = len(seg)
        w = min(self.window, n)
        start = min(max(0, i - self.delay), n - w)
        c = self._coef(w, i - start)
        return np.tensordot(c, np.stack(seg[start:start + w]), axes=1)

    def push(self, item, points: Optional[np.ndarray]) -> List[Tuple[object, Optional[np.ndarray]]]:
        pts = None if points is None else np.asarray(points, dtype=np.float64)
        self.buf.append((item, pts))
        out = []
        # the oldest frame is ready when `delay` later frames are known (or a gap follows it)
        while len(self.buf) > self.delay:
            out.append(self._emit_oldest())
        return out

    def _emit_oldest(self):
        items = list(self.buf)
        item, pts = items[0]
        if pts is None:
            self.buf.popleft()
            return item, None
        # contiguous run of frames with points around the oldest one (history kept in self._hist)
        seg = [p for _, p in items]
        run = []
        for p in seg:
            if p is None:
                break
            run.append(p)
        hist = getattr(self, "_hist", [])
        full = hist + run
        i = len(hist)
        sm = self._smooth_at(full, i)
        self._hist = (hist + [pts])[-(self.window - 1):] if self.window > 1 else []
        self.buf.popleft()
        if len(self.buf) and self.buf[0][1] is None:
            self._hist = []
        return item, sm

    def flush(self) -> List[Tuple[object, Optional[np.ndarray]]]:
        out = []
        while self.buf:
            out.append(self._emit_oldest())
        self._hist = []
        return out
