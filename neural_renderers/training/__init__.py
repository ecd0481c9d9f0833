"""The training engine shared by every neural renderer (``docs/training.md``).

* :class:`Trainer` / :class:`TrainResult` - the loop, optimizers, schedulers, AMP, DDP, checkpoints, logging;
* :class:`TrainConfig` - its settings (saved with each run);
* :class:`Method`, :class:`Phase`, :func:`register_method`, :func:`get_method` - what a method provides;
* :func:`load_checkpoint` / :func:`save_checkpoint` - plain-tensor checkpoints, written atomically;
* :class:`ResumableBatchSampler` - the data order as a function of (seed, epoch), sharded over processes;
* :func:`init_distributed` - ``torchrun`` / DistributedDataParallel set-up (NCCL on CUDA, gloo on CPU).
"""
from .checkpoint import check_compatible, load_checkpoint, save_checkpoint
from .config import TrainConfig, config_from_dict, config_to_dict
from .distributed import DistInfo, init_distributed
from .logger import RunLogger, make_grid
from .method import Method, Nets, Phase, available_methods, get_method, register_method
from .sampler import ResumableBatchSampler
from .trainer import Trainer, TrainResult, peak_memory_mb, seed_everything

__all__ = [
    "Trainer", "TrainResult", "TrainConfig", "Method", "Phase", "Nets", "register_method", "get_method",
    "available_methods", "load_checkpoint", "save_checkpoint", "check_compatible", "config_to_dict",
    "config_from_dict", "ResumableBatchSampler", "init_distributed", "DistInfo", "RunLogger", "make_grid",
    "seed_everything", "peak_memory_mb",
]
