"""Everything a training run needs to continue exactly where it stopped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from timm.scheduler.scheduler import Scheduler
from torch import nn
from torch.optim import Optimizer


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
    model: nn.Module
    optimizer: Optimizer
    scheduler: Scheduler
    scaler: Optional[torch.amp.GradScaler] = None
    epoch: int = 0  # epochs completed
    batches_done: int = 0  # batches of the current epoch already trained (a mid-epoch checkpoint)
    step: int = 0  # optimizer steps taken
    best_top1: float = float("-inf")
    best_epoch: int = 0
    train_time_s: float = 0.0  # time spent training, summed over resumptions

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "step": self.step,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "train_time_s": self.train_time_s,
        }

    def load_progress(self, state: dict[str, Any]) -> None:
        """Everything but the model weights (engine.checkpoint.restore loads those, with a clear error)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        for key in ("epoch", "batches_done", "step", "best_top1", "best_epoch", "train_time_s"):
            setattr(self, key, state[key])
