"""Optimizer and learning-rate schedule, built from timm's factories."""

from __future__ import annotations

from omegaconf import DictConfig
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from torch import nn
from torch.optim import Optimizer

from gmconv import sigma_parameters

# timm's optimizer names for the config's "sgd": timm's own "sgd" is Nesterov SGD.
_SGD_NAMES = {False: "momentum", True: "nesterov"}
# timm's scheduler names for the config's sched.name ("none": timm's constant lr, warmup still applies)
_SCHED_NAMES = {"cosine": "cosine", "multistep": "multistep", "none": "constant"}


def param_groups(model: nn.Module, weight_decay: float, sigma_lr_scale: float = 1.0) -> list[dict]:
    """Weight decay only on conv/linear weights; GMConv's σ in a group of its own.

    Biases and normalisation parameters (ndim <= 1) are not decayed, as usual; nor is anything
    that produces GMConv's σ: decaying σ would pull every mask towards its centre tap and shrink
    every receptive field to one pixel, which is the opposite of regularisation. The σ group's
    learning rate is the schedule's times ``sigma_lr_scale`` (timm's schedulers honour ``lr_scale``):
    gmconv/README.md ("How fast σ learns") gives the measurements behind the default.
    """
    sigma_params = sigma_parameters(model)
    sigma_ids = {id(p) for p in sigma_params}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad and id(p) not in sigma_ids:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if sigma_params:
        groups.append({"params": sigma_params, "weight_decay": 0.0, "lr_scale": sigma_lr_scale})
    return groups


def scaled_lr(cfg: DictConfig, global_batch: int) -> float:
    """The configured lr, times global_batch / 256 under ``optim.lr_scaling=linear``."""
    if cfg.lr_scaling == "linear":
        return cfg.lr * global_batch / 256
    return cfg.lr


def build_optimizer(model: nn.Module, cfg: DictConfig, lr: float) -> Optimizer:
    name = _SGD_NAMES[bool(cfg.nesterov)] if cfg.name == "sgd" else cfg.name
    extra = dict(cfg.kwargs)
    if cfg.name == "sgd":
        extra["momentum"] = cfg.momentum
    try:
        return create_optimizer_v2(
            param_groups(model, cfg.weight_decay, cfg.sigma_lr_scale), opt=name, lr=lr, weight_decay=cfg.weight_decay, **extra
        )
    except (ValueError, AssertionError) as err:
        raise ValueError(f"optim.name={cfg.name} could not be built by timm ({err}); use sgd or adamw") from err


def build_scheduler(optimizer: Optimizer, cfg: DictConfig, epochs: int, steps_per_epoch: int) -> Scheduler:
    """A per-iteration schedule (``step_update`` after every optimizer step), warmup included."""
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=_SCHED_NAMES[cfg.name],
        num_epochs=epochs,
        decay_milestones=list(cfg.milestones),
        decay_rate=cfg.gamma,
        min_lr=cfg.min_lr,
        warmup_lr=cfg.warmup_lr,
        warmup_epochs=cfg.warmup_epochs,
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
    return scheduler
