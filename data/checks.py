"""Every check of the data settings, in one place, run before anything is built."""

from __future__ import annotations

from dataclasses import fields

from .config import DataConfig
from .registry import BUILDERS

DEFAULTS = {field.name: field.default for field in fields(DataConfig)}
POSITIVE = ("batch_size", "eval_batch_size", "image_size", "val_resize", "num_classes", "train_size", "val_size")


def _shown(value: object) -> str:
    """As typed on the command line: ``true``, not ``True``."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_data_config(cfg: DataConfig) -> None:
    """Raise a one-line ValueError naming the first invalid ``data.*`` setting and its fix.

    Besides ranges, it rejects a dataset-specific setting that the chosen dataset does not read
    (``data.root`` for digits, ``data.num_classes`` for CIFAR, …): the run would ignore it silently
    and not be the run the command line describes. Which dataset reads what is ``BUILDERS``' ``takes``.
    """
    if cfg.name not in BUILDERS:
        raise ValueError(f"data.name={cfg.name!r} is unknown: choose one of {', '.join(sorted(BUILDERS))}")
    for key in sorted({key for builder in BUILDERS.values() for key in builder.takes}):
        value = getattr(cfg, key)
        if key not in BUILDERS[cfg.name].takes and value != DEFAULTS[key]:
            users = [f"data={name}" for name, builder in sorted(BUILDERS.items()) if key in builder.takes]
            verb = "takes" if len(users) == 1 else "take"
            raise ValueError(f"data.{key}={_shown(value)} is not used by data={cfg.name} (only {', '.join(users)} "
                             f"{verb} it); remove the override")
    for key in POSITIVE:
        value = getattr(cfg, key)
        if value is not None and value <= 0:
            fix = "a positive integer" + (" or null for the default" if DEFAULTS[key] is None else "")
            raise ValueError(f"data.{key}={value} is invalid: set {fix}")
    if cfg.num_workers < 0:
        raise ValueError(f"data.num_workers={cfg.num_workers} is invalid: set 0 (load in the main process) or more")
    _check_mixing(cfg)


def _check_mixing(cfg: DataConfig) -> None:
    """Mixup/CutMix: non-negative alphas, probabilities in [0, 1], and an even batch (timm mixes x with x flipped)."""
    for key in ("mixup_alpha", "cutmix_alpha"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"data.{key}={getattr(cfg, key)} is invalid: set 0 (off) or a positive number such as 0.2")
    for key in ("mix_prob", "mix_switch_prob"):
        if not 0 <= getattr(cfg, key) <= 1:
            raise ValueError(f"data.{key}={getattr(cfg, key)} is invalid: set a probability in [0, 1]")
    mixing = cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0
    for key in ("mix_prob", "mix_switch_prob"):
        if not mixing and getattr(cfg, key) != DEFAULTS[key]:
            raise ValueError(f"data.{key}={getattr(cfg, key)} has no effect without mixing; set data.mixup_alpha "
                             "or data.cutmix_alpha, or remove it")
    if mixing and cfg.batch_size % 2:
        raise ValueError(f"data.batch_size={cfg.batch_size} is odd, and mixup/cutmix pairs each image with another "
                         "of the batch; set an even data.batch_size")
