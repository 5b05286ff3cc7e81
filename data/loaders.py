"""The train/val DataLoaders built from a ``DataConfig``."""

from __future__ import annotations

import logging
import os
import signal
import warnings
from typing import Any, Iterator, Union

import torch
from torch.utils.data import DataLoader, Dataset

from engine.errors import ConfigError

from .bad_images import UnreadableImage, collate
from .batch_augment import BatchAugmentedLoader, batch_collate
from .config import DataConfig
from .config_checks import check_data_config
from .info import DataInfo, Splits
from .registry import BUILDERS
from .samplers import ResumableSampler, ShardSampler
from .seeds import mixed_seed

log = logging.getLogger(__name__)

# What build_loaders returns: a DataLoader, or one wrapped to augment whole batches on the device.
Loader = Union[DataLoader, BatchAugmentedLoader]


def build_loaders(
    data: DataConfig,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    device: torch.device | str = "cpu",
) -> tuple[Loader, Loader, DataInfo]:
    """(train loader, val loader, info) for this process.

    ``data.batch_size`` is per process: the global batch is ``batch_size × world_size``. Training always
    uses a ``DistributedSampler`` (one code path for 1 and N processes; the shuffle is a function of
    seed and epoch) and drops the last partial batch. Validation is sharded without padding
    (``ShardSampler``): sum metrics over ranks. ``seed`` must be >= 0 and equal on every rank. Call
    ``set_epoch`` on the training loader before each epoch. ``pin_memory`` is the caller's decision
    (CUDA only); ``data.pin_memory`` is not read here.

    In-memory datasets whose augmentation is batchable (``TensorImages`` with a ``batch_transform``)
    load whole uint8 batches and are augmented on ``device`` (``BatchAugmentedLoader``): their
    batches arrive there, ready. Other batches arrive on the CPU.

    ``check_data_config(data)`` runs first, so a bad setting fails before any file is read.

    Worker processes need no ``worker_init_fn``: PyTorch seeds each worker's ``torch``, ``random`` and
    ``numpy`` from the loader's generator and the worker id, and ``set_epoch`` reseeds that generator
    from (seed, epoch, rank): ranks augment differently, and a run augments the same way every time.
    """
    splits = _splits(data, seed, rank, world_size, with_train=True)
    per_process = -(-len(splits.train) // world_size)
    if per_process < data.batch_size:
        raise ConfigError(
            f"data.batch_size={data.batch_size} exceeds the {per_process} training images per "
            f"process, so an epoch would have no full batch; lower data.batch_size"
        )
    common = _common(data, pin_memory)
    # Each loader owns a generator: starting an epoch or a validation pass then never draws from the
    # global RNG that training uses, and validating cannot shift the training workers' seeds.
    train = _on_device(
        CountingLoader(
            splits.train,
            batch_size=data.batch_size,
            drop_last=True,
            sampler=ResumableSampler(splits.train, rank=rank, world_size=world_size, seed=seed),
            generator=torch.Generator().manual_seed(mixed_seed(seed, 0, rank)),
            **common,
            **_collation(splits.train),
        ),
        device,
        seed,
        rank,
    )
    return train, _val_loader(data, splits, seed, rank, world_size, common, device), _info(data, splits)


def build_val_loader(
    data: DataConfig,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    device: torch.device | str = "cpu",
) -> tuple[Loader, DataInfo]:
    """What evaluating a checkpoint needs: the validation split alone (a folder dataset's train/ is not
    read and need not exist), loaded as ``build_loaders`` loads it."""
    splits = _splits(data, seed, rank, world_size, with_train=False)
    return _val_loader(data, splits, seed, rank, world_size, _common(data, pin_memory), device), _info(data, splits)


def _splits(data: DataConfig, seed: int, rank: int, world_size: int, *, with_train: bool) -> Splits:
    check_data_config(data)
    if seed < 0:
        raise ValueError(f"seed={seed} is invalid: set a non-negative integer")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} with world_size={world_size} is invalid: need 0 <= rank < world_size")
    return BUILDERS[data.name].load()(data, with_train=with_train)


def _common(data: DataConfig, pin_memory: bool) -> dict[str, Any]:
    _note_workers(data.num_workers)
    return dict(
        num_workers=data.num_workers,
        pin_memory=pin_memory,
        persistent_workers=data.persistent_workers and data.num_workers > 0,
    )


