"""A run's record (metrics.csv, TensorBoard, train.log, history.json, results.json, .hydra/) after any sequence
of settings, stops and resumes; evaluation and data checks that cannot mislead. One test per defect found by
trying ordinary settings as a new user (each failed before the fix), then generated lifecycles checked
against every invariant (scripts/dev/lifecycle_fuzz.py, docs/RELIABILITY.md).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import preloaded
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from torch.utils.tensorboard import SummaryWriter

import engine.fit
from data import DataConfig, build_loaders
from engine.command_line import check_composes
from engine.evaluation import check_classes
from engine.preemption import Preempted
from engine.run_folder import RunFolder
from engine.sweep_folders import SWEPT_ENV, announce_swept_settings, job_folder_name
from engine.tracking import COMPACTING, REPLACED, compact_events, finish_compaction
from helpers import QUICK, ROOT, failed_with, folder_args, load, ok, run_in_process, train


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def folder_bytes(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run folder, train.log included."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def scalars(tb_dir: Path) -> tuple[EventAccumulator, list[str]]:
    """The events as TensorBoard reads them, and the warnings its reader logged (purged events)."""
    warnings: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    handler = Collect(logging.WARNING)
    logging.getLogger("tensorboard").addHandler(handler)
    try:
        acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
        acc.Reload()
    finally:
        logging.getLogger("tensorboard").removeHandler(handler)
    return acc, warnings


@pytest.fixture(scope="module")
def every_other_epoch(tmp_path_factory) -> Path:
    """`python train.py trainer.epochs=3 trainer.eval_every=2`: epoch 1 is not evaluated."""
    run_dir = tmp_path_factory.mktemp("record") / "run"
    ok(train(*QUICK, "trainer.epochs=3", "trainer.eval_every=2", f"hydra.run.dir={run_dir}"))
    return run_dir


@pytest.fixture
def every_other_epoch_copy(every_other_epoch, tmp_path) -> Path:
    return Path(shutil.copytree(every_other_epoch, tmp_path / "run"))


@pytest.fixture(scope="module")
def extended(every_other_epoch, tmp_path_factory) -> tuple[Path, dict[str, bytes], str]:
    """That run, then `python train.py resume=<run> trainer.epochs=4`: the folder, its files before, the output."""
    run_dir = Path(shutil.copytree(every_other_epoch, tmp_path_factory.mktemp("extended") / "run"))
    before = folder_bytes(run_dir)
    proc = ok(train(f"resume={run_dir}", "trainer.epochs=4"))
    return run_dir, before, proc.stdout + proc.stderr


# --- 1. one epoch record ---------------------------------------------------------------------------


@pytest.mark.slow
def test_metrics_csv_has_one_header_for_evaluated_and_unevaluated_epochs(every_other_epoch):
    with (every_other_epoch / "metrics.csv").open(newline="") as f:
        table = list(csv.reader(f))
    header, body = table[0], table[1:]
    assert all(len(row) == len(header) for row in body) and "val_top1" in header and "val_ema_top1" not in header
    frame = pd.read_csv(every_other_epoch / "metrics.csv")
    assert list(frame["epoch"]) == [1, 2, 3]
    assert np.isnan(frame["val_top1"][0]) and frame["val_top1"][1:].notna().all()
    assert frame["train_loss"].notna().all() and (frame["images_per_s"] > 0).all()


@pytest.mark.slow
def test_resumes_extend_the_record_and_an_ema_turned_on_widens_metrics_csv(extended, tmp_path):
    """The issue's sequence: a resume of an eval_every run, then one that turns an EMA on, then another."""
    run_dir = Path(shutil.copytree(extended[0], tmp_path / "run"))
    first = json.loads(extended[1]["results.json"])
    assert "trainer.epochs 3 → 4" in extended[2]
    same = [*QUICK, "trainer.eval_every=2"]  # in-process, the checkpoint's settings are not inserted: retyped
    run_in_process(run_dir, *same, "trainer.epochs=5", "trainer.ema_decay=0.9", f"resume={run_dir}")
    table = rows(run_dir)
    assert [r["epoch"] for r in table] == ["1", "2", "3", "4", "5"] and "val_ema_top1" in table[0]
    assert [r["val_ema_top1"] == "" for r in table] == [True, True, True, True, False]
    weights = load(run_dir / "checkpoints/last.pt")["model"]
    results = run_in_process(run_dir, *same, "trainer.epochs=6", "trainer.ema_decay=0.9", f"resume={run_dir}")
    trained_on = load(run_dir / "checkpoints/last.pt")["model"]
    assert any(not torch.equal(trained_on[key], weights[key]) for key in weights)  # the extension trained
    assert [r["epoch"] for r in rows(run_dir)] == [str(e) for e in range(1, 7)]
    assert results["ema_top1"] == float(rows(run_dir)[-1]["val_ema_top1"])
    # the record of every epoch is the one checkpoint's records, and the run's values
    assert [r["epoch"] for r in load(run_dir / "checkpoints/last.pt")["records"]] == list(range(1, 7))
    assert results["top1"] == float(rows(run_dir)[-1]["val_top1"]) and results["epochs"] == 6
    assert first["top1"] == float(rows(run_dir)[2]["val_top1"])  # session 1's rows are kept as they were


