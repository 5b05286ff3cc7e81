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

from .metrics import MetricSums
from .checkpoint import TrainState
from .nonfinite import NonFiniteGuard

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
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def _batches(loader: Iterable, limit: Optional[int]) -> tuple[Iterable, int]:
    total = len(loader) if limit is None else min(limit, len(loader))
    return itertools.islice(loader, total), total


def _to_device(images: torch.Tensor, targets: torch.Tensor, device: torch.device, channels_last: bool):
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    images = images.to(device, non_blocking=True, memory_format=memory_format)
    return images, targets.to(device, non_blocking=True)


def train_one_epoch(
    state: TrainState,
    loader: Iterable,
    cfg: DictConfig,
    device: torch.device,
    *,
    epoch: int,
    progress: Progress,
    on_step: Optional[Callable[[TrainState], bool]] = None,
    guard: Optional[NonFiniteGuard] = None,
) -> dict[str, float]:
    """Train one epoch (the rest of it, after a mid-epoch checkpoint); returns mean loss, top-1 (%),
    the mean learning rate of its steps, images/s, seconds, and whether ``on_step`` asked to stop.

    ``cfg`` is the ``trainer`` config group. ``on_step`` runs after every optimizer step (step
    logging, checkpoints every N steps) and returns True to stop at this step boundary. ``guard`` watches
    for a non-finite loss or gradients and says when a step's update must be skipped (engine/nonfinite.py).
    """
    model, optimizer, scaler = state.model, state.optimizer, state.scaler
    model.train()
    sums = MetricSums(device)
    start_batch = state.batches_done
    batches, total = _batches(loader, None if cfg.limit_train_batches is None else cfg.limit_train_batches - start_batch)
    bar = tqdm(batches, total=total, desc=f"train {epoch + 1}/{cfg.epochs}", disable=progress is not Progress.bar,
               leave=False, dynamic_ncols=True, file=sys.stdout)
    start = time.perf_counter()
    stopped = False
    lr_sum, steps = 0.0, 0
    for i, (images, targets) in enumerate(bar):
        lr_sum, steps = lr_sum + current_lr(state), steps + 1
        images, targets = _to_device(images, targets, device, cfg.channels_last)
        with autocast(device, cfg.amp):
            logits = model(images)
            loss = F.cross_entropy(logits, targets, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        grad_norm = None
        if cfg.grad_clip is not None:
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        skip = guard is not None and guard.observe(loss, model, step=state.step + 1, epoch=epoch + 1,
                                                   lr=current_lr(state), grad_norm=grad_norm, scaler=scaler)
        if scaler is not None:  # the scaler itself skips a step whose gradients are not finite
            scaler.step(optimizer)
            scaler.update()
        elif not skip:
            optimizer.step()
        state.step += 1
        state.batches_done = start_batch + i + 1
        state.scheduler.step_update(num_updates=state.step)
        sums.update(loss.detach() * targets.shape[0], logits.detach().float(), targets)
        if on_step is not None and on_step(state):
            stopped = True
            break
        if progress is Progress.bar and (i % 10 == 0 or i == total - 1):
            bar.set_postfix(_running(sums, start, state))
        elif progress is Progress.lines and (i + 1) % cfg.log_every_steps == 0:
            running = _running(sums, start, state)
            eta = (total - i - 1) * (time.perf_counter() - start) / (i + 1)
            log.info("epoch %d/%d  batch %d/%d  loss %s  top1 %s%%  lr %s  %s img/s  ETA %s", epoch + 1, cfg.epochs,
                     start_batch + i + 1, start_batch + total, running["loss"], running["top1"], running["lr"],
                     running["img_s"], format_duration(eta))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    metrics = sums.compute()
    images_per_s = metrics["samples"] / seconds if seconds > 0 else 0.0
    return {"loss": metrics["loss"], "top1": metrics["top1"], "lr": lr_sum / max(steps, 1), "images_per_s": images_per_s,
            "seconds": seconds, "stopped": stopped}


def _running(sums: MetricSums, start: float, state: TrainState) -> dict[str, str]:
    """This process's running averages, as shown while an epoch trains (reads the sums: a host sync)."""
    loss, top1, _, seen = sums.sums.tolist()
    seen = max(seen, 1.0)
    return {"loss": f"{loss / seen:.3f}", "top1": f"{100 * top1 / seen:.1f}", "lr": f"{current_lr(state):.3g}",
            "img_s": f"{seen / (time.perf_counter() - start):.0f}"}


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, cfg: DictConfig, device: torch.device, *, progress: Progress
) -> dict[str, float]:
    """Loss, top-1 and top-5 (%) over the validation set; every sample counted exactly once."""
    model.eval()
    sums = MetricSums(device)
    batches, total = _batches(loader, cfg.limit_val_batches)
    for images, targets in tqdm(batches, total=total, desc="eval", disable=progress is not Progress.bar, leave=False,
                                dynamic_ncols=True, file=sys.stdout):
        images, targets = _to_device(images, targets, device, cfg.channels_last)
        with autocast(device, cfg.amp):
            logits = model(images)
        logits = logits.float()
        sums.update(F.cross_entropy(logits, targets, reduction="sum"), logits, targets)
    return sums.compute()


def current_lr(state: TrainState) -> float:
    return state.optimizer.param_groups[0]["lr"]
