"""Every backbone family trains a step and evaluates through the real runner, with both conv types; a deep
torchvision ResNet learns on the digits with the defaults."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from helpers import load, run_in_process

SMALL = ["resnet56", "mobilenet_v2", "timm"]
LARGE = ["resnet50", "alexnet", "vgg16_bn"]  # tens of millions of weights: a few seconds each on 2 cores


def train_one_step(tmp_path: Path, model: str, conv: str) -> dict:
    overrides = [
        f"model={model}",
        f"conv={conv}",
        "data=fake",
        "data.batch_size=4",
        "data.train_size=8",
        "data.val_size=6",
        "trainer.epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.progress=false",
        "trainer.device=cpu",
    ]
    if model == "timm":
        overrides.append("model.name=resnet10t")
    return run_in_process(tmp_path, *overrides)


def check(tmp_path: Path, model: str, conv: str) -> None:
    results = train_one_step(tmp_path, model, conv)
    assert results["status"] == "completed" and results["eval_samples"] == 6
    weights = load(tmp_path / "checkpoints/last.pt")["model"]
    has_sigma = any(key.endswith("sigma_raw") for key in weights)
    assert has_sigma == (conv == "gmconv"), f"{model}/{conv}: σ in checkpoint = {has_sigma}"


@pytest.mark.slow
@pytest.mark.parametrize("conv", ["standard", "gmconv"])
@pytest.mark.parametrize("model", SMALL)
def test_small_backbones_train(tmp_path, model, conv):
    check(tmp_path, model, conv)


@pytest.mark.slow
@pytest.mark.parametrize("conv", ["standard", "gmconv"])
@pytest.mark.parametrize("model", LARGE)
def test_large_backbones_train(tmp_path, model, conv):
    check(tmp_path, model, conv)


@pytest.mark.slow
def test_a_deep_torchvision_resnet_learns_on_the_digits_with_the_defaults(tmp_path):
    """ResNet-18 with its ImageNet stem (the cheap variant: 8 px after the stem) and only the epochs set.

    At lr 0.1 from the first step (issue 9) its first epoch's training loss was 4.0, worse than a uniform
    guess, and the issue's 3-epoch run ended at chance; with the default warmup and zero-initialised
    residual branches it is 1.8, and the second epoch ends at 94 % (2-core CPU, seed 0).
    """
    results = run_in_process(
        tmp_path,
        "model=resnet18",
        "model.small_input=false",
        "conv=standard",
        "trainer.epochs=2",
        "trainer.progress=false",
    )
    with (tmp_path / "metrics.csv").open(newline="") as f:
        train_losses = [float(row["train_loss"]) for row in csv.DictReader(f)]
    assert max(train_losses) < math.log(10), train_losses  # never worse than guessing: no blow-up
    assert results["top1"] > 50, results  # chance: 10 %
