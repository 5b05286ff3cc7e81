"""scikit-learn's bundled handwritten digits: a real, offline dataset small enough to train on a laptop CPU."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .config import DataConfig
from .in_memory import tensor_splits
from .info import Splits

# Fixed, and independent of the run seed, so every run validates on the same 360 images.
SPLIT_SEED = 0
VAL_FRACTION = 0.2


class DigitSplit(NamedTuple):
    """The 8×8 originals (0..16 grey) of each split, with their labels and the class names."""

    train_pixels: torch.Tensor
    train_targets: torch.Tensor
    val_pixels: torch.Tensor
    val_targets: torch.Tensor
    classes: list[str]


def digit_split() -> DigitSplit:
    """The stratified 80/20 split (1437 train / 360 val) every digits dataset shares, so that no dataset built
    from the digits ever validates on a digit it trained on."""
    digits = load_digits()
    pixels, targets = torch.from_numpy(digits.images), torch.from_numpy(digits.target)
    train_idx, val_idx = train_test_split(
        np.arange(len(targets)), test_size=VAL_FRACTION, stratify=digits.target, random_state=SPLIT_SEED
    )
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return DigitSplit(
        pixels[train_idx],
        targets[train_idx],
        pixels[val_idx],
        targets[val_idx],
        [str(name) for name in digits.target_names],
    )


def upsampled(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """0..16 grey 8×8 → bilinear size×size uint8 (N, size, size), once at load so a sample costs a crop."""
    scaled = pixels.float().unsqueeze(1) * (255.0 / 16.0)
    resized = F.interpolate(scaled, size=(size, size), mode="bilinear", align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)[:, 0]


def channel_statistics(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images, as fractions of 255 (the normalisation)."""
    pixels = images.float() / 255.0
    return tuple(pixels.mean(dim=(0, 2, 3)).tolist()), tuple(pixels.std(dim=(0, 2, 3)).tolist())


def as_rgb(grey: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) → (N, 3, H, W) with 3 equal channels: every dataset yields 3-channel images."""
    return grey.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def build_digits(data: DataConfig, *, with_train: bool = True) -> Splits:
    """The digits upsampled to ``image_size``, normalised with the train split's own mean/std.

    The statistics are computed here rather than hard-coded because they depend on ``image_size``
    (bilinear upsampling changes them slightly); at 32 px they are ≈ 0.3054 / 0.3237 on every channel.
    Validation images are upsampled from the 8×8 originals to ``test_image_size``, with the same statistics.
    """
    split = digit_split()
    train_images = as_rgb(upsampled(split.train_pixels, data.image_size))
    mean, std = channel_statistics(train_images)
    # Mirrored digits are not the same digit: crop only. The shift is half an original pixel (2 px at
    # 32 px) because the strokes fill the 8×8 frame and larger shifts would crop them.
    val_images = as_rgb(upsampled(split.val_pixels, data.test_image_size or data.image_size))
    train, val = tensor_splits(
        data,
        (train_images, split.train_targets),
        (val_images, split.val_targets),
        mean,
        std,
        padding=max(1, data.image_size // 16),
        flip=False,
    )
    return Splits(
        train=train if with_train else None,  # built anyway: the statistics come from its pixels
        val=val,
        classes=split.classes,
        mean=mean,
        std=std,
    )
