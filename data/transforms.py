"""Per-sample transform pipelines, shared by the datasets so that every one ends in the same normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2


def _normalized(steps: Sequence[v2.Transform], mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    # ToImage accepts PIL images (folders) and uint8 tensors (in-memory data) alike.
    return v2.Compose([*steps, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def small_image_transforms(
    size: int, mean: Sequence[float], std: Sequence[float], *, augment: bool, padding: int, flip: bool
) -> tuple[v2.Compose, v2.Compose]:
    """(train, val) pipelines for images already stored at their final size (digits, CIFAR).

    Augmentation is the classic padded random crop; ``flip`` is a flag because mirrored digits are
    different (or no) digits.
    """
    augmentation = [v2.RandomCrop(size, padding=padding)] + ([v2.RandomHorizontalFlip()] if flip else [])
    val = _normalized([], mean, std)
    return (_normalized(augmentation, mean, std) if augment else val), val


def folder_transforms(
    size: int, val_resize: int | None, mean: Sequence[float], std: Sequence[float], *, augment: bool
) -> tuple[v2.Compose, v2.Compose]:
    """(train, val) pipelines for decoded photos of any size (ImageNet recipe).

    Validation resizes to ``size / 0.875`` by default (256 for 224), the ratio ImageNet results are quoted at.
    """
    resize = val_resize or round(size / 0.875)
    val = _normalized([v2.Resize(resize), v2.CenterCrop(size)], mean, std)
    if not augment:
        return val, val
    return _normalized([v2.RandomResizedCrop(size), v2.RandomHorizontalFlip()], mean, std), val
