"""The typed training config and the one place where a whole config is checked before anything is built.

Each config group (configs/<group>/) is one dataclass: ``model``/``conv`` in models/config.py,
``data`` in data/config.py, ``optim``/``sched``/``trainer`` here. Defaults live in the dataclasses
only; a group's YAML files hold what differs per option. Hydra rejects a misspelt key or a value of
the wrong type when it composes; ``validate`` then rejects, in one line naming the key, everything
types cannot express: ranges, unknown names, keys added with ``+``, and settings that the chosen
options would silently ignore.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError
from timm.optim import list_optimizers

from data import DataConfig, check_data_config
from data.text import first_line
from models.config import ConvConfig, ConvType, ModelConfig, ModelSource, gmconv_options, plain
from models.conv_types import check_rival_options, unused_options
from models.small_input import parse_small_input

from .errors import ConfigError, IgnoredSetting
from .precision import channels_last_setting


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Amp(str, Enum):
    """Autocast's precision; auto: bf16 where the device computes it in hardware, else fp32 (engine/precision.py)."""

    auto = "auto"
    none = "none"
    fp32 = "fp32"  # another name for none
    bf16 = "bf16"
    fp16 = "fp16"


class CompileMode(str, Enum):
    """torch.compile's modes: reduce_overhead adds CUDA graphs (one launch for a whole step's small
    kernels, such as GMConv's mask operations), max_autotune also searches kernel configurations."""

    default = "default"
    reduce_overhead = "reduce-overhead"
    max_autotune = "max-autotune"
    max_autotune_no_cudagraphs = "max-autotune-no-cudagraphs"


class NonFinite(str, Enum):
    stop = "stop"  # stop the run; checkpoints keep the last finite state (engine/nonfinite.py)
    skip = "skip"  # skip the step's update and count it, up to trainer.nonfinite_limit steps


class LrScaling(str, Enum):
    none = "none"
    linear = "linear"  # lr × global batch / 256, the ImageNet convention (Goyal et al., 2017)
    sqrt = "sqrt"  # lr × sqrt(global batch / 256), timm's choice for adaptive optimizers (LAMB, AdamW)


class SchedName(str, Enum):
    cosine = "cosine"
    step = "step"
    multistep = "multistep"
    poly = "poly"
    none = "none"


class Loss(str, Enum):
    ce = "ce"  # cross-entropy (soft-target cross-entropy under mixup/cutmix)
    bce = "bce"  # binary cross-entropy per class, as in "ResNet strikes back" (Wightman et al., 2021)


class BestOf(str, Enum):
    model = "model"  # best.pt keeps the trained weights at their best val top-1
    ema = "ema"  # best.pt keeps the EMA weights at the EMA's best val top-1


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd (momentum) | adamw | any other timm optimizer name
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    lr_scaling: LrScaling = LrScaling.none
    # GMConv's σ learns at lr × sigma_lr_scale (its own parameter group, never weight-decayed)
    sigma_lr_scale: float = 1.0
    # conv=deformable: the offset branch learns at lr × offset_lr_scale (the DCN papers' β). 0.1: at 1.0 a ResNet-20
    # on the cluttered digits diverged when the warmup reached lr 0.1 (loss 135 in epoch 2, 15.7 % top-1); at
    # 0.1 it trained to 91.7 % (one seed each, docs/STUDY.md)
    offset_lr_scale: float = 0.1
    # timm models: lr × layer_decay^(depth from the head) per layer group (BEiT); null: off
    layer_decay: Optional[float] = None
    kwargs: dict[str, Any] = field(default_factory=dict)  # more timm optimizer arguments (e.g. betas)


@dataclass
class SchedConfig:
    name: SchedName = SchedName.cosine
    # Linear warmup from warmup_lr, part of the schedule's length. One epoch by default: without it lr 0.1
    # from the first step blows up deep nets (ResNet-18/50 on the digits end at chance, docs/BACKBONES.md);
    # the published recipes (configs/experiment/) set their own, mostly 0.
    warmup_epochs: float = 1.0
    warmup_lr: float = 1e-5  # learning rate at the first warmup step
    min_lr: float = 0.0  # cosine: final learning rate
    milestones: list[int] = field(default_factory=list)  # multistep: epochs at which lr × gamma
    gamma: float = 0.1  # multistep, step
    decay_epochs: Optional[float] = None  # step: lr × gamma every this many epochs
    power: float = 1.0  # poly: lr falls as (1 - t/T)^power towards min_lr


