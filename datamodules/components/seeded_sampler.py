"""A rank-aware sampler whose order and per-sample seeds are pure functions of (seed, epoch).

Torch's default ``RandomSampler`` draws from the global RNG, which a checkpoint does not restore,
so a resumed run would see another order. Here epoch ``e`` is always the same permutation, and
each position carries its own seed for augmentation, so resuming is exact. ``skip`` drops the
samples an interrupted epoch already consumed on this rank (set by ``ResumableDataModule``).

Under DDP each rank takes every ``world``-th position, padded by wrap-around to equal length
(as ``DistributedSampler`` does), so the trainer must run with ``use_distributed_sampler=False``.
"""

import math
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

_SEED_STRIDE = 1_000_003  # keeps (seed, epoch, position) → sample seed collision-free


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class SeededEpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(dataset_index, sample_seed)`` pairs for this rank."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        if n <= 0:
            raise ValueError("SeededEpochSampler needs a non-empty dataset")
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0
        self._skip_epoch = -1

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def skip_in_epoch(self, epoch: int, n_samples: int) -> None:
        """Skip the first ``n_samples`` of this rank's share when ``epoch`` is iterated next."""
        self._skip_epoch, self.skip = epoch, n_samples

    def _per_rank(self) -> int:
        return math.ceil(self.n / _rank_and_world()[1])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rank, world = _rank_and_world()
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * _SEED_STRIDE + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_rank = self._per_rank()
        order += order[: per_rank * world - self.n]  # wrap-around padding
        skip = self.skip if self._skip_epoch == self.epoch else 0
        self._skip_epoch, self.skip = -1, 0  # a skip applies to one pass only
        base = (self.seed * _SEED_STRIDE + self.epoch) * _SEED_STRIDE
        for pos in range(rank + skip * world, per_rank * world, world):
            yield order[pos], (base + pos) % (2**62)

    def __len__(self) -> int:
        # The full share even when skipping: Lightning counts an epoch's batches from this.
        return self._per_rank()
