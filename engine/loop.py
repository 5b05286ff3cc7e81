"""One training epoch and one evaluation pass, readable top to bottom."""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
import time
from enum import Enum
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from gmconv import reuse_masked_weights

from .checkpoint import TrainState, unwrap
from .config import batches_in
from .metrics import EpochTotals, MetricSums
from .nonfinite import NonFiniteGuard
from .objective import Objective

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Progress(str, Enum):
    """How an epoch shows its progress: a tqdm bar for a person at a terminal, a log line every
    ``trainer.log_every_steps`` steps where output goes to a file (SLURM, nohup), or nothing."""

    bar = "bar"
    lines = "lines"
    off = "off"

    @classmethod
    def choose(cls, enabled: bool, is_main: bool) -> "Progress":
        if not (enabled and is_main):
            return cls.off
        return cls.bar if sys.stdout.isatty() else cls.lines


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """The forward pass's autocast for a chosen precision (engine/precision.py): none (fp32), bf16 or fp16."""
    amp = getattr(amp, "value", amp)
    if amp not in AMP_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def _batches(loader: Iterable, count: int) -> tuple[Iterable, int]:
    total = min(count, len(loader))
    return itertools.islice(loader, total), total


def _to_device(images: torch.Tensor, targets: torch.Tensor, device: torch.device, channels_last: bool):
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    images = images.to(device, non_blocking=True, memory_format=memory_format)
    return images, targets.to(device, non_blocking=True)


def train_one_epoch(
    state: TrainState,
    loader: Iterable,
    trainer: DictConfig,
    device: torch.device,
    *,
    epoch: int,
    progress: Progress,
    objective: Objective,
    on_step: Optional[Callable[[TrainState], bool]] = None,
    guard: Optional[NonFiniteGuard] = None,
) -> dict[str, float]:
    """Train one epoch (the rest of it, after a mid-epoch checkpoint); returns the whole epoch's mean loss,
    top-1 (%), mean learning rate of its steps, images/s and seconds (``state.epoch_totals`` holds what
    was summed before a stop), and whether ``on_step`` asked to stop.

    ``trainer`` is the ``trainer`` config group; ``objective`` mixes the batch and computes the loss. An
    optimizer step follows every ``trainer.accumulate_steps`` batches (and the epoch's last, smaller group),
    with each batch's loss divided by its group's size: the update of one batch that many times larger.
    Under mixup/cutmix, top-1 counts a prediction right when it names the label with the larger share
    of its mixed image. ``on_step`` runs after every optimizer step (step logging, checkpoints every N
    steps) and returns True to stop at this step boundary. ``guard`` watches for a non-finite loss or
    gradients and says when a step's update must be skipped (engine/nonfinite.py).
    """
    state.model.train()
    if state.batches_done == 0 or state.epoch_totals is None:
        state.epoch_totals = EpochTotals(device)
    totals = state.epoch_totals  # the epoch's sums so far: empty, or restored from a mid-epoch checkpoint
    start_batch = state.batches_done
    # the loader holds the epoch's batches after start_batch (a mid-epoch checkpoint's position)
    batches, total = _batches(loader, batches_in(trainer.limit_train_batches, start_batch + len(loader)) - start_batch)
    epoch_batches, group = start_batch + total, trainer.accumulate_steps
    bar = _progress_bar(batches, total, f"train {epoch + 1}/{trainer.epochs}", progress)
    shown = _Shown(progress, bar, trainer, epoch, start_batch, total)
    totals.start()
    stopped = False
    for i, (images, targets) in enumerate(bar):
        batch = start_batch + i
        group_start = batch - batch % group
        group_size = min(group, epoch_batches - group_start)  # the epoch's last group may be smaller
        last_of_group = batch + 1 == group_start + group_size
        images, targets = objective.mix(*_to_device(images, targets, device, trainer.channels_last))
        if batch == group_start:
            state.optimizer.zero_grad(set_to_none=True)
        loss = _forward_backward(state, images, targets, objective, trainer.amp, device, group_size, last_of_group)
        if last_of_group:
            totals.lr_sum, totals.steps = totals.lr_sum + current_lr(state), totals.steps + 1
            _optimizer_step(state, trainer.grad_clip, guard, loss, epoch)
            state.batches_done = batch + 1
            if on_step is not None and on_step(state):
                stopped = True
                break
        shown.batch(i, totals, state)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    totals.stop()
    return _epoch_result(totals, stopped)


def _progress_bar(batches: Iterable, total: int, desc: str, progress: Progress) -> tqdm:
    """A bar on stdout that disappears when done: the epoch's log line replaces it."""
    return tqdm(
        batches,
        total=total,
        desc=desc,
        disable=progress is not Progress.bar,
        leave=False,
        dynamic_ncols=True,
        file=sys.stdout,
    )


def _epoch_result(totals: EpochTotals, stopped: bool) -> dict[str, float]:
    """The whole epoch's numbers from its sums (also those restored from a mid-epoch checkpoint)."""
    metrics = totals.metrics.compute()
    seconds = totals.seconds
    return {
        "loss": metrics["loss"],
        "top1": metrics["top1"],
        "lr": totals.lr_sum / max(totals.steps, 1),
        "images_per_s": metrics["samples"] / seconds if seconds > 0 else 0.0,
        "seconds": seconds,
        "stopped": stopped,
    }


