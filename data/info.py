"""What a dataset builder hands to the loaders, and what the loaders hand to the model and trainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch.utils.data import Dataset


class Splits(NamedTuple):
    """A builder's result; the loaders derive sizes and class count from it so builders cannot disagree."""

    train: Dataset
    val: Dataset
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class DataInfo:
    """Facts the model (classes, channels, size) and logging/visualisation (mean/std, names) need."""

    num_classes: int
    image_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int  # whole split, all processes together
    val_size: int
    classes: list[str]
