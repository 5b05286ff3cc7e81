"""A dataset of images held in memory as one uint8 tensor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .batch_augment import BatchAugment
from .config import DataConfig
from .transforms import small_image_batch_transforms, small_image_transforms


class TensorImages(Dataset):
    """Small datasets (digits, CIFAR) live in RAM as uint8 N×3×H×W: indexing is a view, and forked
    workers share the pages copy-on-write.

    Either ``transform`` runs per sample (any torchvision pipeline: policies such as RandAugment need
    it), or ``batch_transform`` runs per batch: ``__getitems__`` then hands the DataLoader whole uint8
    batches (one gather, no per-sample Python) for ``data.batch_augment.BatchAugmentedLoader`` to
    augment on the training device.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        transform: Optional[Callable[[Tensor], Tensor]] = None,
        *,
        batch_transform: Optional[BatchAugment] = None,
    ) -> None:
        if (transform is None) == (batch_transform is None):
            raise ValueError("TensorImages needs exactly one of transform (per sample) or batch_transform")
        self.images = images
        self.targets = targets
        self.transform = transform
        self.batch_transform = batch_transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if self.batch_transform is not None:
            return self.batch_transform(self.images[index : index + 1])[0], int(self.targets[index])
        return self.transform(self.images[index]), int(self.targets[index])

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor] | list[tuple[Tensor, int]]:
        """A batch for the DataLoader: uint8 images and targets (batch path), else a list of samples."""
        if self.batch_transform is None:
            return [self[i] for i in indices]
        index = torch.as_tensor(indices)
        return self.images[index], self.targets[index]


def tensor_splits(
    data: DataConfig,
    train: Optional[tuple[Tensor, Tensor]],
    val: tuple[Tensor, Tensor],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    padding: int,
    flip: bool,
) -> tuple[Optional[TensorImages], TensorImages]:
    """(train, val) datasets of (uint8 images, targets), augmented a batch at a time where ``data`` allows
    (the padded crop, flip and normalisation) and per sample where it needs a per-sample pipeline.
    ``train`` None (only the validation split was read): no training dataset."""
    train_batch, val_batch = small_image_batch_transforms(data, mean, std, padding=padding, flip=flip)
    val_set = TensorImages(*val, batch_transform=val_batch)
    if train is None:
        return None, val_set
    if train_batch is None:
        train_tf, _ = small_image_transforms(data, mean, std, padding=padding, flip=flip)
        return TensorImages(*train, train_tf), val_set
    return TensorImages(*train, batch_transform=train_batch), val_set