def _forward_backward(
    state: TrainState,
    images: torch.Tensor,
    targets: torch.Tensor,
    objective: Objective,
    amp: str,
    device: torch.device,
    group_size: int,
    last_of_group: bool,
) -> torch.Tensor:
    """One batch's forward (in the run's precision; the loss and the metrics on fp32 logits) and backward, its
    loss divided by its accumulation group's size; its numbers added to the epoch's sums. Returns the loss."""
    with _sync_gradients(state.model, last_of_group):
        with autocast(device, amp):
            logits = state.model(images).float()
        loss = objective.criterion(logits, targets)
        _backward(state, loss / group_size)
    state.epoch_totals.metrics.update(
        loss.detach() * targets.shape[0], logits.detach(), objective.dominant_labels(targets)
    )
    return loss


class _Shown:
    """An epoch's progress as it trains: the tqdm bar's running numbers, or a log line every
    ``trainer.log_every_steps`` batches with an ETA (``Progress``)."""

    def __init__(self, progress: Progress, bar: tqdm, trainer: DictConfig, epoch: int, start_batch: int, total: int):
        self.progress, self.bar, self.trainer, self.epoch = progress, bar, trainer, epoch
        self.start_batch, self.total, self.start = start_batch, total, time.perf_counter()

    def batch(self, i: int, totals: EpochTotals, state: TrainState) -> None:
        if self.progress is Progress.bar and (i % 10 == 0 or i == self.total - 1):
            self.bar.set_postfix(_running(totals, state))
        elif self.progress is Progress.lines and (i + 1) % self.trainer.log_every_steps == 0:
            running = _running(totals, state)
            eta = (self.total - i - 1) * (time.perf_counter() - self.start) / (i + 1)
            log.info(
                "epoch %d/%d  batch %d/%d  loss %s  top1 %s%%  lr %s  %s img/s  ETA %s",
                self.epoch + 1,
                self.trainer.epochs,
                self.start_batch + i + 1,
                self.start_batch + self.total,
                running["loss"],
                running["top1"],
                running["lr"],
                running["img_s"],
                format_duration(eta),
            )


def _sync_gradients(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """DDP all-reduces gradients only on a group's last batch; the others accumulate locally (no_sync,
    which must hold the forward pass as well as the backward)."""
    if sync or not isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def _backward(state: TrainState, loss: torch.Tensor) -> None:
    (state.scaler.scale(loss) if state.scaler is not None else loss).backward()


def _optimizer_step(
    state: TrainState, grad_clip: Optional[float], guard: Optional[NonFiniteGuard], loss: torch.Tensor, epoch: int
) -> None:
    """One optimizer step on the accumulated gradients (unless ``guard`` skips it: a non-finite loss or
    gradients under trainer.nonfinite=skip), then the schedule and the EMA follow it."""
    optimizer, scaler = state.optimizer, state.scaler
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = nn.utils.clip_grad_norm_(state.model.parameters(), grad_clip) if grad_clip is not None else None
    skip = guard is not None and guard.observe(
        loss,
        state.model,
        step=state.step + 1,
        epoch=epoch + 1,
        lr=current_lr(state),
        grad_norm=grad_norm,
        scaler=scaler,
    )
    if scaler is not None:  # the scaler itself skips a step whose gradients are not finite
        scaler.step(optimizer)
        scaler.update()
    elif not skip:
        optimizer.step()
    state.step += 1
    state.scheduler.step_update(num_updates=state.step)
    if state.ema is not None:
        state.ema.update(unwrap(state.model), step=state.step)


def _running(totals: EpochTotals, state: TrainState) -> dict[str, str]:
    """This process's running averages, as shown while an epoch trains (read without waiting for the device)."""
    loss, top1 = totals.metrics.running()
    return {
        "loss": f"{loss:.3f}",
        "top1": f"{top1:.1f}",
        "lr": f"{current_lr(state):.3g}",
        "img_s": f"{totals.metrics.count / max(totals.elapsed(), 1e-9):.0f}",
    }


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, trainer: DictConfig, device: torch.device, *, progress: Progress
) -> dict[str, float]:
    """Loss, top-1 and top-5 (%) over the validation set; every sample counted exactly once.

    GMConv layers build their masked weights once for the whole pass (``gmconv.reuse_masked_weights``).
    """
    model.eval()
    sums = MetricSums(device)
    batches, total = _batches(loader, batches_in(trainer.limit_val_batches, len(loader)))
    with reuse_masked_weights(model):
        for images, targets in _progress_bar(batches, total, "eval", progress):
            images, targets = _to_device(images, targets, device, trainer.channels_last)
            with autocast(device, trainer.amp):
                logits = model(images)
            logits = logits.float()
            sums.update(F.cross_entropy(logits, targets, reduction="sum"), logits, targets)
    return sums.compute()


def current_lr(state: TrainState) -> float:
    return state.optimizer.param_groups[0]["lr"]
