"""The Weights & Biases run of a run folder (``logger=[...,wandb]``, rank 0 only): the same numbers as TensorBoard.

One W&B run per run folder: its id is kept in the folder (wandb.json), so a resume, a SLURM requeue or a torchrun
restart logs into the run it continues (``resume="allow"``). Offline by default: W&B writes under the run folder's
wandb/ (a folder per session) and nothing leaves the machine until ``wandb sync <run folder>/wandb/offline-run-*``;
``logger.wandb.mode=online`` logs live. Each record is logged against the run's optimizer step (``trainer/step``,
declared as every metric's x-axis), so a resumed session's curves continue where the checkpoint stopped. A sweep's
jobs are grouped by the sweep folder's name.

W&B writes through a service process that buffers: a session killed (SIGKILL, out of memory) loses what it had
not written, which can be all of it. So wandb.json also keeps the last step of the last session that ended
cleanly, and a resume logs the checkpoint's epoch records after that step again: no epoch the checkpoint holds is
missing. An epoch that the killed session did write then appears twice, with the same values (a resume is
exact); W&B cannot rewind an offline run, so read the last value per step. The σ curves of such epochs are not
in the checkpoint's records and are not logged again.

A W&B call that fails is reported once and W&B stops there, while training and its checkpoints go on
(engine/tracker_run.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from . import epoch_record
from .config import WandbMode, flatten
from .tracker_run import TrackerRun

RUN_FILE = "wandb.json"  # {"run_id", "project", "mode", "written_up_to"}: the W&B run this folder logs into
STEP = "trainer/step"  # every metric's x-axis: the optimizer step of the record
EXIT_CODES = {"FINISHED": 0, "FAILED": 1, "KILLED": 0}  # KILLED: a stop on a signal, marked preempted


class WandbRun(TrackerRun):
    """``start`` once the run is committed to its folder, ``metrics`` per record, ``finish`` in a ``finally``."""

    name, run_file = "Weights & Biases", RUN_FILE

    def __init__(
        self, run_dir: Path, cfg: DictConfig, description: dict[str, Any], sweep_dir: Path | None = None
    ) -> None:
        super().__init__(run_dir)
        self.cfg, self.description = cfg, description
        self.settings = cfg.logger.wandb
        self.mode = WandbMode(self.settings.mode).value
        self.group = self.settings.group or (sweep_dir.name if sweep_dir else None)
        self.run: Any = None
        self.last_step = -1

    def start(self, records: list[dict[str, Any]]) -> None:
        """Continue the folder's W&B run, or create it with the run's settings as its config; ``records``: the
        epochs the checkpoint holds, logged again after the step the last clean session wrote up to."""
        self._call(self._open, records)

    def _open(self, records: list[dict[str, Any]]) -> None:
        import wandb

        kept = self.kept()
        self.run = wandb.init(
            id=kept["run_id"] if kept else None,
            resume="allow" if kept else None,
            dir=str(self.run_dir),
            project=self.settings.project,
            entity=self.settings.entity,
            group=self.group,
            name=self.run_dir.name,
            tags=list(self.settings.tags),
            mode=self.mode,
            config=flatten(OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True)),
            notes=" ".join(f"{key}: {value}" for key, value in self.description.items()),
            settings=wandb.Settings(console="off", silent=True),
        )
        self.record = {"run_id": self.run.id, "project": self.settings.project, "mode": self.mode, "written_up_to": -1}
        self.record.update(kept or {})
        if not kept:
            self.keep(self.record)
        self.run.define_metric(STEP)
        self.run.define_metric("*", step_metric=STEP)
        for row in records:
            if row["step"] > self.record["written_up_to"]:
                self.metrics(epoch_record.scalars(row), row["step"])

    def metrics(self, values: dict[str, float], step: int) -> None:
        self._call(lambda: self.run.log({**{key: float(value) for key, value in values.items()}, STEP: step}))
        self.last_step = max(self.last_step, step)

    def finish(self, status: str) -> None:
        """``status``: FINISHED, FAILED or KILLED (a stop on a signal, continued by a resume)."""
        if status == "KILLED":
            self._call(lambda: self.run.mark_preempting())
        if status == "FINISHED" and self.settings.artifacts:
            self._call(self._log_artifacts)
        self._call(lambda: self.run.finish(exit_code=EXIT_CODES[status]))  # returns once everything is written
        if not self.failed:
            self.keep({**self.record, "written_up_to": max(self.last_step, self.record["written_up_to"])})

    def _log_artifacts(self) -> None:
        import wandb

        artifact = wandb.Artifact(f"run-{self.run.id}", type="model", metadata=dict(self.description))
        for path in self.artifact_files():
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def where(self) -> str:
        return f"{self.mode}, {self.run_dir / 'wandb'}"
