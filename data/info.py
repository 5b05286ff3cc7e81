"""What a dataset builder hands to the loaders, and what the loaders hand to the model and trainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

from torch.utils.data import Dataset


class Splits(NamedTuple):
    """A builder's result; the loaders derive sizes and class count from it so builders cannot disagree.
    ``train`` is None when the builder was asked for the validation split alone and skipped reading it."""

    train: Optional[Dataset]
    val: Dataset
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class DataInfo:
    """Facts the model (class count, input size) and logging/analysis (mean/std to de-normalise, class names)
    need; every dataset yields 3-channel images. Split sizes are ``len(loader.dataset)``.

    ``image_size`` is the training images' side (it decides ``model.small_input=auto``);
    ``test_image_size`` the validation images' (FLOPs are counted there, as papers quote them).
    """

    num_classes: int
    image_size: int
    test_image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
