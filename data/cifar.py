"""CIFAR-10/100 from the official python-pickle files, held in memory as uint8 tensors.

The files are read here, not by torchvision's CIFAR classes: a pickle can run code, so only what a CIFAR
batch holds (dicts, lists, strings and numpy arrays) may be unpickled, and a file that is not what was
expected (truncated, another format, bytes keys from a Python 2 pickle written without an encoding) is
named in one line with what was found. torchvision still downloads the archive (data.download=true),
checking its md5. The files themselves are not md5-checked, so a format-exact but smaller copy (the test
fixtures, a subset) loads.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import ConfigError, DataError, MissingFile

from .config import DataConfig
from .in_memory import tensor_splits
from .info import Splits
from .paths import require_root
from .text import first_line

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


@dataclass(frozen=True)
class Release:
    title: str
    folder: str  # under data.root, as the archive unpacks
    train: tuple[str, ...]
    test: str
    meta: str
    labels: str  # the label list's key in a batch
    names: str  # the class names' key in the meta file
    archive: str
    md5: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


RELEASES = {
    "cifar10": Release(
        "CIFAR-10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        CIFAR10_MEAN,
        CIFAR10_STD,
    ),
    "cifar100": Release(
        "CIFAR-100",
        "cifar-100-python",
        ("train",),
        "test",
        "meta",
        "fine_labels",
        "fine_label_names",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        CIFAR100_MEAN,
        CIFAR100_STD,
    ),
}
# what a CIFAR pickle may ask to build besides plain containers: numpy arrays (by numpy 1.x's and 2.x's
# names), and bytes as a protocol-2 pickle written by Python 3 stores them (_codecs.encode)
ALLOWED_CLASSES = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_CLASSES:
            raise pickle.UnpicklingError(f"it asks to load {module}.{name}, which a CIFAR file never holds")
        return super().find_class(module, name)


def read_file(path: Path, keys: tuple[str, ...], release: Release) -> dict[str, Any]:
    """One file of the release as a dict holding ``keys``; a DataError naming the file and what it held."""
    fix = f"replace it with the file from the official {release.title} python archive ({release.archive})"
    try:
        with open(path, "rb") as f:
            content = _CifarUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DataError(
            f"{path} is not a readable {release.title} python file ({type(err).__name__}: {first_line(err)}); {fix}"
        ) from None
    if not isinstance(content, dict) or not all(key in content for key in keys):
        found = (
            f"a dict with keys {', '.join(repr(k) for k in list(content)[:6])}"
            if isinstance(content, dict)
            else f"a {type(content).__name__}"
        )
        raise DataError(f"{path}: expected a pickled dict with keys {', '.join(map(repr, keys))}, found {found}; {fix}")
    return content


def read_split(folder: Path, names: tuple[str, ...], release: Release) -> tuple[torch.Tensor, torch.Tensor]:
    """(N×3×32×32 uint8 images, N labels) of the given batch files."""
    images, labels = [], []
    for name in names:
        batch = read_file(folder / name, ("data", release.labels), release)
        pixels = np.asarray(batch["data"], dtype=np.uint8)
        if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32 or len(pixels) != len(batch[release.labels]):
            raise DataError(
                f"{folder / name}: 'data' holds an array of shape {pixels.shape} for "
                f"{len(batch[release.labels])} labels, not N×3072 for N labels; replace it with the "
                f"file from the official {release.title} python archive"
            )
        images.append(torch.from_numpy(pixels).reshape(-1, 3, 32, 32))
        labels.append(torch.tensor(batch[release.labels], dtype=torch.long))
    return torch.cat(images), torch.cat(labels)


def build_cifar(data: DataConfig, *, with_train: bool = True) -> Splits:
    """50k/10k official train/test split (the test set serves as validation), the usual per-channel statistics."""
    release = RELEASES[data.name]
    if data.image_size != 32:
        raise ConfigError(
            f"data.image_size={data.image_size} is invalid for {release.title}: its images are 32 px; "
            f"set data.image_size=32"
        )
    root = require_root(data, release.folder)
    folder = root / release.folder
    if root.name == release.folder and not folder.is_dir() and (root / release.test).is_file():
        raise MissingFile(
            f"data.root={root} is the {release.folder} folder itself: data.root is the folder "
            f"that holds {release.folder}; use data.root={root.parent}"
        )
    if data.download and not folder.is_dir():
        _download(release, root)
    try:
        train = read_split(folder, release.train, release) if with_train else None
        val = read_split(folder, (release.test,), release)
        classes = list(read_file(folder / release.meta, (release.names,), release)[release.names])
    except FileNotFoundError as err:
        fix = (
            "put the python-pickle files there or set data.download=true"
            if not data.download
            else ("the download did not provide it; put the python-pickle files there by hand")
        )
        raise MissingFile(
            f"{release.title} not found under {root} (expected {folder}, missing {Path(err.filename).name}); {fix}"
        ) from err
    train_set, val_set = tensor_splits(data, train, val, release.mean, release.std, padding=4, flip=True)
    return Splits(train=train_set, val=val_set, classes=classes, mean=release.mean, std=release.std)


def _download(release: Release, root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(release.archive, str(root), md5=release.md5)
    except (OSError, RuntimeError) as err:  # no network, a bad archive
        raise MissingFile(
            f"{release.title} could not be downloaded to {root} ({first_line(err)}); put the "
            f"python-pickle files in {root / release.folder} by hand"
        ) from err
