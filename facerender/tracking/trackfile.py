"""The track file ``params.npz`` written by :func:`~facerender.tracking.video.track_video`: :class:`Track`,
:func:`load_track` (which reads every earlier format), and the writer that assembles it key by key from the chunk
store."""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from ..io.atomic import atomic_write
from ..io.video import VideoReader
from .eyes import BLINK_NAMES, GAZE_NAMES

PathLike = Union[str, os.PathLike]

__all__ = ["Track", "load_track", "FORMAT_VERSION"]

#: Version of params.npz and of the chunk store (2: smoothed landmarks, fixed-vertex model landmarks, the smoother's
#: state in the snapshots; 3: photometric PSNR; 4: the fresh-detection audit and the bridged gaps).
FORMAT_VERSION = 4


@dataclass
class Track:
    """A tracked video as stored in ``params.npz`` (:func:`load_track`). ``N`` frames, ``K`` expressions.

    Per frame: ``index (N,)``, ``time (N,)`` seconds (the container's timestamps), ``rotation (N, 3)`` axis-angle
    (model space), ``translation (N, 3)`` cm (camera space), ``expression (N, K)``, ``sh (N, 9, 3)``, ``gaze (N, 8)``
    (``gaze_names``, eyeLook* weights given to the solver), ``blink (N, 2)`` (EAR-based eyeBlink_L, eyeBlink_R),
    ``eyes_closed (N, 2)`` bool (left, right), ``iris (N, 2, 2)`` pixels (right, left eye; NaN when not found),
    ``landmarks (N, 68, 2)`` the detected points (raw, NaN without a face), ``landmarks_smoothed (N, 68, 2)`` the
    smoothed points given to the solver (NaN without a face; equal to ``landmarks`` with smoothing off and in files
    written before it existed), ``landmark_confidence (N, 68)``, ``landmarks_2d (N, 68, 2)`` the model's fitted
    landmarks (the jaw points slide along the contour), ``model_landmarks_2d (N, 68, 2)`` the projection of the
    model's fixed iBUG-68 vertices (a copy of ``landmarks_2d`` in files written before it existed, or when the
    solver gives none), ``face_found (N,)`` bool, ``status (N,)``
    (``detected`` / ``tracked`` / ``no_face``), ``flags (N,)`` comma-separated strings (also ``flag_bits`` over
    ``flag_names``), ``energy (N,)`` (NaN where no solve ran), ``solve_ms (N,)``, ``frame_ms (N,)``,
    ``audit_sampled (N,)`` bool (a fresh detection was tried on the frame), ``audit_error (N,)`` (the fitted model
    landmarks' mean distance from that fresh detection over its eye distance; NaN where none was tried or found),
    ``audit_points_error (N,)`` (the same for the detected points; inf where the tracker had none), ``box (N, 4)``
    (the predictor's box). Files written before format 4 load with no audit (``audit_sampled`` False, NaN errors).

    Per video: ``identity (K_id,)``, ``albedo (V_face, 3)`` or None, ``focal`` px, ``principal_point (2,)`` px,
    ``image_size (H, W)``, ``fps``, ``model_name``, ``expression_names``, ``keyframes`` (frame indices), ``video``.
    """

    index: np.ndarray
    time: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    expression: np.ndarray
    sh: np.ndarray
    gaze: np.ndarray
    blink: np.ndarray
    eyes_closed: np.ndarray
    iris: np.ndarray
    landmarks: np.ndarray
    landmarks_smoothed: np.ndarray
    landmark_confidence: np.ndarray
    landmarks_2d: np.ndarray
    model_landmarks_2d: np.ndarray
    face_found: np.ndarray
    status: np.ndarray
    flags: np.ndarray
    flag_bits: np.ndarray
    flag_names: Tuple[str, ...]
    energy: np.ndarray
    psnr: np.ndarray
    solve_ms: np.ndarray
    frame_ms: np.ndarray
    identity: np.ndarray
    albedo: Optional[np.ndarray]
    focal: float
    principal_point: np.ndarray
    image_size: Tuple[int, int]
    fps: float
    model_name: str
    expression_names: Tuple[str, ...]
    gaze_names: Tuple[str, ...]
    keyframes: np.ndarray
    video: str
    audit_sampled: Optional[np.ndarray] = None
    audit_error: Optional[np.ndarray] = None
    audit_points_error: Optional[np.ndarray] = None
    box: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def has_flag(self, name: str) -> np.ndarray:
        """``(N,)`` bool: frames carrying the flag ``name``."""
        if name in self.flag_names:
            return (self.flag_bits >> self.flag_names.index(name)) & 1 == 1
        return np.array([name in str(f).split(",") for f in self.flags], dtype=bool)

    def camera(self, dtype=None):
        """The :class:`~facerender.cameras.PinholeCamera` of the video (batch 1)."""
        import torch

        from ..cameras import PinholeCamera

        dt = dtype or torch.float32
        t = lambda v: torch.tensor([float(v)], dtype=dt)  # noqa: E731
        return PinholeCamera(fx=t(self.focal), fy=t(self.focal), cx=t(self.principal_point[0]),
                             cy=t(self.principal_point[1]), image_size=tuple(self.image_size))


