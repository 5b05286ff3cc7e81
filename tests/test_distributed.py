"""torchrun on the CPU (gloo): one run folder, DDP equivalence, exact evaluation, restarts, preemption."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import ROOT, load, run_in_process, wait_for_checkpoint

QUICK = ["trainer.device=cpu", "trainer.progress=false", "trainer.limit_val_batches=2"]


def torchrun_cmd(nproc: int, *overrides: str, max_restarts: int = 0) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        f"--max-restarts={max_restarts}",
        "--monitor-interval=0.2",
        "train.py",
        *overrides,
    ]


def torchrun(nproc: int, *overrides: str, max_restarts: int = 0, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        torchrun_cmd(nproc, *overrides, max_restarts=max_restarts),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return proc


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load(run_dir / "checkpoints/last.pt")["model"]


@contextlib.contextmanager
def launched(nproc: int, *overrides: str, max_restarts: int = 0, log: Path | None = None):
    """torchrun in the background; it and its workers are killed if the test fails half-way."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = log.open("w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        torchrun_cmd(nproc, *overrides, max_restarts=max_restarts),
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_two_processes_share_one_run_folder(tmp_path):
    # microseconds in the folder name: without agreeing on rank 0's clock, two processes would differ
    proc = torchrun(
        2,
        *QUICK,
        "trainer.epochs=1",
        "trainer.limit_train_batches=3",
        "data.batch_size=16",
        f"hydra.run.dir={tmp_path}/${{run_time:%H-%M-%S-%f}}",
    )
    (run_dir,) = [p for p in tmp_path.iterdir()]
    r = results(run_dir)
    assert r["status"] == "completed" and r["world_size"] == 2 and r["global_batch"] == 32
    assert r["eval_samples"] == 2 * 2 * 16  # two val batches on each of two ranks
    assert (run_dir / "train.log").read_text().count("epoch 1/1") == 1
    assert "global batch 32" in (run_dir / "train.log").read_text()
    assert "rank 1" not in (run_dir / "train.log").read_text()
    assert (proc.stdout + proc.stderr).count("epoch 1/1") == 1  # rank 1 prints warnings only


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    """DDP averages gradients: 2 × batch 8 must take the same steps as 1 × batch 16."""
    common = [
        *QUICK,
        "model=alexnet",
        "+model.kwargs.dropout=0.0",
        "conv=gmconv",
        "data.augment=false",
        "trainer.epochs=1",
        "trainer.limit_train_batches=3",
        "optim=sgd",
        "optim.lr=0.01",
        "seed=5",
    ]
    run_in_process(tmp_path / "one", *common, "data.batch_size=16")  # one process, no torchrun
    torchrun(2, *common, "data.batch_size=8", f"hydra.run.dir={tmp_path / 'two'}")
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    assert results(tmp_path / "two")["global_batch"] == results(tmp_path / "one")["global_batch"] == 16


@pytest.mark.slow
def test_evaluation_counts_every_sample_once_for_any_world_size(tmp_path):
    data = ["data=fake", "data.val_size=101", "data.batch_size=8", "data.eval_batch_size=7", "model=resnet20"]
    # the checkpoint to evaluate, trained in this process
    run_in_process(
        tmp_path / "train",
        *data,
        "trainer.device=cpu",
        "trainer.progress=false",
        "trainer.epochs=1",
        "trainer.limit_train_batches=4",
    )
    ckpt = tmp_path / "train/checkpoints/last.pt"
    evaluation = [*data, "trainer.device=cpu", "trainer.progress=false", "eval_only=true", f"ckpt={ckpt}"]
    seen = []
    for world_size in (1, 2, 3):
        run_dir = tmp_path / f"eval{world_size}"
        if world_size == 1:
            run_in_process(run_dir, *evaluation)
        else:
            torchrun(world_size, *evaluation, f"hydra.run.dir={run_dir}")
        r = results(run_dir)
        seen.append((r["eval_samples"], round(r["top1"] * 101 / 100), round(r["top5"] * 101 / 100)))
    assert seen[0][0] == 101
    assert seen[0] == seen[1] == seen[2], seen


@pytest.mark.slow
def test_ranks_draw_their_own_augmentation_and_a_resumed_run_is_bit_exact(tmp_path):
    """Each rank's global RNG (augmentation with num_workers=0, cutmix) is its own, and every rank's
    state is in the checkpoint: 1 epoch + resume ends with the weights of 2 epochs straight."""
    common = [
        *QUICK,
        "data.batch_size=16",
        "trainer.limit_train_batches=3",
        "data.cutmix_alpha=1.0",
        "sched=none",
        "trainer.ema_decay=0.9",
        "seed=2",
    ]
    torchrun(2, *common, "trainer.epochs=2", f"hydra.run.dir={tmp_path / 'full'}")
    torchrun(2, *common, "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'part'}")
    torchrun(2, f"resume={tmp_path / 'part'}", "trainer.epochs=2")
    full, part = load(tmp_path / "full/checkpoints/last.pt"), load(tmp_path / "part/checkpoints/last.pt")
    ranks = full["rng"]
    assert len(ranks) == 2
    assert not torch.equal(ranks[0]["torch"], ranks[1]["torch"])
    assert not torch.equal(ranks[0]["numpy"]["state"]["key"], ranks[1]["numpy"]["state"]["key"])
    for entry in ("model", "ema"):
        for key in full[entry]:
            assert torch.equal(full[entry][key], part[entry][key]), f"{entry}.{key}"


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_run_resumes(tmp_path):
    run_dir = tmp_path / "run"
    args = [
        *QUICK,
        "trainer.epochs=3",
        "trainer.limit_train_batches=8",
        "data.batch_size=16",
        "resume=auto",
        f"hydra.run.dir={run_dir}",
    ]
    with launched(2, *args, max_restarts=1, log=tmp_path / "torchrun.log") as proc:
        wait_for_checkpoint(proc, run_dir / "checkpoints/last.pt", lambda c: c["epoch"] >= 1)
        workers = children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)
        assert proc.wait(timeout=300) == 0, (tmp_path / "torchrun.log").read_text()[-4000:]
    r = results(run_dir)
    assert r["status"] == "completed" and r["epochs"] == 3
    assert "resumed from" in (run_dir / "train.log").read_text()
    assert load(run_dir / "checkpoints/last.pt")["step"] == 3 * 8


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_a_relaunch_continues(tmp_path):
    run_dir = tmp_path / "run"
    args = [
        *QUICK,
        "trainer.epochs=3",
        "trainer.limit_train_batches=12",
        "data.batch_size=16",
        f"hydra.run.dir={run_dir}",
    ]
    with launched(2, *args) as proc:
        wait_for_checkpoint(proc, run_dir / "checkpoints/last.pt", lambda c: c["epoch"] >= 1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    ckpt = load(run_dir / "checkpoints/last.pt")
    assert ckpt["batches_done"] > 0 or ckpt["epoch"] == 3, "no mid-epoch checkpoint was written"
    assert not (run_dir / "results.json").exists() or ckpt["epoch"] == 3
    log = (run_dir / "train.log").read_text()
    assert "stopped by a signal" in log and "the same torchrun command with resume=" in log

    torchrun(2, f"resume={run_dir}")
    r = results(run_dir)
    assert r["status"] == "completed" and r["world_size"] == 2
    assert load(run_dir / "checkpoints/last.pt")["step"] == 3 * 12
