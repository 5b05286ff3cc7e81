"""Per-sample transform pipelines, built here for every dataset so that all share one order:
geometry (crop, flip) → augmentation policy → colour jitter → float, normalised → random erasing."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from timm.data import auto_augment as timm_aa
from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
from torchvision.transforms import v2

from engine.errors import ConfigError

from .batch_augment import BatchAugment
from .config import DataConfig

# torchvision's policies work on uint8 tensors and PIL images alike.
TORCHVISION_POLICIES: dict[str, Callable[[], v2.Transform]] = {
    "randaugment": v2.RandAugment,
    "trivialaugment": v2.TrivialAugmentWide,
    "autoaugment": v2.AutoAugment,  # the ImageNet policy
}
# timm's, keyed by a policy string's first section; they work on PIL images only.
TIMM_POLICIES: dict[str, Callable[..., Callable]] = {
    "rand": rand_augment_transform,
    "augmix": augment_and_mix_transform,
    **dict.fromkeys(("original", "originalr", "v0", "v0r", "3a"), auto_augment_transform),
}
POLICY_HELP = (
    "use a timm policy string (rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, original, originalr, v0, v0r, 3a) "
    f"or one of torchvision's {', '.join(TORCHVISION_POLICIES)}"
)
# A section after the first is <key><number> (m9, mstd0.5, inc1), or t<name> for RandAugment's op set.
# timm skips a section without a digit, and takes an unknown op set for the default, silently; refusing
# both keeps a typo from training another recipe.
_SECTION = re.compile(r"[a-z]+[0-9.]+")
RAND_OP_SETS = ("tweights", "t3aw", "t3a")


def augmentation_policy(policy: str, size: int, mean: Sequence[float]) -> list[Callable]:
    """The transforms of ``data.auto_augment=policy`` for ``size`` px images of mean ``mean``.

    timm's policies get the hyper-parameters timm's own ``create_transform`` gives them (translations
    up to 45 % of the image, the dataset mean as fill colour) and a PIL conversion in front, which
    leaves PIL input untouched. Raises a one-line ConfigError naming ``data.auto_augment`` for a
    string neither library accepts.
    """
    if policy in TORCHVISION_POLICIES:
        return [TORCHVISION_POLICIES[policy]()]
    name, *sections = policy.split("-")
    bad = [section for section in sections if not _known_section(name, section)]
    if name not in TIMM_POLICIES:
        problem = f"unknown policy {name!r}"
    elif bad:
        problem = f"section {bad[0]!r} is not <key><number>" + (
            f" or one of {', '.join(RAND_OP_SETS)}" if name == "rand" else ""
        )
    else:
        hparams = {"translate_const": int(size * 0.45), "img_mean": tuple(min(255, round(255 * m)) for m in mean)}
        if name == "augmix":
            hparams["translate_pct"] = 0.3
        try:
            return [v2.ToPILImage(), _posterize_to_zero_bits(TIMM_POLICIES[name](policy, hparams))]
        except (AssertionError, ValueError, KeyError) as err:  # timm asserts on unknown keys and names
            problem = str(err) or type(err).__name__
    raise ConfigError(f"data.auto_augment={policy} is invalid ({problem}); {POLICY_HELP}")


def _known_section(policy: str, section: str) -> bool:
    if policy == "rand" and section.startswith("t"):
        return section in RAND_OP_SETS
    return _SECTION.fullmatch(section) is not None


def _posterize(image: Image.Image, bits_to_keep: int, **kwargs: object) -> Image.Image:
    """Keeping 0 bits gives a black image, as in the TensorFlow reference and Pillow before 13, which
    raises instead; timm asks for 0 bits at some magnitudes (v0 policies, RandAugment with mstd or inc1)."""
    return Image.new(image.mode, image.size) if bits_to_keep <= 0 else timm_aa.posterize(image, bits_to_keep)


def _posterize_to_zero_bits(policy: Callable) -> Callable:
    """``policy`` (a timm RandAugment, AutoAugment or AugMix) with its posterize ops using ``_posterize``."""
    ops = policy.ops if hasattr(policy, "ops") else [op for sub_policy in policy.policy for op in sub_policy]
    for op in ops:
        if op.aug_fn is timm_aa.posterize:
            op.aug_fn = _posterize
    return policy


def _pipeline(
    geometry: Sequence[Callable], mean: Sequence[float], std: Sequence[float], data: DataConfig | None = None
) -> v2.Compose:
    """``geometry`` then, for training (``data`` given), the augmentations ``data`` asks for, around the
    normalisation. ToImage accepts PIL images (folders) and uint8 tensors (in-memory data) alike."""
    before, after = [], []
    if data is not None:
        if data.auto_augment:
            before += augmentation_policy(data.auto_augment, data.image_size, mean)
        if data.color_jitter:
            before.append(
                v2.ColorJitter(brightness=data.color_jitter, contrast=data.color_jitter, saturation=data.color_jitter)
            )
        if data.random_erasing:  # noise-filled like timm's mode="pixel", so it is applied after normalising
            after.append(v2.RandomErasing(p=data.random_erasing, value="random"))
    return v2.Compose(
        [*geometry, *before, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std), *after]
    )


def small_image_transforms(
    data: DataConfig, mean: Sequence[float], std: Sequence[float], *, padding: int, flip: bool
) -> tuple[v2.Compose, v2.Compose]:
    """(train, val) pipelines for images already stored at their final size (digits, CIFAR).

    The geometry is the classic padded random crop; ``flip`` is a flag because mirrored digits are
    different (or no) digits.
    """
    val = _pipeline([], mean, std)
    if not data.augment:
        return val, val
    geometry = [v2.RandomCrop(data.image_size, padding=padding)] + ([v2.RandomHorizontalFlip()] if flip else [])
    return _pipeline(geometry, mean, std, data), val


def small_image_batch_transforms(
    data: DataConfig, mean: Sequence[float], std: Sequence[float], *, padding: int, flip: bool
) -> tuple[BatchAugment | None, BatchAugment]:
    """(train, val) batch transforms for images already stored at their final size (digits, CIFAR): the
    same padded crop, flip and normalisation as ``small_image_transforms``, one batch at a time. The
    train transform is None where ``data`` asks for what only the per-sample pipeline has (a policy,
    colour jitter, random erasing)."""
    val = BatchAugment(mean, std)
    if not data.augment:
        return val, val
    if data.auto_augment or data.color_jitter or data.random_erasing:
        return None, val
    return BatchAugment(mean, std, padding=padding, flip=flip), val


def resize_for_crop(size: int, data: DataConfig) -> int:
    """The side an image is resized to before its ``size`` px centre crop: ``floor(size / crop_pct)``, as
    timm computes it (256 for 224 at the default 0.875)."""
    return math.floor(size / data.crop_pct)


def val_resize(size: int, data: DataConfig) -> int:
    """The side a validation image is resized to before its ``size`` px centre crop: ``data.val_resize`` when
    set, else ``resize_for_crop``."""
    return data.val_resize or resize_for_crop(size, data)


def folder_transforms(
    data: DataConfig, mean: Sequence[float], std: Sequence[float], *, crop_in_reader: bool = False
) -> tuple[v2.Compose, v2.Compose]:
    """(train, val) pipelines for decoded photos of any size (the ImageNet recipe): RandomResizedCrop and
    flip for training; resize by ``crop_pct`` and centre-crop for validation, at ``test_image_size``.
    Unaugmented training images are centre-cropped the same way, at the training size. ``crop_in_reader``:
    the training pipeline starts at the flip, its RandomResizedCrop drawn where the image is decoded
    (data/reduced_decode.py)."""
    test_size = data.test_image_size or data.image_size
    val = _pipeline([v2.Resize(val_resize(test_size, data)), v2.CenterCrop(test_size)], mean, std)
    if not data.augment:
        size = data.image_size
        return _pipeline([v2.Resize(resize_for_crop(size, data)), v2.CenterCrop(size)], mean, std), val
    crop = [] if crop_in_reader else [v2.RandomResizedCrop(data.image_size)]
    return _pipeline([*crop, v2.RandomHorizontalFlip()], mean, std, data), val
