"""Every check of the data settings, in one place, run before anything is built."""

from __future__ import annotations

from dataclasses import fields

from .config import DataConfig
from .registry import AUGMENTATIONS, BUILDERS

DEFAULTS = {field.name: field.default for field in fields(DataConfig)}
POSITIVE = ("batch_size", "eval_batch_size", "image_size", "val_resize", "test_image_size", "num_classes",
            "train_size", "val_size")


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
    _check_augmentation(cfg)
    _check_centre_crop(cfg)
    _check_mixing(cfg)


def _check_augmentation(cfg: DataConfig) -> None:
    if not cfg.augment:
        for key in AUGMENTATIONS:
            if getattr(cfg, key) != DEFAULTS[key]:
                raise ValueError(f"data.{key}={getattr(cfg, key)} has no effect with data.augment=false; "
                                 "remove it or set data.augment=true")
    if cfg.color_jitter < 0:
        raise ValueError(f"data.color_jitter={cfg.color_jitter} is invalid: set >= 0 (0.4 is timm's usual; 0 is off)")
    if not 0 <= cfg.random_erasing <= 1:
        raise ValueError(f"data.random_erasing={cfg.random_erasing} is invalid: set a probability in [0, 1] "
                         "(0.25 is timm's usual; 0 is off)")
    if cfg.auto_augment is not None:
        from .transforms import augmentation_policy  # torchvision and timm: imported only when a policy is set

        augmentation_policy(cfg.auto_augment, cfg.image_size, (0.5, 0.5, 0.5))


def _check_centre_crop(cfg: DataConfig) -> None:
    if not 0 < cfg.crop_pct <= 1:
        raise ValueError(f"data.crop_pct={cfg.crop_pct} is invalid: set a fraction in (0, 1] "
                         f"(the default {DEFAULTS['crop_pct']} resizes 224 px crops from 256 px)")
    if cfg.val_resize is not None and cfg.crop_pct != DEFAULTS["crop_pct"]:
        raise ValueError(f"data.val_resize={cfg.val_resize} and data.crop_pct={cfg.crop_pct} both set the validation "
                         "resize; keep one of them")
    test_size = cfg.test_image_size or cfg.image_size
    if cfg.val_resize is not None and cfg.val_resize < test_size:
        raise ValueError(f"data.val_resize={cfg.val_resize} is smaller than the {test_size} px validation crop; "
                         f"set data.val_resize >= {test_size} or use data.crop_pct")


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
