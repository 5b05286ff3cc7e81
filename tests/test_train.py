"""train.py end to end, as a user runs it: run folders, results, checkpoints, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from engine.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# A few seconds a run: CIFAR ResNet-20 on 4 batches of digits per epoch.
QUICK = ["trainer.epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "data.batch_size=32"]


def train(*overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "train.py", *overrides], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def failed_with(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert "Traceback" not in out, out[-3000:]
    for fragment in fragments:
        assert fragment in out, out[-2000:]
    return out


def scalar_tags(tb_dir: Path) -> set[str]:
    tags: set[str] = set()
    for events in tb_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


def model_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["model"]


def test_default_run_writes_the_whole_run_folder(tmp_path):
    ok(train(*QUICK, "trainer.epochs=2", f"hydra.run.dir={tmp_path}"))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "completed"
    assert (results["model"], results["conv"], results["data"]) == ("resnet20", "gmconv", "digits")
    assert 0 <= results["top1"] <= results["top5"] <= 100
    assert results["params"] > 250_000 and results["flops"] > 0 and results["eval_samples"] == 64
    assert results["best_epoch"] in (1, 2)
    for name in ("train.log", ".hydra/config.yaml", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (tmp_path / name).is_file(), name
    assert "epoch 2/2" in (tmp_path / "train.log").read_text()
    tags = scalar_tags(tmp_path / "tb")
    expected = {"train/loss", "train/top1", "lr", "val/loss", "val/top1", "val/top5", "perf/images_per_s",
                "perf/epoch_time_s", "sigma/conv1/mean", "sigma/layer3.2.conv2/max", "hparam/top1"}
    assert expected <= tags, expected - tags
    ckpt = torch.load(tmp_path / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 8
    assert ckpt["config"]["model"]["name"] == "resnet20"
    assert {"optimizer", "scheduler", "rng", "best_top1"} <= ckpt.keys()


def test_cifar10_and_imagefolder_train_from_files(tmp_path, cifar10_root, imagefolder_root):
    ok(train(*QUICK, "data=cifar10", f"data.root={cifar10_root}", "data.batch_size=4", "data.num_workers=0",
             f"hydra.run.dir={tmp_path / 'cifar'}"))
    assert json.loads((tmp_path / "cifar/results.json").read_text())["eval_samples"] == 8
    ok(train(*QUICK, "data=imagefolder", f"data.root={imagefolder_root}", "data.image_size=32", "data.val_resize=36",
             "data.batch_size=4", "data.num_workers=0", f"hydra.run.dir={tmp_path / 'folder'}"))
    assert json.loads((tmp_path / "folder/results.json").read_text())["eval_samples"] == 8


def test_multirun_writes_one_folder_per_job(tmp_path):
    ok(train("-m", "conv=standard,gmconv", *QUICK, f"hydra.sweep.dir={tmp_path}"))
    results = {json.loads(r.read_text())["conv"]: r.parent for r in tmp_path.rglob("results.json")}
    assert sorted(results) == ["gmconv", "standard"]
    for conv, run_dir in results.items():  # σ curves exactly for the GMConv run
        has_sigma = any(tag.startswith("sigma/") for tag in scalar_tags(run_dir / "tb"))
        assert has_sigma == (conv == "gmconv"), conv


def test_eval_only_reports_the_checkpoint(tmp_path):
    ok(train(*QUICK, f"hydra.run.dir={tmp_path / 'run'}"))
    trained = json.loads((tmp_path / "run/results.json").read_text())
    proc = ok(train("eval_only=true", f"ckpt={tmp_path / 'run/checkpoints/last.pt'}", "trainer.limit_val_batches=2",
                    "data.batch_size=32", f"hydra.run.dir={tmp_path / 'eval'}"))
    evaluated = json.loads((tmp_path / "eval/results.json").read_text())
    assert evaluated["status"] == "evaluated"
    assert evaluated["top1"] == pytest.approx(trained["top1"])
    assert "top1" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_resumed_run_ends_with_the_same_weights(tmp_path):
    """Kill a 4-epoch run once it has saved epoch 2, resume it, and compare with an uninterrupted run."""
    args = ["trainer.epochs=4", "trainer.limit_train_batches=6", "trainer.limit_val_batches=1", "data.batch_size=16",
            "trainer.deterministic=true", "trainer.progress=false", "seed=3"]
    ok(train(*args, f"hydra.run.dir={tmp_path / 'full'}"))

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "train.py", *args, f"hydra.run.dir={killed}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints/last.pt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if last.is_file() and torch.load(last, map_location="cpu", weights_only=True)["epoch"] >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "results.json").exists()

    ok(train(f"resume={killed}"))
    results = json.loads((killed / "results.json").read_text())
    assert results["status"] == "completed" and results["epochs"] == 4
    full, resumed = model_weights(tmp_path / "full/checkpoints/last.pt"), model_weights(last)
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=1e-6, msg=key)


def test_resume_auto_starts_fresh_then_continues(tmp_path):
    ok(train(*QUICK, "resume=auto", f"hydra.run.dir={tmp_path}"))
    assert torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)["epoch"] == 1
    proc = ok(train(*QUICK[1:], "trainer.epochs=2", "resume=auto", f"hydra.run.dir={tmp_path}"))
    assert "resumed from" in proc.stdout + proc.stderr
    assert torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)["epoch"] == 2


# One case per stage that can reject a setting; tests/test_config.py covers every kind in-process.
@pytest.mark.parametrize("overrides, fragments", [
    (["model=resnet999"], ["resnet999", "resnet20"]),  # Hydra: unknown group option, choices listed
    (["trainer.epoch=3"], ["epoch"]),  # Hydra: key not in the typed schema
    (["trainer.epochs=0"], ["trainer.epochs=0"]),  # engine.config.validate
])
def test_bad_settings_fail_in_one_clear_line(tmp_path, overrides, fragments):
    failed_with(train(*QUICK, *overrides, f"hydra.run.dir={tmp_path}"), *fragments)
    assert not (tmp_path / "results.json").exists()


def test_missing_dataset_fails_in_one_clear_line(tmp_path):
    out = failed_with(train(*QUICK, "data=cifar10", f"data.root={tmp_path / 'nowhere'}",
                            f"hydra.run.dir={tmp_path / 'run'}"), "data.download")
    assert str(tmp_path / "nowhere") in out
    assert not (tmp_path / "run/results.json").exists()


def bad_checkpoints(good: Path, tmp_path: Path) -> list[Path]:
    """A truncated copy of ``good``, random bytes, and a pickle that would run code when unpickled."""
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    malicious = tmp_path / "malicious.pt"
    torch.save({"model": RunsCode(tmp_path / "pwned")}, malicious)
    return [truncated, garbage, malicious]


def test_unreadable_checkpoints_are_refused_without_running_code(tmp_path):
    ok(train(*QUICK, f"hydra.run.dir={tmp_path / 'run'}"))
    good = tmp_path / "run/checkpoints/last.pt"
    for bad in bad_checkpoints(good, tmp_path):
        with pytest.raises(ValueError, match="cannot read checkpoint"):
            load_checkpoint(bad)
    assert not (tmp_path / "pwned").exists()
    assert load_checkpoint(good)["epoch"] == 1


def test_bad_checkpoints_fail_in_one_clear_line(tmp_path):
    ok(train(*QUICK, f"hydra.run.dir={tmp_path / 'run'}"))
    good = tmp_path / "run/checkpoints/last.pt"
    truncated = bad_checkpoints(good, tmp_path)[0]
    failed_with(train("eval_only=true", f"ckpt={truncated}", f"hydra.run.dir={tmp_path / 'eval'}"),
                str(truncated), "cannot read checkpoint")
    failed_with(train("eval_only=true", f"ckpt={good}", "model=resnet32", f"hydra.run.dir={tmp_path / 'eval'}"),
                "model=resnet20", "same model/conv settings")
    failed_with(train(f"resume={tmp_path / 'absent.pt'}", f"hydra.run.dir={tmp_path / 'eval'}"), "absent.pt")
    assert not (tmp_path / "eval/results.json").exists()


class RunsCode:
    """Unpickling this would create a file: a weights_only loader must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))
