"""Settings of the shared trainer (:class:`TrainConfig`), saved with every run (``config.json``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Type, TypeVar

__all__ = ["TrainConfig", "config_to_dict", "config_from_dict", "AMP_MODES"]

#: Mixed-precision modes: ``"auto"`` is bf16 on CUDA and off on CPU.
AMP_MODES = ("auto", "none", "bf16", "fp16")

T = TypeVar("T")


@dataclass
class TrainConfig:
    """How to train (independent of the method).

    Attributes:
        steps: optimisation steps (one step = every phase of the method once, e.g. D then G).
        max_minutes: stop earlier, with a checkpoint, when this call has trained for so many minutes (a time
            budget; ``--resume`` continues).
        batch_size: GLOBAL batch per step (split evenly over the processes of a ``torchrun`` job, so a run gives
            the same result on 1 or N processes).
        num_workers: DataLoader workers per process.
        seed: seeds the initial weights, the data order (a permutation per epoch) and every random number.
        checkpoint_every: steps between checkpoints (a checkpoint is also written at the end and on Ctrl-C).
        keep_checkpoints: numbered checkpoints kept besides ``last.pt`` (0: only ``last.pt``).
        sample_every: steps between sample grids (``samples/step_*.png``: conditioning | output | real) and the
            loss plot.
        log_every: steps between loss records (``metrics.jsonl``, TensorBoard).
        val_every: steps between validation passes (0: only at the end); val_batches: batches per pass.
        amp: ``"auto"`` (bf16 on CUDA, off on CPU), ``"none"``, ``"bf16"`` or ``"fp16"`` (CUDA, with a grad scaler).
        channels_last: channels-last memory format on CUDA (ignored on CPU).
        lr_decay_start: fraction of ``steps`` after which the learning rates decay linearly to 0 (pix2pix's
            schedule); None keeps them constant.
        grad_clip: clip each phase's gradient norm to this value (None: no clipping; the norm is still checked for
            NaN / inf).
        max_loss: stop (TrainingDivergedError) when a phase's total loss exceeds this (None: only NaN / inf stop).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        threads: torch CPU threads for this process (None: leave torch's setting).
        progress: show a progress bar (rank 0).
        tensorboard: write TensorBoard events when the ``tensorboard`` package is installed (rank 0).
    """

    steps: int = 10000
    max_minutes: Optional[float] = None
    batch_size: int = 4
    num_workers: int = 0
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 0
    sample_every: int = 500
    log_every: int = 10
    val_every: int = 1000
    val_batches: int = 4
    amp: str = "auto"
    channels_last: bool = True
    lr_decay_start: Optional[float] = None
    grad_clip: Optional[float] = None
    max_loss: Optional[float] = None
    device: str = "auto"
    threads: Optional[int] = None
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every", "sample_every", "log_every", "val_batches"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("num_workers", "keep_checkpoints", "val_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.lr_decay_start is not None and not 0 <= self.lr_decay_start < 1:
            raise ValueError(f"lr_decay_start must lie in [0, 1), got {self.lr_decay_start}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")
        if self.max_loss is not None and not self.max_loss > 0:
            raise ValueError(f"max_loss must be > 0, got {self.max_loss}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be > 0, got {self.max_minutes}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


def config_to_dict(cfg) -> Dict[str, Any]:
    """A dataclass config as a JSON-able dict (tuples become lists)."""
    return dataclasses.asdict(cfg)


def config_from_dict(cls: Type[T], data: Dict[str, Any]) -> T:
    """Rebuild a dataclass config from :func:`config_to_dict` output; unknown keys are refused (a config written by
    a different version of a method is not silently half-read)."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; known: {sorted(names)}")
    kw = {}
    for k, v in data.items():
        default = names[k].default
        kw[k] = tuple(v) if isinstance(v, list) and isinstance(default, tuple) else v
    return cls(**kw)
