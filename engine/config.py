"""The typed training config: one dataclass per config group, registered in Hydra's ConfigStore.

Every group file under configs/ merges into these dataclasses, so a misspelt key
(``trainer.epoch=3``) or a value of the wrong type fails when Hydra composes the config, before
anything is built. ``validate`` then checks the ranges that types cannot express.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from data.config import DataConfig
from models.config import ConvConfig, ModelConfig


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Amp(str, Enum):
    none = "none"
    bf16 = "bf16"
    fp16 = "fp16"


class LrScaling(str, Enum):
    none = "none"
    linear = "linear"  # lr × global batch / 256, the ImageNet convention (Goyal et al., 2017)


class SchedName(str, Enum):
    cosine = "cosine"
    multistep = "multistep"
    none = "none"


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw (or any other timm optimizer name)
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    lr_scaling: LrScaling = LrScaling.none
    kwargs: dict[str, Any] = field(default_factory=dict)  # more timm optimizer arguments (e.g. betas)


@dataclass
class SchedConfig:
    name: SchedName = SchedName.cosine
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-5  # learning rate at the first warmup step
    min_lr: float = 0.0  # cosine: final learning rate
    milestones: list[int] = field(default_factory=list)  # multistep: epochs at which lr × gamma
    gamma: float = 0.1


@dataclass
class TrainerConfig:
    epochs: int = 10
    device: Device = Device.auto
    amp: Amp = Amp.none
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over all processes (SyncBatchNorm)
    grad_clip: Optional[float] = None  # max global gradient norm; null turns clipping off
    label_smoothing: float = 0.0
    eval_every: int = 1  # epochs; the last epoch is always evaluated
    checkpoint_every_steps: Optional[int] = None  # also save last.pt every this many steps
    log_every_steps: int = 20  # TensorBoard step-level scalars
    progress: bool = True  # tqdm bars (also off when stdout is not a terminal)
    deterministic: bool = False
    limit_train_batches: Optional[int] = None  # smoke runs: stop each epoch after this many batches
    limit_val_batches: Optional[int] = None


@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    conv: ConvConfig = MISSING
    data: DataConfig = MISSING
    optim: OptimConfig = MISSING
    sched: SchedConfig = MISSING
    trainer: TrainerConfig = MISSING
    seed: int = 0
    # a run folder or checkpoint file to continue; "auto": this run folder's last.pt if it exists
    resume: Optional[str] = None
    eval_only: bool = False
    ckpt: Optional[str] = None  # eval_only: the checkpoint to evaluate


def register_configs() -> None:
    """Make the schemas known to Hydra; call before composing (train.py does, on import)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for group, node in [
        ("model", ModelConfig), ("conv", ConvConfig), ("data", DataConfig),
        ("optim", OptimConfig), ("sched", SchedConfig), ("trainer", TrainerConfig),
    ]:
        store.store(group=group, name=f"{group}_schema", node=node)


def validate(cfg: DictConfig) -> None:
    """Range checks that types cannot express; each error names the key and a valid range."""
    checks = [
        (cfg.trainer.epochs > 0, "trainer.epochs", cfg.trainer.epochs, "a positive integer"),
        (cfg.optim.lr > 0, "optim.lr", cfg.optim.lr, "a positive number"),
        (cfg.optim.weight_decay >= 0, "optim.weight_decay", cfg.optim.weight_decay, ">= 0"),
        (cfg.data.batch_size > 0, "data.batch_size", cfg.data.batch_size, "a positive integer"),
        (cfg.data.eval_batch_size is None or cfg.data.eval_batch_size > 0, "data.eval_batch_size",
         cfg.data.eval_batch_size, "a positive integer or null"),
        (cfg.data.num_workers >= 0, "data.num_workers", cfg.data.num_workers, ">= 0"),
        (cfg.data.image_size > 0, "data.image_size", cfg.data.image_size, "a positive integer"),
        (cfg.trainer.eval_every > 0, "trainer.eval_every", cfg.trainer.eval_every, "a positive integer"),
        (0 <= cfg.trainer.label_smoothing < 1, "trainer.label_smoothing", cfg.trainer.label_smoothing, "in [0, 1)"),
        (cfg.trainer.grad_clip is None or cfg.trainer.grad_clip > 0, "trainer.grad_clip",
         cfg.trainer.grad_clip, "a positive number or null"),
        (cfg.trainer.limit_train_batches is None or cfg.trainer.limit_train_batches > 0,
         "trainer.limit_train_batches", cfg.trainer.limit_train_batches, "a positive integer or null"),
        (cfg.trainer.limit_val_batches is None or cfg.trainer.limit_val_batches > 0,
         "trainer.limit_val_batches", cfg.trainer.limit_val_batches, "a positive integer or null"),
        (cfg.trainer.checkpoint_every_steps is None or cfg.trainer.checkpoint_every_steps > 0,
         "trainer.checkpoint_every_steps", cfg.trainer.checkpoint_every_steps, "a positive integer or null"),
        (cfg.sched.warmup_epochs >= 0, "sched.warmup_epochs", cfg.sched.warmup_epochs, ">= 0"),
        (cfg.conv.sigma_init > 0, "conv.sigma_init", cfg.conv.sigma_init, "a positive number (kernel taps)"),
        (not cfg.eval_only or cfg.ckpt, "ckpt", cfg.ckpt, "a checkpoint path when eval_only=true"),
    ]
    for ok, key, value, expected in checks:
        if not ok:
            raise ValueError(f"{key}={value} is invalid: expected {expected}")
