"""Every check of the data settings, in one place, run before anything is built."""

from __future__ import annotations

from dataclasses import fields

from engine.errors import ConfigError, IgnoredSetting

from .config import DataConfig
from .decoder_choice import resolve_decoder
from .registry import AUGMENTATIONS, BUILDERS
from .text import as_typed

DEFAULTS = {field.name: field.default for field in fields(DataConfig)}
# the canvas before the image size, which its config sets from it: the error names what was typed
POSITIVE = (
    "batch_size",
    "eval_batch_size",
    "canvas",
    "image_size",
    "val_resize",
    "test_image_size",
    "num_classes",
    "train_size",
    "val_size",
    "digit_size",
)


def check_data_config(data: DataConfig) -> None:
    """Raise a one-line ConfigError naming the first invalid ``data.*`` setting and its fix."""
    if data.name not in BUILDERS:
        raise ConfigError(f"data.name={data.name!r} is unknown: choose one of {', '.join(sorted(BUILDERS))}")
    _check_read_by_the_dataset(data)
    _check_counts(data)
    _check_canvas(data)
    _check_augmentation(data)
    _check_centre_crop(data)
    _check_mixing(data)
    if "decoder" in BUILDERS[data.name].takes:
        resolve_decoder(data.decoder)  # an unknown name, or simplejpeg not installed


def _check_read_by_the_dataset(data: DataConfig) -> None:
    """A dataset-specific setting that the chosen dataset does not read (``data.root`` for digits,
    ``data.num_classes`` for CIFAR, …) is refused: the run would ignore it silently and not be the run
    the command line describes. Which dataset reads what is ``BUILDERS``' ``takes``."""
    specific = sorted({key for builder in BUILDERS.values() for key in builder.takes})
    for key in specific:
        value = getattr(data, key)
        if key in BUILDERS[data.name].takes or value == DEFAULTS[key]:
            continue
        users = [f"data={name}" for name, builder in sorted(BUILDERS.items()) if key in builder.takes]
        raise IgnoredSetting(
            f"data.{key}={as_typed(value)} is not used by data={data.name} (only {', '.join(users)} "
            f"{'takes' if len(users) == 1 else 'take'} it); remove the override",
            f"data.{key}",
            DEFAULTS[key],
        )


def _check_counts(data: DataConfig) -> None:
    for key in POSITIVE:
        value = getattr(data, key)
        if value is not None and value <= 0:
            fix = "a positive integer" + (" or null for the default" if DEFAULTS[key] is None else "")
            raise ConfigError(f"data.{key}={value} is invalid: set {fix}")
    if data.num_workers < 0:
        raise ConfigError(f"data.num_workers={data.num_workers} is invalid: set 0 (load in the main process) or more")


def _check_canvas(data: DataConfig) -> None:
    """A digits canvas dataset needs every size that draws it (its config sets them), a digit that fits the
    canvas, and images that are the canvas."""
    takes = BUILDERS[data.name].takes
    if "canvas" not in takes:
        return
    for key in ("canvas", "digit_size", "train_size", "val_size", "clutter"):
        if key in takes and getattr(data, key) is None:
            raise ConfigError(
                f"data.{key} is null, and data={data.name} draws its images with it; set it "
                f"(configs/data/{data.name}.yaml has the default)"
            )
    if data.clutter is not None and data.clutter < 0:
        raise ConfigError(f"data.clutter={data.clutter} is invalid: set 0 (no clutter) or more fragments per canvas")
    if data.digit_size > data.canvas:
        raise ConfigError(
            f"data.digit_size={data.digit_size} does not fit on the {data.canvas} px canvas; set "
            f"data.digit_size <= {data.canvas} or a larger data.canvas"
        )
    if data.image_size != data.canvas:
        raise ConfigError(
            f"data.image_size={data.image_size} differs from data.canvas={data.canvas}: the images are "
            f"the canvas; set data.canvas={data.image_size} instead (data.image_size follows it)"
        )


def _check_augmentation(data: DataConfig) -> None:
    if not data.augment:
        for key in AUGMENTATIONS:
            if getattr(data, key) != DEFAULTS[key]:
                raise IgnoredSetting(
                    f"data.{key}={getattr(data, key)} has no effect with data.augment=false; "
                    "remove it or set data.augment=true",
                    f"data.{key}",
                    DEFAULTS[key],
                )
    if data.color_jitter < 0:
        raise ConfigError(f"data.color_jitter={data.color_jitter} is invalid: set >= 0 (0.4 is timm's usual; 0 is off)")
    if not 0 <= data.random_erasing <= 1:
        raise ConfigError(
            f"data.random_erasing={data.random_erasing} is invalid: set a probability in [0, 1] "
            "(0.25 is timm's usual; 0 is off)"
        )
    if data.auto_augment is not None:
        from .transforms import augmentation_policy  # torchvision and timm: imported only when a policy is set

        augmentation_policy(data.auto_augment, data.image_size, (0.5, 0.5, 0.5))


def _check_centre_crop(data: DataConfig) -> None:
    if not 0 < data.crop_pct <= 1:
        raise ConfigError(
            f"data.crop_pct={data.crop_pct} is invalid: set a fraction in (0, 1] "
            f"(the default {DEFAULTS['crop_pct']} resizes 224 px crops from 256 px)"
        )
    if data.val_resize is not None and data.crop_pct != DEFAULTS["crop_pct"]:
        raise ConfigError(
            f"data.val_resize={data.val_resize} and data.crop_pct={data.crop_pct} both set the "
            "validation resize; keep one of them"
        )
    test_size = data.test_image_size or data.image_size
    if data.val_resize is not None and data.val_resize < test_size:
        raise ConfigError(
            f"data.val_resize={data.val_resize} is smaller than the {test_size} px validation crop; "
            f"set data.val_resize >= {test_size} or use data.crop_pct"
        )


def _check_mixing(data: DataConfig) -> None:
    """Mixup/CutMix: non-negative alphas, probabilities in [0, 1], and an even batch (timm mixes x with x flipped)."""
    for key in ("mixup_alpha", "cutmix_alpha"):
        if getattr(data, key) < 0:
            raise ConfigError(
                f"data.{key}={getattr(data, key)} is invalid: set 0 (off) or a positive number such as 0.2"
            )
    for key in ("mix_prob", "mix_switch_prob"):
        if not 0 <= getattr(data, key) <= 1:
            raise ConfigError(f"data.{key}={getattr(data, key)} is invalid: set a probability in [0, 1]")
    mixing = data.mixup_alpha > 0 or data.cutmix_alpha > 0
    for key in ("mix_prob", "mix_switch_prob"):
        if not mixing and getattr(data, key) != DEFAULTS[key]:
            raise IgnoredSetting(
                f"data.{key}={getattr(data, key)} has no effect without mixing; set data.mixup_alpha "
                "or data.cutmix_alpha, or remove it",
                f"data.{key}",
                DEFAULTS[key],
            )
    if mixing and data.batch_size % 2:
        raise ConfigError(
            f"data.batch_size={data.batch_size} is odd, and mixup/cutmix pairs each image with another "
            "of the batch; set an even data.batch_size"
        )
