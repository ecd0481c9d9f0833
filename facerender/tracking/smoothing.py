"""Streaming landmark smoothing with a fixed delay (Savitzky-Golay).

Detector landmarks jitter from frame to frame by about a pixel. A Savitzky-Golay filter (least-squares polynomial of
``order`` over a centred ``window``) removes that jitter without the lag of a causal filter for motion up to the
polynomial's order, at the price of a fixed delay of ``window // 2`` frames: frame ``i`` is smoothed (and handed on)
when frame ``i + delay`` has been pushed. The tracker fits the smoothed landmarks.

Segments: frames without landmarks (``None``) break the window, and so does a frame pushed with ``restart=True``
(e.g. a fresh detection after the track was lost): no point is ever smoothed across frames where the face was not
seen or across two different tracks. Inside a segment, frame ``i`` is the value at ``i`` of the polynomial fitted
over the largest window of at most ``window`` frames of its segment that lies between ``i - (window - 1)`` and
``i + delay``, as centred on ``i`` as possible: in the interior that is exactly ``scipy.signal.savgol_filter``; the
first ``delay`` frames of a segment use shorter windows (only ``delay`` later frames are ever waited for; the very
first frame gets ``delay + 1`` points, which with ``order >= delay`` is the raw point), and the last ``delay`` frames
before a break or the end of the stream use one-sided windows of full length (scipy's ``mode="interp"``). The
polynomial order is lowered to ``n - 1`` on windows of ``n <= order`` frames.

State: :meth:`StreamingSavitzkyGolay.state_dict` holds the pending frames (their items and points) and the history
of the current segment (the last ``window - 1`` points emitted), so a stream can be interrupted and resumed exactly.
Memory is bounded: at most ``delay`` pending frames and ``window - 1`` history points.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np
from scipy.signal import savgol_coeffs

__all__ = ["StreamingSavitzkyGolay"]


class StreamingSavitzkyGolay:
    """Push per-frame points ``(L, 2)`` (any shape ``(L, D)``, or None); get back the smoothed points of the frame
    ``delay = window // 2`` frames ago (see the module docstring).

    Args:
        window: odd window length (1 disables smoothing: every push returns its own frame at once, points unchanged).
        order: polynomial order, ``0 <= order < window`` (ignored for ``window == 1``).

    ``push(item, points)`` returns the list of ``(item, smoothed points or None)`` that became ready, oldest first
    (at most one when the stream is fed by ``push`` alone); ``flush()`` returns the remaining ones at the end of the
    stream. ``item`` is any payload carried along with the points (e.g. the frame); it is neither copied nor changed.
    Smoothed points are float64 arrays of the shape pushed.
    """

    def __init__(self, window: int = 5, order: int = 2):
        if isinstance(window, bool) or int(window) != window or window < 1 or window % 2 == 0:
            raise ValueError(f"window must be a positive odd integer, got {window!r}")
        if window > 1 and not (int(order) == order and 0 <= order < window):
            raise ValueError(f"order must be an integer in [0, window), got {order!r} for window {window}")
        self.window, self.order = int(window), int(order)
        self.delay = self.window // 2
        self._buf: Deque[Tuple[Any, Optional[np.ndarray], bool]] = deque()
        self._hist: List[np.ndarray] = []
        self._coeffs: Dict[Tuple[int, int], np.ndarray] = {}

    # ------------------------------------------------------------------------------------------------ streaming
    @property
    def pending(self) -> int:
        """Frames pushed whose smoothed points have not been returned yet (at most ``delay`` between pushes)."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget everything (pending frames included)."""
        self._buf.clear()
        self._hist = []

    def push(self, item: Any, points: Optional[np.ndarray],
             restart: bool = False) -> List[Tuple[Any, Optional[np.ndarray]]]:
        """Add the next frame: ``points (L, D)`` or None (no points: breaks the window). ``restart=True`` starts a new
        segment at this frame (its window does not reach back before it). Returns the frames now ready."""
        pts = None
        if points is not None:
            pts = np.array(points, dtype=np.float64)  # a copy: the caller's array may change later
            if pts.ndim != 2:
                raise ValueError(f"points must be (L, D), got shape {pts.shape}")
            if self._buf and self._buf[-1][1] is not None and self._buf[-1][1].shape != pts.shape:
                raise ValueError(f"points of shape {pts.shape} after points of shape {self._buf[-1][1].shape}")
        self._buf.append((item, pts, bool(restart)))
        out = []
        while len(self._buf) > self.delay:
            out.append(self._emit_oldest())
        return out

    def flush(self, max_items: Optional[int] = None) -> List[Tuple[Any, Optional[np.ndarray]]]:
        """The pending frames as at the end of the stream (up to ``max_items`` of them, oldest first; all by
        default). A later ``push`` starts a new segment."""
        out = []
        while self._buf and (max_items is None or len(out) < max_items):
            out.append(self._emit_oldest())
        if not self._buf:
            self._hist = []
        return out

    # ------------------------------------------------------------------------------------------------ maths
    def _coef(self, n: int, pos: int) -> np.ndarray:
        """Weights of a length-``n`` window evaluated at index ``pos`` of the window."""
        key = (n, pos)
        if key not in self._coeffs:
            if n == 1:
                c = np.ones(1)
            else:
                c = savgol_coeffs(n, min(self.order, n - 1), pos=pos, use="dot")
            self._coeffs[key] = np.asarray(c, dtype=np.float64)
        return self._coeffs[key]

    def _emit_oldest(self) -> Tuple[Any, Optional[np.ndarray]]:
        item, pts, restart = self._buf.popleft()
        if pts is None:
            self._hist = []
            return item, None
        if restart:
            self._hist = []
        if self.window == 1:
            return item, pts
        # the frames of this segment known after the oldest one (up to `delay` of them)
        run = [pts]
        for _, p, r in self._buf:
            if p is None or r:
                break
            run.append(p)
        seg = self._hist + run
        i, n = len(self._hist), len(seg)
        w = min(self.window, n)
        start = min(max(0, i - self.delay), n - w)
        smoothed = np.tensordot(self._coef(w, i - start), np.stack(seg[start:start + w]), axes=1)
        self._hist = (self._hist + [pts])[-(self.window - 1):]
        return item, smoothed

    # ------------------------------------------------------------------------------------------------ resume
    def state_dict(self) -> Dict[str, Any]:
        """The filter's state: settings, the current segment's history (the last ``window - 1`` points emitted) and
        the pending frames as ``[item, points or None, restart]`` (items by reference, points copied)."""
        return {"window": self.window, "order": self.order,
                "history": [h.copy() for h in self._hist],
                "pending": [[item, None if p is None else p.copy(), r] for item, p, r in self._buf]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the settings must match this filter's)."""
        if int(state["window"]) != self.window or (self.window > 1 and int(state["order"]) != self.order):
            raise ValueError(f"state of a window {state['window']} / order {state['order']} filter loaded into a "
                             f"window {self.window} / order {self.order} one")
        self._hist = [np.array(h, dtype=np.float64) for h in state["history"]]
        self._buf = deque((item, None if p is None else np.array(p, dtype=np.float64), bool(r))
                          for item, p, r in state["pending"])
