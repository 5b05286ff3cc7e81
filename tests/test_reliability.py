"""Faults injected into real runs, and what each one keeps (docs/RELIABILITY.md tabulates them).

Real where this machine allows it: SIGKILL and SIGINT sent to running train.py processes, corrupt and
empty image files, a run folder whose parent is a file (and a read-only folder when not running as
root, whom permissions do not stop). A full disk is simulated at the write call: the checkpoint's file
gets half its bytes, then the write raises OSError(ENOSPC). Every test checks what is kept.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import preloaded
import pytest
import torch

import engine.checkpoint
from data.bad_images import UnreadableImage
from engine.config import validate
from engine.distributed import DistInfo
from engine.faults import StorageError
from engine.nonfinite import Diverged, NonFiniteGuard
from engine.preemption import StopRequest
from engine.run_folder import RunFolder, claim_folder
from engine.tracking import Tracker
from gmconv import GMConv2d
from helpers import (
    QUICK,
    ROOT,
    compose_train,
    failed_with,
    folder_args,
    load,
    ok,
    run_in_process,
    train,
    wait_for_checkpoint,
)

INJECT = str(ROOT / "tests" / "inject.py")


def files(run_dir: Path) -> dict[str, bytes]:
    """The checkpoints and results of a run folder, by name: what a fault must leave as it was."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and (p.suffix == ".pt" or p.name == "results.json")
    }


def partial_writes(run_dir: Path) -> list[Path]:
    return sorted(run_dir.rglob(".*.tmp"))


def all_finite(state_dict: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(t).all() for t in state_dict.values() if t.is_floating_point())


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> Path:
    """A finished 1-epoch run (4 steps): the state that later faults must keep."""
    run_dir = tmp_path_factory.mktemp("reliability") / "run"
    run_in_process(run_dir, *QUICK)
    return run_dir


@pytest.fixture
def one_epoch_copy(one_epoch, tmp_path) -> Path:
    return Path(shutil.copytree(one_epoch, tmp_path / "run"))


# --- divergence ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_diverging_run_stops_in_one_line_and_its_checkpoints_keep_the_last_finite_state(one_epoch_copy):
    """lr=1e6 from a trained epoch: NaN within a few steps; detection is deferred (every 3 steps), so the
    weights in memory are NaN when it stops, and nothing of them may reach a checkpoint."""
    run_dir = one_epoch_copy
    before = files(run_dir)
    with pytest.raises(Diverged) as caught:
        run_in_process(
            run_dir,
            *QUICK,
            "trainer.epochs=2",
            "optim.lr=1e6",
            "trainer.log_every_steps=3",
            "trainer.checkpoint_every_steps=2",
            f"resume={run_dir}",
        )
    message = str(caught.value)
    assert "\n" not in message
    for fragment in (
        "non-finite",
        "at step",
        "lr ",
        "last finite loss",
        "optim.lr",
        "sched.warmup_epochs",
        "trainer.grad_clip",
        "bf16",
        f"resume={run_dir}",
    ):
        assert fragment in message, message
    diverged_at = int(re.search(r"at step (\d+)", message).group(1))
    for name in ("last.pt", "best.pt"):  # saved checkpoints were checked finite; the NaN weights were never saved
        ckpt = load(run_dir / "checkpoints" / name)
        assert all_finite(ckpt["model"]) and ckpt["step"] < diverged_at, name
    after = files(run_dir)
    assert after["checkpoints/best.pt"] == before["checkpoints/best.pt"]  # no NaN "best" evaluation
    # the run was being extended, so it is not complete: no results.json; the 1-epoch result stays in its session
    first, extension = json.loads((run_dir / "history.json").read_text())["sessions"]
    assert "results.json" not in after and first["results"]["top1"] == json.loads(before["results.json"])["top1"]
    assert first["ended"] == "completed" and extension["ended"].startswith("failed: Diverged: training diverged")


