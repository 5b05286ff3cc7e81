"""Samplers: training shuffles that can resume mid-epoch, and validation sharding without padding."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sized

from torch.utils.data import DistributedSampler, Sampler


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` whose epoch can start part-way, so a mid-epoch checkpoint resumes with
    exactly the samples it had not trained on yet (the shuffle itself is unchanged)."""

    def __init__(self, dataset: Sized, *, rank: int, world_size: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """``start``: how many of this rank's samples of the epoch to skip."""
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``world_size`` gets indices ``r, r + world_size, r + 2·world_size, …``.

    Unlike ``DistributedSampler`` it neither pads nor repeats, so summing correct counts over ranks
    evaluates every validation sample exactly once and the accuracy is unbiased; ranks may therefore
    see one sample more or fewer than each other.
    """

    def __init__(self, dataset: Sized, *, rank: int, world_size: int) -> None:
        self.indices = range(rank, len(dataset), world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
