"""Timing helper shared by the benchmark scripts (run as ``python benchmarks/NAME.py``: this folder is on sys.path)."""
from __future__ import annotations

import statistics
import time


def wall_times(fn, repeats: int, warmup: int = 3) -> list:
    """Wall times of ``fn()`` in seconds over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return ts


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls after ``warmup`` untimed calls."""
    return statistics.median(wall_times(fn, repeats, warmup)) * 1e3
