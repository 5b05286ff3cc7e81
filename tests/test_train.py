"""train.py end to end, as a user runs it: run folders, results, checkpoints, resume, sweeps, bad input.

One trained run (module fixture) serves every test that only needs a finished run; tests that change a
run work on a copy of it. Runs go through the real command line where the command line is what is
tested (argument handling, Hydra, exit codes), and through the runner in-process elsewhere.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from engine.checkpoint import load_checkpoint
from engine.preemption import Preempted, StopRequest
from helpers import QUICK, failed_with, load, ok, run_in_process, train

pytestmark = pytest.mark.slow  # every test here trains a run or starts a process


def scalar_tags(tb_dir: Path, kind: str = "scalars") -> set[str]:
    tags: set[str] = set()
    for events in tb_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()[kind])
    return tags


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def record(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run folder's record, by path (train.log too: a refused command adds no line to it)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A finished 2-epoch run of ResNet-20 with one σ per layer on the digits, through the command line."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    proc = ok(
        train(*QUICK, "trainer.epochs=2", "conv=gmconv_layer", "trainer.log_masks=true", f"hydra.run.dir={run_dir}")
    )
    return run_dir, proc


@pytest.fixture
def finished_copy(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished[0], copy)
    return copy


def test_a_run_writes_the_whole_run_folder(finished):
    run_dir, proc = finished
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert (results["model"], results["conv"], results["data"]) == ("resnet20", "gmconv_layer", "digits")
    assert 0 <= results["top1"] <= results["top5"] <= 100
    assert results["params"] > 250_000 and results["flops"] > 0 and results["eval_samples"] == 64
    assert results["best_epoch"] in (1, 2)
    assert "conv=gmconv_layer" in results["overrides"] and results["config"]["conv"]["sigma_granularity"] == "layer"
    for name in (
        "train.log",
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "metrics.csv",
    ):
        assert (run_dir / name).is_file(), name
    assert "epoch 2/2" in (run_dir / "train.log").read_text()
    tags = scalar_tags(run_dir / "tb")
    expected = {
        "train/loss",
        "train/top1",
        "lr",
        "val/loss",
        "val/top1",
        "val/top5",
        "perf/images_per_s",
        "perf/epoch_time_s",
        "sigma/conv1/mean",
        "sigma/layer3.2.conv2/max",
        "hparam/top1",
    }
    assert expected <= tags, expected - tags
    assert "sigma_mask/layer3.2.conv2" in scalar_tags(run_dir / "tb", "images")  # trainer.log_masks=true
    ckpt = load(run_dir / "checkpoints/last.pt")
    assert ckpt["epoch"] == 2 and ckpt["step"] == 8
    assert ckpt["config"]["model"]["name"] == "resnet20"
    assert {"optimizer", "rng", "best_top1"} <= ckpt.keys()
    rows = metrics_rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["val_top1"]) == pytest.approx(results["top1"])
    assert float(rows[1]["lr"]) > 0  # the mean lr of the epoch's steps, not the 0 the cosine ends at
    out = proc.stdout + proc.stderr
    assert "run complete: best top-1" in out and str(run_dir / "results.json") in out
    # the recipe it follows, and what the command line changed of it (docs/RECIPES.md)
    assert "recipe: digits/resnet20 — the digits demo: SGD lr 0.1" in out
    assert "changed from the recipe: data.batch_size 64 → 32; trainer.epochs 10 → 2" in out
    assert results["recipe_changes"] == ["data.batch_size 64 → 32", "trainer.epochs 10 → 2"]
    assert results["config"]["recipe"]["name"] == "digits"


def test_cifar10_and_imagefolder_train_from_files(tmp_path, cifar10_root, imagefolder_root):
    results = run_in_process(
        tmp_path / "cifar",
        *QUICK,
        "data=cifar10",
        f"data.root={cifar10_root}",
        "data.batch_size=4",
        "data.num_workers=0",
    )
    assert results["eval_samples"] == 8
    results = run_in_process(
        tmp_path / "folder",
        *QUICK,
        "data=imagefolder",
        f"data.root={imagefolder_root}",
        "data.image_size=32",
        "data.val_resize=36",
        "data.batch_size=4",
        "data.num_workers=0",
    )
    assert results["eval_samples"] == 8


def test_a_sweep_runs_every_good_job_past_settings_a_job_ignores_and_counts_the_failed_ones(tmp_path):
    """trainer.log_masks and data.root are ignored (and recorded) by the jobs that cannot use them; the CIFAR jobs
    fail when they look for their files, are reported, and the other jobs still run."""
    missing = tmp_path / "no_cifar_here"
    sweep = tmp_path / "sweep"
    proc = train(
        "-m", "conv=standard,gmconv", "data=digits,cifar10", f"data.root={missing}", "trainer.log_masks=true",
        *QUICK, f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    out = failed_with(proc, "2 job(s) of the sweep failed", "cifar-10-batches-py")
    assert proc.returncode == 2, out[-2000:]
    results = {json.loads(r.read_text())["conv"]: r for r in sweep.rglob("results.json")}
    assert sorted(results) == ["gmconv", "standard"]
    for conv, path in results.items():  # σ curves exactly for the GMConv run
        has_sigma = any(tag.startswith("sigma/") for tag in scalar_tags(path.parent / "tb"))
        assert has_sigma == (conv == "gmconv"), conv
        lines = json.loads(path.read_text())["settings_without_effect"]
        ignored = sorted(line.split(" ", 1)[0] for line in lines if "ignored by this job of the sweep" in line)
        assert ignored == (["data.root", "trainer.log_masks"] if conv == "standard" else ["data.root"]), lines
    assert len([p for p in sweep.iterdir() if p.is_dir() and p.name != ".submitit"]) == 2  # failed jobs leave none


def test_a_sweep_with_a_job_that_would_be_refused_trains_nothing(tmp_path):
    proc = train("-m", "conv=standard,gmconv", "optim.lr=0.05,-1", *QUICK, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    out = failed_with(proc, "2 of the sweep's 4 jobs would be refused, so none was started", "job 3 (conv=gmconv")
    assert proc.returncode == 2 and not (tmp_path / "sweep").exists(), out[-2000:]


def test_eval_only_takes_model_conv_and_data_from_the_checkpoint(finished, tmp_path):
    run_dir, _ = finished
    before = record(run_dir)
    proc = ok(
        train("eval_only=true", f"ckpt={run_dir}", "trainer.limit_val_batches=2", f"hydra.run.dir={tmp_path / 'eval'}")
    )
    evaluated = json.loads((tmp_path / "eval/results.json").read_text())
    trained = json.loads((run_dir / "results.json").read_text())
    assert evaluated["status"] == "evaluated" and evaluated["conv"] == "gmconv_layer"
    assert evaluated["checkpoint"].endswith("best.pt")
    assert evaluated["top1"] == pytest.approx(trained["best_top1"])
    assert "top1" in proc.stdout + proc.stderr
    assert record(run_dir) == before


def test_a_mistaken_resume_or_eval_leaves_the_run_record_intact(finished_copy):
    """(An extension that follows: tests/test_run_record.py.)"""
    run_dir = finished_copy
    before = record(run_dir)
    failed_with(train(f"resume={run_dir}", "model=resnet32"), "model.name=resnet32", "cannot change on resume")
    failed_with(train("eval_only=true", f"resume={run_dir}", f"hydra.run.dir={run_dir.parent / 'eval'}"), "eval_only")
    failed_with(train(f"hydra.run.dir={run_dir}", *QUICK), "already holds a completed run", "resume=")
    assert record(run_dir) == before


def test_resuming_a_complete_run_says_so_and_changes_nothing(finished_copy, caplog):
    caplog.set_level("INFO")
    before = record(finished_copy)
    results = run_in_process(finished_copy, *QUICK, "trainer.epochs=2", "conv=gmconv_layer", f"resume={finished_copy}")
    assert results["status"] == "completed"
    assert "already complete" in caplog.text
    assert record(finished_copy) == before


def test_a_run_folder_with_quotes_spaces_commas_and_equals_resumes_in_place(tmp_path):
    run_dir = tmp_path / "my run,lr=0.1"
    ok(train(*QUICK, f"hydra.run.dir='{run_dir}'"))
    ok(train(f"resume='{run_dir}'", "trainer.epochs=2"))
    assert load(run_dir / "checkpoints/last.pt")["epoch"] == 2  # continued in its own folder
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 2


def test_a_changed_lr_on_resume_is_applied(tmp_path, caplog):
    caplog.set_level("INFO")
    common = [*QUICK, "sched=none", "sched.warmup_epochs=0", "trainer.amp=fp16"]  # a constant lr
    run_in_process(tmp_path, *common)
    assert "trainer.amp=fp16 on the CPU" in caplog.text
    run_in_process(tmp_path, *common, "trainer.epochs=2", "optim.lr=0.5", f"resume={tmp_path}")
    assert "optim.lr 0.1 → 0.5" in caplog.text
    assert [float(r["lr"]) for r in metrics_rows(tmp_path)] == pytest.approx([0.1, 0.5])
    assert {g["lr"] for g in load(tmp_path / "checkpoints/last.pt")["optimizer"]["param_groups"]} == {0.5}


def test_resume_auto_starts_fresh_then_continues(tmp_path, caplog):
    caplog.set_level("INFO")
    run_in_process(tmp_path, *QUICK, "resume=auto")
    assert load(tmp_path / "checkpoints/last.pt")["epoch"] == 1
    run_in_process(tmp_path, *QUICK, "trainer.epochs=2", "resume=auto")
    assert "resumed" in caplog.text
    assert load(tmp_path / "checkpoints/last.pt")["epoch"] == 2


def test_a_stop_at_an_epochs_last_step_finishes_that_epoch(tmp_path, monkeypatch):
    """A signal seen at the last step: the epoch is evaluated and saved, and the resumed run trains on."""
    monkeypatch.setattr(StopRequest, "should_stop", lambda self, step, sync=False: step >= 4)
    with pytest.raises(Preempted, match="stopped by a signal"):
        run_in_process(tmp_path, *QUICK, "trainer.epochs=2")
    ckpt = load(tmp_path / "checkpoints/last.pt")
    assert (ckpt["epoch"], ckpt["batches_done"], ckpt["step"]) == (1, 0, 4)
    monkeypatch.undo()
    run_in_process(tmp_path, *QUICK, "trainer.epochs=2", f"resume={tmp_path}")
    rows = metrics_rows(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(float(r["train_loss"]) > 0 and float(r["images_per_s"]) > 0 for r in rows)


def test_progress_lines_when_not_on_a_terminal(tmp_path, caplog):
    caplog.set_level("INFO")
    run_in_process(tmp_path, *QUICK, "trainer.progress=true", "trainer.log_every_steps=2")
    lines = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    assert [line.split("batch ")[1].split()[0] for line in lines] == ["2/4", "4/4"]
    assert all("img/s" in line and "loss" in line and "lr" in line for line in lines)


# One case per stage that can reject a setting; tests/test_config.py covers every kind in-process.
@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (["model=resnet999"], ["resnet999", "resnet20"]),  # Hydra: unknown group option, choices listed
        (["trainer.epoch=3"], ["epoch"]),  # Hydra: key not in the typed schema
        (["+trainer.epoch=3"], ["trainer.epoch", "not a setting"]),  # engine.config.validate: added with +
        (["trainer.epochs=0"], ["trainer.epochs=0"]),  # engine.config.validate
    ],
)
def test_bad_settings_fail_in_one_clear_line_and_leave_no_folder(tmp_path, overrides, fragments):
    failed_with(train(*QUICK, *overrides, f"hydra.run.dir={tmp_path / 'run'}"), *fragments)
    assert not (tmp_path / "run").exists()


def test_missing_dataset_fails_in_one_clear_line_and_leaves_no_folder(tmp_path):
    out = failed_with(
        train(*QUICK, "data=cifar10", f"data.root={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run'}"),
        "data.download",
    )
    assert str(tmp_path / "nowhere") in out
    assert not (tmp_path / "run").exists()


def bad_checkpoints(good: Path, tmp_path: Path) -> list[Path]:
    """A truncated copy of ``good``, random bytes, and a pickle that would run code when unpickled."""
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    malicious = tmp_path / "malicious.pt"
    torch.save({"model": RunsCode(tmp_path / "pwned")}, malicious)
    return [truncated, garbage, malicious]


def test_unreadable_checkpoints_are_refused_without_running_code(finished, tmp_path):
    good = finished[0] / "checkpoints/last.pt"
    for bad in bad_checkpoints(good, tmp_path):
        with pytest.raises(ValueError, match="cannot read checkpoint"):
            load_checkpoint(bad)
    assert not (tmp_path / "pwned").exists()
    assert load_checkpoint(good)["epoch"] == 2


def test_bad_checkpoints_fail_in_one_clear_line(finished, tmp_path):
    good = finished[0] / "checkpoints/last.pt"
    truncated = bad_checkpoints(good, tmp_path)[0]
    failed_with(
        train("eval_only=true", f"ckpt={truncated}", f"hydra.run.dir={tmp_path / 'eval'}"),
        str(truncated),
        "cannot read checkpoint",
    )
    failed_with(train("eval_only=true", f"ckpt={tmp_path}"), "holds no checkpoint")
    # the same refusals in-process (the command line's one-line exit is what the two above check)
    with pytest.raises(ValueError, match="model=resnet20.*same model/conv settings"):
        run_in_process(tmp_path / "eval", "eval_only=true", f"ckpt={good}", "model=resnet32", "conv=gmconv_layer")
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        run_in_process(tmp_path / "eval", f"resume={tmp_path / 'absent.pt'}")
    assert not (tmp_path / "eval" / "results.json").exists()


class RunsCode:
    """Unpickling this would create a file: a weights_only loader must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))
