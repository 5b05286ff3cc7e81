"""Every backbone family trains a step and evaluates through the real runner, with both conv types."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import load, run_in_process

SMALL = ["resnet56", "mobilenet_v2", "timm"]
LARGE = ["resnet50", "alexnet", "vgg16_bn"]  # tens of millions of weights: a few seconds each on 2 cores


def train_one_step(tmp_path: Path, model: str, conv: str) -> dict:
    overrides = [f"model={model}", f"conv={conv}", "data=fake", "data.batch_size=4", "data.train_size=8",
                 "data.val_size=6", "trainer.epochs=1", "trainer.limit_train_batches=1", "trainer.progress=false",
                 "trainer.device=cpu"]
    if model == "timm":
        overrides.append("model.name=resnet10t")
    return run_in_process(tmp_path, *overrides)


def check(tmp_path: Path, model: str, conv: str) -> None:
    results = train_one_step(tmp_path, model, conv)
    assert results["status"] == "completed" and results["eval_samples"] == 6
    weights = load(tmp_path / "checkpoints/last.pt")["model"]
    has_sigma = any(key.endswith("sigma_raw") for key in weights)
    assert has_sigma == (conv == "gmconv"), f"{model}/{conv}: σ in checkpoint = {has_sigma}"


@pytest.mark.parametrize("conv", ["standard", "gmconv"])
@pytest.mark.parametrize("model", SMALL)
def test_small_backbones_train(tmp_path, model, conv):
    check(tmp_path, model, conv)


@pytest.mark.slow
@pytest.mark.parametrize("conv", ["standard", "gmconv"])
@pytest.mark.parametrize("model", LARGE)
def test_large_backbones_train(tmp_path, model, conv):
    check(tmp_path, model, conv)
