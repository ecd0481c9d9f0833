"""Is the face in a video upright? A check run before tracking (issue 19), beside the tracker's own verification.

dlib finds an upright "face" in an upside-down frame (eyes on the mouth), and the tracker then follows it: on the
first 40 frames of ``talking_d3.mp4`` turned by 180 degrees, 35 frames are reported with a face (30 of them without a
loss or verification flag) at a photometric PSNR of 19 dB, where the upright clip gives about 30 dB. A fresh
detection agrees with the wrong face, so re-detection checks cannot see it; the detection score can: upright frames
of the sample clips score 1.9-2.2, the same frames upside down about 0.4 (and the frame turned back upright 2.1).

:func:`check_video_orientation` samples a few frames from the start of the clip, and where the upright detection is
missing or weak, compares it with the detections on the frame turned by 90, 180 and 270 degrees
(:func:`facerender.fitting.orientation.find_upright_turn`). When most sampled frames with a face are upright only
after the same turn, the clip is reported as turned: ``facerender track`` and ``facerender reenact`` then say so in
one warning line and record it in the track's ``summary.json`` (``"orientation"``). The tracker itself is unchanged:
it tracks upright faces; turn such a video upright first (e.g. ``ffmpeg -vf "transpose=1"`` or ``"hflip,vflip"``).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Union

import numpy as np

__all__ = ["VideoOrientation", "check_video_orientation", "orientation_warning", "warn_if_turned",
           "record_orientation"]

PathLike = Union[str, os.PathLike]


@dataclass
class VideoOrientation:
    """What :func:`check_video_orientation` found.

    Attributes:
        turns: quarter turns counter-clockwise (``np.rot90``'s ``k``) that make the face upright in most sampled
            frames with a face (0: upright).
        frames_checked: sampled frames; frames_with_face: those where some turn showed a face;
        frames_turned: those where the face was upright only after ``turns``.
        sampled: the sampled frame indices; turns_per_frame: the turn found per sampled frame (None: no face).
    """

    turns: int
    frames_checked: int
    frames_with_face: int
    frames_turned: int
    sampled: List[int] = field(default_factory=list)
    turns_per_frame: List[Optional[int]] = field(default_factory=list)

    @property
    def turned(self) -> bool:
        return self.turns != 0

    def describe(self) -> str:
        if not self.turned:
            return f"upright ({self.frames_with_face} of {self.frames_checked} sampled frames with a face)"
        what = {1: "turned 90 degrees clockwise", 2: "upside down", 3: "turned 90 degrees counter-clockwise"}
        return f"{what[self.turns]} in {self.frames_turned} of {self.frames_with_face} sampled frames with a face"


def check_video_orientation(video: PathLike, samples: int = 6, within: int = 150, detector: str = "dlib",
                            max_frames: Optional[int] = None) -> VideoOrientation:
    """Sample ``samples`` frames evenly from the first ``within`` frames (or ``max_frames``) of ``video`` and find the
    turn that makes the face upright in each (see the module docstring). The clip counts as turned when more than
    half of the sampled frames with a face need the same non-zero turn.

    Cost: decoding up to ``within`` frames and one detection per sample (four on frames whose upright detection is
    missing or weak): about 1 s for a 512x512 clip on 2 cores.
    """
    from ..errors import NoFaceError
    from ..fitting.orientation import find_upright_turn
    from ..io.video import VideoReader

    reader = VideoReader(video)
    n = reader.frame_count if reader.frame_count else within
    n = max(1, min(n, within, max_frames or within))
    picks = sorted(set(np.linspace(0, n - 1, min(samples, n)).round().astype(int).tolist()))
    found: List[Optional[int]] = []
    want = set(picks)
    for fr in reader:
        if fr.index > picks[-1]:
            break
        if fr.index not in want:
            continue
        try:
            found.append(find_upright_turn(fr.image, detector).turns)
        except NoFaceError:
            found.append(None)
    with_face = [t for t in found if t is not None]
    turns, count = 0, 0
    for k in (1, 2, 3):
        c = sum(t == k for t in with_face)
        if c > count:
            turns, count = k, c
    if 2 * count <= len(with_face):
        turns, count = 0, sum(t == 0 for t in with_face)
    return VideoOrientation(turns, len(found), len(with_face), count if turns else 0, picks[:len(found)], found)


def orientation_warning(report: VideoOrientation, video: PathLike, what: str = "the video") -> Optional[str]:
    """The one-line warning for a turned clip (None for an upright one)."""
    if not report.turned:
        return None
    return (f"{what} {video}: the face is {report.describe()}; facerender tracks upright faces, so this track (eyes "
            f"where the mouth is) cannot be trusted: turn the video upright first")


def warn_if_turned(path: PathLike, what: str, max_frames: Optional[int] = None) -> Optional[VideoOrientation]:
    """For the command-line tools: check a video input (a ``facerender track`` folder is skipped: None) and print
    :func:`orientation_warning` through :func:`facerender.cli_support.warn` when it is turned."""
    p = Path(path)
    if p.is_dir() or not p.is_file():
        return None
    from ..cli_support import warn

    report = check_video_orientation(p, max_frames=max_frames)
    msg = orientation_warning(report, p, what)
    if msg:
        warn(msg)
    return report


def record_orientation(summary_path: PathLike, report: VideoOrientation, frames: Optional[int] = None) -> dict:
    """Add ``"orientation"`` to a track's ``summary.json`` (atomically): the report, and ``frames_flagged`` (all
    ``frames`` of the track when the clip is turned, else 0). Returns what it added."""
    from ..io.atomic import atomic_write

    p = Path(summary_path)
    s = json.loads(p.read_text()) if p.is_file() else {}
    d = asdict(report)
    n = frames if frames is not None else int(s.get("frames", 0) or 0)
    d["frames_flagged"] = n if report.turned else 0
    d["flag"] = "upside_down" if report.turns == 2 else ("rotated_90" if report.turned else None)
    s["orientation"] = d
    with atomic_write(p) as tmp:
        Path(tmp).write_text(json.dumps(s, indent=1))
    return d