@pytest.mark.slow
def test_a_resumed_run_keeps_every_epoch_once_in_tensorboard(extended):
    """purge_step at the checkpoint's step removed the epoch-end scalars written at that very step."""
    run_dir = extended[0]
    acc, warnings = scalars(run_dir / "tb")
    assert not warnings, warnings
    steps = [int(r["step"]) for r in rows(run_dir)]
    for tag in ("train/loss", "lr", "perf/epoch_time_s", "sigma/conv1/mean"):
        assert [e.step for e in acc.Scalars(tag)] == steps, tag
    assert [e.step for e in acc.Scalars("val/top1")] == steps[1:]  # epoch 1 was not evaluated
    assert [e.step for e in acc.Scalars("hparam/top1")] == [steps[-1]]  # the first completion's summary is gone
    assert "TensorBoard:" not in extended[2]  # replacing that summary loses nothing a reader saw: nothing said


def test_tensorboard_events_written_after_the_checkpoint_leave_the_event_files(tmp_path, caplog):
    """What a session killed after its checkpoint wrote is removed from the files themselves, so no reader
    (tbparse, pandas exports) sees an epoch twice; a kill during the compaction is completed on the next start."""
    tb = tmp_path / "tb"
    with SummaryWriter(str(tb)) as writer:
        for step in range(1, 11):
            writer.add_scalar("train/loss", float(step), step)
        writer.add_hparams({"lr": 0.1}, {"hparam/top1": 1.0}, run_name=".", global_step=10)
    caplog.set_level("INFO")
    compact_events(tb, keep_up_to=6)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("TensorBoard:")]
    assert said == [
        "TensorBoard: 4 point(s) after step 6, from a session stopped before its next checkpoint, are "
        "replaced by this session's, which trains those steps again"
    ]  # the hparams summary not counted
    events = [e for path in sorted(tb.glob("*tfevents*")) for e in EventFileLoader(str(path)).Load()]
    loss_steps = [e.step for e in events if e.HasField("summary") and e.summary.value[0].tag == "train/loss"]
    assert loss_steps == [1, 2, 3, 4, 5, 6] and len(list(tb.glob("*tfevents*"))) == 1
    assert not any(e.HasField("summary") and e.summary.value[0].tag.startswith(("hparam", "_hparams_")) for e in events)

    tb.rename(tmp_path / REPLACED)  # killed between the two renames: the complete new folder takes over
    (tmp_path / COMPACTING).mkdir()
    shutil.copytree(tmp_path / REPLACED, tmp_path / COMPACTING, dirs_exist_ok=True)
    finish_compaction(tb)
    assert tb.is_dir() and not (tmp_path / REPLACED).exists() and not (tmp_path / COMPACTING).exists()


