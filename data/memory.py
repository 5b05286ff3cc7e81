"""A dataset of images held in memory as one uint8 tensor."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torch.utils.data import Dataset


class TensorImages(Dataset):
    """Small datasets (digits, CIFAR) live in RAM as uint8 N×3×H×W: indexing is a view, so a sample
    costs only its transform (no PIL round trip), and forked workers share the pages copy-on-write."""

    def __init__(self, images: Tensor, targets: Tensor, transform: Callable[[Tensor], Tensor]) -> None:
        self.images = images
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(self.images[index]), int(self.targets[index])
