"""The digits drawn on a canvas (data/digit_canvas.py): determinism, no leakage between splits, geometry."""

from __future__ import annotations

import re

import pytest
import torch

from data import build_loaders, check_data_config, digit_canvas
from data.digit_canvas import build_digit_canvases, fragment_size, render
from data.digits import DigitSplit, digit_split
from helpers import from_yaml

SMALL = {"train_size": 300, "val_size": 200}


def canvases(
    name: str = "digits_cluttered", **overrides: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, val images, val labels) of ``data=<name>`` at test size, unaugmented."""
    splits = build_digit_canvases(from_yaml(name, **{**SMALL, **overrides}))
    return splits.train.images, splits.train.targets, splits.val.images, splits.val.targets


def numbered_digits(count: int, side: int) -> torch.Tensor:
    """Digit i is a solid s×s square of value i + 1: every pixel of a canvas says which digit it came from."""
    return (torch.arange(count, dtype=torch.uint8) + 1).view(count, 1, 1).expand(count, side, side).contiguous()


# ------------------------------------------------------------------------------------------ determinism


def test_canvases_are_a_function_of_the_generator_seed_alone() -> None:
    first, again = canvases(), canvases()
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    other = canvases(generator_seed=1)
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[2], other[2])
    # the run's seed draws the augmentation and the order, never the canvases
    cfg = from_yaml("digits_cluttered", **SMALL)
    (_, val_a, _), (_, val_b, _) = build_loaders(cfg, seed=0), build_loaders(cfg, seed=7)
    assert torch.equal(val_a.dataset.images, val_b.dataset.images)


def test_each_splits_canvases_do_not_depend_on_the_others_size() -> None:
    _, _, val, val_labels = canvases(train_size=300)
    _, _, val_more_train, val_labels_more_train = canvases(train_size=500)
    assert torch.equal(val, val_more_train) and torch.equal(val_labels, val_labels_more_train)
    train, _, _, _ = canvases(val_size=200)
    train_more_val, _, _, _ = canvases(val_size=400)
    assert torch.equal(train, train_more_val)


def test_a_digit_size_sweep_draws_the_same_digits_in_the_same_order() -> None:
    """Between digits_scaled settings only the scale changes: the same digits, labels and order."""
    labels = {size: canvases("digits_scaled", digit_size=size)[1] for size in (8, 16, 24)}
    assert torch.equal(labels[8], labels[16]) and torch.equal(labels[16], labels[24])


# --------------------------------------------------------------------------------------------- leakage


def test_no_validation_digit_is_seen_in_training_whole_or_as_clutter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training digits are all grey 8, validation digits all 16: a solid 8×8 upsamples to a solid square, so
    a training canvas may hold only 0 and the training grey, a validation canvas only 0 and white."""
    real = digit_split()

    def marked() -> DigitSplit:
        return real._replace(
            train_pixels=torch.full_like(real.train_pixels, 8), val_pixels=torch.full_like(real.val_pixels, 16)
        )

    monkeypatch.setattr(digit_canvas, "digit_split", marked)
    train, train_labels, val, val_labels = canvases(clutter=6)
    assert set(train.unique().tolist()) == {0, 128} and set(val.unique().tolist()) == {0, 255}
    # the labels are the split's own: the class balance of the digits' stratified split
    assert set(train_labels.tolist()) == set(val_labels.tolist()) == set(range(10))


def test_clutter_comes_from_other_digits_never_the_canvas_own() -> None:
    """A canvas's own value covers exactly one s×s block (where a brighter fragment does not cover it); a
    fragment cut from the canvas's own digit would add its value outside that block."""
    side, canvas = 6, 30
    digits = numbered_digits(40, side)
    images, labels = render(
        digits, torch.arange(40), 2000, canvas, clutter=5, generator=torch.Generator().manual_seed(0)
    )
    for image, own in zip(images, labels):
        rows, cols = torch.nonzero(image == own + 1, as_tuple=True)
        assert len(rows) and rows.max() - rows.min() < side and cols.max() - cols.min() < side


# -------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("canvas, side", [(32, 16), (32, 32), (20, 7)])
def test_the_digit_lies_wholly_inside_the_canvas_at_every_position(canvas: int, side: int) -> None:
    images, _ = render(
        numbered_digits(10, side), torch.arange(10), 3000, canvas, clutter=0, generator=torch.Generator().manual_seed(1)
    )
    assert images.shape == (3000, canvas, canvas) and images.dtype == torch.uint8
    lit = images > 0
    assert torch.all(lit.sum(dim=(1, 2)) == side * side)  # the whole digit, nothing else
    top = lit.any(dim=2).float().argmax(dim=1)
    left = lit.any(dim=1).float().argmax(dim=1)
    for corner in (top, left):  # uniform over every position that keeps it inside: both extremes reached
        assert corner.min() == 0 and corner.max() == canvas - side


def test_clutter_puts_that_many_half_size_fragments_on_each_canvas() -> None:
    side, clutter = 8, 3
    images, labels = render(
        numbered_digits(200, side), torch.arange(200), 500, 64, clutter, generator=torch.Generator().manual_seed(2)
    )
    assert fragment_size(side) == 4
    for image, own in zip(images, labels):
        values, counts = image[image > 0].unique(return_counts=True)
        fragments = counts[values != own + 1]
        assert 1 <= len(fragments) <= clutter and fragments.sum() <= clutter * fragment_size(side) ** 2


def test_loaders_give_canvas_sized_normalised_three_channel_images() -> None:
    cfg = from_yaml("digits_cluttered", batch_size=16, augment=False, **SMALL)
    train, val, info = build_loaders(cfg, seed=0)
    images, labels = next(iter(train))
    assert images.shape == (16, 3, cfg.canvas, cfg.canvas) and info.image_size == cfg.canvas
    assert torch.equal(val.dataset.images[:, 0], val.dataset.images[:, 2])
    normalised = train.dataset.batch_transform(train.dataset.images)
    assert normalised.mean().abs() < 1e-4 and (normalised.std() - 1).abs() < 1e-3
    assert (len(train.dataset), len(val.dataset)) == (SMALL["train_size"], SMALL["val_size"])


# ---------------------------------------------------------------------------------------------- config


def test_the_canvas_is_the_image_size() -> None:
    assert from_yaml("digits_scaled", canvas=40).image_size == 40  # the config sets the image size from the canvas


@pytest.mark.parametrize(
    "name, overrides, match",
    [
        (
            "digits_cluttered",
            {"digit_size": None},
            "data.digit_size is null, and data=digits_cluttered draws its images "
            "with it; set it (configs/data/digits_cluttered.yaml has the default)",
        ),
        (
            "digits_scaled",
            {"digit_size": 40},
            "data.digit_size=40 does not fit on the 32 px canvas; set data.digit_size <= 32 or a larger data.canvas",
        ),
        (
            "digits_scaled",
            {"image_size": 48},
            "data.image_size=48 differs from data.canvas=32: the images are the canvas; set data.canvas=48 instead",
        ),
        ("digits_cluttered", {"clutter": -1}, "data.clutter=-1 is invalid: set 0"),
        (
            "digits_scaled",
            {"clutter": 2},
            "data.clutter=2 is not used by data=digits_scaled (only data=digits_cluttered takes it)",
        ),
        ("digits", {"canvas": 48}, "data.canvas=48 is not used by data=digits"),
        ("digits_scaled", {"canvas": 0}, "data.canvas=0 is invalid"),
    ],
)
def test_bad_canvas_settings_are_refused_in_one_line(name: str, overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)) as err:
        check_data_config(from_yaml(name, **overrides))
    assert "\n" not in str(err.value)
