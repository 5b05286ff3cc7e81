"""Which recipe a run follows, and what it changes of it: one line at start-up and a list in results.json.

The recipe is what the configs give for the run's data and model alone (docs/RECIPES.md); an experiment= overlay
and the command line change it. Composing the recipe alone needs Hydra's config loader, which the running
application holds: ``recipe_of`` asks it, and gives up (None) where there is none (a run started from Python).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from .config import setting_changes

log = logging.getLogger(__name__)

# what the recipe decides: how a run trains (not where its files are, nor how it reports)
RECIPE_KEYS = (
    "optim.",
    "sched.",
    "trainer.epochs",
    "trainer.label_smoothing",
    "trainer.loss",
    "trainer.ema",
    "trainer.accumulate_steps",
    "trainer.grad_clip",
    "trainer.amp",
    "data.batch_size",
    "data.image_size",
    "data.test_image_size",
    "data.crop_pct",
    "data.val_resize",
    "data.auto_augment",
    "data.color_jitter",
    "data.random_erasing",
    "data.mixup_alpha",
    "data.cutmix_alpha",
    "data.mix_prob",
    "data.mix_switch_prob",
    "model.kwargs",
    "model.drop_rate",
    "model.drop_path_rate",
)


def recipe_line(cfg: DictConfig) -> str:
    """``recipe: imagenet/alexnet — torchvision reference: ...; optimizer for alexnet: lr 0.01 ...``"""
    recipe = cfg.recipe
    line = f"recipe: {recipe.name}/{cfg.model.name} — {recipe.source or 'the framework defaults'}"
    for what, note in (("optimizer", recipe.optim_exception), ("model", recipe.model_exception)):
        if note:
            line += f"; {what} for {cfg.model.name}: {note}"
    return line


def recipe_of(choices: dict[str, Any]) -> Optional[DictConfig]:
    """The config of the run's data, model and conv options alone, composed by the running Hydra application."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    if not GlobalHydra.instance().is_initialized():
        return None
    overrides = [f"{group}={choices[group]}" for group in ("data", "model", "conv") if choices.get(group)]
    try:
        config = GlobalHydra.instance().config_loader().load_configuration("train", overrides, RunMode.RUN)
    except Exception as err:  # noqa: BLE001 - the report is a courtesy; the run itself is not at stake
        log.debug("the recipe alone could not be composed: %s", err)
        return None
    with_hydra = OmegaConf.to_container(config, resolve=False)
    with_hydra.pop("hydra", None)
    return OmegaConf.create(with_hydra)


def changes_from_recipe(cfg: DictConfig, recipe: DictConfig) -> list[str]:
    """``key recipe → run`` for every recipe setting the run does not take from the recipe."""
    return [
        f"{key} {planned} → {now}" for key, planned, now in setting_changes(recipe, cfg) if key.startswith(RECIPE_KEYS)
    ]