@pytest.mark.slow
def test_an_epoch_stopped_half_way_and_resumed_records_all_of_its_batches(tmp_path, monkeypatch):
    """Its train loss, top-1 and lr are the uninterrupted epoch's, not those of the batches after the stop."""
    args = [*QUICK, "trainer.limit_train_batches=6", "trainer.deterministic=true", "data.batch_size=16"]
    full = run_in_process(tmp_path / "full", *args)
    run_dir = tmp_path / "stopped"
    monkeypatch.setattr(engine.fit.StopRequest, "should_stop", lambda self, step, sync=False: step == 3)
    with pytest.raises(Preempted):
        run_in_process(run_dir, *args)
    monkeypatch.undo()
    assert load(run_dir / "checkpoints" / "last.pt")["epoch_totals"][0] is not None  # the half epoch's sums
    resumed = run_in_process(run_dir, *args, f"resume={run_dir}")
    assert load(run_dir / "checkpoints" / "last.pt")["epoch_totals"] == [None]  # an epoch's end: nothing to continue
    expected, got = rows(tmp_path / "full")[0], rows(run_dir)[0]
    for column in ("step", "train_loss", "train_top1", "lr", "val_loss", "val_top1", "val_top5"):
        assert got[column] == expected[column], column
    assert resumed["top1"] == full["top1"]


@pytest.mark.slow
def test_a_run_killed_while_writing_its_first_last_pt_starts_again_with_resume_auto(tmp_path, monkeypatch):
    """best.pt is written before last.pt: a kill in between leaves a best.pt and no last.pt (found by the
    lifecycle fuzz, which then could neither resume nor restart the run). The kill is simulated: the
    first write of last.pt stops the run as SIGKILL would, before anything after it."""
    run_dir = tmp_path / "run"
    save = engine.fit.save_checkpoint

    def killed_at_last_pt(path, *args, **kwargs):
        if Path(path).name == "last.pt":
            raise KeyboardInterrupt
        save(path, *args, **kwargs)

    monkeypatch.setattr(engine.fit, "save_checkpoint", killed_at_last_pt)
    with pytest.raises(KeyboardInterrupt):
        run_in_process(run_dir, *QUICK)
    monkeypatch.undo()
    assert (run_dir / "checkpoints/best.pt").is_file() and not (run_dir / "checkpoints/last.pt").exists()
    with pytest.raises(ValueError, match="saved no last.pt: start it again there with resume=auto"):
        run_in_process(run_dir, *QUICK)
    run_in_process(run_dir, *QUICK, "resume=auto")
    first, again = json.loads((run_dir / "results.json").read_text())["sessions"]
    assert first["ended"] == "failed: KeyboardInterrupt" and again["ended"] == "completed"


# --- 2. a run's history ----------------------------------------------------------------------------


@pytest.mark.slow
def test_history_records_each_session_and_results_sum_their_wall_time(extended):
    run_dir, before, _ = extended
    results = json.loads((run_dir / "results.json").read_text())
    first, second = results["sessions"]
    assert results["overrides"] == first["overrides"] == [*QUICK, "trainer.epochs=3", "trainer.eval_every=2"]
    assert second["overrides"] == [f"resume={run_dir}", "trainer.epochs=4"]  # typed, not the re-inserted config
    assert second["changes"] == ["trainer.epochs 3 → 4"] and second["resumed_from"]["epoch"] == 3
    assert first["ended"] == second["ended"] == "completed" and first["results"]["epochs"] == 3
    assert results["wall_time_s"] == pytest.approx(first["wall_time_s"] + second["wall_time_s"])
    assert results["wall_time_s"] >= results["train_time_s"] > 0
    assert json.loads((run_dir / "history.json").read_text())["sessions"] == results["sessions"]
    config = (run_dir / ".hydra/config.yaml").read_text()
    assert config.startswith("# The composition of this run's first session") and "history.json" in config
    assert config.encode() == before[".hydra/config.yaml"]  # .hydra/ stays the first session's