@pytest.mark.slow
def test_skip_mode_skips_non_finite_steps_and_counts_them(tmp_path, monkeypatch):
    """Two injected NaN losses out of 8 steps: skipped and counted, weights finite."""
    observe = NonFiniteGuard.observe

    def nan_loss_at_steps_3_and_6(self, loss, model, *, step, **kwargs):  # the loss the guard sees at that step
        return observe(self, loss * float("nan") if step in (3, 6) else loss, model, step=step, **kwargs)

    monkeypatch.setattr(NonFiniteGuard, "observe", nan_loss_at_steps_3_and_6)
    results = run_in_process(tmp_path / "skip", *QUICK, "trainer.epochs=2", "trainer.nonfinite=skip")
    assert results["status"] == "completed" and results["nonfinite_skipped"] == 2
    ckpt = load(tmp_path / "skip/checkpoints/last.pt")
    assert all_finite(ckpt["model"]) and ckpt["counters"]["nonfinite_skipped"] == 2


def test_skip_mode_stops_past_its_limit():
    model, counters = torch.nn.Linear(2, 2), {"nonfinite_skipped": 1}  # one step skipped before a resume
    guard = NonFiniteGuard("skip", 2, 20, counters, distributed=False, kept=lambda: "kept")
    nan = torch.tensor(float("nan"))
    assert not guard.observe(torch.tensor(1.0), model, step=1, epoch=1, lr=0.1)  # finite: stepped
    assert guard.observe(nan, model, step=2, epoch=1, lr=0.1) and counters["nonfinite_skipped"] == 2
    with pytest.raises(Diverged, match="more than trainer.nonfinite_limit=2 steps"):
        guard.observe(nan, model, step=3, epoch=1, lr=0.1)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("trainer.nonfinite_limit=5", "trainer.nonfinite=skip"),  # a limit that stop mode would ignore
        ("trainer.nonfinite=skip trainer.nonfinite_limit=0", "positive"),
        ("data.skip_bad_images=true", "not used by data=digits"),  # in-memory data has no files to skip
    ],
)
def test_reliability_settings_that_would_be_ignored_or_are_invalid_are_refused(override, fragment):
    with pytest.raises(ValueError, match=fragment):
        validate(compose_train(*override.split()))


def test_fp16_scaler_overflows_are_not_divergence_but_a_nan_loss_is():
    model = torch.nn.Linear(2, 2)
    model.weight.grad = torch.full((2, 2), float("inf"))  # what a too-large loss scale produces
    scaler = torch.amp.GradScaler("cpu")
    guard = NonFiniteGuard("stop", 1, 1, {}, distributed=False, kept=lambda: "kept")
    guard.observe(torch.tensor(2.0), model, step=1, epoch=1, lr=0.1, scaler=scaler)  # checked at once: no error
    with pytest.raises(Diverged, match="gradients at step 2"):  # the same gradients without fp16
        guard.observe(torch.tensor(2.0), model, step=2, epoch=1, lr=0.1)
    with pytest.raises(Diverged, match=r"loss \(nan\) at step 3"):
        guard.observe(torch.tensor(float("nan")), model, step=3, epoch=1, lr=0.1, scaler=scaler)


def test_a_nan_sigma_histogram_does_not_crash_tensorboard(tmp_path):
    layer = GMConv2d(3, 4, 3)
    with torch.no_grad():
        layer.sigma.fill_(float("nan"))
    tracker = Tracker(tmp_path, enabled=True)
    tracker.start(records=[])
    tracker.sigma(torch.nn.Sequential(layer), step=1)
    tracker.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


# --- unreadable images --------------------------------------------------------------------------------


@pytest.fixture
def corrupt_tree(imagefolder_root) -> tuple[Path, Path, Path]:
    """The 3-class tree with one training PNG of random bytes and one empty validation PNG."""
    corrupt = imagefolder_root / "train/bee/1.png"
    corrupt.write_bytes(os.urandom(2048))
    empty = imagefolder_root / "val/cat/2.png"
    empty.write_bytes(b"")
    return imagefolder_root, corrupt, empty


