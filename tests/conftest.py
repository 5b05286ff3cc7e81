"""Fixtures that write real, tiny datasets in the on-disk formats the loaders read (no mocks)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture
def one_thread():
    """For modules of tiny tensors: one intra-op thread is as fast, and it does not stall (10-50×)
    waiting for a second OpenMP thread when other jobs share the 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write_pickle(path: Path, obj: dict) -> None:
    # The official files are Python 2 pickles with str keys; torchvision unpickles them with
    # encoding="latin1". Protocol 2 with str keys reads back identically.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_batch(rng: np.random.Generator, n: int, num_classes: int, label_key: str) -> dict:
    labels = [int(i % num_classes) for i in range(n)]
    batch = {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), label_key: labels,
             "filenames": [f"img_{i}.png" for i in range(n)]}
    if label_key == "fine_labels":
        batch["coarse_labels"] = [label % 20 for label in labels]
    return batch


@pytest.fixture
def cifar10_root(tmp_path: Path) -> Path:
    """``<root>/cifar-10-batches-py``: 5 training batches of 4 images (20 in all), a test batch of 10."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        _write_pickle(folder / f"data_batch_{i}", _cifar_batch(rng, 4, 10, "labels"))
    _write_pickle(folder / "test_batch", _cifar_batch(rng, 10, 10, "labels"))
    _write_pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)],
                                            "num_cases_per_batch": 4, "num_vis": 3072})
    return tmp_path


@pytest.fixture
def cifar100_root(tmp_path: Path) -> Path:
    """``<root>/cifar-100-python``: 200 training and 100 test images, every fine class present."""
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    _write_pickle(folder / "train", _cifar_batch(rng, 200, 100, "fine_labels"))
    _write_pickle(folder / "test", _cifar_batch(rng, 100, 100, "fine_labels"))
    _write_pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                                    "coarse_label_names": [f"k{i}" for i in range(20)]})
    return tmp_path


IMAGEFOLDER_CLASSES = ("ant", "bee", "cat")


@pytest.fixture
def imagefolder_root(tmp_path: Path) -> Path:
    """``<root>/{train,val}/{ant,bee,cat}/*.png``: 4 PNGs of 40×40 per class and split; one greyscale
    image per class so the RGB conversion is exercised."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in IMAGEFOLDER_CLASSES:
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(4):
                shape = (40, 40) if i == 0 else (40, 40, 3)
                Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(folder / f"{i}.png")
    return tmp_path
