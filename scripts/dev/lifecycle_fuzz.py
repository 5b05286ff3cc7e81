"""A run's record checked over randomly generated lifecycles (the invariants: docs/RELIABILITY.md).

    python -m scripts.dev.lifecycle_fuzz --n 200 [--seed 0] [--workdir DIR] [--no-fork]

A lifecycle takes one run folder through a random sequence of real train.py commands:
- a start with random settings: epochs, eval_every, an EMA (kept by best.pt or not), gradient
  accumulation, checkpoints every few steps, step-level logging, mixup, GMConv or not, MLflow beside
  TensorBoard or not, and the digits or a class-folder dataset holding an unreadable image
  (data.skip_bad_images=true);
- resumes, some with an allowed change (more epochs, another lr, an EMA turned on, another eval_every
  or checkpoint interval), some that have nothing to do (the run is complete);
- a fault in a start or resume: SIGKILL right after a random step, during an evaluation, or halfway
  through writing a checkpoint file, or a preemption (SIGTERM at a random step);
- an evaluation of the run (eval_only), and a command that must be refused;
- finally resumes until the run is complete.
After every command the run folder is checked (``check_folder``): metrics.csv, TensorBoard, MLflow, train.log,
history.json, results.json and the checkpoints must agree; a refused command, an evaluation or a resume
with nothing to do must leave every byte of the folder as it was; and a lifecycle whose changes do not
touch the training (evaluation, EMA, checkpoint intervals) must end with the weights of an uninterrupted
run, bit for bit.

Each command is a real process: forked from this one, which has imported train.py's dependencies once,
so a command pays for its own work only (``--no-fork``: ``python tests/inject.py ...`` per command). A
lifecycle that breaks an invariant is printed as the commands that reproduce it; the exit status is the
number of broken lifecycles (0: none).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import random
import re
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one intra-op thread: deterministic, and safe to fork

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from PIL import Image  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

import engine.runner  # noqa: E402,F401  (imported once here, so that forked commands start at once)
from analysis import wandb_file  # noqa: E402
from engine import epoch_record  # noqa: E402
from engine.history import COMPLETED, INTERRUPTED, STOPPED  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
torch.set_num_threads(1)
INJECT = ROOT / "tests" / "inject.py"
TIMEOUT_S = 300
# Settings that do not change what the weights become: a lifecycle that changes only these on resume
# ends with the weights of an uninterrupted run.
NOT_TRAINING = ("trainer.eval_every", "trainer.ema_decay", "trainer.best_of", "trainer.checkpoint_every_steps")
# What a resume here may change. A change holds once a checkpoint has it: a session killed before its first
# checkpoint changed nothing that lasts (history.json still lists it), and the next resume goes on with the
# checkpoint's settings.
CHANGEABLE = ("trainer.epochs", "optim.lr", "trainer.ema_decay", "trainer.eval_every", "trainer.checkpoint_every_steps")


@dataclass
class Command:
    args: list[str]  # train.py's arguments
    fault: list[str] = field(default_factory=list)  # tests/inject.py's options (empty: plain train.py)
    expect: str = "ok"  # ok | refused | unchanged (an evaluation or a resume with nothing to do)
    session: bool = True  # whether it adds a session to the run's history

    def shell(self) -> str:
        program = ["python", "tests/inject.py", *self.fault, "--"] if self.fault else ["python", "train.py"]
        return "OMP_NUM_THREADS=1 " + shlex.join([*program, *self.args])


class Broken(AssertionError):
    """An invariant that a lifecycle broke."""


# --- running commands --------------------------------------------------------------------------------


def run_command(command: Command, log: Path, fork: bool) -> tuple[int, str]:
    """(exit status, negative for a signal; the command's output)."""
    argv = [*command.fault, "--", *command.args]
    if not fork:
        proc = subprocess.run(
            [sys.executable, str(INJECT), *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        end_process_group(proc.pid)
        return proc.returncode, proc.stdout + proc.stderr
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the command, as `python tests/inject.py ARGV` would run it
        code = 1
        try:
            os.setsid()  # its own process group, ended with it (end_process_group)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(ROOT)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            sys.argv = [str(INJECT), *argv]
            runpy.run_path(str(INJECT), run_name="__main__")
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except BaseException:  # noqa: BLE001 - reported through the exit status and the output
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.time() + TIMEOUT_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise Broken(f"the command did not finish in {TIMEOUT_S} s")
        time.sleep(0.02)
    end_process_group(pid)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return code, log.read_text(errors="replace")


def end_process_group(leader: int, wait_s: float = 10) -> None:
    """Kill what a command left running (a killed command's DataLoader workers, W&B's service, which writes its
    log once it notices), as a job scheduler ends a job, and wait until it is gone: the next command's checks
    must see only what the commands did."""
    try:
        os.killpg(leader, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            os.killpg(leader, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)


# --- generating lifecycles ---------------------------------------------------------------------------


def make_folder_dataset(root: Path) -> Path:
    """3 classes of 32 px PNGs (8 training and 4 validation images each), one training image unreadable."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 4)):
        for name in ("ant", "bee", "cat"):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (root / "train" / "bee" / "3.png").write_bytes(b"not an image")
    return root


def random_settings(rng: random.Random, folder_data: Path) -> dict[str, str]:
    """A start's settings, as train.py overrides (key → value)."""
    settings = {
        "trainer.epochs": rng.choice([1, 2, 3, 4]),
        "trainer.eval_every": rng.choice([1, 1, 2, 3]),
        "trainer.limit_val_batches": rng.choice([1, 2]),
        "trainer.deterministic": "true",
        "trainer.progress": "false",
        "seed": rng.randrange(100),
        "trainer.accumulate_steps": rng.choice([1, 1, 2]),
        "trainer.checkpoint_every_steps": rng.choice(["null", 1, 2, 3]),
        "trainer.log_every_steps": rng.choice([2, 20]),
        "conv": rng.choice(["gmconv", "gmconv", "standard"]),
    }
    if rng.random() < 0.4:
        settings["trainer.ema_decay"] = 0.9
        settings["trainer.best_of"] = rng.choice(["model", "ema"])
    if rng.random() < 0.3:
        settings["data.mixup_alpha"] = 0.2
    trackers = [name for name in ("mlflow", "wandb") if rng.random() < 0.3]
    if trackers:
        settings["logger"] = f"[{','.join(['tensorboard', *trackers])}]"  # the resumes keep it without being told
    if rng.random() < 0.25:
        settings.update(
            {
                "data": "imagefolder",
                "data.root": str(folder_data),
                "data.image_size": 32,
                "data.val_resize": 36,
                "data.batch_size": 6,
                "data.skip_bad_images": "true",
                "data.num_workers": rng.choice([0, 2]),
                "trainer.limit_train_batches": rng.choice([2, 3, 4]),
            }
        )
    else:
        settings.update({"data.batch_size": 16, "trainer.limit_train_batches": rng.choice([2, 3, 4, 5])})
    return {key: str(value) for key, value in settings.items()}


def overrides(settings: dict[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in settings.items()]


@dataclass
class Lifecycle:
    """One run folder's life: the commands so far, and what its record must show."""

    seed: int
    folder: Path
    folder_data: Path
    rng: random.Random = field(init=False)
    settings: dict[str, str] = field(init=False)  # the effective settings now
    commands: list[Command] = field(default_factory=list)
    sessions: list[list[str]] = field(default_factory=list)  # the overrides each session was typed with
    training_changed: bool = False  # a change on resume that alters the weights (lr, more epochs)
    killed: bool = False  # the last command was killed: one epoch more may be recorded than checkpointed
    evaluations: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.settings = random_settings(self.rng, self.folder_data)

    @property
    def run(self) -> Path:
        return self.folder / "run"

    def checkpoint(self) -> Optional[dict[str, Any]]:
        last = self.run / "checkpoints" / "last.pt"
        return torch.load(last, map_location="cpu", weights_only=True) if last.is_file() else None

    def sync_with_checkpoint(self) -> None:
        """The settings a resume goes on with: the checkpoint's, for what resumes here can change."""
        ckpt = self.checkpoint()
        if ckpt is None:
            return
        for key in CHANGEABLE:
            group, name = key.split(".")
            value = ckpt["config"][group][name]
            if value is None:
                self.settings.pop(key, None)
            else:
                self.settings[key] = str(value)

    def steps_per_epoch(self) -> int:
        return -(-int(self.settings["trainer.limit_train_batches"]) // int(self.settings["trainer.accumulate_steps"]))

    def total_steps(self) -> int:
        return int(self.settings["trainer.epochs"]) * self.steps_per_epoch()

    def complete(self) -> bool:
        ckpt = self.checkpoint()
        return (
            ckpt is not None
            and ckpt["epoch"] >= int(self.settings["trainer.epochs"])
            and not ckpt["batches_done"]
            and (self.run / "results.json").is_file()
        )

    def fault(self, start_step: int) -> list[str]:
        """A random fault for a command that trains from ``start_step`` (none half of the time)."""
        left = self.total_steps() - start_step
        kind = self.rng.choice(
            ["none", "none", "none", "kill-at-step", "term-at-step", "kill-in-eval", "kill-in-write"]
        )
        if kind == "none" or left <= 0:
            return []
        if kind in ("kill-at-step", "term-at-step"):
            return [f"--{kind}", str(start_step + self.rng.randint(1, left))]
        return [f"--{kind}", str(self.rng.randint(1, 3))]

    def start(self) -> Command:
        return Command([*overrides(self.settings), f"hydra.run.dir={self.run}"], self.fault(0))

    def resume(self) -> Command:
        """A resume, with an allowed change a third of the time; a fresh start again where the run never
        saved a checkpoint (``resume=auto`` in its folder)."""
        ckpt = self.checkpoint()
        if ckpt is None:
            return Command([*overrides(self.settings), "resume=auto", f"hydra.run.dir={self.run}"], self.fault(0))
        changes: dict[str, str] = {}
        if self.rng.random() < 0.35:
            key = self.rng.choice(CHANGEABLE)
            if key == "trainer.epochs":
                changes[key] = str(int(self.settings[key]) + self.rng.randint(1, 2))
            elif key == "optim.lr":
                changes[key] = self.rng.choice(["0.05", "0.2"])
            elif key == "trainer.ema_decay" and "trainer.ema_decay" not in self.settings:
                changes[key] = "0.8"
            elif key == "trainer.eval_every":
                changes[key] = str(self.rng.choice([1, 2, 3]))
            elif key == "trainer.checkpoint_every_steps":
                changes[key] = str(self.rng.choice([1, 2, 4]))
        changed = {k: v for k, v in changes.items() if self.settings.get(k) != v}
        nothing_to_do = self.complete() and "trainer.epochs" not in changed  # the run says so and changes nothing
        if not nothing_to_do:
            self.settings.update(changed)
            self.training_changed |= any(key not in NOT_TRAINING for key in changed)
        start_step = ckpt["step"]
        return Command(
            [f"resume={self.run}", *overrides(changed)],
            [] if nothing_to_do else self.fault(start_step),
            expect="unchanged" if nothing_to_do else "ok",
            session=not nothing_to_do,
        )

    def evaluation(self) -> Command:
        self.evaluations += 1
        return Command(
            [
                "eval_only=true",
                f"ckpt={self.run}",
                f"trainer.limit_val_batches={self.settings['trainer.limit_val_batches']}",
                "trainer.progress=false",
                f"hydra.run.dir={self.folder / f'eval{self.evaluations}'}",
            ],
            expect="unchanged",
            session=False,
        )

    def refused(self) -> Command:
        ckpt = self.checkpoint()
        choices = [
            ["model=resnet32"],
            ["seed=1000"],
            ["trainer.eval_every=0"],
            ["trainer.accumulate_steps=3"],
            ["conv=gmcnv"],
            ["data.skip_bad_images=true", "data=digits"],
            ["trainer.epochs=abc"],
        ]
        if ckpt is not None and ckpt["epoch"] >= 1:
            choices.append([f"trainer.epochs={max(ckpt['epoch'] - 1, 0)}"])
        if self.rng.random() < 0.2:  # a new run in the folder that holds this one
            return Command([*overrides(self.settings), f"hydra.run.dir={self.run}"], expect="refused", session=False)
        return Command([f"resume={self.run}", *self.rng.choice(choices)], expect="refused", session=False)

    def next_command(self) -> Command:
        """The random middle of the lifecycle, after its start."""
        kind = self.rng.choices(["resume", "evaluate", "refused"], weights=[5, 1, 2])[0]
        if kind == "evaluate" and self.checkpoint() is None:
            kind = "resume"
        return {"resume": self.resume, "evaluate": self.evaluation, "refused": self.refused}[kind]()


# --- the invariants ----------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def check_folder(life: Lifecycle) -> None:
    """Every invariant of a run folder that a command has just left (docs/RELIABILITY.md)."""
    run = life.run
    ckpt = life.checkpoint()
    records = ckpt["records"] if ckpt else []
    if ckpt is not None:
        for name in ("last.pt", "best.pt"):
            path = run / "checkpoints" / name
            if path.is_file():
                weights = torch.load(path, map_location="cpu", weights_only=True)["model"]
                _require(
                    all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point()),
                    f"{name} holds non-finite weights",
                )
        _require(
            [r["epoch"] for r in records] == list(range(1, ckpt["epoch"] + 1)),
            f"last.pt's records {[r['epoch'] for r in records]} are not one per epoch up to {ckpt['epoch']}",
        )
    rows = check_metrics_csv(run, records, life.killed)
    check_log_lines(run, rows)
    check_tensorboard(run, rows, records, life.killed)
    if "mlflow" in life.settings.get("logger", ""):
        check_mlflow(run, records)
    if "wandb" in life.settings.get("logger", ""):
        check_wandb(run, records, life.killed)
    check_history(life)
    results = run / "results.json"
    if life.complete():
        check_results(life, rows)
    elif results.is_file():
        raise Broken(
            f"results.json exists although last.pt is at epoch {ckpt and ckpt['epoch']}"
            f"/{life.settings['trainer.epochs']}"
        )


def check_metrics_csv(run: Path, records: list[dict[str, Any]], killed: bool) -> list[dict[str, Any]]:
    """One header, one row per checkpointed epoch (one more after a kill), the checkpoint's numbers."""
    path = run / "metrics.csv"
    if not path.is_file():
        _require(not records, "metrics.csv is missing")
        return []
    text = path.read_text()
    table = list(csv.reader(io.StringIO(text)))
    header, body = table[0], table[1:]
    _require(all(len(row) == len(header) for row in body), f"metrics.csv rows do not fit its header {header}")
    frame = pd.read_csv(io.StringIO(text))
    _require(list(frame.columns) == header and len(frame) == len(body), "pandas reads metrics.csv differently")
    rows = [{key: (float(value) if value != "" else None) for key, value in zip(header, row)} for row in body]
    epochs = [int(row["epoch"]) for row in rows]
    expected = list(range(1, len(records) + 1))
    _require(
        epochs == expected or (killed and epochs == expected + [len(records) + 1]),
        f"metrics.csv epochs {epochs}, last.pt has {len(records)} (killed: {killed})",
    )
    for row, saved in zip(rows, records):
        for key, value in saved.items():
            _require(
                row.get(key) == (float(value) if value is not None else None),
                f"metrics.csv epoch {saved['epoch']} {key}={row.get(key)} but last.pt's record says {value}",
            )
    return rows


EPOCH_LINE = re.compile(r"\] - (epoch (\d+)/(\d+)  .*)$")


def check_log_lines(run: Path, rows: list[dict[str, Any]]) -> None:
    """The latest log line of every recorded epoch shows that epoch's record."""
    latest: dict[int, tuple[str, int]] = {}
    log_path = run / "train.log"
    for line in log_path.read_text().splitlines() if log_path.is_file() else []:
        match = EPOCH_LINE.search(line)
        if match and "  batch " not in match.group(1):
            latest[int(match.group(2))] = (match.group(1), int(match.group(3)))
    for row in rows:
        epoch = int(row["epoch"])
        _require(epoch in latest, f"train.log has no line for epoch {epoch}")
        text, epochs = latest[epoch]
        shown = epoch_record.log_line({**row, "epoch": epoch}, epochs)
        _require(text.startswith(shown), f"train.log says {text!r}, metrics.csv {shown!r}")


def check_tensorboard(run: Path, rows: list[dict[str, Any]], records: list[dict[str, Any]], killed: bool) -> None:
    """Each epoch-level scalar once per recorded epoch, at its step, with its value; no purge warnings."""
    folder = run / "tb"
    if not folder.is_dir():
        _require(not records, "tb/ is missing")
        return
    warnings: list[str] = []
    handler = _Collect(warnings)
    logging.getLogger("tensorboard").addHandler(handler)
    try:
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0})
        acc.Reload()
    finally:
        logging.getLogger("tensorboard").removeHandler(handler)
    _require(not warnings, f"TensorBoard's reader warned: {warnings[:2]}")
    tags = set(acc.Tags()["scalars"])
    extra = rows[len(records) :]  # an epoch recorded but not checkpointed (killed between the two)
    for metric in epoch_record.METRICS:
        if metric.tag is None:
            continue
        expected = [(int(r["step"]), r[metric.column]) for r in records if r.get(metric.column) is not None]
        got = [(e.step, e.value) for e in acc.Scalars(metric.tag)] if metric.tag in tags else []
        optional = [(int(r["step"]), r[metric.column]) for r in extra if r.get(metric.column) is not None]
        ok = _same_scalars(got, expected) or (killed and _same_scalars(got, expected + optional))
        _require(ok, f"TensorBoard {metric.tag}: {got} but the records say {expected}")
    record_steps = [int(r["step"]) for r in records]
    for tag in sorted(t for t in tags if t.startswith("sigma/")):
        steps = [e.step for e in acc.Scalars(tag)]
        _require(
            steps == record_steps or (killed and steps == record_steps + [int(r["step"]) for r in extra]),
            f"TensorBoard {tag} at steps {steps}, epochs end at {record_steps}",
        )
    lr_steps = [e.step for e in acc.Scalars("train/lr_step")] if "train/lr_step" in tags else []
    _require(len(lr_steps) == len(set(lr_steps)) and lr_steps == sorted(lr_steps), f"train/lr_step at {lr_steps}")
    hparams = [e.step for e in acc.Scalars("hparam/top1")] if "hparam/top1" in tags else []
    _require(len(hparams) <= 1, f"hparam/top1 written {len(hparams)} times")


def check_mlflow(run: Path, records: list[dict[str, Any]]) -> None:
    """One MLflow run for the folder, whose last value at each recorded epoch's step is the record's (MLflow keeps
    what a killed session logged after its checkpoint: a later session logs those steps again)."""
    kept = run / "mlflow.json"
    if not kept.is_file():
        _require(not records, "mlflow.json is missing")
        return
    record = json.loads(kept.read_text())
    client = MlflowClient(record["tracking_uri"])
    run_info = client.get_run(record["run_id"]).info
    _require(len(client.search_runs([run_info.experiment_id])) == 1, "the run folder has more than one MLflow run")

    def last_per_step(tag: str) -> dict[int, float]:
        history = sorted(client.get_metric_history(record["run_id"], tag), key=lambda m: m.timestamp)
        return {m.step: m.value for m in history}

    check_last_per_step("MLflow", last_per_step, records)


def check_wandb(run: Path, records: list[dict[str, Any]], killed: bool) -> None:
    """One W&B run for the folder, whose last value at each recorded epoch's step, over all its sessions' offline
    files, is the record's (a killed session may lose its buffered writes: a later session logs the checkpoint's
    records again from the last step a clean session wrote; a step it did write appears again, later). Right after
    a kill, epochs may be missing until that later session; those present must still be the record's."""
    kept = run / "wandb.json"
    if not kept.is_file():
        _require(not records, "wandb.json is missing")
        return
    run_id = json.loads(kept.read_text())["run_id"]
    files = sorted(run.glob("wandb/offline-run-*/run-*.wandb"))
    _require(all(f.name == f"run-{run_id}.wandb" for f in files), f"the run folder has other W&B runs: {files}")
    logged = sorted((row for f in files for row in wandb_file.history(f)), key=lambda row: row["_timestamp"])
    check_last_per_step(
        "W&B", lambda tag: {int(row["trainer/step"]): row[tag] for row in logged if tag in row}, records, killed
    )


def check_last_per_step(
    tracker: str,
    last_per_step: Callable[[str], dict[int, float]],
    records: list[dict[str, Any]],
    may_miss: bool = False,
) -> None:
    """The tracker's last value of each epoch metric at each recorded epoch's step is the record's (``may_miss``:
    a recorded epoch may be missing, not wrong)."""
    for metric in epoch_record.METRICS:
        if metric.tag is None:
            continue
        last = last_per_step(metric.tag)
        for row in records:
            if row.get(metric.column) is not None:
                got = last.get(int(row["step"]))
                if got is None and may_miss:
                    continue
                _require(
                    got is not None and np.float32(got) == np.float32(row[metric.column]),
                    f"{tracker} {metric.tag} at step {row['step']}: {got}, the record says {row[metric.column]}",
                )


def check_history(life: Lifecycle) -> None:
    path = life.run / "history.json"
    if not life.sessions:
        return
    sessions = json.loads(path.read_text())["sessions"]
    _require(
        [s["overrides"] for s in sessions] == life.sessions,
        f"history.json sessions {[s['overrides'] for s in sessions]}, typed {life.sessions}",
    )
    _require(
        all(s["ended"] in (COMPLETED, INTERRUPTED, STOPPED, "running") for s in sessions),
        f"history.json: {[s['ended'] for s in sessions]}",
    )


def check_results(life: Lifecycle, rows: list[dict[str, Any]]) -> None:
    results = json.loads((life.run / "results.json").read_text())
    last = rows[-1]
    _require(
        results["status"] == "completed" and results["epochs"] == len(rows) == int(last["epoch"]),
        f"results.json epochs {results['epochs']}, metrics.csv {len(rows)}",
    )
    for key, column in (("top1", "val_top1"), ("top5", "val_top5"), ("loss", "val_loss")):
        _require(results[key] == last[column], f"results.json {key}={results[key]}, metrics.csv {last[column]}")
    kept = "val_ema_top1" if results["best_of"] == "ema" else "val_top1"
    evaluated = [(r[kept], int(r["epoch"])) for r in rows if r.get(kept) is not None]
    best = max(top1 for top1, _ in evaluated)
    _require(
        results["best_top1"] == best and results["best_epoch"] == min(e for t, e in evaluated if t == best),
        f"results.json best {results['best_top1']} at {results['best_epoch']}, metrics.csv {evaluated}",
    )
    sessions = results["sessions"]
    _require(
        [s["overrides"] for s in sessions] == life.sessions and results["overrides"] == life.sessions[0],
        f"results.json overrides {[s['overrides'] for s in sessions]}, typed {life.sessions}",
    )
    _require(
        math.isclose(results["wall_time_s"], sum(s["wall_time_s"] for s in sessions), rel_tol=1e-9)
        and results["wall_time_s"] >= results["train_time_s"],
        f"results.json wall time {results['wall_time_s']} vs train time {results['train_time_s']}",
    )
    _require(
        math.isclose(results["train_time_s"], sum(r["epoch_time_s"] for r in rows), rel_tol=1e-6),
        "results.json train_time_s is not the sum of the epochs' times",
    )
    summary = [line for line in (life.run / "train.log").read_text().splitlines() if "run complete:" in line][-1]
    _require(
        f"best top-1 {best:.2f}% at epoch {results['best_epoch']}" in summary
        and f"final top-1 {results['top1']:.2f}%" in summary,
        f"train.log's summary {summary!r}",
    )


def _same_scalars(got: list[tuple[int, float]], expected: list[tuple[int, float]]) -> bool:
    return [s for s, _ in got] == [s for s, _ in expected] and all(
        np.float32(v) == np.float32(w) for (_, v), (_, w) in zip(got, expected)
    )


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise Broken(message)


# --- one lifecycle -----------------------------------------------------------------------------------


def reference_weights(life: Lifecycle, cache: dict[str, dict[str, torch.Tensor]], fork: bool) -> dict:
    """last.pt's weights of an uninterrupted run with the lifecycle's training settings."""
    settings = {k: v for k, v in life.settings.items() if k not in NOT_TRAINING}
    key = json.dumps(settings, sort_keys=True)
    if key not in cache:
        folder = life.folder / "uninterrupted"
        code, out = run_command(
            Command([*overrides(settings), f"hydra.run.dir={folder}"]), life.folder / "ref.log", fork
        )
        _require(code == 0, f"the uninterrupted run failed: {out[-500:]}")
        cache[key] = torch.load(folder / "checkpoints/last.pt", map_location="cpu", weights_only=True)["model"]
    return cache[key]


def execute(life: Lifecycle, command: Command, fork: bool) -> None:
    before = snapshot(life.run) if life.run.is_dir() else {}
    life.commands.append(command)
    code, out = run_command(command, life.folder / f"command{len(life.commands)}.log", fork)
    if command.expect == "refused":
        _require(code == 2 and "Traceback" not in out, f"a refused command exited {code}: {out[-800:]}")
        _require(snapshot(life.run) == before, "a refused command changed the run folder")
        return
    _require(code in (0, -signal.SIGKILL), f"exit {code}: {out[-1500:]}")
    _require("Traceback" not in out or code == -signal.SIGKILL, f"a traceback: {out[-1500:]}")
    if command.expect == "unchanged":
        _require(snapshot(life.run) == before, "an evaluation or a resume with nothing to do changed the run folder")
        if "eval_only=true" in command.args:
            check_evaluation(life, command)
        return
    if command.session:
        life.sessions.append([a for a in command.args if not a.startswith("hydra.")])
    life.killed = code == -signal.SIGKILL
    life.sync_with_checkpoint()
    check_folder(life)


def check_evaluation(life: Lifecycle, command: Command) -> None:
    """An evaluation of the run's best.pt scores what training recorded for it."""
    folder = Path(next(a for a in command.args if a.startswith("hydra.run.dir=")).split("=", 1)[1])
    results = json.loads((folder / "results.json").read_text())
    best = life.run / "checkpoints" / "best.pt"
    if best.is_file():
        kept = torch.load(best, map_location="cpu", weights_only=True)["best_top1"]
        _require(results["top1"] == kept, f"eval_only top-1 {results['top1']}, best.pt recorded {kept}")


def run_lifecycle(life: Lifecycle, cache: dict, fork: bool) -> int:
    """Run one lifecycle; 1 if its final weights were compared with an uninterrupted run's (and equal)."""
    life.folder.mkdir(parents=True)
    execute(life, life.start(), fork)
    for _ in range(life.rng.randint(2, 6)):
        execute(life, life.next_command(), fork)
    finishing = 0
    while not life.complete():
        finishing += 1
        _require(finishing <= 3, "the run does not complete")
        command = life.resume()
        command.fault = []
        execute(life, command, fork)
    if life.training_changed or life.settings.get("data.num_workers", "0") != "0":
        return 0  # resumed mid-epoch with workers, augmentation draws differ by design (data/loaders.py set_epoch)
    weights = life.checkpoint()["model"]
    for name, value in reference_weights(life, cache, fork).items():
        _require(torch.equal(weights[name], value), f"final weights differ from an uninterrupted run's at {name}")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="lifecycles to run")
    parser.add_argument("--seed", type=int, default=0, help="the first lifecycle's seed (then seed+1, ...)")
    parser.add_argument("--workdir", type=Path, help="where the run folders go (default: a temporary folder, removed)")
    parser.add_argument("--no-fork", action="store_true", help="run each command as a new python process")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lifecycles-"))
    workdir.mkdir(parents=True, exist_ok=True)
    folder_data = make_folder_dataset(workdir / "folder_data")
    cache: dict[str, Any] = {}
    broken, commands, compared, started = 0, 0, 0, time.time()
    for seed in range(args.seed, args.seed + args.n):
        life = Lifecycle(seed, workdir / f"lifecycle{seed}", folder_data)
        try:
            compared += run_lifecycle(life, cache, not args.no_fork)
            print(f"lifecycle {seed}: {len(life.commands)} commands, ok", flush=True)
        except Exception as err:  # noqa: BLE001 - a crash of the checker breaks the lifecycle too
            broken += 1
            why = str(err) if isinstance(err, Broken) else traceback.format_exc()
            print(
                f"lifecycle {seed} BROKE an invariant after its command {len(life.commands)}: {why}\n"
                f"  reproduce with (the run folder is {life.run}):",
                flush=True,
            )
            for command in life.commands:
                print(f"    {command.shell()}", flush=True)
        commands += len(life.commands)
    print(
        f"{args.n} lifecycles, {commands} commands, {compared} lifecycles' final weights compared "
        f"bit for bit with an uninterrupted run: {broken} broke an invariant; {time.time() - started:.0f} s"
    )
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return min(broken, 100)


if __name__ == "__main__":
    sys.exit(main())
