"""Progress bars for the stages of the pipelines (keyframes, bundling, the photometric fit ...): a tqdm bar on stderr
whose elapsed time keeps ticking between updates (a refresher thread), so a stage that updates every few seconds
(one bundling round) still shows that it is alive; a no-op object when progress is off.

    >>> with stage_bar("bundling 8 keyframes", total=4, enabled=True) as bar:   # doctest: +SKIP
    ...     for step in range(4):
    ...         work(); bar.update()
"""
from __future__ import annotations

import threading
from typing import Optional

from morphable_models import _progress
from morphable_models._progress import LOG_INTERVAL, progress_bar  # noqa: F401 (re-exported)

__all__ = ["stage_bar", "progress_bar", "NullBar", "LOG_INTERVAL"]


class NullBar:
    """The bar when progress is off: every method does nothing."""

    total: Optional[int] = None
    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _TickingBar:
    """A tqdm bar refreshed every ``interval`` seconds by a daemon thread (the elapsed time moves)."""

    def __init__(self, desc: str, total: Optional[int], unit: str, interval: float):
        if not _progress.is_terminal():
            interval = max(interval, LOG_INTERVAL)
        self._bar = progress_bar(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=True,
                                 bar_format=None if total else "{desc}: {elapsed} {postfix}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, args=(interval,), daemon=True)
        self._thread.start()

    def _tick(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self._bar.refresh()
            except (ValueError, OSError, AttributeError):  # stderr closed, bar closed
                return

    @property
    def total(self):
        return self._bar.total

    @total.setter
    def total(self, value):
        self._bar.total = value
        self._bar.bar_format = None if value else "{desc}: {elapsed} {postfix}"  # a count once it is known
        self._bar.refresh()

    @property
    def n(self):
        return self._bar.n

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self._bar.set_postfix_str(s, refresh=refresh)

    def refresh(self) -> None:
        self._bar.refresh()

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=2)
            self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def stage_bar(desc: str, total: Optional[int] = None, enabled: bool = True, unit: str = "step",
              interval: float = 1.0):
    """A progress bar for one stage: ``total`` steps (None: elapsed time only), refreshed every ``interval``
    seconds; :class:`NullBar` when ``enabled`` is False or tqdm is missing. Use as a context manager or ``close()``
    it."""
    if not enabled:
        return NullBar()
    try:
        return _TickingBar(desc, total, unit, interval)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return NullBar()