_PER_FRAME_KEYS = ("index", "time", "rotation", "translation", "expression", "sh", "gaze", "blink", "eyes_closed",
                   "iris", "iris_confidence", "ear", "landmarks", "landmarks_smoothed", "landmark_confidence",
                   "landmarks_2d", "model_landmarks_2d", "box", "face_found", "status", "flags", "energy", "psnr",
                   "solve_ms", "frame_ms", "decode_ms", "landmarks_ms", "eyes_ms", "audit_sampled", "audit_error",
                   "audit_points_error")


def load_track(path: PathLike) -> Track:
    """Read ``params.npz`` written by :func:`track_video` (a folder or the file itself).

    Raises:
        FileNotFoundError: no params.npz there.
        ValueError: the file is not a track written by this package (the message names what is missing).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "params.npz"
    if not p.is_file():
        raise FileNotFoundError(f"no tracking parameters at {str(p)!r} (run 'facerender track VIDEO -o DIR' first)")
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{str(p)!r} is not a readable .npz file: {e}") from e
    with z:
        need = {"index", "rotation", "translation", "expression", "sh", "identity", "focal", "format_version"}
        missing = sorted(need - set(z.files))
        if missing:
            raise ValueError(f"{str(p)!r} is not a facerender track: missing {missing}")
        d = {k: z[k] for k in z.files}
    albedo = d.get("albedo")
    nan = lambda: np.full(len(d["index"]), np.nan, np.float32)  # noqa: E731
    if albedo is not None and albedo.size == 0:
        albedo = None
    return Track(
        index=d["index"], time=d["time"], rotation=d["rotation"], translation=d["translation"],
        expression=d["expression"], sh=d["sh"], gaze=d["gaze"], blink=d["blink"], eyes_closed=d["eyes_closed"],
        iris=d["iris"], landmarks=d["landmarks"],
        landmarks_smoothed=d["landmarks_smoothed"] if "landmarks_smoothed" in d else d["landmarks"].copy(),
        landmark_confidence=d["landmark_confidence"], landmarks_2d=d["landmarks_2d"],
        model_landmarks_2d=d["model_landmarks_2d"] if "model_landmarks_2d" in d else d["landmarks_2d"].copy(),
        face_found=d["face_found"], status=d["status"], flags=d["flags"],
        flag_bits=d["flag_bits"], flag_names=tuple(str(s) for s in d["flag_names"]), energy=d["energy"],
        psnr=d["psnr"] if "psnr" in d else nan(),
        audit_sampled=d["audit_sampled"] if "audit_sampled" in d else np.zeros(len(d["index"]), bool),
        audit_error=d["audit_error"] if "audit_error" in d else nan(),
        audit_points_error=d["audit_points_error"] if "audit_points_error" in d else nan(),
        box=d["box"] if "box" in d else np.full((len(d["index"]), 4), np.nan, np.float32),
        solve_ms=d["solve_ms"], frame_ms=d["frame_ms"], identity=d["identity"], albedo=albedo,
        focal=float(d["focal"]), principal_point=d["principal_point"],
        image_size=tuple(int(v) for v in d["image_size"]), fps=float(d["fps"]), model_name=str(d["model_name"]),
        expression_names=tuple(str(s) for s in d["expression_names"]),
        gaze_names=tuple(str(s) for s in d["gaze_names"]), keyframes=d["keyframes"], video=str(d["video"]))



def _iter_chunks(store, manifest) -> Iterator[Dict[str, np.ndarray]]:
    for k in range(len(manifest["chunks"])):
        yield store.read_chunk(k)


def _write_params(path: Path, store, manifest, model, vid, reader: VideoReader, fps: float, video: Path,
                  flag_names: List[str]) -> None:
    """params.npz, assembled one key at a time from the chunks (peak memory: one per-frame array)."""
    n_chunks = len(manifest["chunks"])
    with atomic_write(path) as tmp:
        with zipfile.ZipFile(tmp, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            def put(name, arr):
                with zf.open(name + ".npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)

            for key in _PER_FRAME_KEYS:
                parts = [store.read_chunk_key(k, key) for k in range(n_chunks)]
                put(key, np.concatenate(parts) if parts else np.zeros(0))
                del parts
            bits = []
            for k in range(n_chunks):
                for f in store.read_chunk_key(k, "flags"):
                    b = 0
                    for name in str(f).split(","):
                        if name in flag_names:
                            b |= 1 << flag_names.index(name)
                    bits.append(b)
            put("flag_bits", np.array(bits, dtype=np.int64))
            put("flag_names", np.array(flag_names, dtype=str))
            put("identity", vid["identity"])
            put("albedo", vid["albedo"])
            put("focal", np.float64(vid["focal"]))
            put("principal_point", vid["principal_point"])
            put("image_size", np.array(reader.size, dtype=np.int64))
            put("fps", np.float64(fps))
            put("model_name", np.array(str(getattr(model, "name", "?"))))
            put("expression_names", np.array(list(getattr(model, "expression_names", ())), dtype=str))
            put("gaze_names", np.array(GAZE_NAMES, dtype=str))
            put("blink_names", np.array(BLINK_NAMES, dtype=str))
            put("keyframes", vid["keyframes"])
            put("video", np.array(str(video.resolve())))
            put("format_version", np.int64(FORMAT_VERSION))
