"""SLURM launch through hydra-submitit-launcher: no cluster here, so check the config and the sbatch file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import submitit
from hydra.utils import instantiate

from engine.distributed import export_submitit_environment
from helpers import compose_train


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """`srun` (submitit checks that it exists) and an `sbatch` that accepts any job, on PATH; a submitted
    job's results are not waited for. Everything else is the real launcher plugin and submitit."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command, output in (("srun", ""), ("sbatch", "Submitted batch job 4242")):
        (bin_dir / command).write_text(f"#!/bin/sh\necho '{output}'\n")
        (bin_dir / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(submitit.Job, "results", lambda self: [None])


def sbatch_text(tmp_path: Path, *overrides: str) -> str:
    """The sbatch file that the launcher plugin submits for these overrides, read from its submitit folder."""
    cfg = compose_train(
        "hydra/launcher=slurm",
        f"hydra.sweep.dir={tmp_path}/sweep",
        f"hydra.launcher.submitit_folder={tmp_path}/submitit",
        *overrides,
        hydra=True,
    )
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    launcher.launch([["conv=gmconv"]], initial_job_idx=0)
    (submitted,) = (tmp_path / "submitit").rglob("*_submission.sh")
    return submitted.read_text()


@pytest.mark.slow
def test_slurm_launcher_generates_the_requested_job(tmp_path, fake_slurm):
    text = sbatch_text(
        tmp_path,
        "hydra.launcher.nodes=2",
        "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.timeout_min=90",
        "hydra.launcher.partition=gpu",
    )
    for line in (
        "--nodes=2",
        "--gpus-per-node=4",
        "--ntasks-per-node=4",
        "--time=90",
        "--partition=gpu",
        "--cpus-per-task=10",
    ):
        assert f"#SBATCH {line}\n" in text, text


@pytest.mark.slow
def test_slurm_defaults_run_one_task_per_gpu(tmp_path, fake_slurm):
    text = sbatch_text(tmp_path)
    assert "#SBATCH --nodes=1\n" in text and "#SBATCH --gpus-per-node=8\n" in text
    assert "#SBATCH --ntasks-per-node=8\n" in text


def test_submitit_task_environment_becomes_torch_distributed(monkeypatch):
    """Each SLURM task sees SLURM's variables only; init_distributed first exports torch's."""
    env = {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "42",
        "SLURM_NODEID": "1",
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "8",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "node[7-8]",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")  # recorded, so that the values exported below are undone after the test
        monkeypatch.delenv(key)
    export_submitit_environment()
    assert (os.environ["WORLD_SIZE"], os.environ["RANK"], os.environ["LOCAL_RANK"]) == ("8", "5", "1")
    assert os.environ["MASTER_ADDR"] == "node7" and 20000 <= int(os.environ["MASTER_PORT"]) <= 60000
