"""A resumable, distributed batch sampler: the data order is a function of (seed, epoch) only.

Each epoch is a permutation of the dataset drawn from a generator seeded with ``(seed, epoch)``; it is cut into
GLOBAL batches of ``batch_size`` (the incomplete tail is dropped), and process ``rank`` of ``world_size`` takes its
contiguous ``batch_size / world_size`` share of each global batch. So:

* the union of the processes' batches at a step is exactly the single-process batch at that step (DDP gives the
  same step as one process);
* a run stopped after ``b`` batches of epoch ``e`` resumes with ``set_epoch(e, start_batch=b)`` and sees exactly
  the batches it would have seen (exact resume).
"""
from __future__ import annotations

from typing import Iterator, List

import torch
from torch.utils.data import Sampler

__all__ = ["ResumableBatchSampler"]


class ResumableBatchSampler(Sampler[List[int]]):
    """Yields lists of dataset indices (this process's part of each global batch).

    Args:
        num_samples: dataset length.
        batch_size: global batch size (divisible by ``world_size``).
        seed: base seed of the permutations.
        rank, world_size: this process and the number of processes.
        shuffle: permute each epoch (else the natural order).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"the global batch size ({batch_size}) must be a positive multiple of the number of "
                             f"processes ({world_size})")
        if num_samples < batch_size:
            raise ValueError(f"the dataset has {num_samples} samples, fewer than one batch of {batch_size}; lower "
                             f"the batch size or add data")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (its permutation) and skip its first ``start_batch`` global batches."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside [0, {self.batches_per_epoch}]")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def permutation(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + epoch * 7919 + 17) % (2 ** 63 - 1))
        return torch.randperm(self.num_samples, generator=g)

    def __iter__(self) -> Iterator[List[int]]:
        perm = self.permutation(self.epoch)
        per = self.batch_size // self.world_size
        for b in range(self.start_batch, self.batches_per_epoch):
            g = perm[b * self.batch_size:(b + 1) * self.batch_size]
            yield g[self.rank * per:(self.rank + 1) * per].tolist()

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch
