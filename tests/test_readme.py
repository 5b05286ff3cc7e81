"""The README's commands are ones that work: what it tells a user to type composes to what it says."""

from __future__ import annotations

import re

import pytest
from hydra.utils import instantiate

from helpers import ROOT, compose_train

README = (ROOT / "README.md").read_text()
SECTIONS = re.split(r"^## ", README, flags=re.MULTILINE)


def section(title: str) -> str:
    (found,) = [text for text in SECTIONS if text.startswith(title)]
    return found


def test_reproducing_the_paper_comes_before_the_options_with_its_targets():
    titles = [text.splitlines()[0] for text in SECTIONS[1:]]
    assert titles.index("Reproduce the paper") < titles.index("Train")
    reproduce = section("Reproduce the paper")
    for target in ("+0.98", "+0.85", "76.13 %", "91.25 %", "estimate"):
        assert target in reproduce, target


@pytest.mark.parametrize("experiment", sorted(set(re.findall(r"\b((?:cifar10|cifar100|imagenet)_\w+)", README))))
def test_every_experiment_the_readme_names_composes(experiment):
    cfg = compose_train(f"experiment={experiment}")
    assert cfg.data.name.split("_")[0] == experiment.split("_")[0]


def test_the_joblib_launcher_runs_a_sweeps_jobs_in_parallel_processes():
    cfg = compose_train("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", hydra=True)
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "JoblibLauncher" and cfg.hydra.launcher.n_jobs == 2
