"""Synthetic images computed from their index: smoke runs and throughput benchmarks without any files."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .config import DataConfig
from .info import Splits

# The one home of the fake sizes: used when data.num_classes/train_size/val_size are null, which
# configs/data/fake.yaml leaves them, so data=fake and a bare DataConfig(name="fake") agree.
DEFAULT_NUM_CLASSES, DEFAULT_TRAIN_SIZE, DEFAULT_VAL_SIZE = 10, 1024, 256
TEMPLATE_SEED, TEMPLATE_CELLS = 0, 4


class FakeImages(Dataset):
    """Image ``i`` is a class template plus unit Gaussian noise drawn from a generator seeded with ``first + i``.

    Sample ``first + i`` has label ``(first + i) % num_classes``. Each class owns a fixed random 3×4×4
    template (unit Gaussian), upsampled (nearest) to the image size: a coarse colour layout that a
    network can learn to recognise with any number of classes, while the noise keeps it from being
    trivial. Images come out already normalised (mean ≈ 0, std ≈ √2), and cost one ``randn`` each,
    so a 224 px benchmark with a few workers is not data-bound. Validation uses ``first = train size``,
    so no validation image is a training image.
    """

    def __init__(self, size: int, num_classes: int, image_size: int, first: int = 0) -> None:
        templates = torch.randn(
            num_classes, 3, TEMPLATE_CELLS, TEMPLATE_CELLS, generator=torch.Generator().manual_seed(TEMPLATE_SEED)
        )
        self.templates, self.size, self.image_size, self.first = templates, size, image_size, first

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} fake images")
        sample = self.first + index
        label = sample % len(self.templates)
        noise = torch.randn(3, self.image_size, self.image_size, generator=torch.Generator().manual_seed(sample))
        template = F.interpolate(self.templates[label : label + 1], size=self.image_size, mode="nearest")[0]
        return template + noise, label


def _or_default(value: int | None, default: int) -> int:
    return default if value is None else value


def build_fake(data: DataConfig, *, with_train: bool = True) -> Splits:
    """Ignores ``augment``: the noise already makes every image unique, and benchmarks want the cheapest path."""
    num_classes = _or_default(data.num_classes, DEFAULT_NUM_CLASSES)
    train_size = _or_default(data.train_size, DEFAULT_TRAIN_SIZE)
    val_size = _or_default(data.val_size, DEFAULT_VAL_SIZE)
    return Splits(
        train=FakeImages(train_size, num_classes, data.image_size) if with_train else None,
        val=FakeImages(val_size, num_classes, data.test_image_size or data.image_size, first=train_size),
        classes=[f"class_{i}" for i in range(num_classes)],
        mean=(0.0, 0.0, 0.0),  # already normalised: de-normalising is the identity
        std=(1.0, 1.0, 1.0),
    )