@pytest.mark.slow
def test_an_unreadable_image_stops_the_run_in_one_line_naming_it(corrupt_tree, tmp_path):
    root, corrupt, _ = corrupt_tree
    with pytest.raises(UnreadableImage) as caught:  # raised in a DataLoader worker
        run_in_process(tmp_path / "run", *folder_args(root, "data.num_workers=1"))
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    assert str(corrupt) in message and "data.skip_bad_images=true" in message and "scripts.check_data" in message
    assert not (tmp_path / "run/checkpoints").exists()  # nothing trained, nothing saved as if it had


@pytest.mark.slow
def test_skip_bad_images_replaces_and_counts_them_exactly_across_a_resume(corrupt_tree, tmp_path, caplog):
    """12 training images (1 unreadable), 3 batches of 4 per epoch, 2 epochs: 2 replacements in training,
    counted with workers and kept exactly through a resume; the empty val image once per validation pass."""
    caplog.set_level("INFO")
    root, _, _ = corrupt_tree
    run_dir = tmp_path / "run"
    args = folder_args(root, "data.skip_bad_images=true", "data.num_workers=2")
    first = run_in_process(run_dir, *args)
    assert first["bad_images_replaced"] == {"train": 1, "val": 1}
    assert load(run_dir / "checkpoints/last.pt")["counters"]["bad_images_replaced"] == 1
    resumed = run_in_process(run_dir, *args, "trainer.epochs=2", f"resume={run_dir}")
    assert resumed["bad_images_replaced"] == {"train": 2, "val": 1}  # val: this process's one pass
    assert "unreadable images replaced: 1 in training (run total 2), 1 in validation" in caplog.text
    assert resumed["eval_samples"] == 12  # the empty file's place is taken, every sample still counted


