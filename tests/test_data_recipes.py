"""Training-recipe data options: augmentation policies, colour jitter, random erasing, test-time resize
and size, and augmentation draws that differ per rank but repeat per (seed, epoch, rank)."""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from data import DataConfig, build_loaders, check_data_config, set_epoch
from data.folder import decode
from data.transforms import augmentation_policy, folder_transforms, resize_for_crop, small_image_transforms
from engine.config import validate
from helpers import QUICK, compose_train, run_in_process
from models import build_model, count_flops

POLICIES = [
    "rand-m9-mstd0.5-inc1",
    "rand-m9-n3-tweights",
    "augmix-m5-w4-d2",
    "original",
    "v0",
    "randaugment",
    "trivialaugment",
    "autoaugment",
]
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
SIZE = 32


def _image(kind: str) -> torch.Tensor | Image.Image:
    """A structured 32 px RGB image (gradients, so geometric ops move pixels), as the datasets hand it over:
    a uint8 tensor (digits, CIFAR) or a PIL image (folders)."""
    ramp = torch.linspace(0, 255, SIZE)
    tensor = (
        torch.stack(
            [ramp[:, None].expand(SIZE, SIZE), ramp[None, :].expand(SIZE, SIZE), (ramp[:, None] + ramp[None, :]) / 2]
        )
        .round()
        .to(torch.uint8)
    )
    return tensor if kind == "tensor" else v2.functional.to_pil_image(tensor)


def _seeded(seed: int) -> None:
    """timm draws from ``random`` and numpy, torchvision from torch: seed all three, as DataLoader workers are."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _pipeline_bounds() -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    return (0 - mean) / std, (1 - mean) / std


@pytest.mark.parametrize("kind", ["tensor", "pil"])
@pytest.mark.parametrize("policy", POLICIES)
def test_each_policy_gives_valid_normalised_images_that_vary_and_repeat(policy: str, kind: str, one_thread) -> None:
    cfg = DataConfig(auto_augment=policy)
    train, _ = small_image_transforms(cfg, MEAN, STD, padding=0, flip=False)  # no geometry: only the policy acts
    low, high = _pipeline_bounds()
    draws = []
    for seed in range(16):
        _seeded(seed)
        x = train(_image(kind))
        assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32 and torch.isfinite(x).all()
        assert (x >= low - 1e-5).all() and (x <= high + 1e-5).all()  # pixels in [0, 1], normalised
        draws.append(x)
    _seeded(3)
    assert torch.equal(train(_image(kind)), draws[3])  # the draw is a function of the seeds
    assert len({d.numpy().tobytes() for d in draws}) >= 4  # draws differ (some policies often do nothing)
    plain = small_image_transforms(DataConfig(), MEAN, STD, padding=0, flip=False)[1](_image(kind))
    assert sum(not torch.allclose(d, plain) for d in draws) >= 4  # the policy changed images


def test_timm_posterize_to_zero_bits_gives_black_not_an_error() -> None:
    """Pillow 13 refuses 0 bits, which timm's v0 and RandAugment policies ask for at some magnitudes."""
    policy = augmentation_policy("rand-m10-n1-p1.0-inc1", SIZE, MEAN)[1]  # PosterizeIncreasing at level 10: 0 bits
    posterize = next(op for op in policy.ops if op.name == "PosterizeIncreasing")
    out = posterize.aug_fn(_image("pil"), *posterize.level_fn(10, posterize.hparams))
    assert np.asarray(out).max() == 0


def test_colour_jitter_changes_brightness_and_random_erasing_fills_noise() -> None:
    grey = Image.new("RGB", (40, 40), (128, 128, 128))
    mean, std = (0.5,) * 3, (0.25,) * 3
    plain, _ = folder_transforms(DataConfig(image_size=SIZE), mean, std)
    jitter, _ = folder_transforms(DataConfig(image_size=SIZE, color_jitter=0.4), mean, std)
    erase, _ = folder_transforms(DataConfig(image_size=SIZE, random_erasing=1.0), mean, std)
    torch.manual_seed(0)
    assert len({round(plain(grey).mean().item(), 4) for _ in range(5)}) == 1  # crops of a flat image are flat
    assert len({round(jitter(grey).mean().item(), 4) for _ in range(5)}) == 5
    level = plain(grey)[0, 0, 0]
    for _ in range(5):
        out = erase(grey)
        erased = out != level
        assert 0 < erased.float().mean() < 0.5  # a rectangle, not the whole image
        assert out[erased].std() > 0.5  # filled with normal noise (timm's mode="pixel"), after normalising


def test_in_memory_data_trains_with_every_option_through_the_loaders() -> None:
    cfg = DataConfig(batch_size=16, auto_augment="rand-m9-mstd0.5-inc1", color_jitter=0.4, random_erasing=0.25)
    train, _, _ = build_loaders(cfg, seed=0)
    set_epoch(train, 0)
    x, y = next(iter(train))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()


# ------------------------------------------------------------------------------------ evaluation sizes


def test_crop_pct_resizes_as_timm_does() -> None:
    assert resize_for_crop(224, DataConfig()) == 256  # the default 0.875: Resize(256) + CenterCrop(224)
    assert resize_for_crop(224, DataConfig(crop_pct=0.95)) == 235  # RSB A3's test crop, floor(235.8)
    assert resize_for_crop(160, DataConfig(crop_pct=1.0)) == 160


