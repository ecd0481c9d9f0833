"""Multi-process training through ``torchrun`` and DistributedDataParallel (no scheme of our own).

``torchrun --nproc_per_node N $(which facerender) train ...`` (or ``--nnodes`` / ``--rdzv-endpoint`` for several
machines) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables; :func:`init_distributed`
reads them and joins the process group: NCCL on CUDA, gloo on CPU. Without those variables a run is a single
process and nothing here does anything.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "barrier", "is_main", "all_reduce_mean", "cleanup"]


@dataclass(frozen=True)
class DistInfo:
    """This process in the job: ``rank`` of ``world_size``, ``local_rank`` on its machine, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            from ..errors import TrainingError

            raise TrainingError(f"device {name!r} requested but torch sees no CUDA device (torch {torch.__version__})")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return dev


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1`` (else a single-process :class:`DistInfo`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _device(device, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def is_main(info: DistInfo) -> bool:
    return info.rank == 0


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over the processes (itself when single-process)."""
    if not (info.distributed and dist.is_initialized()):
        return value
    v = value.detach().clone()
    dist.all_reduce(v, op=dist.ReduceOp.SUM)
    return v / info.world_size


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """True on every process when it is True on any (used to stop all ranks together)."""
    if not (info.distributed and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64,
                     device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
