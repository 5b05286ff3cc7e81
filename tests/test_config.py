"""The composed config: every group option composes, and bad settings fail at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from engine.config import register_configs, validate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
register_configs()


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_default_is_resnet20_gmconv_on_digits():
    cfg = compose_train()
    assert (cfg.model.name, cfg.conv.name, cfg.data.name) == ("resnet20", "gmconv", "digits")
    assert cfg.conv.type == "gmconv"
    validate(cfg)


@pytest.mark.parametrize("group", ["model", "conv", "data", "optim", "sched", "trainer"])
def test_every_group_option_composes(group):
    for option in options(group):
        cfg = compose_train(f"{group}={option}")
        assert cfg[group] is not None


@pytest.mark.parametrize("option", options("experiment"))
def test_experiments_compose(option):
    validate(compose_train(f"experiment={option}"))


def test_conv_variants_map_onto_gmconv_options():
    assert compose_train("conv=gmconv_layer").conv.sigma_granularity == "layer"
    assert compose_train("conv=gmconv_dynamic").conv.dynamic is True
    assert compose_train("conv=gmconv_enlarged").conv.enlarge_by == 2
    assert compose_train("conv=gmconv_fixed").conv.learnable_sigma is False
    assert compose_train("conv=standard").conv.type == "standard"


def test_misspelt_key_fails_at_compose():
    with pytest.raises(ConfigCompositionException, match="epoch"):
        compose_train("trainer.epoch=3")


@pytest.mark.parametrize("override, choice", [
    ("conv=gmcnv", "gmconv_layer"), ("data=cifar11", "cifar10"), ("optim=adamx", "adamw"), ("model=resnet999", "resnet20"),
])
def test_unknown_group_option_lists_choices(override, choice):
    with pytest.raises(ConfigCompositionException, match=choice):
        compose_train(override)


def test_enum_values_are_checked():
    with pytest.raises(ConfigCompositionException, match="fp8|bf16"):
        compose_train("trainer.amp=fp8")


@pytest.mark.parametrize("override, key", [
    ("trainer.epochs=0", "trainer.epochs"),
    ("optim.lr=-0.1", "optim.lr"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.batch_size=-1", "data.batch_size"),
    ("optim.lr=0", "optim.lr"),
    ("trainer.label_smoothing=1.5", "trainer.label_smoothing"),
    ("eval_only=true", "ckpt"),
])
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        validate(compose_train(override))
