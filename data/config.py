"""Typed settings of the ``data`` config group (types checked by Hydra, values by ``data.checks``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class DataConfig:
    name: str = "digits"  # digits | cifar10 | cifar100 | imagenet | imagefolder | fake
    root: Optional[str] = None  # dataset folder (cifar*, imagenet, imagefolder)
    download: bool = False  # cifar*: fetch with torchvision's downloader when the files are missing
    # Per process: under torchrun the global batch is batch_size × world size.
    batch_size: int = 64
    eval_batch_size: Optional[int] = None  # default: batch_size
    num_workers: int = 0
    pin_memory: bool = True  # used only on CUDA
    persistent_workers: bool = True  # used only with num_workers > 0
    image_size: int = 32  # training crop (and validation crop)
    val_resize: Optional[int] = None  # imagenet/imagefolder: resize before the centre crop (256 for 224)
    augment: bool = True
    skip_bad_images: bool = False  # imagenet/imagefolder: train on past unreadable files, counted (data/bad_images.py)
    num_classes: Optional[int] = None  # fake: class count; others take it from the data
    train_size: Optional[int] = None  # fake: number of training images
    val_size: Optional[int] = None  # fake: number of validation images