@pytest.mark.slow
@pytest.mark.parametrize("preview", [["resume={run}"], ["eval_only=true", "ckpt={run}"]])
def test_a_resume_or_an_evaluation_can_be_previewed_with_cfg_job(every_other_epoch, preview):
    before = folder_bytes(every_other_epoch)
    proc = ok(train("--cfg", "job", *(arg.format(run=every_other_epoch) for arg in preview)))
    assert "batch_size: 32" in proc.stdout  # the checkpoint's data settings (the default is 64)
    assert ("eval_every: 2" in proc.stdout) == ("resume=" in preview[0])  # a resume takes the trainer's too
    assert folder_bytes(every_other_epoch) == before


def test_sweep_job_folders_are_named_after_the_swept_settings_never_a_path(monkeypatch):
    monkeypatch.delenv(SWEPT_ENV, raising=False)
    announce_swept_settings(
        ["conv=standard,gmconv", "seed=range(2)", "data.root=/datasets/cifar", "experiment=cifar10_resnet20"]
    )
    job = ["conv=gmconv", "seed=1", "data.root=/datasets/cifar", "experiment=cifar10_resnet20"]
    assert job_folder_name(3, job) == "3_conv=gmconv,seed=1"
    announce_swept_settings(["data.root=/a/b,/c/d", "resume=x"])  # swept paths still name no folder
    assert job_folder_name(0, ["data.root=/a/b", "resume=x"]) == "0"
    monkeypatch.delenv(SWEPT_ENV)  # a job whose sweep is unknown: every setting but paths and hydra.*
    assert job_folder_name(1, ["model.name=hf-hub:timm/resnet18", "data.root=/x", "ckpt=/y"]) == (
        "1_model.name=hf-hub:timm_resnet18"
    )


# --- 3. evaluation and data checks -----------------------------------------------------------------


