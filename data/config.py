"""Typed settings of the ``data`` config group (types checked by Hydra, values by ``data.config_checks``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class DataConfig:
    # digits | digits_cluttered | digits_scaled | cifar10 | cifar100 | imagenet | imagefolder | fake
    name: str = "digits"
    root: Optional[str] = None  # dataset folder (cifar*, imagenet, imagefolder)
    download: bool = False  # cifar*: fetch with torchvision's downloader when the files are missing
    # Per process: under torchrun the global batch is batch_size × world size.
    batch_size: int = 64
    eval_batch_size: Optional[int] = None  # default: batch_size
    num_workers: int = 0
    pin_memory: bool = True  # used only on CUDA
    persistent_workers: bool = True  # used only with num_workers > 0
    image_size: int = 32  # training crop (and validation crop unless test_image_size is set)
    val_resize: Optional[int] = None  # imagenet/imagefolder: resize before the centre crop (null: from crop_pct)
    augment: bool = True
    # Training recipe (docs/TRAINING.md, "Augmentation and evaluation"); every augmentation needs augment=true.
    auto_augment: Optional[str] = None  # timm policy string (rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, original,
    #   v0, ...) or a torchvision policy (randaugment | trivialaugment | autoaugment); null: none
    color_jitter: float = 0.0  # brightness, contrast and saturation each jittered by up to ± this; 0: off
    random_erasing: float = 0.0  # probability of erasing a random rectangle with noise, after normalising
    test_image_size: Optional[int] = None  # validation image size (null: image_size); not cifar*
    crop_pct: float = 0.875  # imagenet/imagefolder: validation resizes to test_image_size / crop_pct, then crops
    # imagenet/imagefolder (data/decoders.py): JPEG decoder auto (simplejpeg if installed, else torchvision) |
    #   torchvision | pil | simplejpeg (the jpeg extra); other formats use the general decoder
    decoder: str = "auto"
    reduced_decode: bool = True  # imagenet/imagefolder: decode JPEGs at 1/2-1/8 scale where the crop allows
    skip_bad_images: bool = False  # imagenet/imagefolder: train on past unreadable files, counted (data/bad_images.py)
    num_classes: Optional[int] = None  # fake: class count; others take it from the data
    train_size: Optional[int] = None  # fake, digits_cluttered, digits_scaled: number of training images
    val_size: Optional[int] = None  # fake, digits_cluttered, digits_scaled: number of validation images
    # digits_cluttered, digits_scaled (data/digit_canvas.py): digits drawn on a larger canvas
    canvas: Optional[int] = None  # the canvas side in px: the image size (their configs set image_size from it)
    digit_size: Optional[int] = None  # the side a digit is drawn at, in px
    clutter: Optional[int] = None  # digits_cluttered: fragments of other digits on each canvas
    generator_seed: int = 0  # the canvases are drawn from it, not from the run's seed: every run sees the same
    # Mixup / CutMix (timm Mixup) on each training batch, with soft targets; 0: off. Needs an even batch_size.
    mixup_alpha: float = 0.0  # Beta(α, α) mixing coefficient of mixup
    cutmix_alpha: float = 0.0  # Beta(α, α) area coefficient of cutmix
    mix_prob: float = 1.0  # probability that a batch is mixed at all
    mix_switch_prob: float = 0.5  # with both on: probability of cutmix rather than mixup for a batch
