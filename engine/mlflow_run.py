"""The MLflow run of a run folder (``logger=[...,mlflow]``, rank 0 only): the same numbers as TensorBoard.

One MLflow run per run folder: its id is kept in the folder (mlflow.json), so a resume, a SLURM requeue or a
torchrun restart logs into the run it continues. Each epoch's metrics are logged at the record's optimizer step.
MLflow keeps every value logged, and offers no way to remove the values that a killed session logged after its
last checkpoint; a resume is exact, so it logs the same values at those steps again: read the last value per step.
Nothing leaves the machine unless ``logger.mlflow.tracking_uri`` names a server; by default the runs go to an
SQLite file in the run folder (in the sweep's folder for a sweep's jobs, one experiment per sweep).

An MLflow call that fails is reported once and MLflow stops there, while training and its checkpoints go on
(engine/tracker_run.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import flatten
from .tracker_run import TrackerRun

RUN_FILE = "mlflow.json"  # {"tracking_uri", "experiment", "run_id"}: the MLflow run this folder logs into
PARAM_CHARS = 500  # MLflow refuses longer parameter values
BATCH = 100  # MLflow's most parameters per log_batch call


def default_tracking_uri(run_dir: Path, sweep_dir: Path | None) -> str:
    return f"sqlite:///{(sweep_dir or run_dir).resolve()}/mlflow.db"


class MlflowRun(TrackerRun):
    """``start`` once the run is committed to its folder, ``metrics`` per record, ``finish`` in a ``finally``."""

    name, run_file = "MLflow", RUN_FILE

    def __init__(
        self, run_dir: Path, cfg: DictConfig, description: dict[str, Any], sweep_dir: Path | None = None
    ) -> None:
        super().__init__(run_dir)
        settings = cfg.logger.mlflow
        self.cfg, self.description = cfg, description
        self.tracking_uri = settings.tracking_uri or default_tracking_uri(self.run_dir, sweep_dir)
        self.experiment = settings.experiment or (sweep_dir.name if sweep_dir else cfg.data.name)
        self.upload_artifacts = settings.artifacts
        # a new experiment's artifacts beside its database, not in ./mlruns of wherever train.py was started
        self.artifact_location = (
            None if settings.tracking_uri else str((sweep_dir or self.run_dir).resolve() / "mlartifacts")
        )
        self.client: Any = None
        self.run_id: str | None = None

    def start(self, records: list[dict[str, Any]]) -> None:
        """Continue the folder's MLflow run, or create it with the run's settings as parameters. (MLflow writes
        each value before the call returns, so a killed session's ``records`` are in it already.)"""
        self._call(self._open)

    def _open(self) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(self.tracking_uri)
        kept = self.kept()
        if kept:
            self.run_id = kept["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self._create()

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(key, float(value), stamp, step) for key, value in values.items()]
        self._call(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def finish(self, status: str) -> None:
        """``status``: FINISHED, FAILED or KILLED (a stop on a signal, continued by a resume)."""
        if status == "FINISHED" and self.upload_artifacts:
            for path in self.artifact_files():
                self._call(lambda: self.client.log_artifact(self.run_id, str(path)))
        self._call(lambda: self.client.set_terminated(self.run_id, status=status))

    def _create(self) -> None:
        from mlflow.entities import Param, RunTag

        experiment = self.client.get_experiment_by_name(self.experiment)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else self.client.create_experiment(self.experiment, artifact_location=self.artifact_location)
        )
        run = self.client.create_run(experiment_id, run_name=self.run_dir.name)
        self.run_id = run.info.run_id
        self.keep({"tracking_uri": self.tracking_uri, "experiment": self.experiment, "run_id": self.run_id})
        settings = flatten(OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True))
        params = [Param(key, str(value)[:PARAM_CHARS]) for key, value in sorted(settings.items())]
        for first in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[first : first + BATCH])
        tags = {"run_folder": str(self.run_dir.resolve()), **{k: str(v) for k, v in self.description.items()}}
        self.client.log_batch(self.run_id, tags=[RunTag(key, value[:PARAM_CHARS]) for key, value in tags.items()])

    def where(self) -> str:
        return self.tracking_uri