def tree(root: Path, classes: tuple[str, ...], splits: tuple[str, ...] = ("train", "val"), count: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for split in splits:
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


@pytest.mark.slow
def test_evaluation_refuses_data_with_other_classes_and_needs_only_the_validation_split(tmp_path):
    trained = tree(tmp_path / "trained", ("bird", "cat", "dog", "fish"))
    run_dir = tmp_path / "run"
    run_in_process(run_dir, *folder_args(trained, "data.num_workers=0"))

    def evaluate(root: Path, *more: str) -> dict:
        return run_in_process(
            tmp_path / f"eval-{root.name}",
            *folder_args(root, "data.num_workers=0", "eval_only=true", f"ckpt={run_dir}", *more),
        )

    shifted = tree(tmp_path / "shifted", ("cat", "dog", "fish", "zebra"))
    with pytest.raises(ValueError, match="only in the data: zebra; only in the checkpoint: bird"):
        evaluate(shifted)
    fewer = tree(tmp_path / "fewer", ("bird", "cat", "dog"))
    with pytest.raises(ValueError, match=r"the data has 3 classes and .* was trained on 4: it is other data"):
        evaluate(fewer)
    val_only = tree(tmp_path / "val_only", ("bird", "cat", "dog", "fish"), splits=("val",))
    results = evaluate(val_only, "data.batch_size=64")  # no train/, a batch larger than the data: fine
    assert results["eval_samples"] == 12 and not (tmp_path / "eval-shifted" / "results.json").exists()


def test_class_order_is_checked_name_by_name():
    check_classes(["a", "b"], ["a", "b"], Path("best.pt"))
    with pytest.raises(ValueError, match=r"in another order \(label 0 is 'b' in the data and 'a' in the checkpoint"):
        check_classes(["b", "a"], ["a", "b"], Path("best.pt"))


def check_data(root: Path, *more: str) -> subprocess.CompletedProcess:
    return preloaded.run("-m", "scripts.check_data", str(root), "--workers", "1", *more, timeout=120)


@pytest.mark.slow
def test_the_checker_and_the_loaders_apply_one_rule(tmp_path):
    """An empty class folder stops both; files training ignores are listed as ignored, not as problems."""
    root = tree(tmp_path / "data", ("ant", "bee"))
    for split in ("train", "val"):
        (root / split / "cat").mkdir()
    (root / "train" / "ant" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "val" / "readme.txt").write_text("a file beside the class folders")
    (root / "val" / "bee" / "readme.txt").write_text("notes")
    proc = check_data(root, "--image-size", "32")
    assert proc.returncode == 1
    problems = [line for line in proc.stdout.splitlines() if line.startswith("problem:")]
    assert len(problems) == 2 and all("1 class folder without image files (cat)" in p for p in problems)
    cfg = DataConfig(name="imagefolder", root=str(root), image_size=32, val_resize=36, batch_size=2, num_workers=0)
    with pytest.raises(ValueError, match=r"train: 1 class folder without image files \(cat\)"):
        build_loaders(cfg, seed=0)

    for split in ("train", "val"):
        (root / split / "cat").rmdir()
    proc = check_data(root, "--image-size", "64")  # the images are 40 px: warned, not a problem
    assert proc.returncode == 0, proc.stdout
    assert "12 image files checked: 0 problems, 2 other files ignored, 12 warnings" in proc.stdout
    assert any(line.startswith("ignored:") and ".DS_Store" in line for line in proc.stdout.splitlines())
    train_loader, _, info = build_loaders(cfg, seed=0)  # the tree the checker passes, training takes
    assert info.classes == ["ant", "bee"] and len(train_loader.dataset) == 6


@pytest.mark.slow
def test_hydra_composition_errors_are_one_line(tmp_path):
    proc = train("conv=gmcnv", f"hydra.run.dir={tmp_path / 'run'}")
    out = failed_with(
        proc,
        "error: conv=gmcnv is not an option of conv; choose one of dcls, deformable, dilated, gmconv, gmconv_dynamic",
    )
    assert proc.returncode == 2 and len(out.strip().splitlines()) == 1 and "HYDRA_FULL_ERROR" not in out
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.epochs=abc", "trainer.epochs=abc is invalid: Value 'abc' of type 'str' could not be converted"),
        ("trainer.epoch=3", "trainer.epoch is not a setting of this framework; did you mean trainer.epochs?"),
        ("epochs=3", "epochs is not a setting of this framework; did you mean trainer.epochs?"),
        ("trainer.lr=0.1", "trainer.lr is not a setting of this framework; did you mean optim.lr?"),
        ("trainer.zzz=1", "trainer.zzz is not a setting of this framework; remove it or fix its spelling"),
        ("trainer.epochs=[1", "cannot read the command line: no viable alternative at input '[1'"),
        ("hydra/launcher=nope", "hydra/launcher=nope is not an option of hydra/launcher; choose one of basic"),
    ],
)
def test_every_kind_of_composition_error_reads_as_one_line(override, message):
    with pytest.raises(ValueError) as caught:
        check_composes(["train.py", override])
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


@pytest.mark.slow
def test_a_killed_runs_worker_processes_do_not_keep_its_folder_locked(tmp_path):
    """DataLoader workers outlive a SIGKILLed main process by seconds; they must not hold the run's lock."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time; from engine.run_folder import RunFolder\n"
            f"with RunFolder({str(tmp_path)!r}).hold():\n"
            "    if os.fork() == 0:\n        time.sleep(30); os._exit(0)\n"
            "    print('held', flush=True); time.sleep(600)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunFolder(tmp_path).hold():  # at once, while the forked child still runs
        pass


# --- 4. invariants over generated lifecycles ---------------------------------------------------------


@pytest.mark.slow
def test_generated_lifecycles_keep_every_invariant(tmp_path):
    """Two random lifecycles (starts, kills, preemptions, resumes with changes, evaluations, refused
    commands); scripts/dev/lifecycle_fuzz.py runs many more (docs/RELIABILITY.md)."""
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.dev.lifecycle_fuzz", "--n", "2", "--seed", "100", "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 lifecycles" in proc.stdout and "0 broke an invariant" in proc.stdout


@pytest.mark.slow
def test_checkpoints_are_read_without_running_code(every_other_epoch):
    for name in ("last.pt", "best.pt"):
        assert torch.load(every_other_epoch / "checkpoints" / name, weights_only=True)["records"]
