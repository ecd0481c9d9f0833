"""Train Deep Video Portraits on a target video: ``train_dvp(target, run_dir)`` (and ``facerender train dvp``).

1. The target is tracked (or its ``facerender track`` folder reused, after checking it belongs to the video);
2. its conditioning and real crops are rendered once into a cache (:func:`~neural_renderers.data.build_cache`);
3. the first 85 % of its frames train the network, the last 15 % validate it (never trained on);
4. the shared :class:`~neural_renderers.training.Trainer` runs (checkpoints, exact resume, logging, DDP).

The run folder records everything reenactment needs (``config.json``: the method config, the target video, its
fingerprint and track, the conditioning settings and cache).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ..data import ConditioningSettings, TrackedVideo, WindowDataset, build_cache
from ..errors import TrainingError
from ..training import TrainConfig, Trainer, TrainResult, config_from_dict, seed_everything
from .method import DeepVideoPortraits, DVPConfig

log = logging.getLogger(__name__)

__all__ = ["train_dvp", "load_dvp", "read_run_config"]

PathLike = Union[str, Path]


def read_run_config(run_dir: PathLike) -> Dict[str, Any]:
    """``RUN/config.json`` as a dict (TrainingError when the folder holds no run)."""
    p = Path(run_dir) / "config.json"
    if not p.is_file():
        raise TrainingError(f"{str(run_dir)!r} is not a training run (no config.json); train one with "
                            f"'facerender train dvp --target VIDEO -o RUN'")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise TrainingError(f"{str(p)!r} is not valid JSON: {e}") from e


def _is_track_dir(p: Path) -> bool:
    return p.is_dir() and (p / "params.npz").is_file()


def train_dvp(target: Optional[PathLike], run_dir: PathLike, *, config: Optional[DVPConfig] = None,
              train: Optional[TrainConfig] = None, video: Optional[PathLike] = None, model=None,
              resume: bool = False, val_fraction: float = 0.15, max_frames: Optional[int] = None,
              cache_dir: Optional[PathLike] = None, crop_scale: float = 1.7, progress: bool = True) -> TrainResult:
    """Train (or resume) Deep Video Portraits on one target video.

    Args:
        target: the target video, or a folder written by ``facerender track`` (its video is the one recorded in
            it, or ``video``). Ignored when resuming (the run's own target is used).
        run_dir: the run folder.
        config: :class:`~neural_renderers.dvp.DVPConfig` (default: the paper's settings at 256^2).
        train: :class:`~neural_renderers.training.TrainConfig`.
        video: the video of a track folder when it moved.
        model: the face model (default ``load_ict()``).
        resume: continue the run in ``run_dir`` (its saved configuration is used; ``train.steps`` may be raised).
        val_fraction: the held-out end of the video.
        max_frames: track only the first frames (tracking a video here).
        cache_dir: where conditioning caches go (default beside the track).
        crop_scale: crop side / median face size.
    Returns:
        the :class:`~neural_renderers.training.TrainResult`.
    Raises:
        DatasetError: a track that does not match its video, too few frames for the split.
        TrainingError / CheckpointError / TrainingDivergedError: see the trainer.
    """
    from morphable_models import load_ict

    run = Path(run_dir)
    train = train or TrainConfig()
    if resume:
        saved = read_run_config(run)
        if saved.get("method") != DeepVideoPortraits.name:
            raise TrainingError(f"{str(run)!r} is a {saved.get('method')!r} run, not 'dvp'")
        config = config_from_dict(DVPConfig, saved["method_config"])
        data = saved["data"]
        target, video, val_fraction = data["track"], data["video"], data["val_fraction"]
        crop_scale = data["settings"]["crop_scale"]
        old = config_from_dict(TrainConfig, saved["train"])
        # the run keeps its data order, batch and seed; a new step count (and runtime settings) may be given
        train = TrainConfig(**{**asdict(old), "steps": train.steps, "max_minutes": train.max_minutes,
                               "num_workers": train.num_workers,
                               "device": train.device, "threads": train.threads, "progress": train.progress,
                               "amp": train.amp, "tensorboard": train.tensorboard})
    config = config or DVPConfig()
    model = model or load_ict()
    if target is None and video is None:
        raise ValueError("give the target video or its track folder")
    t = Path(target) if target is not None else Path(video)
    if _is_track_dir(t):
        source = TrackedVideo.open(video, t, model=model, progress=progress)
    else:
        if not t.is_file():
            raise FileNotFoundError(f"no such video or track folder: {str(t)!r}")
        source = TrackedVideo.open(t, None, model=model, track_into=run / "target_track", max_frames=max_frames,
                                   progress=progress)
    settings = ConditioningSettings(size=config.size, maps=config.maps, crop_scale=crop_scale)
    cache = build_cache(source, model, settings, cache_dir=cache_dir, progress=progress)
    train_ds = WindowDataset(cache, config.window, "train", val_fraction)
    val_ds = WindowDataset(cache, config.window, "val", val_fraction) if val_fraction > 0 else None
    if not resume:
        seed_everything(train.seed)
    method = DeepVideoPortraits(config)
    description = {"video": str(source.video), "video_fingerprint": source.fingerprint,
                   "track": str(source.track_dir), "track_fingerprint": source.track_fingerprint,
                   "cache": str(cache.folder), "settings": settings.key(), "val_fraction": val_fraction,
                   "frames": cache.num_frames, "train_frames": len(train_ds),
                   "val_frames": len(val_ds) if val_ds is not None else 0,
                   "model": getattr(model, "name", "?")}
    trainer = Trainer(method, train_ds, run, train, val_data=val_ds, data_description=description, resume=resume)
    return trainer.fit()


def load_dvp(run_dir: PathLike, device: Union[str, torch.device] = "cpu") -> Tuple[DeepVideoPortraits, Dict[str, Any]]:
    """The trained method of a run (generator weights of ``checkpoints/last.pt``, eval mode) and its config dict.

    Raises:
        TrainingError: not a run folder / not a DVP run. CheckpointError: missing, corrupt or mismatched checkpoint.
    """
    from ..training import check_compatible, load_checkpoint

    saved = read_run_config(run_dir)
    if saved.get("method") != DeepVideoPortraits.name:
        raise TrainingError(f"{str(run_dir)!r} is a {saved.get('method')!r} run, not a Deep Video Portraits one")
    method = DeepVideoPortraits(config_from_dict(DVPConfig, saved["method_config"]))
    data = load_checkpoint(Path(run_dir) / "checkpoints" / "last.pt", map_location="cpu")
    check_compatible(data, method.name, method.signature())
    try:
        method.generator.load_state_dict(data["networks"]["generator"])
    except (KeyError, RuntimeError) as e:
        from ..errors import CheckpointError

        raise CheckpointError(f"{data['path']}: the generator weights do not fit: {str(e).splitlines()[0]}") from e
    method.discriminator = None  # not needed for rendering
    method.to(torch.device(device)).eval()
    saved["checkpoint_step"] = int(data["step"])
    return method, saved
