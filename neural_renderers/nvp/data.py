"""Datasets of (audio windows, tracked expressions, speaker id) for Audio2ExpressionNet.

* :class:`ClipData`: one clip: its audio feature steps, per-frame window starts, tracked expressions ``(N, K)``,
  a per-frame validity mask, the speaker's identity index, and the frame range ``[start, stop)`` of the split.
* :class:`FrameSequenceDataset`: the samples of a list of clips. Sample ``(clip, t)`` holds the windows of frames
  ``t + offsets[0] - 1 .. t + offsets[-1] + 1`` (``S + 2`` windows: the temporal filter's ``S`` frames for
  ``t - 1``, ``t`` and ``t + 1``), the expressions at ``t - 1, t, t + 1`` and the identity. Context frames are
  clamped to the split's range of the clip, so no held-out frame's audio enters a training sample (nor the reverse).
* :func:`load_speech_tracks`: the clips of a ``manifest.json`` written by ``benchmarks/prepare_speech_tracks.py``
  (GRID s1 and the nine grid_multi speakers), features computed from the source videos' audio.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from facerender.audio import MelConfig, WINDOW_STEPS, AudioFeatures, compute_features, frame_times, window_starts

from .audio2expression import context_offsets

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

__all__ = ["ClipData", "FrameSequenceDataset", "load_speech_tracks", "collate"]


@dataclass
class ClipData:
    """One clip's aligned audio and expressions.

    Attributes:
        name: clip name. speaker: speaker name. identity: the speaker's index (the map it trains).
        features: ``(T, D)`` float32 feature steps. pad_value: value of steps outside the audio (None: edge).
        starts: ``(N,)`` int64 first step of each frame's window (:func:`facerender.audio.window_starts`).
        expression: ``(N, K)`` float32 tracked weights. valid: ``(N,)`` bool frames usable as targets.
        start, stop: the frame range of this clip used by the dataset (a split); defaults to all frames.
        window_steps: ``W``. activity: ``(N,)`` share of active audio steps per frame's window (or None).
    """

    name: str
    speaker: str
    identity: int
    features: np.ndarray
    starts: np.ndarray
    expression: np.ndarray
    valid: np.ndarray
    pad_value: Optional[float] = None
    start: int = 0
    stop: Optional[int] = None
    window_steps: int = WINDOW_STEPS
    activity: Optional[np.ndarray] = None
    extra: Dict = field(default_factory=dict)

    def __post_init__(self):
        n = self.expression.shape[0]
        if self.starts.shape != (n,) or self.valid.shape != (n,):
            raise ValueError(f"clip {self.name!r}: starts {self.starts.shape} and valid {self.valid.shape} must be "
                             f"({n},) like the expressions")
        if self.stop is None:
            self.stop = n
        if not 0 <= self.start <= self.stop <= n:
            raise ValueError(f"clip {self.name!r}: range [{self.start}, {self.stop}) outside its {n} frames")
        W = self.window_steps
        pad = np.zeros((W, self.features.shape[1]), np.float32)
        lo = pad + (self.pad_value if self.pad_value is not None else (self.features[0] if len(self.features) else 0))
        hi = pad + (self.pad_value if self.pad_value is not None else (self.features[-1] if len(self.features) else 0))
        # padded once: windows are then plain slices
        self._padded = np.ascontiguousarray(np.concatenate([lo, self.features, hi]).astype(np.float32))
        self._lo = W

    @property
    def num_frames(self) -> int:
        return int(self.expression.shape[0])

    def windows(self, frames: np.ndarray) -> np.ndarray:
        """``(len(frames), W, D)`` windows of the given frame indices (any int array)."""
        W = self.window_steps
        s = self.starts[np.asarray(frames)] + self._lo
        s = np.clip(s, 0, self._padded.shape[0] - W)
        return self._padded[s[..., None] + np.arange(W)]

    def all_windows(self) -> np.ndarray:
        """``(N, W, D)`` windows of every frame."""
        return self.windows(np.arange(self.num_frames))

    def split(self, start: int, stop: int) -> "ClipData":
        """The same clip restricted to frames ``[start, stop)``."""
        return ClipData(self.name, self.speaker, self.identity, self.features, self.starts, self.expression,
                        self.valid, self.pad_value, int(start), int(stop), self.window_steps, self.activity,
                        dict(self.extra))


class FrameSequenceDataset(Dataset):
    """Training samples over clips (see the module docstring).

    Args:
        clips: :class:`ClipData` list (each restricted to its split range).
        filter_frames: ``S`` of the temporal filter (8). min_activity: drop target frames whose window has a
            smaller share of active audio steps (0 keeps silent frames, which also teach the rest face).

    Items: ``{"windows": (S + 2, W, D) float32, "expression": (3, K) float32, "identity": int64 scalar,
    "weight": float32 scalar}``.
    """

    def __init__(self, clips: Sequence[ClipData], filter_frames: int = 8, min_activity: float = 0.0):
        self.clips = list(clips)
        if not self.clips:
            raise ValueError("FrameSequenceDataset needs at least one clip")
        dims = {c.features.shape[1] for c in self.clips}
        ks = {c.expression.shape[1] for c in self.clips}
        if len(dims) != 1 or len(ks) != 1:
            raise ValueError(f"clips disagree on the feature dimension {sorted(dims)} or the expression count "
                             f"{sorted(ks)}")
        off = context_offsets(filter_frames)
        self.offsets = np.arange(off[0] - 1, off[-1] + 2)
        index = []
        for ci, c in enumerate(self.clips):
            f = np.arange(c.start, c.stop)
            ok = c.valid[f]
            if min_activity > 0 and c.activity is not None:
                ok &= c.activity[f] >= min_activity
            index += [(ci, int(t)) for t in f[ok]]
        if not index:
            raise ValueError("no usable frame in the clips (all invalid or outside their ranges)")
        self.index = np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.clips[0].features.shape[1])

    @property
    def num_expressions(self) -> int:
        return int(self.clips[0].expression.shape[1])

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        ci, t = self.index[i]
        c = self.clips[ci]
        frames = np.clip(t + self.offsets, c.start, c.stop - 1)
        trip = np.clip(t + np.array([-1, 0, 1]), c.start, c.stop - 1)
        return {"windows": torch.from_numpy(c.windows(frames)),
                "expression": torch.from_numpy(np.ascontiguousarray(c.expression[trip], dtype=np.float32)),
                "identity": torch.tensor(c.identity, dtype=torch.long),
                "weight": torch.tensor(1.0)}

    def batches(self, batch_size: int, seed: int = 0, epochs: Optional[int] = None):
        """Shuffled batches (a generator, stacked without worker processes: the samples are slices)."""
        rng = np.random.default_rng(seed)
        e = 0
        while epochs is None or e < epochs:
            order = rng.permutation(len(self))
            for b in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
                yield collate([self[int(j)] for j in order[b:b + batch_size]])
            e += 1


def collate(items: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Stack a list of samples into a batch."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


# ------------------------------------------------------------------------------------------------ speech tracks
def load_speech_tracks(tracks_dir: PathLike, split: str = "train", config: MelConfig = MelConfig(),
                       speakers: Optional[Sequence[str]] = None, data_dir: Optional[PathLike] = None,
                       window_steps: int = WINDOW_STEPS, features: str = "log_mel", cut_margin: int = 3
                       ) -> Tuple[List[ClipData], List[str]]:
    """The clips of ``tracks_dir/manifest.json`` (from ``benchmarks/prepare_speech_tracks.py``) for one split.

    Args:
        tracks_dir: the folder with ``manifest.json``. split: ``"train"``, ``"heldout"`` or ``"all"``.
        config: the log-mel settings. speakers: a subset of the manifest's speakers (default all, in its order).
        data_dir: the speech data folder (default: the one in the manifest). window_steps: ``W``.
        features: ``"log_mel"`` (:func:`facerender.audio.compute_features` with ``config``) or ``"phones"``
            (:func:`facerender.audio.phone_features`, needs pocketsphinx).
        cut_margin: in a track of concatenated clips (GRID s1), the frames within ``cut_margin`` of a cut are not
            targets: the tracker's landmark smoother (5 frames of look-ahead) and its temporal prior carry the face
            across the cut (at the cuts the expression changes 2x more per frame than elsewhere, over 2-3 frames).

    Returns:
        ``(clips, speaker_names)``; a clip's ``identity`` indexes ``speaker_names``. Frames without a tracked face
        are invalid (never targets). The audio of every clip is read from its source video.

    Raises:
        FileNotFoundError (no manifest / track / video), ValueError (unknown split or speaker).
    """
    from facerender.tracking import load_track

    if features not in ("log_mel", "phones"):
        raise ValueError(f"features must be 'log_mel' or 'phones', got {features!r}")
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    tracks_dir = Path(tracks_dir)
    mpath = tracks_dir / "manifest.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"no manifest.json in {str(tracks_dir)!r}: run benchmarks/prepare_speech_tracks.py")
    manifest = json.loads(mpath.read_text())
    data = Path(data_dir) if data_dir is not None else Path(manifest["data"])
    names = list(manifest["speakers"]) if speakers is None else list(speakers)
    unknown = [s for s in names if s not in manifest["speakers"]]
    if unknown:
        raise ValueError(f"speakers {unknown} are not in {str(mpath)!r}; it has {list(manifest['speakers'])}")
    clips: List[ClipData] = []
    for ident, spk in enumerate(names):
        entry = manifest["speakers"][spk]
        track = load_track(tracks_dir / entry["track"])
        expr_all = np.asarray(track.expression, np.float32)
        face = np.asarray(track.face_found, bool) & ~track.has_flag("nan_replaced")
        for c in entry["clips"]:
            for cut in (int(c["start"]), int(c["start"]) + int(c["frames"])):
                if 0 < cut < expr_all.shape[0] and cut_margin > 0:
                    face[max(cut - cut_margin, 0):cut + cut_margin] = False
        for c in entry["clips"]:
            s0, n = int(c["start"]), int(c["frames"])
            if s0 + n > expr_all.shape[0]:
                raise ValueError(f"{spk}/{c['name']}: frames [{s0}, {s0 + n}) beyond the track's "
                                 f"{expr_all.shape[0]}")
            h = int(c["heldout_from"])
            lo, hi = {"train": (0, min(h, n)), "heldout": (min(h, n), n), "all": (0, n)}[split]
            if hi <= lo:
                continue
            times = frame_times(n, manifest.get("fps", 25.0))
            if features == "phones":
                from facerender.audio import phone_features

                feats: AudioFeatures = phone_features(data / c["video"])
                activity = None
            else:
                feats = compute_features(data / c["video"], config)
                activity = feats.frame_activity(times, window_steps)
            clips.append(ClipData(
                name=c["name"], speaker=spk, identity=ident, features=feats.features,
                starts=window_starts(times, feats.rate, window_steps, feats.start),
                expression=expr_all[s0:s0 + n].copy(), valid=face[s0:s0 + n].copy(), pad_value=feats.pad_value,
                start=lo, stop=hi, window_steps=window_steps, activity=activity,
                extra={"track": str(entry["track"]), "track_start": s0, "speech_like": feats.speech_like}))
    return clips, names