@pytest.mark.slow
def test_check_data_lists_every_problem_and_passes_a_clean_tree(imagefolder_root, tmp_path):
    clean = tmp_path / "clean"
    shutil.copytree(imagefolder_root, clean)
    (imagefolder_root / "train/ant/0.png").write_bytes(os.urandom(512))
    (imagefolder_root / "train/bee/2.png").write_bytes(b"")
    (imagefolder_root / "val/cat/notes.txt").write_text("not an image")
    truncated = imagefolder_root / "val/ant/1.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    (imagefolder_root / "val/dog").mkdir()
    proc = preloaded.run(
        "-m", "scripts.check_data", str(imagefolder_root), "--workers", "2", "--image-size", "32", timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    for name, problem in (
        ("train/ant/0.png", "unreadable"),
        ("train/bee/2.png", "empty file"),
        ("val/ant/1.png", "unreadable"),
        ("val: 1 class folder without image files (dog)", ""),
    ):
        assert any(line.startswith("problem:") and name in line and problem in line for line in lines), (name, lines)
    assert any("only in val: dog" in line for line in lines)
    assert any(line.startswith("ignored:") and "val/cat/notes.txt" in line for line in lines)  # training skips it
    assert "24 image files checked: 5 problems, 1 other file ignored, 0 warnings" in lines[-1]
    clean_proc = preloaded.run("-m", "scripts.check_data", str(clean), "--image-size", "32", timeout=120)
    assert clean_proc.returncode == 0 and "24 image files checked: 0 problems" in clean_proc.stdout


# --- storage ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_folder_that_cannot_be_made_fails_in_one_line(tmp_path):
    """A parent that is a file stops root as well as anyone; chmod does not stop root, so the read-only
    case runs only as another user."""
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    failed_with(
        train(*QUICK, f"hydra.run.dir={blocker / 'run'}"), f"{blocker} is a file, not a folder", "hydra.run.dir="
    )
    assert blocker.read_text() == "keep me"
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        failed_with(train(*QUICK, f"hydra.run.dir={locked / 'run'}"), "cannot use", "Permission denied")
        assert not list(locked.iterdir())


# --- internal errors ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_internal_error_is_reported_as_a_bug_with_its_traceback_and_bad_input_in_one_line(tmp_path):
    """A ValueError raised inside the training loop is a bug, not the user's mistake: exit 1, its traceback on
    the terminal and in train.log. (Refused input, engine/errors.py, still ends in one line with exit 2:
    tests/test_train.py's bad settings, data and checkpoints.)"""
    run_dir = tmp_path / "bug"
    proc = preloaded.run(INJECT, "--bug-at-step", "2", "--", *QUICK, f"hydra.run.dir={run_dir}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    for text in (out, (run_dir / "train.log").read_text()):
        assert "Traceback (most recent call last)" in text, text[-3000:]
        assert "in a_bug_in_the_engine" in text and "ValueError: boom" in text, text[-3000:]
    assert json.loads((run_dir / "history.json").read_text())["sessions"][-1]["ended"] == "failed: ValueError: boom"


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_one_and_the_run_resumes(one_epoch_copy, monkeypatch):
    run_dir = one_epoch_copy
    before = files(run_dir)

    class DiskFull:
        """A file on a disk that fills up halfway through the write."""

        def __init__(self, path, mode):
            self.file = open(path, mode)

        def write(self, data):
            self.file.write(memoryview(data)[: len(data) // 2])
            self.file.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def checkpoints_fill_the_disk(path, mode="r", *args, **kwargs):  # the small JSON files still fit
        return DiskFull(path, mode) if "b" in mode else open(path, mode, *args, **kwargs)

    monkeypatch.setattr(engine.checkpoint, "open", checkpoints_fill_the_disk, raising=False)
    with pytest.raises(StorageError) as caught:
        run_in_process(run_dir, *QUICK, "trainer.epochs=2", f"resume={run_dir}")
    message = str(caught.value)
    assert "\n" not in message and "No space left on device [ENOSPC]" in message and f"resume={run_dir}" in message
    after = files(run_dir)  # the checkpoints as they were; no results.json, since the extension did not complete
    assert after == {name: data for name, data in before.items() if name != "results.json"}
    assert not partial_writes(run_dir)
    assert json.loads((run_dir / "history.json").read_text())["sessions"][-1]["ended"].startswith("failed: Storage")
    monkeypatch.undo()
    results = run_in_process(run_dir, *QUICK, "trainer.epochs=2", f"resume={run_dir}")
    assert results["status"] == "completed" and load(run_dir / "checkpoints/last.pt")["epoch"] == 2


@pytest.mark.slow
def test_a_failing_tensorboard_write_leaves_training_and_checkpoints_alone(tmp_path, monkeypatch, caplog):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("torch.utils.tensorboard.SummaryWriter.add_scalar", no_space)
    results = run_in_process(tmp_path, *QUICK)
    assert results["status"] == "completed"
    assert load(tmp_path / "checkpoints/last.pt")["epoch"] == 1 and (tmp_path / "checkpoints/best.pt").is_file()
    assert caplog.text.count("TensorBoard cannot write") == 1


# --- interrupts, kills, concurrency -------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_saves_at_a_step_boundary_and_says_how_to_resume(tmp_path):
    run_dir = tmp_path / "run"
    args = [*QUICK, "trainer.limit_train_batches=12"]
    proc = preloaded.Command("train.py", *args, "trainer.checkpoint_every_steps=1", f"hydra.run.dir={run_dir}")
    try:
        wait_for_checkpoint(proc, run_dir / "checkpoints/last.pt")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    out = "".join(proc.output())
    assert proc.returncode == 0, out[-2000:]
    assert "received SIGINT" in out and "Continue with: python train.py resume=" in out and "Traceback" not in out
    ckpt = load(run_dir / "checkpoints/last.pt")
    assert ckpt["epoch"] == 0 and 0 < ckpt["batches_done"] < 12  # stopped inside the epoch, position saved
    assert run_in_process(run_dir, *args, f"resume={run_dir}")["status"] == "completed"
    assert load(run_dir / "checkpoints/last.pt")["step"] == 12


def test_a_second_ctrl_c_stops_at_once(monkeypatch):
    stop = StopRequest(DistInfo(), torch.device("cpu"))
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.should_stop(1)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here
    finally:
        stop.close()


@pytest.mark.slow
def test_a_second_process_cannot_resume_a_run_folder_in_use_and_a_killed_one_frees_it(one_epoch):
    run_dir = one_epoch
    before = files(run_dir)
    with RunFolder(run_dir).hold():
        failed_with(train(f"resume={run_dir}", "trainer.epochs=2"), "is in use by another process")
    assert files(run_dir) == before
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from engine.run_folder import RunFolder\n"
            f"with RunFolder({str(run_dir)!r}).hold():\n    print('held', flush=True); "
            "time.sleep(600)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ValueError, match="in use"), RunFolder(run_dir).hold():
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunFolder(run_dir).hold():  # the kernel released the dead process's lock
        pass


@pytest.mark.slow
def test_two_runs_started_in_the_same_second_get_separate_folders(tmp_path):
    """Both runs take the same start time (injected), hence the same default folder name, and run at once."""
    command = [
        INJECT,
        "--run-time",
        "2026-01-02 03:04:05",
        "--",
        *QUICK,
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
    ]
    procs = [preloaded.Command(*command, f"seed={seed}", cwd=tmp_path) for seed in (1, 2)]
    for proc in procs:
        proc.wait(timeout=300)
    outs = ["".join(proc.output()) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outs
    folders = sorted((tmp_path / "outputs/digits/resnet20-gmconv").iterdir())
    assert [f.name for f in folders] == ["2026-01-02_03-04-05", "2026-01-02_03-04-05_2"]
    seeds = sorted(json.loads((f / "results.json").read_text())["seed"] for f in folders)
    assert seeds == [1, 2]  # each folder holds one run's record, not a mix
    for folder in folders:
        assert (folder / "train.log").read_text().count("run complete") == 1
        assert (
            load(folder / "checkpoints/last.pt")["config"]["seed"]
            == json.loads((folder / "results.json").read_text())["seed"]
        )


def test_claiming_a_time_named_folder_twice_gives_two_folders(tmp_path):
    path = tmp_path / "outputs/2026-01-02_03-04-05"
    assert [claim_folder(path, unique=True) for _ in range(3)] == [
        path,
        path.with_name(path.name + "_2"),
        path.with_name(path.name + "_3"),
    ]
    assert claim_folder(path, unique=False) == path  # a folder the user named: resumed in place


@pytest.mark.slow
def test_repeated_kills_at_any_moment_end_with_the_weights_of_an_uninterrupted_run(tmp_path):
    """Killed (SIGKILL) halfway through writing a checkpoint, during an evaluation, and from outside while
    training, resumed each time: the same weights, bit for bit, as a run that was never interrupted."""
    args = [
        "trainer.epochs=3",
        "trainer.limit_train_batches=6",
        "trainer.limit_val_batches=2",
        "data.batch_size=16",
        "trainer.deterministic=true",
        "trainer.progress=false",
        "trainer.checkpoint_every_steps=2",
        "seed=3",
    ]
    run_in_process(tmp_path / "full", *args)
    run_dir = tmp_path / "killed"
    last = run_dir / "checkpoints/last.pt"

    def killed(*inject: str, resume: bool = True, until=None) -> None:
        command = [INJECT, *inject, "--", *args, f"hydra.run.dir={run_dir}"]
        proc = preloaded.Command(*command, *([f"resume={run_dir}"] if resume else []))
        try:
            if until is not None:
                wait_for_checkpoint(proc, last, until)
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=300)
        finally:
            proc.kill()
        assert proc.returncode == -signal.SIGKILL
        assert all_finite(load(last)["model"]) and not (run_dir / "results.json").exists()

    killed("--kill-in-write", "3", resume=False)  # writes: last.pt at steps 2 and 4, then best.pt half-written
    assert load(last)["step"] == 4 and len(partial_writes(run_dir)) == 1
    killed("--kill-in-eval", "1")  # epoch 1's evaluation: its last step is saved with its record, after it
    assert load(last)["step"] == 4 and not partial_writes(run_dir)
    killed("--hold-at-step", "11", until=lambda ckpt: ckpt["step"] == 10)  # from outside, while epoch 2 trains
    ok(train(f"resume={run_dir}"))
    assert json.loads((run_dir / "results.json").read_text())["status"] == "completed"
    full, resumed = load(tmp_path / "full/checkpoints/last.pt"), load(last)
    assert resumed["step"] == full["step"] == 18 and not partial_writes(run_dir)
    for key, value in full["model"].items():
        assert torch.equal(resumed["model"][key], value), key
