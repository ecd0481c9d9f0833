"""tqdm bars that behave in log files (the one definition; :mod:`facerender.progress` re-exports it, and
``morphable_models`` uses it for the model installs without importing ``facerender``)."""
from __future__ import annotations

import sys

__all__ = ["progress_bar", "is_terminal", "LOG_INTERVAL"]

#: seconds between bar updates when stderr is not a terminal (a log file, CI): a line every half minute instead of
#: ten a second (the README main job wrote 230 kB of bar updates into a log before)
LOG_INTERVAL = 30.0


def is_terminal() -> bool:
    """Whether stderr is a terminal (False when it is a file, a pipe, replaced or closed)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(**kwargs):
    """A tqdm bar on stderr (``tqdm(**kwargs)``) that updates at most every :data:`LOG_INTERVAL` seconds when stderr
    is not a terminal; ``mininterval`` given by the caller wins."""
    from tqdm.auto import tqdm

    if not is_terminal():
        kwargs.setdefault("mininterval", LOG_INTERVAL)
    kwargs.setdefault("file", sys.stderr)
    return tqdm(**kwargs)
