"""Keyframes of a video for the bundling: candidates detected from scratch, chosen for pose and expression diversity
by farthest-point sampling of :func:`keyframe_descriptor`."""
from __future__ import annotations

import logging
import math
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import NoFaceError, VideoError
from ..io.video import VideoReader
from .facebox import LandmarkTracker, face_frame
from .streams import iter_frames as _frames

log = logging.getLogger(__name__)

__all__ = ["keyframe_descriptor", "select_keyframes"]


def keyframe_descriptor(points) -> np.ndarray:
    """``(136,)`` descriptor of 68 landmarks for keyframe selection: the points minus the centroid of the inner
    points, divided by their RMS radius, rotated so that the eye line is level; the 17 jaw points weighted 0.5."""
    p = np.asarray(points, dtype=np.float64).reshape(68, 2)
    c, s, a = face_frame(p)
    ca, sa = math.cos(-a), math.sin(-a)
    q = (p - c) @ np.array([[ca, sa], [-sa, ca]]) / max(s, 1e-9)
    q[:17] *= 0.5
    return q.reshape(-1)


def select_keyframes(descriptors, k: int) -> List[int]:
    """Farthest-point sampling of ``k`` rows of ``descriptors (M, D)``, starting from the row nearest the median.
    Returns row indices in selection order (all rows when ``M <= k``)."""
    D = np.asarray(descriptors, dtype=np.float64)
    M = D.shape[0]
    if M == 0:
        return []
    first = int(np.argmin(np.linalg.norm(D - np.median(D, 0), axis=1)))
    chosen = [first]
    dist = np.linalg.norm(D - D[first], axis=1)
    while len(chosen) < min(k, M):
        i = int(np.argmax(dist))
        if dist[i] <= 0:
            break
        chosen.append(i)
        dist = np.minimum(dist, np.linalg.norm(D - D[i], axis=1))
    return chosen



def _keyframe_pass(reader: VideoReader, cfg, limit: Optional[int], timer: Dict[str, float],
                   progress: bool = False):
    """Sample candidates, detect, select keyframes. Returns (candidate records, selected records, frames seen).
    ``progress``: a bar over the decoded frames on stderr."""
    from ..progress import stage_bar

    n = reader.frame_count if limit is None else min(reader.frame_count or limit, limit)
    if n <= 0:
        n = limit or cfg.keyframe_candidates
    m = min(cfg.keyframe_candidates, n)
    wanted = set(np.unique(np.round(np.linspace(0, n - 1, m)).astype(int)).tolist())
    lt = LandmarkTracker(cfg.landmarks)
    records, seen = [], 0
    with stage_bar(f"keyframes (detect {m} of {n} frames)", n, progress, unit="frame") as bar:
        for fr in _frames(reader, 0, limit, timer):
            seen += 1
            bar.update()
            if fr.index not in wanted:
                continue
            t0 = time.perf_counter()
            lt.reset()
            obs = lt.update(fr.image)
            timer["keyframe_landmarks"] = timer.get("keyframe_landmarks", 0.0) + time.perf_counter() - t0
            if obs.found:
                records.append({"index": fr.index, "points": obs.landmarks.points.copy(),
                                "confidence": obs.landmarks.confidence.copy()})
    if seen == 0:
        raise VideoError(f"{str(reader.path)!r} holds no decodable video frame")
    if not records and cfg.max_scan > 0:
        # a face may show only between the samples: scan up to max_scan frames evenly
        step = max(1, int(math.ceil(seen / cfg.max_scan)))
        log.info("no face in %d sampled frames; scanning every %d-th frame", len(wanted), step)
        for fr in _frames(reader, 0, limit, timer):
            if fr.index % step or fr.index in wanted:
                continue
            lt.reset()
            obs = lt.update(fr.image)
            if obs.found:
                records.append({"index": fr.index, "points": obs.landmarks.points.copy(),
                                "confidence": obs.landmarks.confidence.copy()})
                if len(records) >= cfg.keyframes:
                    break
    if not records:
        raise NoFaceError(f"no face found in {str(reader.path)!r}: none of {len(wanted)} sampled frames (and none of "
                          f"the frames scanned after them) shows a face that the dlib detector finds "
                          f"({reader.width}x{reader.height}, threshold {cfg.landmarks.threshold})")
    desc = np.stack([keyframe_descriptor(r["points"]) for r in records])
    chosen = sorted(select_keyframes(desc, cfg.keyframes), key=lambda i: records[i]["index"])
    return records, [records[i] for i in chosen], seen


def _fetch_frames(reader: VideoReader, indices: Sequence[int], timer) -> Dict[int, np.ndarray]:
    want = set(int(i) for i in indices)
    out: Dict[int, np.ndarray] = {}
    last = max(want)
    for fr in _frames(reader, 0, last + 1, timer):
        if fr.index in want:
            out[fr.index] = fr.image
    return out
