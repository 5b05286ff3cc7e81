"""Optimizer and learning-rate schedule, built from timm's factories."""

from __future__ import annotations

import math
from typing import Optional

from omegaconf import DictConfig
from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from torch import nn
from torch.optim import Optimizer

from gmconv import sigma_parameters
from models.layers import receptive_field_groups

from .config import OptimConfig
from .errors import ConfigError

# timm's optimizer names for the config's "sgd": timm's own "sgd" is Nesterov SGD.
_SGD_NAMES = {False: "momentum", True: "nesterov"}
# timm's scheduler names for the config's sched.name ("none": timm's constant lr, warmup still applies)
_SCHED_NAMES = {"cosine": "cosine", "step": "step", "multistep": "multistep", "poly": "poly", "none": "constant"}


def param_groups(
    model: nn.Module,
    weight_decay: float,
    sigma_lr_scale: float = OptimConfig.sigma_lr_scale,
    layer_decay: Optional[float] = None,
    offset_lr_scale: float = OptimConfig.offset_lr_scale,
) -> list[dict]:
    """timm's parameter groups, with GMConv's σ taken out into a group of its own (and the rivals' offsets,
    positions and widths into theirs: ``receptive_field_groups``).

    timm decides the rest: no weight decay on biases, normalisation parameters (ndim <= 1) and the
    names a model lists in ``no_weight_decay()`` (position embeddings, tokens); with ``layer_decay``,
    one group per layer of the model's ``group_matcher`` whose ``lr_scale`` is layer_decay^(depth
    from the head). Nothing that produces σ is decayed: decaying σ would pull every mask towards its
    centre tap and shrink every receptive field to one pixel. The σ group's learning rate is the
    schedule's times ``sigma_lr_scale`` (timm's schedulers honour ``lr_scale``; under layer decay
    σ takes ``sigma_lr_scale`` alone): gmconv/README.md ("How fast σ learns") gives the measurements.
    Decayed groups come first, so the group order of a plain model is [decay, no decay, σ].
    """
    no_decay_names = set(getattr(model, "no_weight_decay", set)())
    if layer_decay is None:
        groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_decay_names)
    else:
        if not hasattr(model, "group_matcher"):
            raise ConfigError(
                f"optim.layer_decay={layer_decay} needs a model with timm's group_matcher() to know its "
                f"layers, and {type(model).__name__} has none; remove optim.layer_decay"
            )
        groups = param_groups_layer_decay(
            model, weight_decay, no_weight_decay_list=no_decay_names, layer_decay=layer_decay
        )
    own = [
        {"params": sigma_parameters(model), "weight_decay": 0.0, "lr_scale": sigma_lr_scale},
        *receptive_field_groups(model, weight_decay, offset_lr_scale),
    ]
    own_ids = {id(p) for group in own for p in group["params"]}
    for group in groups:
        group["params"] = [p for p in group["params"] if id(p) not in own_ids]
    groups = sorted((g for g in groups if g["params"]), key=lambda g: g["weight_decay"] == 0)
    return groups + [group for group in own if group["params"]]


def scaled_lr(optim: DictConfig, global_batch: int) -> float:
    """The configured lr, times global_batch / 256 (``linear``) or its square root (``sqrt``).

    ``global_batch`` is the batch of one optimizer step: per-process batch × processes × accumulate_steps.
    """
    ratio = global_batch / 256
    return optim.lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[optim.lr_scaling]


def build_optimizer(model: nn.Module, optim: DictConfig, lr: float) -> Optimizer:
    name = _SGD_NAMES[bool(optim.nesterov)] if optim.name == "sgd" else optim.name
    extra = dict(optim.kwargs)
    if optim.name == "sgd":
        extra["momentum"] = optim.momentum
    groups = param_groups(model, optim.weight_decay, optim.sigma_lr_scale, optim.layer_decay, optim.offset_lr_scale)
    try:
        return create_optimizer_v2(groups, opt=name, lr=lr, weight_decay=optim.weight_decay, **extra)
    except (ValueError, AssertionError) as err:
        raise ConfigError(f"optim.name={optim.name} could not be built by timm ({err}); use sgd or adamw") from err


def build_scheduler(optimizer: Optimizer, sched: DictConfig, epochs: int, optimizer_steps_per_epoch: int) -> Scheduler:
    """A per-iteration schedule (``step_update`` after every optimizer step), warmup included.

    ``optimizer_steps_per_epoch`` counts optimizer steps (batches / accumulate_steps, rounded up).
    """
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=_SCHED_NAMES[sched.name],
        num_epochs=epochs,
        decay_epochs=sched.decay_epochs,
        decay_milestones=list(sched.milestones),
        decay_rate=sched.power if sched.name == "poly" else sched.gamma,  # timm: poly's power is its decay_rate
        min_lr=sched.min_lr,
        warmup_lr=sched.warmup_lr,
        warmup_epochs=sched.warmup_epochs,
        step_on_epochs=False,
        updates_per_epoch=optimizer_steps_per_epoch,
    )
    return scheduler