def available_cores() -> int:
    """The CPU cores this process may use: those it is allowed to run on, shared with the other processes
    torchrun started on the node."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def _note_workers(num_workers: int) -> None:
    """More loader workers than cores: said once, in the run's words (PyTorch's longer warning about it,
    repeated for every loader, is silenced); the run keeps the setting, which may be deliberate (workers
    waiting on a network file system)."""
    cores = available_cores()
    if num_workers <= cores:
        return
    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
    log.warning(
        "data.num_workers=%d worker processes per loader, and this process has %d CPU core%s: they share "
        "them; kept at %d (data.num_workers=%d matches the cores)",
        num_workers,
        cores,
        "s" if cores != 1 else "",
        num_workers,
        cores,
    )


def _val_loader(
    data: DataConfig,
    splits: Splits,
    seed: int,
    rank: int,
    world_size: int,
    common: dict[str, Any],
    device: torch.device | str,
) -> Loader:
    return _on_device(
        CountingLoader(
            splits.val,
            batch_size=data.eval_batch_size or data.batch_size,
            sampler=ShardSampler(splits.val, rank=rank, world_size=world_size),
            generator=torch.Generator().manual_seed(mixed_seed(seed, 0, rank)),
            **common,
            **_collation(splits.val),
        ),
        device,
        seed,
        rank,
    )


def _info(data: DataConfig, splits: Splits) -> DataInfo:
    return DataInfo(
        num_classes=len(splits.classes),
        image_size=data.image_size,
        test_image_size=data.test_image_size or data.image_size,
        mean=splits.mean,
        std=splits.std,
        classes=splits.classes,
    )


def _leave_ctrl_c_to_the_main_process(worker_id: int) -> None:
    """A terminal's Ctrl-C reaches the workers too; they would die and fail the main process's next batch,
    which instead stops cleanly at a step boundary (engine/preemption.py)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class CountingLoader(DataLoader):
    """A DataLoader whose ``replaced`` counts the replaced samples of the batches it has yielded, and whose
    unreadable-image errors read as one line even when a worker raised them."""

    def __init__(self, dataset: Dataset, **kwargs: Any) -> None:
        kwargs.setdefault("collate_fn", collate)
        if kwargs.get("num_workers", 0) > 0:
            kwargs.setdefault("worker_init_fn", _leave_ctrl_c_to_the_main_process)
        super().__init__(dataset, **kwargs)
        self.replaced = 0

    def __iter__(self) -> Iterator[Any]:
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except UnreadableImage as err:
                raise UnreadableImage.from_worker(err) from None
            self.replaced += getattr(batch, "replaced", 0)
            yield batch


def _collation(dataset: Dataset) -> dict[str, Any]:
    """Batches that ``TensorImages.__getitems__`` already assembled need no collation."""
    return {"collate_fn": batch_collate} if getattr(dataset, "batch_transform", None) is not None else {}


def _on_device(loader: CountingLoader, device: torch.device | str, seed: int, rank: int) -> Loader:
    augment = getattr(loader.dataset, "batch_transform", None)
    if augment is None:
        return loader
    return BatchAugmentedLoader(loader, augment, torch.device(device), seed=seed, rank=rank)


def set_epoch(loader: Loader, epoch: int, *, start_batch: int = 0) -> None:
    """Make epoch ``epoch`` a pure function of (seed, epoch, rank): call on the training loader before each epoch.

    Sets the sampler's shuffle and reseeds the generator that PyTorch draws worker seeds from, so a
    run resumed at epoch k shuffles and augments epoch k exactly as an uninterrupted run did.
    ``start_batch`` (a mid-epoch checkpoint's batches already trained) skips that many batches of this
    process's epoch; the remaining batches hold the same samples as in the uninterrupted run.

    Exact only for the shuffle in two cases: with ``start_batch > 0`` and workers, batches land on
    other workers than before, and persistent workers are seeded once, when they start; either way
    the augmentation draws differ from the uninterrupted run's. With ``num_workers=0`` augmentation
    draws from the main process's global RNG, which the caller restores. Batch-augmented loaders
    have none of these limits: each batch's draws depend only on (seed, epoch, rank, batch index).
    """
    skip = start_batch * loader.batch_size
    if not 0 <= skip <= loader.sampler.num_samples:
        raise ValueError(
            f"start_batch={start_batch} is invalid: an epoch has "
            f"{loader.sampler.num_samples // loader.batch_size} batches per process"
        )
    loader.sampler.set_epoch(epoch, start=skip)
    if isinstance(loader, BatchAugmentedLoader):
        loader.position(epoch, start_batch)
    loader.generator.manual_seed(mixed_seed(loader.sampler.seed, epoch, loader.sampler.rank))
