"""logger=[...,mlflow,wandb]: the MLflow record read back with MLflow's own client and the W&B offline run files
read back as W&B wrote them (analysis/wandb_file.py), after a kill and a resume, and in a sweep; a tracker missing is
named in one line."""

from __future__ import annotations

import csv
import importlib.util
import json

import preloaded
import pytest
from mlflow.tracking import MlflowClient

from analysis import wandb_file
from engine.config import validate
from engine.errors import ConfigError
from engine.wandb_run import WandbRun
from helpers import QUICK, ROOT, compose_train, ok, train

INJECT = str(ROOT / "tests" / "inject.py")
CURVES = {"train/loss": "train_loss", "val/top1": "val_top1", "val/loss": "val_loss", "lr": "lr"}


def last_per_step(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    """MLflow keeps every value logged: a step logged again by a resume (the same value) counts once."""
    return {m.step: m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)}


@pytest.mark.slow
def test_a_killed_and_resumed_run_is_one_tracker_run_whose_curves_are_metrics_csv(tmp_path):
    """One run folder, two sessions (killed, then resumed): one MLflow run and one W&B run, each with the curves
    of metrics.csv, every epoch once."""
    run_dir = tmp_path / "run"
    args = [
        "logger=[mlflow,wandb]", "trainer.epochs=3", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2",
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
    assert (
        run.data.tags["recipe"].startswith("digits/resnet20")
        and "trainer.epochs 10 → 3" in run.data.tags["changed_from_recipe"]
    )
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert len(rows) == 3
    for key, column in CURVES.items():
        assert last_per_step(client, kept["run_id"], key) == {int(r["step"]): float(r[column]) for r in rows}, key
    assert len(last_per_step(client, kept["run_id"], "sigma/conv1/mean")) == 3
    assert last_per_step(client, kept["run_id"], "hparam/top1") == {12: float(rows[-1]["val_top1"])}  # the final one
    assert not (run_dir / "tb").exists()  # no TensorBoard in the logger list, kept by the resume

    run_id = json.loads((run_dir / "wandb.json").read_text())["run_id"]
    sessions = sorted(run_dir.glob("wandb/offline-run-*"))
    assert len(sessions) == 2 and all((session / f"run-{run_id}.wandb").is_file() for session in sessions)
    logged = [row for session in sessions for row in wandb_file.history(session / f"run-{run_id}.wandb")]
    # the killed session's buffered writes may be lost: the resume logs again what the checkpoint holds, so every
    # epoch is there, and one that the killed session did write is there twice with the same values
    by_step = {int(r["step"]): r for r in rows}
    epochs = [row for row in logged if "val/top1" in row]
    assert {row["trainer/step"] for row in epochs} == set(by_step) and epochs[-1]["trainer/step"] == max(by_step)
    for row in epochs:
        for key, column in CURVES.items():
            assert row[key] == float(by_step[row["trainer/step"]][column]), (key, row["trainer/step"])
    info = wandb_file.run_info(sessions[-1] / f"run-{run_id}.wandb")
    assert info["project"] == "gmconv" and info["config"]["optim.lr"] == 0.1
    sigma_steps = {row["trainer/step"] for row in logged if "sigma/conv1/mean" in row}
    assert {8, 12} <= sigma_steps <= {4, 8, 12}  # σ is not in the checkpoint's records: the resumed session's


@pytest.mark.slow
def test_each_job_of_a_sweep_is_a_tracker_run_grouped_by_the_sweep_with_its_artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))  # W&B's copies of artifacts until synced
    sweep = tmp_path / "sweep"
    trackers = ["logger=[tensorboard,mlflow,wandb]", "logger.mlflow.artifacts=true", "logger.wandb.artifacts=true"]
    ok(train("-m", "seed=0,1", *trackers, *QUICK, f"hydra.sweep.dir={sweep}"))
    client = MlflowClient(f"sqlite:///{sweep.resolve()}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in runs) and len(list(sweep.glob("*/tb"))) == 2
    for run in runs:
        assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["best.pt", "config.yaml"]
        assert run.info.artifact_uri.startswith(f"{sweep.resolve()}/mlartifacts")  # beside the database
    files = sorted(sweep.glob("*/wandb/offline-run-*/run-*.wandb"))
    infos = [wandb_file.run_info(path) for path in files]
    assert len({info["id"] for info in infos}) == 2 and {info["group"] for info in infos} == {"sweep"}
    assert sorted(info["config"]["seed"] for info in infos) == [0, 1]
    for path in files:  # a session that ended cleanly: each epoch once, at its step
        assert [row["trainer/step"] for row in wandb_file.history(path) if "val/top1" in row] == [4]
        (artifact,) = [r.artifact for r in wandb_file.records(path) if r.WhichOneof("record_type") == "artifact"]
        assert artifact.type == "model"
        assert sorted(entry.path for entry in artifact.manifest.contents) == ["best.pt", "config.yaml"]


@pytest.mark.parametrize("tracker, named", [("mlflow", "MLflow"), ("wandb", "Weights & Biases")])
def test_a_missing_tracker_is_named_with_its_extra(monkeypatch, tracker, named):
    validate(compose_train(f"logger=[tensorboard,{tracker}]"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ConfigError, match=rf'logger=\[...,{tracker}\] needs {named}: pip install -e ".\[{tracker}\]"'):
        validate(compose_train(f"logger=[tensorboard,{tracker}]"))


def test_a_failing_tracker_is_reported_once_and_the_run_goes_on(tmp_path, caplog):
    cfg = compose_train("logger=[wandb]", "logger.wandb.mode=online")
    run = WandbRun(tmp_path, cfg, {"conv": "gmconv"})
    run._call(lambda: 1 / 0)
    run.metrics({"val/top1": 1.0}, step=1)  # never reaches W&B: it failed before
    run.finish("FINISHED")
    assert caplog.text.count("Weights & Biases (online") == 1 and "division by zero" in caplog.text
