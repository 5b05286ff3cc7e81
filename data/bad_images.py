"""Unreadable image files in a folder dataset: stop with one line naming the file (default), or, with
``data.skip_bad_images=true``, train on the next readable sample instead and count it. The file is read
by ``data.folder.FolderReader``, which turns every way a decoder can fail into one ``UnreadableImage``.

The replacement is the next readable index, a function of the files alone, so a resumed run reads
exactly what the uninterrupted run read. The count travels with each batch (``Batch.replaced``, set by
the collate function in the worker that loaded it) and is added up in the main process as batches are
consumed, so it is exact with any number of workers and at any checkpoint: batches a worker prefetched
but training never used are not counted.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from engine.errors import DataError

log = logging.getLogger(__name__)

MAX_TRIES = 16  # unreadable files in a row before even skip mode gives up: the data is broken, not a file


class UnreadableImage(DataError):
    """An image file that cannot be decoded; the message names it and the fix."""

    @classmethod
    def from_worker(cls, err: "UnreadableImage") -> "UnreadableImage":
        """A DataLoader worker's error arrives with the worker's traceback in its message: keep the last line."""
        last = str(err).strip().splitlines()[-1]
        prefix = f"{cls.__module__}.{cls.__qualname__}: "
        return cls(last[len(prefix) :] if last.startswith(prefix) else last)


class Replaced(tuple):
    """A readable sample standing in for an unreadable one."""


class SkipUnreadable(Dataset):
    """``dataset`` with each unreadable sample replaced by the next readable one (``Replaced``)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except UnreadableImage as err:
            log.warning("skipped: %s", str(err).split(";")[0])
        for offset in range(1, MAX_TRIES):
            try:
                return Replaced(self.dataset[(index + offset) % len(self.dataset)])
            except UnreadableImage:
                continue
        raise UnreadableImage(
            f"{MAX_TRIES} image files in a row from sample {index} on are unreadable: the "
            "dataset is broken, not one file; run python -m scripts.check_data <data.root>"
        )


class Batch(tuple):
    """A collated (images, targets) batch that also carries how many of its samples were replaced."""

    replaced: int = 0

    def pin_memory(self) -> "Batch":  # DataLoader's pin_memory thread would otherwise return a plain list
        return _batch([t.pin_memory() if isinstance(t, torch.Tensor) else t for t in self], self.replaced)


def _batch(parts: Any, replaced: int) -> Batch:
    batch = Batch(parts)
    batch.replaced = replaced
    return batch


def collate(samples: list[Any]) -> Batch:
    return _batch(default_collate(samples), sum(isinstance(sample, Replaced) for sample in samples))


class ReplacedImages:
    """The run's counts of replaced images, for the epoch log line, checkpoints and results.json.

    Training's count is of the whole run: it lives in ``TrainState.counters``, so a checkpoint holds the
    count of exactly the batches trained so far and a resumed run continues it. Validation's counts the
    passes of this process (a validation pass replaces the same files each time). Under torchrun each process
    counts its own share; rank 0's is saved and shown.
    """

    KEY = "bad_images_replaced"

    def __init__(self, counters: dict[str, int], train_loader: Any, val_loader: Any, *, enabled: bool) -> None:
        self.counters, self.train, self.val, self.enabled = counters, train_loader, val_loader, enabled
        self.base = counters.get(self.KEY, 0) - train_loader.replaced
        self.shown_train, self.shown_val = counters.get(self.KEY, 0), val_loader.replaced

    def record(self) -> None:
        self.counters[self.KEY] = self.base + self.train.replaced

    def epoch_summary(self) -> str:
        self.record()
        total = self.counters[self.KEY]
        train, val = total - self.shown_train, self.val.replaced - self.shown_val
        self.shown_train, self.shown_val = total, self.val.replaced
        if not (self.enabled or total or val):
            return ""
        return f"  unreadable images replaced: {train} in training (run total {total}), {val} in validation"

    def totals(self) -> dict[str, int]:
        return {"train": self.counters.get(self.KEY, 0), "val": self.val.replaced}