@pytest.mark.parametrize("setting, resize", [({"crop_pct": 0.5}, 64), ({"val_resize": 36}, 36)])
def test_folder_validation_uses_test_size_and_crop_pct(imagefolder_root: Path, setting: dict, resize: int) -> None:
    cfg = DataConfig(
        name="imagefolder", root=str(imagefolder_root), batch_size=4, image_size=24, test_image_size=32, **setting
    )
    train, val, info = build_loaders(cfg, seed=0)
    assert next(iter(train))[0].shape[-2:] == (24, 24)
    x, _ = next(iter(val))
    assert x.shape[-2:] == (32, 32) and (info.image_size, info.test_image_size) == (24, 32)
    path, _ = val.dataset.samples[0]
    expected = v2.Compose(
        [
            v2.Resize(resize),
            v2.CenterCrop(32),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(info.mean, info.std),
        ]
    )(decode(path))
    torch.testing.assert_close(x[0], expected)


@pytest.mark.parametrize("name", ["digits", "fake"])
def test_in_memory_validation_images_come_at_the_test_size(name: str) -> None:
    train, val, info = build_loaders(DataConfig(name=name, batch_size=8, test_image_size=48), seed=0)
    assert next(iter(train))[0].shape == (8, 3, 32, 32) and next(iter(val))[0].shape == (8, 3, 48, 48)
    assert (info.image_size, info.test_image_size) == (32, 48)


@pytest.mark.slow
def test_flops_are_counted_at_the_test_size(tmp_path: Path) -> None:
    """The model is built (and model.small_input decided) for the training size; it is evaluated, and its
    FLOPs quoted, at the test size."""
    results = run_in_process(
        tmp_path,
        *QUICK,
        "conv=standard",
        "data=fake",
        "data.image_size=16",
        "data.test_image_size=24",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
    )
    cfg = compose_train("conv=standard")
    model = build_model(cfg.model, cfg.conv, num_classes=10, image_size=16)
    assert results["flops"] == pytest.approx(count_flops(model, 16) * (24 / 16) ** 2, rel=0.02)
    assert results["eval_samples"] == 32


# ----------------------------------------------------------------------------------------- rank draws


def _first_batch(rank: int, epoch: int) -> torch.Tensor:
    """Rank ``rank``'s first training batch of ``epoch`` when every digit image is the same one: the
    batches then differ only by their augmentation draws, not by which samples the rank holds."""
    cfg = DataConfig(batch_size=32, num_workers=1, persistent_workers=False)
    train, _, _ = build_loaders(cfg, seed=7, rank=rank, world_size=2)
    images = train.dataset.images
    train.dataset.images = images[:1].expand_as(images)
    set_epoch(train, epoch)
    return next(iter(train))[0]


@pytest.mark.slow
def test_ranks_draw_different_augmentations_each_repeatably() -> None:
    rank0, rank1 = _first_batch(0, 2), _first_batch(1, 2)
    assert len({image.numpy().tobytes() for image in rank0}) > 1  # augmented: one image, several crops
    assert not torch.equal(rank0, rank1)
    assert torch.equal(_first_batch(1, 2), rank1)  # the same (seed, epoch, rank) draws the same again
    assert not torch.equal(_first_batch(1, 3), rank1)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.auto_augment=rand-m9-foo"], "data.auto_augment=rand-m9-foo is invalid (section 'foo' is not"),
        (["data.auto_augment=randaug"], "data.auto_augment=randaug is invalid (unknown policy 'randaug'); use a timm"),
        (["data.auto_augment=rand-q3"], "data.auto_augment=rand-q3 is invalid (Unknown RandAugment config section)"),
        (["data.color_jitter=-0.1"], "data.color_jitter=-0.1 is invalid: set >= 0"),
        (["data.random_erasing=1.5"], "data.random_erasing=1.5 is invalid: set a probability in [0, 1]"),
        (["data.augment=false", "data.auto_augment=v0"], "data.auto_augment=v0 has no effect with data.augment=false"),
        (["data.test_image_size=0"], "data.test_image_size=0 is invalid: set a positive integer or null"),
        (["data=fake", "data.random_erasing=0.25"], "data.random_erasing=0.25 is not used by data=fake"),
        (["data=cifar10", "data.test_image_size=64"], "data.test_image_size=64 is not used by data=cifar10"),
        (["data.crop_pct=0.9"], "data.crop_pct=0.9 is not used by data=digits (only data=imagefolder, data=imagenet"),
        (
            ["data=imagenet", "data.root=/x", "data.crop_pct=0"],
            "data.crop_pct=0.0 is invalid: set a fraction in (0, 1]",
        ),
        (["data=imagenet", "data.root=/x", "data.crop_pct=1.2"], "data.crop_pct=1.2 is invalid"),
        (
            ["data=imagenet", "data.root=/x", "data.crop_pct=0.9", "data.val_resize=256"],
            "data.val_resize=256 and data.crop_pct=0.9 both set the validation resize; keep one of them",
        ),
        (
            ["data=imagenet", "data.root=/x", "data.test_image_size=288", "data.val_resize=256"],
            "data.val_resize=256 is smaller than the 288 px validation crop",
        ),
    ],
)
def test_bad_recipe_settings_stop_at_start_up_with_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        validate(compose_train(*overrides))
    assert "\n" not in str(err.value)


def test_recipe_settings_are_accepted_where_they_apply() -> None:
    for policy in POLICIES:
        check_data_config(DataConfig(auto_augment=policy, color_jitter=0.4, random_erasing=0.25, test_image_size=40))
    check_data_config(DataConfig(name="imagenet", root="/x", image_size=160, test_image_size=224, crop_pct=0.95))
    check_data_config(DataConfig(name="cifar10", auto_augment="trivialaugment", random_erasing=0.25))
    for name, test_size in itertools.product(["fake", "digits"], [None, 64]):
        check_data_config(DataConfig(name=name, test_image_size=test_size))