@dataclass
class TrainerConfig:
    epochs: int = 10
    device: Device = Device.auto
    # auto: bf16 autocast where the device computes bf16 in hardware, fp32 elsewhere; the run's config records
    # the choice (engine/precision.py)
    amp: Amp = Amp.auto
    channels_last: Any = "auto"  # auto (on with bf16/fp16 autocast), true or false
    compile: bool = False
    compile_mode: CompileMode = CompileMode.default  # with compile=true
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over all processes (SyncBatchNorm)
    grad_clip: Optional[float] = None  # max global gradient norm; null turns clipping off
    label_smoothing: float = 0.0
    loss: Loss = Loss.ce
    bce_target_threshold: Optional[float] = None  # loss=bce: targets above it become 1, the rest 0 (timm)
    # optimizer steps average the gradients of this many batches: the same update as one batch this many times larger
    accumulate_steps: int = 1
    ema_decay: Optional[float] = (
        None  # a moving average of the weights (timm ModelEmaV3), evaluated each epoch; null: off
    )
    ema_warmup: bool = False  # decay grows as 1 - (1 + step)^(-2/3) up to ema_decay (timm), so early weights fade fast
    best_of: BestOf = BestOf.model  # which weights best.pt keeps (and ranks by val top-1)
    eval_every: int = 1  # epochs; the last epoch is always evaluated
    checkpoint_every_steps: Optional[int] = None  # also save last.pt every this many steps
    log_every_steps: int = 20  # step-level TensorBoard scalars, and a progress line when not on a terminal
    progress: bool = True  # tqdm bars on a terminal
    deterministic: bool = False
    # short runs: batches per epoch, a count (4) or a fraction of the epoch (0.1; Lightning's rule); null: all
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    # TensorBoard images (sigma_mask/<layer>) of each GMConv layer's masks at its smallest, median and
    # largest σ at every epoch's end, beside the σ curves: receptive fields seen narrowing or widening
    log_masks: bool = False
    # a NaN/inf loss or gradient: stop (default) or skip the step (one host sync per step), see engine/nonfinite.py
    nonfinite: NonFinite = NonFinite.stop
    nonfinite_limit: int = 50  # nonfinite=skip: stop once more steps than this were skipped in the run


@dataclass
class RecipeConfig:
    """Where a run's defaults come from: the recipe its data brings and a model's exception to it on that data
    (configs/recipe/, optim/<data>.yaml, sched/<data>.yaml, optim_exception/, model_exception/; docs/RECIPES.md).
    Set by those files alone; shown at start-up and kept in results.json's config."""

    name: str = "none"
    source: str = ""
    optim_exception: Optional[str] = None
    model_exception: Optional[str] = None


@dataclass
class TensorBoardLogger:
    """TensorBoard event files in the run folder's tb/ (engine/tracking.py)."""


@dataclass
class MlflowLogger:
    """An MLflow run per run folder (engine/mlflow_run.py); a resume continues it."""

    tracking_uri: Optional[str] = None  # null: sqlite:///<run folder, or a sweep's folder>/mlflow.db
    experiment: Optional[str] = None  # null: the sweep folder's name, or the data's name for a single run
    artifacts: bool = False  # true: a completed session uploads best.pt and the resolved config


class WandbMode(str, Enum):
    offline = "offline"  # written under the run folder's wandb/; `wandb sync` uploads it later
    online = "online"  # logged live (after `wandb login`)


@dataclass
class WandbLogger:
    """A Weights & Biases run per run folder (engine/wandb_run.py); a resume continues it."""

    project: str = "gmconv"
    entity: Optional[str] = None  # null: the default entity of the W&B account
    mode: WandbMode = WandbMode.offline
    group: Optional[str] = None  # null: the sweep folder's name for a sweep's jobs, none for a single run
    tags: list[str] = field(default_factory=list)
    artifacts: bool = False  # true: a completed session uploads best.pt and the resolved config (a model artifact)


