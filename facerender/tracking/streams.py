"""Decoding helpers shared by the tracking passes: a frame stream with timing and graceful early ends, and the
progress bar."""
from __future__ import annotations

import logging
import sys
import time
from typing import Dict, Iterator, Optional

from ..errors import VideoError
from ..io.video import VideoReader

log = logging.getLogger(__name__)

__all__ = ["iter_frames", "progress_bar"]


def iter_frames(reader: VideoReader, start: int = 0, stop: Optional[int] = None,
            timer: Optional[Dict[str, float]] = None) -> Iterator:
    """Frames ``start <= index < stop`` of a reader; decoding time (including skipped frames) goes to ``timer``.
    A decoding error after the first frame ends the stream (recorded in ``timer["decode_error"]``)."""
    it = iter(reader)
    while True:
        t0 = time.perf_counter()
        try:
            fr = next(it)
        except StopIteration:
            return
        except VideoError as e:
            if timer is not None:
                timer["decode_error"] = str(e)
            log.warning("%s; the video is treated as ending there", e)
            return
        finally:
            if timer is not None:
                timer["decode"] = timer.get("decode", 0.0) + time.perf_counter() - t0
        if stop is not None and fr.index >= stop:
            it.close()
            return
        if fr.index >= start:
            yield fr



def progress_bar(total, initial, enabled, desc):
    if not enabled:
        return None
    try:
        from ..progress import progress_bar as tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total or None, initial=initial, unit="frame", desc=desc, dynamic_ncols=True, file=sys.stderr,
                smoothing=0.1)


_frames = iter_frames
_progress = progress_bar
