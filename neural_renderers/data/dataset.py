"""Datasets of conditioning windows and real face crops, from conditioning caches.

:class:`WindowDataset` serves one tracked video; :func:`multi_video_dataset` concatenates several (each sample
carries the index of its video as ``identity``). A sample is a dict::

    "condition": (S, S, N * C) float32             the space-time window of conditioning maps (in [0, 1] for
                                                   uint8 caches)
    "image":     (S, S, 3)     float32 in [0, 1]   the real crop of the current frame
    "identity":  ()            int64               which video
    "frame":     ()            int64               the current frame's index in its video

Window channel order: frames oldest first, the current frame LAST; within a frame, the maps in the cache's order
(Deep Video Portraits: shaded RGB, correspondence XYZ, gaze RGB, so channels ``9 k .. 9 k + 8`` are frame
``t - (N - 1) + k``). At the start of a sequence the first frame is repeated; a frame without a tracked face inside
a window is replaced by the nearest tracked frame towards the current one (:func:`window_indices`).

Split by time: the last ``val_fraction`` of each video's frames (default 15 %) is the validation split and is never
trained on; only frames with a tracked face are samples.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from ..errors import DatasetError
from .cache import ConditioningCache, dequantize

__all__ = ["WindowDataset", "window_indices", "split_frames", "multi_video_dataset"]


def window_indices(n_frames: int, window: int, valid: Optional[np.ndarray] = None) -> np.ndarray:
    """``(n_frames, window)`` frame indices of each frame's window, oldest first, current last.

    Indices before 0 are clamped to 0 (the first frame repeats). With ``valid (n_frames,)`` bool, an invalid entry is
    replaced by the nearest valid frame after it within the window (towards the current frame); an invalid current
    frame keeps its own index.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    t = np.arange(n_frames)[:, None]
    idx = np.clip(t - (window - 1) + np.arange(window)[None, :], 0, None)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != (n_frames,):
            raise ValueError(f"valid must have shape ({n_frames},), got {valid.shape}")
        for k in range(window - 2, -1, -1):  # from the newest past frame backwards
            bad = ~valid[idx[:, k]]
            idx[bad, k] = idx[bad, k + 1]
    return idx


def split_frames(n_frames: int, valid: np.ndarray, val_fraction: float = 0.15, min_train: int = 8,
                 min_val: int = 1, name: str = "the video"):
    """``(train_frames, val_frames)``: tracked frames before / from ``floor(n (1 - val_fraction))``.

    Raises:
        DatasetError: fewer than ``min_train`` / ``min_val`` tracked frames in a split.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    cut = int(np.floor(n_frames * (1 - val_fraction)))
    ok = np.nonzero(np.asarray(valid, dtype=bool))[0]
    train, val = ok[ok < cut], ok[ok >= cut]
    if len(train) < min_train or (val_fraction > 0 and len(val) < min_val):
        raise DatasetError(f"{name} has {len(ok)} tracked frames of {n_frames}: {len(train)} for training (need "
                           f">= {min_train}) and {len(val)} for validation (the last {100 * val_fraction:.0f} %, need "
                           f">= {min_val}); use a longer video")
    return train, val


class WindowDataset(Dataset):
    """Conditioning windows of one cached video (see the module docstring).

    Args:
        cache: the video's :class:`~neural_renderers.data.cache.ConditioningCache`.
        window: frames per window ``N`` (Deep Video Portraits: 11).
        split: ``"train"``, ``"val"`` or ``"all"``.
        val_fraction: the last fraction of frames held out for validation.
        identity: the video's index (for multi-video training).
        min_train: fewest training frames accepted.
    """

    def __init__(self, cache: ConditioningCache, window: int = 11, split: str = "train",
                 val_fraction: float = 0.15, identity: int = 0, min_train: int = 8):
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        self.cache = cache
        self.window = int(window)
        valid = cache.valid
        n = cache.num_frames
        train, val = split_frames(n, valid, val_fraction, min_train, name=str(cache.meta.get("video")))
        self.frames = {"train": train, "val": val, "all": np.nonzero(valid)[0]}[split]
        self.split = split
        self.identity = int(identity)
        self.windows = window_indices(n, self.window, valid)

    def __len__(self) -> int:
        return int(len(self.frames))

    def __getitem__(self, k: int) -> Dict[str, torch.Tensor]:
        t = int(self.frames[k])
        cond = np.concatenate([self.cache.read("cond", int(j)) for j in self.windows[t]], -1)
        real = self.cache.read("real", t)
        return {
            "condition": torch.from_numpy(dequantize(cond)),
            "image": torch.from_numpy(dequantize(real)),
            "identity": torch.tensor(self.identity, dtype=torch.int64),
            "frame": torch.tensor(t, dtype=torch.int64),
        }


def multi_video_dataset(caches: Sequence[ConditioningCache], window: int = 11, split: str = "train",
                        val_fraction: float = 0.15) -> ConcatDataset:
    """Several videos in one dataset; video ``k``'s samples carry ``identity = k``."""
    parts: List[WindowDataset] = [WindowDataset(c, window, split, val_fraction, identity=k)
                                  for k, c in enumerate(caches)]
    return ConcatDataset(parts)
