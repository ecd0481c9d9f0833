"""A video and its track, checked to belong together.

:meth:`TrackedVideo.open` takes a video file (tracked into a folder when no track exists yet), a folder written by
``facerender track``, or both. A track folder is only accepted for a video whose fingerprint matches: same frame
size, frame rate and number of frames, and the face the track detected in a sampled frame is where a fresh dlib
detection finds it in that frame of the video (within 10 % of the eye distance). A track of another video -- or of
a re-encoded, cut or resized copy -- is refused with a message naming both files.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np

from ..errors import DatasetError

log = logging.getLogger(__name__)

__all__ = ["TrackedVideo", "open_trained_target", "video_fingerprint"]

PathLike = Union[str, Path]


def video_fingerprint(path: PathLike) -> Dict[str, Any]:
    """``{"size": [H, W], "fps": f, "frames": n, "frames_exact": bool, "bytes": b}`` of a video file."""
    from facerender.io.video import VideoReader

    r = VideoReader(path)
    return {"size": list(r.size), "fps": round(float(r.fps), 4), "frames": int(r.info.frame_count),
            "frames_exact": bool(r.info.frame_count_exact), "bytes": Path(path).stat().st_size}


def _track_fingerprint(track_dir: Path) -> str:
    p = track_dir / "params.npz"
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


@dataclass
class TrackedVideo:
    """A video file, its :class:`~facerender.tracking.Track` and the track's folder (fingerprints checked)."""

    video: Path
    track: Any
    track_dir: Optional[Path]
    fingerprint: Dict[str, Any] = field(default_factory=dict)
    track_fingerprint: str = ""

    @classmethod
    def open(cls, video: Optional[PathLike] = None, track_dir: Optional[PathLike] = None, *, model=None,
             track_into: Optional[PathLike] = None, max_frames: Optional[int] = None, progress: bool = True,
             check_content: bool = True) -> "TrackedVideo":
        """Pair a video with its track.

        Args:
            video: the video (default: the one recorded in the track).
            track_dir: a folder written by ``facerender track``; when None, ``video`` is tracked into
                ``track_into`` (reusing a finished track there).
            model: the face model (for tracking; default ``load_ict()``).
            max_frames: limit when tracking here.
            check_content: also compare a sampled frame's fresh detection with the track (about 0.1 s).
        Raises:
            DatasetError: the track does not match the video (naming both and what differs).
            FileNotFoundError: a missing file or folder.
        """
        from facerender.tracking import load_track

        if video is None and track_dir is None:
            raise ValueError("give a video, a track folder, or both")
        if track_dir is None:
            vpath = Path(video)
            if not vpath.is_file():
                raise FileNotFoundError(f"no such video: {str(vpath)!r}")
            if track_into is None:
                raise ValueError("track_into is needed to track a video")
            tdir = Path(track_into)
            if not (tdir / "params.npz").is_file():
                from facerender.tracking import track_video

                track_video(vpath, tdir, model, max_frames=max_frames, overlay=False, progress=progress)
        else:
            tdir = Path(track_dir)
            if not tdir.is_dir():
                raise FileNotFoundError(f"no such track folder: {str(tdir)!r}")
        try:
            track = load_track(tdir)
        except ValueError as e:
            raise DatasetError(str(e)) from e
        vpath = Path(video) if video is not None else Path(track.video)
        if not vpath.is_file():
            raise FileNotFoundError(f"{str(tdir)!r} is a track of {str(vpath)!r}, which does not exist; pass the "
                                    f"video's new location")
        fp = video_fingerprint(vpath)
        out = cls(vpath, track, tdir, fp, _track_fingerprint(tdir))
        out.check(check_content)
        return out

    def check(self, content: bool = True) -> None:
        """Refuse a track that does not belong to the video (see the module docstring)."""
        tr, fp = self.track, self.fingerprint
        what = f"the track in {str(self.track_dir)!r} does not match the video {str(self.video)!r}"
        if list(tr.image_size) != list(fp["size"]):
            raise DatasetError(f"{what}: frame size {tuple(tr.image_size)} vs {tuple(fp['size'])}")
        if abs(float(tr.fps) - fp["fps"]) > 1e-2:
            raise DatasetError(f"{what}: {tr.fps:.3f} vs {fp['fps']:.3f} frames/s")
        n = len(tr)
        tol = 0 if fp["frames_exact"] else max(2, int(0.02 * n))
        if n > fp["frames"] + tol:
            raise DatasetError(f"{what}: the track has {n} frames, the video {fp['frames']}")
        if content:
            self._check_content(what)

    def _check_content(self, what: str) -> None:
        from facerender.errors import NoFaceError
        from facerender.io.video import VideoReader
        from facerender.landmarks.detect import detect_landmarks

        tr = self.track
        ok = np.nonzero(np.asarray(tr.face_found, bool) & np.isfinite(tr.landmarks).all((1, 2)))[0]
        if ok.size == 0:
            return
        i = int(ok[len(ok) // 2])
        img = None
        for fr in VideoReader(self.video):
            if fr.index == i:
                img = fr.image
                break
        if img is None:
            raise DatasetError(f"{what}: the video has no frame {i}")
        ref = np.asarray(tr.landmarks[i], np.float64)
        eye = float(np.linalg.norm(ref[36] - ref[45]))
        try:
            got = np.asarray(detect_landmarks(img).points, np.float64)
        except NoFaceError:
            raise DatasetError(f"{what}: no face in frame {i} of the video, where the track has one") from None
        err = float(np.linalg.norm(got - ref, axis=1).mean()) / max(eye, 1e-6)
        if err > 0.10:
            raise DatasetError(f"{what}: in frame {i} the tracked landmarks are {100 * err:.0f} % of the eye distance "
                               f"from a fresh detection (limit 10 %)")


_FINGERPRINT_KEYS = ("size", "fps", "frames", "bytes")


def open_trained_target(data: Dict[str, Any], target: Optional[PathLike], *, refusal: str, model=None,
                        progress: bool = False) -> TrackedVideo:
    """The target video a person-specific network was trained on, for reenactment with that network.

    Args:
        data: the run's saved data settings (``video``, ``track`` and ``video_fingerprint`` keys).
        target: None for the run's own video and track; else a video file (tracked with the run's track folder) or a
            track folder, which must be the same video (size, frame rate, frame count, bytes).
        refusal: the method's message when it is another video (what the network renders and what to do instead).
    Returns:
        the opened :class:`TrackedVideo`.
    Raises:
        FileNotFoundError: ``target`` is neither a file nor a track folder.
        DatasetError: ``target`` is another video than the one trained on (``refusal``), or its track does not match.
    """
    run_fp = data.get("video_fingerprint") or {}

    def same(fp):
        return not run_fp or {k: fp.get(k) for k in _FINGERPRINT_KEYS} == {k: run_fp.get(k) for k in _FINGERPRINT_KEYS}

    tp = None if target is None else Path(target)
    if tp is None:
        src = TrackedVideo.open(data["video"], data["track"], model=model, progress=progress)
        if not same(src.fingerprint):
            raise DatasetError(f"{data['video']!r} changed since the network was trained on it (size, frame rate, "
                               f"frame count or bytes); train again, or pass the original video")
        return src
    if tp.is_dir() and (tp / "params.npz").is_file():
        src = TrackedVideo.open(None, tp, model=model, progress=progress)
        if not same(src.fingerprint):
            raise DatasetError(refusal)
        return src
    if not tp.is_file():
        raise FileNotFoundError(f"no such target video or track folder: {str(tp)!r}")
    if not same(video_fingerprint(tp)):  # before tracking or opening anything
        raise DatasetError(refusal)
    return TrackedVideo.open(tp, data["track"], model=model, progress=progress)
