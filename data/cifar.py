"""CIFAR-10/100 from torchvision's python-pickle files, held in memory as uint8 tensors."""

from __future__ import annotations

import torch
from torchvision import datasets

from .config import DataConfig
from .info import Splits
from .in_memory import tensor_splits
from .paths import require_root

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def _files_only(base: type[datasets.CIFAR10], *, with_train: bool) -> type[datasets.CIFAR10]:
    """``base`` with its md5 checks dropped, the files still required to exist (the training batches
    only ``with_train``: evaluating a checkpoint reads the test batch alone).

    torchvision compares each file with the md5 of the official release, so a format-exact but
    smaller copy (the test fixtures, a subset) is rejected as "corrupted". A really corrupt file
    still fails, when it is unpickled or reshaped. Downloads keep checking the archive's md5.
    """
    return type(base.__name__, (base,), {
        "train_list": [[name, None] for name, _ in base.train_list] if with_train else [],
        "test_list": [[name, None] for name, _ in base.test_list],
        "meta": {**base.meta, "md5": None},
    })


_CIFAR = {
    "cifar10": ("CIFAR-10", datasets.CIFAR10, CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": ("CIFAR-100", datasets.CIFAR100, CIFAR100_MEAN, CIFAR100_STD),
}


def _as_tensors(split: datasets.CIFAR10) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(split.targets)


def build_cifar(data: DataConfig, *, with_train: bool = True) -> Splits:
    """50k/10k official train/test split (the test set serves as validation), the usual per-channel statistics."""
    title, base, mean, std = _CIFAR[data.name]
    dataset = _files_only(base, with_train=with_train)
    if data.image_size != 32:
        raise ValueError(f"data.image_size={data.image_size} is invalid for {title}: its images are 32 px; "
                         f"set data.image_size=32")
    root = require_root(data, dataset.base_folder)
    expected = root / dataset.base_folder
    try:
        train_set = dataset(str(root), train=True, download=data.download) if with_train else None
        val_set = dataset(str(root), train=False, download=data.download and not with_train)
    except (RuntimeError, OSError) as err:  # torchvision: files missing; urllib: no network
        fix = (f"the download failed ({err}); put the python-pickle files there by hand" if data.download
               else "put the python-pickle files there or set data.download=true")
        raise FileNotFoundError(f"{title} not found under {root} (expected {expected}); {fix}") from err
    train, val = tensor_splits(data, _as_tensors(train_set) if train_set else None, _as_tensors(val_set), mean, std,
                               padding=4, flip=True)
    return Splits(
        train=train,
        val=val,
        classes=list(val_set.classes),
        mean=mean,
        std=std,
    )
