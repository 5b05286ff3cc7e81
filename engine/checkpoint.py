"""The checkpoint format, owned here alone: what a checkpoint holds, how it is written and read.

A checkpoint is a dict of tensors and plain data: the model's and optimizer's state, the GradScaler,
the weights' moving average (EMA, when trained with one), the position in training (epoch, batch
within the epoch, optimizer step), the best top-1 so far, the record of every epoch so far
(engine/epoch_record.py: what metrics.csv and TensorBoard are rebuilt from on resume), every RNG state
and the sums of the epoch in progress of every process (lists indexed by rank: each rank draws its own
augmentation and mixing), the resolved config and the data facts the model was built for
(``data_info``). It is written atomically (a temporary file renamed into place, so a crash never
leaves half a file) and read with ``weights_only=True`` (a file can never run code). The learning-rate
schedule is not stored: it is a function of the optimizer step and the config, so a resumed run with
more epochs or another lr re-plans it instead of replaying the old plan.
"""

from __future__ import annotations

import io
import json
import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.optim import Optimizer

from data.text import first_line

from .errors import CheckpointError, MissingFile
from .faults import storage_error
from .metrics import EpochTotals

LAST, BEST = "last.pt", "best.pt"
PARTIAL = ".tmp"  # suffix of a file being written
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: files written here get the permissions a plain open() would give them
PROGRESS_KEYS = ("epoch", "batches_done", "step", "best_top1", "best_epoch", "train_time_s")


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def without_ddp(model: nn.Module) -> nn.Module:
    """The model as one process runs it (compiled if it was): for evaluation, with no collectives."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@dataclass
class TrainState:
    """Everything a training run needs to continue exactly where it stopped."""

    model: nn.Module
    optimizer: Optimizer
    scheduler: Scheduler
    scaler: Optional[torch.amp.GradScaler] = None
    ema: Optional[ModelEmaV3] = None  # trainer.ema_decay: the weights' moving average, updated every step
    epoch: int = 0  # epochs completed
    batches_done: int = 0  # batches of the current epoch already trained (a mid-epoch checkpoint)
    step: int = 0  # optimizer steps taken
    best_top1: float = float("-inf")
    best_epoch: int = 0
    train_time_s: float = 0.0  # time spent training, summed over resumptions
    # events counted over the whole run, e.g. skipped non-finite steps and replaced unreadable images
    counters: dict[str, int] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)  # one per completed epoch (engine/epoch_record.py)
    epoch_totals: Optional[EpochTotals] = None  # the sums of the epoch in progress (engine/metrics.py)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            **{key: getattr(self, key) for key in PROGRESS_KEYS},
            "counters": dict(self.counters),
            "records": [dict(row) for row in self.records],
        }

    def load_progress(self, ckpt: dict[str, Any]) -> None:
        """Optimizer state and position; the configured hyperparameters win over the saved ones.

        The optimizer's buffers (momentum, Adam moments) come from the checkpoint, but each group's
        lr, weight decay, momentum, ... stay as this run's config built them, so a changed setting
        on resume is really applied. With unchanged settings the result is the saved state exactly.
        """
        configured = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for group, settings in zip(self.optimizer.param_groups, configured):
            group.update(settings)
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:  # an EMA added on resume starts from the resumed weights
            if ckpt.get("ema") is not None:
                self.ema.module.load_state_dict(ckpt["ema"])
            else:
                self.ema.set(unwrap(self.model))
        for key in PROGRESS_KEYS:
            setattr(self, key, ckpt[key])
        self.counters = dict(ckpt.get("counters", {}))  # absent in checkpoints written before it existed
        self.records = [dict(row) for row in ckpt.get("records", [])]
        self.scheduler.step_update(num_updates=self.step)


def capture_rng() -> dict[str, Any]:
    """Every RNG state a training step can draw from, as tensors and plain data."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            **np_state,
            "state": {
                "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                "pos": np_state["state"]["pos"],
            },
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(rng: dict[str, Any]) -> None:
    """Set every RNG to a ``capture_rng`` state."""
    random.setstate(_as_tuples(rng["python"]))
    np_state = dict(rng["numpy"])
    np_state["state"] = {"key": np_state["state"]["key"].numpy().astype(np.uint32), "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    A failed write (disk full, read-only folder) raises ``StorageError`` in one line and leaves the old
    ``path`` as it was; a process killed mid-write leaves a ``.<name>.*.tmp`` file that
    ``RunFolder.remove_partial_writes`` clears.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide the run's record from the user's group
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise storage_error(err, path) from err
        raise


def save_json(obj: Any, path: str | os.PathLike) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")

    atomic_write(path, write)


def capture_process_state(state: TrainState) -> dict[str, Any]:
    """What each process holds of its own and a checkpoint keeps per rank: its RNG states and, where an epoch
    stopped half-way, the sums of its share of that epoch (at an epoch's end there are none to continue)."""
    totals = state.epoch_totals.state_dict() if state.epoch_totals is not None and state.batches_done else None
    return {"rng": capture_rng(), "epoch_totals": totals}


def save_checkpoint(
    path: str | Path,
    state: TrainState,
    config: dict[str, Any],
    data_info: dict[str, Any],
    per_rank: list[dict[str, Any]],
    *,
    ema_weights: bool = False,
) -> None:
    """``data_info``: what the model was built for (class count, image size, normalisation), so analysis
    tools can rebuild the network from the checkpoint alone, even where the dataset is absent.
    ``per_rank``: every process's ``capture_process_state()``, by rank. ``ema_weights``: the ``model``
    entry holds the EMA's weights (best.pt under trainer.best_of=ema), so every reader of the file sees
    the kept weights; ``weights`` says which they are."""
    checkpoint = {
        **state.state_dict(),
        "rng": [rank["rng"] for rank in per_rank],
        "epoch_totals": [rank["epoch_totals"] for rank in per_rank],
        "config": config,
        "data_info": data_info,
        "weights": "ema" if ema_weights else "model",
    }
    if ema_weights:
        checkpoint["model"] = checkpoint["ema"]
    atomic_write(path, lambda tmp: _write_durably(tmp, checkpoint))


def _write_durably(path: str, obj: Any) -> None:
    """Serialised in memory first: torch.save writing to a file turns a full disk into an opaque
    RuntimeError, while a plain write raises the OSError (ENOSPC) that names it. fsync before the
    rename, so a machine crash cannot leave a renamed but empty checkpoint."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())
        f.flush()
        os.fsync(f.fileno())


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint; one clear CheckpointError for anything that is not a readable checkpoint. ``mmap``:
    tensors are mapped, not read, for a reader who wants the position and config alone."""
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"checkpoint {path} does not exist; pass a run folder or the path of a {LAST} or {BEST} file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # truncated zip, random bytes, a pickle with code: all unreadable here
        raise CheckpointError(
            f"cannot read checkpoint {path}: truncated, corrupt or not a checkpoint ({first_line(err)})"
        ) from err
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint of this framework (no 'model' entry)")
    return ckpt


def find_checkpoint(path: str | Path, prefer: tuple[str, ...]) -> Path:
    """``path`` itself if it is a file, else the first of ``prefer`` in a run folder's checkpoints/."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = next((path / "checkpoints" / name for name in prefer if (path / "checkpoints" / name).is_file()), None)
        if found is None:
            raise MissingFile(
                f"{path} holds no checkpoint (looked for checkpoints/{' or '.join(prefer)}); "
                "pass a run folder that has saved one, or a .pt file"
            )
        return found
    if not path.is_file():
        raise MissingFile(f"no checkpoint at {path}; pass a run folder or the path of a {LAST} or {BEST} file")
    return path


def load_model_weights(model: nn.Module, ckpt: dict[str, Any], path: str | Path) -> None:
    """Load a checkpoint's weights, explaining an architecture mismatch instead of dumping key lists."""
    try:
        unwrap(model).load_state_dict(ckpt["model"])
    except RuntimeError as err:
        saved = ckpt.get("config", {})
        origin = (
            f"model={saved.get('model', {}).get('name')} conv={saved.get('conv', {}).get('name')}"
            if saved
            else "another model"
        )
        raise CheckpointError(
            f"checkpoint {path} holds weights of {origin}, which do not fit the model built here "
            f"({_load_error_summary(err)}); pass the same model/conv settings as the run that wrote it"
        ) from err


def restore(state: TrainState, ckpt: dict[str, Any], path: str | Path, rank: int = 0) -> bool:
    """Weights, optimizer, position, and this rank's RNG state and sums of the epoch in progress; False
    when the checkpoint has no state for ``rank`` (written by fewer processes): that rank's draws then go
    on from its own seed, and its share of the epoch is counted from the resumed batch on."""
    load_model_weights(state.model, ckpt, path)
    try:
        state.load_progress(ckpt)
    except ValueError as err:  # torch's check that the saved parameter groups fit the optimizer's
        raise CheckpointError(
            f"checkpoint {path} holds an optimizer state that does not fit the optimizer built "
            f"here ({first_line(err)}): a setting that shapes its parameter groups changed "
            "(optim.layer_decay); resume with the run's own, or start a new run from the "
            f"weights with model.pretrained={path}"
        ) from err
    states = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]  # one dict: an older checkpoint
    if rank >= len(states):
        return False
    restore_rng(states[rank])
    totals = ckpt.get("epoch_totals") or []
    if state.batches_done and state.epoch_totals is not None and rank < len(totals) and totals[rank] is not None:
        state.epoch_totals.load_state_dict(totals[rank])
    return True


def _load_error_summary(err: Exception) -> str:
    """load_state_dict's error names the model on its first line and the first mismatch on the second."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:2])[:300]
