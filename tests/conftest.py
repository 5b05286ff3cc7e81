"""Fixtures that write real, tiny datasets in the on-disk formats the loaders read (no mocks), and the rule
that keeps the fast tier (``pytest -m "not slow"``) fast: a test that trains a run or starts a process is
marked slow, or it fails and says so."""

from __future__ import annotations

import multiprocessing.process
import pickle
import subprocess
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from PIL import Image

import engine.runner


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _slow_work_refused(item):  # the fixtures a test is the first to use count as its own work
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _slow_work_refused(item):
        yield


class _slow_work_refused:
    """Outside tests marked slow: training or evaluating a run (what train.py and run_in_process do once the
    settings are valid), a subprocess, or a multiprocessing worker (DataLoader workers, DDP) fails the test with
    the fix. Settings refused before any work stay in the fast tier."""

    TARGETS = (
        (engine.runner, "train"),
        (engine.runner, "evaluate_checkpoint"),
        (subprocess.Popen, "__init__"),
        (multiprocessing.process.BaseProcess, "start"),
    )

    def __init__(self, item: pytest.Item) -> None:
        self.active = item.get_closest_marker("slow") is None
        self.saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> None:
        if not self.active:
            return
        for owner, name in self.TARGETS:
            self.saved.append((owner, name, owner.__dict__[name]))
            setattr(owner, name, _refuse(f"{getattr(owner, '__name__', owner)}.{name}"))

    def __exit__(self, *exc: Any) -> None:
        for owner, name, original in self.saved:
            setattr(owner, name, original)


def _refuse(what: str) -> Any:
    def refused(*args: Any, **kwargs: Any) -> None:
        pytest.fail(
            f"{what}: this test trains a run or starts a process; mark it @pytest.mark.slow so that the "
            'fast tier (pytest -m "not slow") stays fast',
            pytrace=False,
        )

    return refused


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
    batch = {
        "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        label_key: labels,
        "filenames": [f"img_{i}.png" for i in range(n)],
    }
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
    _write_pickle(
        folder / "batches.meta",
        {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": 4, "num_vis": 3072},
    )
    return tmp_path


@pytest.fixture
def cifar100_root(tmp_path: Path) -> Path:
    """``<root>/cifar-100-python``: 200 training and 100 test images, every fine class present."""
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    _write_pickle(folder / "train", _cifar_batch(rng, 200, 100, "fine_labels"))
    _write_pickle(folder / "test", _cifar_batch(rng, 100, 100, "fine_labels"))
    _write_pickle(
        folder / "meta",
        {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"k{i}" for i in range(20)]},
    )
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
