"""scikit-learn's bundled handwritten digits: a real, offline dataset small enough to train on a laptop CPU."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .config import DataConfig
from .info import Splits
from .in_memory import tensor_splits

# Fixed, and independent of the run seed, so every run validates on the same 360 images.
SPLIT_SEED = 0
VAL_FRACTION = 0.2


def _to_rgb_uint8(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """0..16 grey 8×8 → bilinear size×size → 3 equal uint8 channels, once at load so a sample costs a crop."""
    scaled = pixels.float().unsqueeze(1) * (255.0 / 16.0)
    resized = F.interpolate(scaled, size=(size, size), mode="bilinear", align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def build_digits(data: DataConfig, *, with_train: bool = True) -> Splits:
    """Stratified 80/20 split (1437 train / 360 val), normalised with the train split's own mean/std.

    The statistics are computed here rather than hard-coded because they depend on ``image_size``
    (bilinear upsampling changes them slightly); at 32 px they are ≈ 0.3054 / 0.3237 on every channel.
    Validation images are upsampled from the 8×8 originals to ``test_image_size``, with the same statistics.
    """
    digits = load_digits()
    pixels = torch.from_numpy(digits.images)
    images = _to_rgb_uint8(pixels, data.image_size)
    targets = torch.from_numpy(digits.target)
    train_idx, val_idx = train_test_split(
        np.arange(len(targets)), test_size=VAL_FRACTION, stratify=digits.target, random_state=SPLIT_SEED
    )
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    train_pixels = images[train_idx].float() / 255.0
    mean = tuple(train_pixels.mean(dim=(0, 2, 3)).tolist())
    std = tuple(train_pixels.std(dim=(0, 2, 3)).tolist())
    # Mirrored digits are not the same digit: crop only. The shift is half an original pixel (2 px at
    # 32 px) because the strokes fill the 8×8 frame and larger shifts would crop them.
    val_images = _to_rgb_uint8(pixels, data.test_image_size or data.image_size)
    train, val = tensor_splits(data, (images[train_idx], targets[train_idx]), (val_images[val_idx], targets[val_idx]),
                               mean, std, padding=max(1, data.image_size // 16), flip=False)
    return Splits(
        train=train if with_train else None,  # built anyway: the statistics come from its pixels
        val=val,
        classes=[str(name) for name in digits.target_names],
        mean=mean,
        std=std,
    )
