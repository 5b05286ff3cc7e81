"""A run folder and the rule that protects it: its record is written only by the run that owns it.

    <run>/.hydra/{config,hydra,overrides}.yaml   written once, when the run starts (never on resume)
    <run>/train.log                              Hydra's log of every process that ran here
    <run>/tb/, metrics.csv                       curves (engine/tracking.py)
    <run>/checkpoints/{last,best}.pt             engine/checkpoint.py
    <run>/results.json                           written once, when the run completes

Hydra would write .hydra/ into whatever folder it is given, before any check could run, so it is
told not to (``hydra.output_subdir: null`` in configs/train.yaml) and the run writes it here, after
it has checked that the folder is free.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .checkpoint import BEST, LAST, atomic_write, save_json

CONFIG_DIR = ".hydra"
RESULTS = "results.json"
LOG = "train.log"


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.last, self.best = self.checkpoints / LAST, self.checkpoints / BEST
        self.results = self.path / RESULTS

    def holds_run(self) -> bool:
        """Whether a run's record is here: its config, a checkpoint or its results."""
        return (self.path / CONFIG_DIR / "config.yaml").is_file() or self.holds_progress()

    def holds_progress(self) -> bool:
        """Whether a run got anywhere here: a checkpoint or its results."""
        return self.results.is_file() or (self.checkpoints.is_dir() and any(self.checkpoints.glob("*.pt")))

    def owns(self, checkpoint: Path) -> bool:
        return checkpoint.resolve().parent == self.checkpoints.resolve()

    def describe(self) -> str:
        if self.results.is_file():
            try:
                results = json.loads(self.results.read_text())
                return f"a {results.get('status', 'finished')} run (top-1 {results.get('top1', float('nan')):.2f}%)"
            except (OSError, ValueError, TypeError):
                return "a run with a results.json"
        return "a run's checkpoints" if self.checkpoints.is_dir() else "a run's config"

    def check_free(self, *, restart: bool = False) -> None:
        """A new run may start here only if no other run's record is here.

        ``restart`` (``resume=auto`` without a checkpoint): the same command started here before and
        died before its first checkpoint, e.g. a torchrun restart; its config alone may be replaced.
        """
        if self.holds_progress() or (self.holds_run() and not restart):
            raise ValueError(f"{self.path} already holds {self.describe()}; continue it with resume={self.path}, "
                             "or start a new run in another folder (leave hydra.run.dir unset for a fresh one)")

    def write_config(self, config: DictConfig, hydra_config: DictConfig | None, overrides: list[str]) -> None:
        folder = self.path / CONFIG_DIR
        for name, node in (("config.yaml", config), ("hydra.yaml", hydra_config), ("overrides.yaml", overrides)):
            if node is not None:
                text = OmegaConf.to_yaml(node if OmegaConf.is_config(node) else OmegaConf.create(node))
                atomic_write(folder / name, lambda tmp, text=text: Path(tmp).write_text(text))

    def write_results(self, results: dict[str, Any]) -> None:
        save_json(results, self.results)

    def read_results(self) -> dict[str, Any] | None:
        return json.loads(self.results.read_text()) if self.results.is_file() else None

    def remove_if_unused(self) -> None:
        """After a failed start: remove the folder if nothing but the start-up log was written to it."""
        if not self.path.is_dir() or {p.name for p in self.path.iterdir()} - {LOG}:
            return
        shutil.rmtree(self.path, ignore_errors=True)