@dataclass
class LoggerConfig:
    """Where the curves go besides metrics.csv (always written): logger=[tensorboard,mlflow,wandb] picks them."""

    tensorboard: Optional[TensorBoardLogger] = None
    mlflow: Optional[MlflowLogger] = None
    wandb: Optional[WandbLogger] = None


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    conv: ConvConfig = field(default_factory=ConvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    # a run folder (or its checkpoint) to continue in that folder; "auto": this run folder's last.pt if any
    resume: Optional[str] = None
    eval_only: bool = False
    ckpt: Optional[str] = None  # eval_only: a run folder (its best.pt, else last.pt) or a checkpoint file
    # what train.py returns to a sweeper that optimises (hparams_search=): a number of results.json
    optimized_metric: str = "best_top1"


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def register_configs() -> None:
    """Make the schema known to Hydra; call before composing (train.py does, on import)."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def compose_config(*overrides: str, hydra: bool = False) -> DictConfig:
    """configs/train.yaml with ``overrides``, composed as train.py composes it (``hydra``: with Hydra's own node),
    for the tools, benchmarks and tests that need a run's config without running train.py."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)


def validate(cfg: DictConfig, *, sweep_job: bool = False) -> list[str]:
    """Every check of a composed config, before any data or model is built; ConfigError names the key.

    In a sweep's job (``sweep_job``), a setting the job's options ignore (IgnoredSetting) is set back to its
    default in ``cfg`` instead, and the returned lines say which; a single run refuses it."""
    ignored: list[str] = []
    while True:
        try:
            _validate(cfg)
            return ignored
        except IgnoredSetting as err:
            if not sweep_job or OmegaConf.select(cfg, err.key) == err.default:
                raise
            ignored.append(f"{err.key} ignored by this job of the sweep (it runs with {plain(err.default)}): {err}")
            OmegaConf.update(cfg, err.key, err.default)


def _validate(cfg: DictConfig) -> None:
    _check_known_keys(cfg)
    _check_ranges(cfg)
    channels_last_setting(cfg.trainer.channels_last)
    check_data_config(cfg.data)
    parse_small_input(cfg.model.small_input)
    _check_conv(cfg.conv)
    _check_settings_that_need_sigma(cfg)
    _check_optim(cfg.optim)
    _check_layer_decay(cfg)
    _check_sched(cfg.sched)
    if not cfg.trainer.compile and CompileMode(cfg.trainer.compile_mode) is not TrainerConfig.compile_mode:
        raise IgnoredSetting(
            f"trainer.compile_mode={CompileMode(cfg.trainer.compile_mode).name} has no effect without "
            "trainer.compile=true; add trainer.compile=true or remove it",
            "trainer.compile_mode",
            TrainerConfig.compile_mode,
        )
    _check_trainer_recipe(cfg.trainer)
    _check_optimized_metric(cfg)
    if cfg.logger.mlflow is not None and importlib.util.find_spec("mlflow") is None:
        raise ConfigError('logger=[...,mlflow] needs MLflow: pip install -e ".[mlflow]"')
    if cfg.logger.wandb is not None and importlib.util.find_spec("wandb") is None:
        raise ConfigError('logger=[...,wandb] needs Weights & Biases: pip install -e ".[wandb]"')
    if cfg.eval_only and cfg.resume:
        raise ConfigError(
            "resume= continues training and cannot be combined with eval_only=true; "
            "evaluate a run with eval_only=true ckpt=<run folder>"
        )


OPTIMIZABLE = ("best_top1", "top1", "top5", "loss", "ema_top1", "ema_top5", "ema_loss")


def _check_optimized_metric(cfg: DictConfig) -> None:
    if cfg.optimized_metric not in OPTIMIZABLE:
        raise ConfigError(
            f"optimized_metric={cfg.optimized_metric} is not a number of results.json; choose one of "
            f"{', '.join(OPTIMIZABLE)}"
        )
    if cfg.optimized_metric.startswith("ema_") and cfg.trainer.ema_decay is None:
        raise ConfigError(
            f"optimized_metric={cfg.optimized_metric} needs an EMA; set trainer.ema_decay (e.g. 0.9998) or "
            "optimise best_top1"
        )


def unknown_key(key: str) -> str:
    """The one line for a key the schema does not have, with the settings it most likely meant: the same last
    part under another prefix (``epochs`` → ``trainer.epochs``), else a close spelling of that part."""
    known = list(flatten(OmegaConf.to_container(OmegaConf.structured(TrainConfig), enum_to_str=True)))
    last = key.rsplit(".", 1)[-1]
    by_last: dict[str, list[str]] = {}
    for k in known:
        by_last.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    meant = by_last.get(last) or [
        k for tail in difflib.get_close_matches(last, list(by_last), n=2, cutoff=0.75) for k in by_last[tail]
    ]
    prefix = key.rsplit(".", 1)[0] if "." in key else ""
    meant = sorted(meant, key=lambda k: not k.startswith(prefix + "."))[:3]
    hint = f"did you mean {' or '.join(meant)}?" if meant else "remove it or fix its spelling"
    return f"{key} is not a setting of this framework; {hint} (python train.py --cfg job lists every key)"


def settings_without_effect(cfg: DictConfig) -> list[str]:
    """Valid settings that cannot take effect in the planned epochs, one warning line each: the run is
    allowed (a short trial of a long recipe is common), but it does not do what the setting says."""
    epochs, sched, name = cfg.trainer.epochs, cfg.sched, SchedName(cfg.sched.name)
    lines = []
    late = [m for m in sched.milestones if m >= epochs]
    if name is SchedName.multistep and late:
        lines.append(
            f"sched.milestones={list(sched.milestones)}: epoch {', '.join(map(str, late))} "
            f"{'is' if len(late) == 1 else 'are'} not before trainer.epochs={epochs}, so the lr never "
            "steps down there"
        )
    if name is SchedName.step and sched.decay_epochs >= epochs:
        lines.append(f"sched.decay_epochs={sched.decay_epochs} with trainer.epochs={epochs}: the lr never decays")
    if 0 < epochs <= sched.warmup_epochs:
        lines.append(
            f"sched.warmup_epochs={sched.warmup_epochs} with trainer.epochs={epochs}: the run ends before "
            "its warmup does, so the lr never reaches optim.lr"
        )
    return lines


def _check_known_keys(cfg: DictConfig) -> None:
    """Keys added with ``+`` (Hydra's own suggestion for a misspelt key) bypass the schema: catch them."""
    try:
        OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.to_container(cfg, enum_to_str=True))
    except (ConfigKeyError, ValidationError) as err:
        raise ConfigError(unknown_key(getattr(err, "full_key", None) or first_line(err))) from err


def _check_ranges(cfg: DictConfig) -> None:
    positive_or_null = "a positive integer or null"
    checks = [
        (cfg.trainer.epochs > 0, "trainer.epochs", cfg.trainer.epochs, "a positive integer"),
        (cfg.optim.lr > 0, "optim.lr", cfg.optim.lr, "a positive number"),
        (cfg.optim.weight_decay >= 0, "optim.weight_decay", cfg.optim.weight_decay, ">= 0"),
        (cfg.optim.sigma_lr_scale >= 0, "optim.sigma_lr_scale", cfg.optim.sigma_lr_scale, ">= 0"),
        (cfg.optim.offset_lr_scale >= 0, "optim.offset_lr_scale", cfg.optim.offset_lr_scale, ">= 0"),
        (cfg.trainer.eval_every > 0, "trainer.eval_every", cfg.trainer.eval_every, "a positive integer"),
        (cfg.trainer.log_every_steps > 0, "trainer.log_every_steps", cfg.trainer.log_every_steps, "a positive integer"),
        (0 <= cfg.trainer.label_smoothing < 1, "trainer.label_smoothing", cfg.trainer.label_smoothing, "in [0, 1)"),
        (
            cfg.trainer.grad_clip is None or cfg.trainer.grad_clip > 0,
            "trainer.grad_clip",
            cfg.trainer.grad_clip,
            "a positive number or null",
        ),
        (
            _batch_limit_ok(cfg.trainer.limit_train_batches),
            "trainer.limit_train_batches",
            cfg.trainer.limit_train_batches,
            "a positive number of batches, a fraction of the epoch in (0, 1], or null",
        ),
        (
            _batch_limit_ok(cfg.trainer.limit_val_batches),
            "trainer.limit_val_batches",
            cfg.trainer.limit_val_batches,
            "a positive number of batches, a fraction of the epoch in (0, 1], or null",
        ),
        (
            cfg.trainer.checkpoint_every_steps is None or cfg.trainer.checkpoint_every_steps > 0,
            "trainer.checkpoint_every_steps",
            cfg.trainer.checkpoint_every_steps,
            positive_or_null,
        ),
        (cfg.trainer.nonfinite_limit > 0, "trainer.nonfinite_limit", cfg.trainer.nonfinite_limit, "a positive integer"),
        (cfg.sched.warmup_epochs >= 0, "sched.warmup_epochs", cfg.sched.warmup_epochs, ">= 0"),
        (cfg.seed >= 0, "seed", cfg.seed, "a non-negative integer"),
        (not cfg.eval_only or cfg.ckpt, "ckpt", cfg.ckpt, "a run folder or checkpoint file when eval_only=true"),
        (
            cfg.eval_only or cfg.ckpt is None,
            "ckpt",
            cfg.ckpt,
            "null unless eval_only=true (to continue a run use resume=; to start from weights, model.pretrained=)",
        ),
    ]
    for ok, key, value, expected in checks:
        if not ok:
            raise ConfigError(f"{key}={value} is invalid: expected {expected}")
    if cfg.trainer.nonfinite != "skip" and cfg.trainer.nonfinite_limit != TrainerConfig.nonfinite_limit:
        raise IgnoredSetting(
            f"trainer.nonfinite_limit={cfg.trainer.nonfinite_limit} is invalid: expected its default: it limits "
            "trainer.nonfinite=skip only",
            "trainer.nonfinite_limit",
            TrainerConfig.nonfinite_limit,
        )


def _batch_limit_ok(limit: Any) -> bool:
    if limit is None:
        return True
    if isinstance(limit, bool) or not isinstance(limit, (int, float)):
        return False
    return limit > 0 if isinstance(limit, int) else 0 < limit <= 1


def batches_in(limit: Any, batches: int) -> int:
    """How many of an epoch's ``batches`` a ``trainer.limit_*_batches`` setting lets run: all (null), at most a
    count (an int), or a fraction of them, at least one (a float)."""
    if limit is None:
        return batches
    if isinstance(limit, float):
        return max(1, int(limit * batches))
    return min(limit, batches)


def _check_conv(conv: DictConfig) -> None:
    kind = ConvType(conv.type)
    unused = unused_options(conv)
    if unused:
        uses = "no conv option" if kind is ConvType.standard else "other options"
        key = unused[0].partition("=")[0]
        raise IgnoredSetting(
            f"{unused[0]} has no effect: conv={conv.name} (conv.type={kind.value}) uses {uses}; "
            "remove it or choose the conv type that reads it (configs/conv/)",
            key,
            plain(getattr(ConvConfig(), key.removeprefix("conv."))),
        )
    if kind is ConvType.gmconv:
        try:
            gmconv_options(conv).validate()
        except ValueError as err:
            raise ConfigError(f"conv.{err}") from err
    elif kind is not ConvType.standard:
        check_rival_options(conv)


def _check_settings_that_need_sigma(cfg: DictConfig) -> None:
    """σ's learning rate and the mask images mean nothing without a (learned, static) Gaussian mask."""
    gmconv = ConvType(cfg.conv.type) is ConvType.gmconv
    if not (gmconv and cfg.conv.learnable_sigma) and cfg.optim.sigma_lr_scale != OptimConfig.sigma_lr_scale:
        raise IgnoredSetting(
            f"optim.sigma_lr_scale={cfg.optim.sigma_lr_scale} has no effect: conv={cfg.conv.name} "
            "learns no σ; remove it or choose a GMConv conv with a learnable σ",
            "optim.sigma_lr_scale",
            OptimConfig.sigma_lr_scale,
        )
    if cfg.trainer.log_masks and not (gmconv and not cfg.conv.dynamic):
        why = "predicts σ for each image, so no layer has one mask" if cfg.conv.dynamic else "has no Gaussian mask"
        raise IgnoredSetting(
            f"trainer.log_masks=true has no effect: conv={cfg.conv.name} {why}; "
            "remove it or choose conv=gmconv (or a static variant)",
            "trainer.log_masks",
            False,
        )
    if ConvType(cfg.conv.type) is not ConvType.deformable and cfg.optim.offset_lr_scale != OptimConfig.offset_lr_scale:
        raise IgnoredSetting(
            f"optim.offset_lr_scale={cfg.optim.offset_lr_scale} has no effect: conv={cfg.conv.name} has "
            "no offsets; remove it or choose conv=deformable",
            "optim.offset_lr_scale",
            OptimConfig.offset_lr_scale,
        )


def _check_optim(optim: DictConfig) -> None:
    if optim.name != "sgd" and optim.name not in list_optimizers():
        raise ConfigError(
            f"optim.name={optim.name} is not an optimizer timm knows; use sgd, adamw or a name from "
            "timm.optim.list_optimizers()"
        )
    if optim.name != "sgd":
        defaults = OptimConfig()
        for key in ("momentum", "nesterov"):
            if optim[key] != getattr(defaults, key):
                raise IgnoredSetting(
                    f"optim.{key}={optim[key]} is used by optim=sgd only, not optim.name={optim.name}; "
                    f"pass it through optim.kwargs if that optimizer takes it, or remove it",
                    f"optim.{key}",
                    getattr(defaults, key),
                )


def _check_layer_decay(cfg: DictConfig) -> None:
    layer_decay = cfg.optim.layer_decay
    if layer_decay is None:
        return
    if not 0 < layer_decay <= 1:
        raise ConfigError(f"optim.layer_decay={layer_decay} is invalid: expected a number in (0, 1] or null")
    if ModelSource(cfg.model.source) is not ModelSource.timm:
        raise ConfigError(
            f"optim.layer_decay={layer_decay} needs a timm model's layer groups (group_matcher), and "
            f"model={cfg.model.name} is a {ModelSource(cfg.model.source).value} model; remove it or use "
            "model=timm model.name=<timm model>"
        )


_SCHED_ONLY = {
    "milestones": ("multistep",),
    "gamma": ("multistep", "step"),
    "min_lr": ("cosine", "poly"),
    "decay_epochs": ("step",),
    "power": ("poly",),
}


def _check_sched(sched: DictConfig) -> None:
    defaults = SchedConfig()
    name = SchedName(sched.name).value
    for key, owners in _SCHED_ONLY.items():
        if name not in owners and plain(sched[key]) != getattr(defaults, key):
            raise IgnoredSetting(
                f"sched.{key}={plain(sched[key])} is used by sched={'|'.join(owners)} only, not "
                f"sched={name}; remove it or choose that schedule",
                f"sched.{key}",
                getattr(defaults, key),
            )
    if name == "step" and not (sched.decay_epochs or 0) > 0:
        raise ConfigError(
            f"sched.decay_epochs={sched.decay_epochs} is invalid: sched=step needs the epochs between "
            "two lr × gamma steps, e.g. sched.decay_epochs=30"
        )
    if sched.power <= 0:
        raise ConfigError(f"sched.power={sched.power} is invalid: expected a positive number")
    milestones = list(sched.milestones)
    if name == "multistep" and (not milestones or milestones != sorted(set(milestones)) or milestones[0] <= 0):
        raise ConfigError(
            f"sched.milestones={milestones} is invalid: sched=multistep needs positive epochs "
            "in increasing order, e.g. [30,60]"
        )


def _check_trainer_recipe(trainer: DictConfig) -> None:
    """Accumulation, loss and EMA settings: ranges, and the ones that only mean something together."""
    if trainer.accumulate_steps < 1:
        raise ConfigError(
            f"trainer.accumulate_steps={trainer.accumulate_steps} is invalid: expected a positive "
            "integer (1: an optimizer step per batch)"
        )
    threshold = trainer.bce_target_threshold
    if threshold is not None and Loss(trainer.loss) is not Loss.bce:
        raise IgnoredSetting(
            f"trainer.bce_target_threshold={threshold} is used by trainer.loss=bce only; remove it "
            "or set trainer.loss=bce",
            "trainer.bce_target_threshold",
            None,
        )
    if threshold is not None and not 0 <= threshold < 1:
        raise ConfigError(f"trainer.bce_target_threshold={threshold} is invalid: expected a number in [0, 1) or null")
    decay = trainer.ema_decay
    if decay is not None and not 0 < decay < 1:
        raise ConfigError(
            f"trainer.ema_decay={decay} is invalid: expected a number in (0, 1) such as 0.9998, or null for no EMA"
        )
    if decay is None and trainer.ema_warmup:
        raise IgnoredSetting(
            "trainer.ema_warmup=true has no effect without an EMA; set trainer.ema_decay or remove it",
            "trainer.ema_warmup",
            False,
        )
    if decay is None and BestOf(trainer.best_of) is BestOf.ema:
        raise ConfigError(
            "trainer.best_of=ema needs an EMA; set trainer.ema_decay (e.g. 0.9998) or use trainer.best_of=model"
        )


# Settings that define what a run trains: changing one on resume would continue another experiment
# (or break the saved position inside an epoch), so it is refused rather than silently mixed.
FIXED_ON_RESUME = (
    "model",
    "conv",
    "data.name",
    "data.image_size",
    "data.batch_size",
    "data.num_classes",
    "data.train_size",
    "data.val_size",
    "data.canvas",
    "data.digit_size",
    "data.clutter",
    "data.generator_seed",
    "optim.name",
    "seed",
    "trainer.limit_train_batches",
    "trainer.accumulate_steps",
    "trainer.best_of",
)
_NOT_SETTINGS = ("resume", "eval_only", "ckpt")


def resume_changes(saved: dict[str, Any], cfg: DictConfig) -> list[str]:
    """The settings that differ from the checkpoint's, as "key old → new" lines to log.

    A key the checkpoint lacks (a setting added since) counts only when it is not at its default.
    Everything else a resumed run applies for real (more epochs re-plan the schedule from where it
    stands, a new lr or weight decay takes effect at once); a setting in FIXED_ON_RESUME is refused.
    """
    known = flatten(saved)
    defaults = flatten(OmegaConf.to_container(OmegaConf.structured(TrainConfig), enum_to_str=True))
    # a setting added to the framework after the run was saved is absent from its checkpoint: at its default, the
    # run computes as it did
    changes = [
        (key, old, new)
        for key, old, new in setting_changes(saved, cfg)
        if key.split(".")[0] not in _NOT_SETTINGS and (key in known or new != defaults.get(key))
    ]
    for key, old, new in changes:
        if any(key == fixed or key.startswith(fixed + ".") for fixed in FIXED_ON_RESUME):
            raise ConfigError(
                f"{key}={new} differs from the resumed run's {key}={old}, and it cannot change on "
                "resume; resume without it, or start a new run from the weights with "
                "model.pretrained=<run folder>/checkpoints/last.pt"
            )
    return [f"{key} {old} → {new}" for key, old, new in changes]


def setting_changes(
    before: dict[str, Any] | DictConfig, now: dict[str, Any] | DictConfig
) -> list[tuple[str, Any, Any]]:
    """``(key, before, now)`` for every flattened setting whose value differs (None where one lacks it), by key."""
    flat_before, flat_now = (
        flatten(OmegaConf.to_container(c, resolve=True, enum_to_str=True) if isinstance(c, DictConfig) else c)
        for c in (before, now)
    )
    return [
        (key, flat_before.get(key), flat_now.get(key))
        for key in sorted(flat_before.keys() | flat_now.keys())
        if flat_before.get(key) != flat_now.get(key)
    ]


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` → ``{"optim.lr": 0.1}``; lists become tuples, so settings compare and hash."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = _hashable(value)
    return flat


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value
