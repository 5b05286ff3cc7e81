"""logger=[...,mlflow]: the MLflow record read back with MLflow's own client, after a kill and a resume, and in a
sweep; MLflow missing is named in one line."""

from __future__ import annotations

import csv
import importlib.util
import json

import preloaded
import pytest
from mlflow.tracking import MlflowClient

from engine.config import validate
from engine.errors import ConfigError
from helpers import QUICK, ROOT, compose_train, ok, train

INJECT = str(ROOT / "tests" / "inject.py")
CURVES = {"train/loss": "train_loss", "val/top1": "val_top1", "val/loss": "val_loss", "lr": "lr"}


def last_per_step(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    """MLflow keeps every value logged: a step logged again by a resume (the same value) counts once."""
    return {m.step: m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)}


@pytest.mark.slow
def test_a_killed_and_resumed_run_is_one_mlflow_run_whose_curves_are_metrics_csv(tmp_path):
    run_dir = tmp_path / "run"
    args = [
        "logger=[mlflow]", "trainer.epochs=3", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2",
        "data.batch_size=16", "trainer.progress=false", "trainer.checkpoint_every_steps=3", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    killed = preloaded.run(INJECT, "--kill-at-step", "6", "--", *args)
    assert killed.returncode == -9  # after epoch 1's record (step 4), with last.pt at step 6
    ok(train(f"resume={run_dir}"))
    kept = json.loads((run_dir / "mlflow.json").read_text())
    client = MlflowClient(kept["tracking_uri"])
    run = client.get_run(kept["run_id"])
    assert kept["tracking_uri"] == f"sqlite:///{run_dir.resolve()}/mlflow.db"
    assert len(client.search_runs([run.info.experiment_id])) == 1 and run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.1" and run.data.tags["conv"] == "gmconv"
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert len(rows) == 3
    for key, column in CURVES.items():
        assert last_per_step(client, kept["run_id"], key) == {int(r["step"]): float(r[column]) for r in rows}, key
    assert len(last_per_step(client, kept["run_id"], "sigma/conv1/mean")) == 3
    assert not (run_dir / "tb").exists()  # logger=[mlflow] alone: no TensorBoard, kept by the resume


@pytest.mark.slow
def test_each_job_of_a_sweep_is_an_mlflow_run_of_the_sweeps_experiment(tmp_path):
    sweep = tmp_path / "sweep"
    ok(train("-m", "seed=0,1", "logger=[tensorboard,mlflow]", *QUICK, f"hydra.sweep.dir={sweep}"))
    client = MlflowClient(f"sqlite:///{sweep.resolve()}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in runs) and len(list(sweep.glob("*/tb"))) == 2


def test_mlflow_missing_is_named_with_its_extra(monkeypatch):
    validate(compose_train("logger=[tensorboard,mlflow]"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ConfigError, match=r'logger=\[...,mlflow\] needs MLflow: pip install -e ".\[mlflow\]"'):
        validate(compose_train("logger=[tensorboard,mlflow]"))
