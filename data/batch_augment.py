"""Augmentation of whole batches as tensor operations, for datasets held in memory (digits, CIFAR).

Per-sample transforms cost a Python call chain per image, which for 32 px images is most of an
epoch's data time. Here a batch arrives as one uint8 tensor (``TensorImages.__getitems__``), moves to
the training device as uint8 (a quarter of float32's bytes) and is cropped, flipped and normalised
there in a handful of batched operations. The distribution is the per-sample pipeline's
(``v2.RandomCrop(size, padding)`` with zero fill, ``v2.RandomHorizontalFlip()``, then normalisation),
and each batch's draws are a pure function of (seed, epoch, rank, batch index), so a run resumed
mid-epoch augments every remaining batch exactly as the uninterrupted run did, with or without workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .seeds import mixed_seed


class BatchAugment(nn.Module):
    """Padded random crop (``padding`` px each side, zero fill), optional horizontal flip, normalisation.

    ``padding=0`` and ``flip=False`` is the validation transform: normalisation only. A module so that
    ``.to(device)`` moves the statistics once, not every batch.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, padding: int = 0, flip: bool = False) -> None:
        super().__init__()
        self.padding, self.flip = padding, flip
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 (N, C, H, W) on the module's device → normalised float32 of the same shape."""
        images = images.float().div_(255)
        if self.padding or self.flip:
            images = _crop_and_flip(images, self.padding, self.flip, generator)
        return images.sub_(self.mean).div_(self.std)

    def extra_repr(self) -> str:
        return f"padding={self.padding}, flip={self.flip}"


def _crop_and_flip(images: Tensor, padding: int, flip: bool, generator: torch.Generator | None) -> Tensor:
    """Each image zero-padded by ``padding``, cropped back to its size at a uniform random offset and,
    with ``flip``, mirrored with probability 1/2: one gather over the flattened pixels for the whole batch."""
    n, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    offsets = torch.randint(0, 2 * padding + 1, (2, n, 1), device=device, generator=generator)
    cols = torch.arange(w, device=device).expand(n, w)
    if flip:
        mirrored = torch.rand(n, 1, device=device, generator=generator) < 0.5
        cols = torch.where(mirrored, cols.flip(-1), cols)
    rows = offsets[0] + torch.arange(h, device=device)
    cols = offsets[1] + cols
    pixels = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return padded.flatten(2).gather(2, pixels).view(n, c, h, w)


class BatchAugmentedLoader:
    """A DataLoader of uint8 batches, moved to ``device`` and augmented there batch by batch.

    It stands where a DataLoader stands (``len``, iteration, ``batch_size``, ``sampler``,
    ``generator``; ``data.set_epoch`` positions it), so the training loop does not know which one
    it is fed.
    """

    def __init__(
        self, loader: DataLoader, augment: BatchAugment, device: torch.device, *, seed: int, rank: int
    ) -> None:
        self.loader, self.augment, self.device = loader, augment.to(device), device
        self.seed, self.rank = seed, rank
        self.epoch, self.start_batch = 0, 0
        self.rng = torch.Generator(device=device)

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size

    @property
    def sampler(self) -> Sampler:
        return self.loader.sampler

    @property
    def dataset(self) -> Dataset:
        return self.loader.dataset

    @property
    def replaced(self) -> int:
        """Unreadable images replaced (data.bad_images): none, in memory, but the engine reads the count."""
        return getattr(self.loader, "replaced", 0)

    @property
    def generator(self) -> torch.Generator:
        return self.loader.generator

    def position(self, epoch: int, start_batch: int) -> None:
        """Where the next iteration starts (called by ``set_epoch``)."""
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for batch, (images, targets) in enumerate(self.loader, start=self.start_batch):
            self.rng.manual_seed(mixed_seed(self.seed, self.epoch, self.rank, batch))
            images = images.to(self.device, non_blocking=True)
            yield self.augment(images, self.rng), targets.to(self.device, non_blocking=True)


def batch_collate(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """``TensorImages.__getitems__`` already returns a batch: nothing to collate."""
    return batch
