"""GMConv against the rivals its paper argues against, on the same bench: accuracy, cost and the ERF's shape.

    python -m scripts.study.rivals run [--task cluttered|scaled] [--seeds 17] [--arms standard gmconv ...]
    python -m scripts.study.rivals report --study docs/STUDY.md   # the tables, from the record
    python -m scripts.study.rivals compare A.csv B.csv ... --out FILE   # fp32 against bf16, paired by seed

``run`` trains ResNet-20 with the data's recipe for every (task, arm, seed) not yet in the record, one
``python train.py`` each, seed by seed (every arm of seed 0, then of seed 1, ...) so that a study stopped
anywhere has balanced arms. After each run it measures the run's ERF (64 validation images, the last spatial
layer, trained and at initialisation) and its Gaussian fit, and adds one row to the record
(docs/study/rivals/runs.csv, rewritten atomically): a study that is stopped loses at most the run in progress,
which ``run`` continues from its last checkpoint when called again. The run folders go under --out
(outputs/study_rivals by default) and are not needed by ``report``.

Tasks: ``cluttered`` (data=digits_cluttered: one 16 px digit among fragments on a 32 px canvas),
``scaled`` (data=digits_scaled at 8, 16 and 24 px: the ERF against the scale of the features) and ``digits``
(the plain digits). The precision is the device's (``trainer.amp=auto``) unless --overrides says otherwise;
the record keeps it per run, so a comparison of precisions is two records:

    python -m scripts.study.rivals run --task digits --arms standard gmconv --seeds 5 \
        --overrides trainer.amp=fp32 --record docs/study/precision/fp32.csv --out outputs/study_precision/fp32

Runners of different tasks may share the record and the machine, but not its cores: give each runner its share
of them (``OMP_NUM_THREADS=1 python -m scripts.study.rivals run ...`` for each of two runners on 2 cores). Measured
on 2 cores, one ResNet-20 epoch of the cluttered digits: 4.7 s for one runner at 2 threads, 8.8 s each for two
runners at 1 thread (the same throughput), and 27 s to over 90 s each for two runners at 2 threads each, whose
threads wait on one another.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.rivals_record import (
    ARMS,
    DIVERGED_COLUMNS,
    ERF_KEYS,
    RECORD,
    ROOT,
    add_row,
    diverged_record,
    read_record,
)
from analysis.rivals_report import STEP_TIMES, TABLES, compare, report
from analysis.trained_run import build_untrained, load_run, validation_images
from engine.checkpoint import LAST
from gmconv import erf_map, erf_stats, sigma_stats

TASKS = {
    "cluttered": [("digits_cluttered", None)],
    "scaled": [("digits_scaled", size) for size in (8, 16, 24)],
    "digits": [("digits", None)],
}
COMMON = ("model=resnet20", "trainer.eval_every=5", "trainer.progress=false")
ERF_IMAGES = 64


@dataclass(frozen=True)
class Job:
    data: str
    digit_size: int | None
    arm: str
    seed: int

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.data, "" if self.digit_size is None else str(self.digit_size), self.arm, str(self.seed)

    def folder(self, out: Path) -> Path:
        size = "" if self.digit_size is None else f"_{self.digit_size}px"
        return out / f"{self.data}{size}" / self.arm / f"seed_{self.seed}"

    def overrides(self) -> list[str]:
        size = [] if self.digit_size is None else [f"data.digit_size={self.digit_size}"]
        return [f"data={self.data}", *size, f"conv={self.arm}", f"seed={self.seed}", *COMMON]


def train(job: Job, folder: Path, extra: list[str]) -> int:
    """The run, or the rest of it after a stop (``resume=auto`` continues this folder's last.pt); its exit code."""
    command = [sys.executable, "train.py", *job.overrides(), *extra, "resume=auto", f"hydra.run.dir={folder}"]
    print("$", " ".join(command[1:]), flush=True)
    return subprocess.run(command, cwd=ROOT).returncode


def last_error(folder: Path) -> str:
    """The one-line error that train.py logged last in the run's train.log ("" if none)."""
    log = folder / "train.log"
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    errors = [line.split(" - error: ", 1)[1] for line in lines if " - error: " in line]
    return errors[-1] if errors else ""


def measure(job: Job, folder: Path) -> dict[str, Any]:
    """One row of the record: the run's numbers and its ERF's shape, trained and at initialisation."""
    trained = load_run(folder, prefer=(LAST,))  # the final weights, whose top-1 the record holds
    results = trained.metrics
    images, _ = validation_images(trained, ERF_IMAGES)
    stats = {
        "trained": erf_stats(erf_map(trained.model.float(), images)),
        "init": erf_stats(erf_map(build_untrained(trained.config, trained.ckpt["data_info"]), images)),
    }
    sigma = [s["mean"] for s in sigma_stats(trained.model).values()]
    trainer = results["config"]["trainer"]
    return {
        "data": job.key[0],
        "digit_size": job.key[1],
        "arm": job.arm,
        "seed": job.seed,
        "top1": results["top1"],
        "best_top1": results["best_top1"],
        "top5": results["top5"],
        "params": results["params"],
        "flops": results["flops"],
        "train_images_per_s": results["images_per_s"],
        "train_time_s": results["train_time_s"],
        "wall_time_s": results["wall_time_s"],
        "amp": trainer["amp"],
        "channels_last": trainer["channels_last"],
        "sigma_mean": statistics.fmean(sigma) if sigma else "",
        **{f"{kind}_{key}": stats[kind][key] for kind in ("init", "trained") for key in ERF_KEYS},
    }


def run(args: argparse.Namespace) -> None:
    """Every job not yet in the record. A run that diverges is an outcome of its arm: it goes to the diverged
    record and the study goes on. Any other failure (a bug, a stop by a signal) stops the study."""
    diverged = diverged_record(args.record)
    rows = read_record(args.record) + read_record(diverged)
    done = {(r["data"], r["digit_size"], r["arm"], r["seed"]) for r in rows}
    jobs = [
        Job(data, size, arm, seed) for seed in range(args.seeds) for data, size in TASKS[args.task] for arm in args.arms
    ]
    todo = [job for job in jobs if job.key not in done]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs already in {args.record}; {len(todo)} to go", flush=True)
    for job in todo:
        folder = job.folder(args.out)
        code = train(job, folder, args.overrides)
        if code == 0:
            add_row(args.record, measure(job, folder))
            continue
        error = last_error(folder)
        if not error.startswith("training diverged"):
            raise SystemExit(
                f"{folder} stopped (exit {code}): {error or 'its train.log names no error'}; the study stops here. "
                "Run the same command again to continue it"
            )
        print(f"{folder} diverged; kept in {diverged} (delete its row there to train it again)", flush=True)
        add_row(diverged, dict(zip(DIVERGED_COLUMNS, (*job.key, error))), DIVERGED_COLUMNS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", help="train and measure every run not yet in the record")
    runner.add_argument("--task", choices=sorted(TASKS), default="cluttered")
    runner.add_argument(
        "--seeds", type=int, default=17, help="seeds per arm; the report says how many each arm's spread needs"
    )
    runner.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    runner.add_argument("--out", type=Path, default=ROOT / "outputs" / "study_rivals", help="run folders")
    runner.add_argument("--overrides", nargs="*", default=[], help="added to every run (a trial: trainer.epochs=1)")
    runner.add_argument("--record", type=Path, default=RECORD)
    reporter = commands.add_parser("report", help="the tables, from the record")
    reporter.add_argument("--record", type=Path, default=RECORD)
    reporter.add_argument("--tables", type=Path, default=TABLES)
    reporter.add_argument("--step-times", type=Path, default=STEP_TIMES, help="scripts/bench/train_step.py --csv")
    reporter.add_argument(
        "--study", type=Path, default=None, help="also put the tables in this document's marked block (docs/STUDY.md)"
    )
    comparer = commands.add_parser("compare", help="fp32 against bf16, paired by seed, from several records")
    comparer.add_argument("records", nargs="+", type=Path)
    comparer.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    {"run": run, "report": report, "compare": compare}[args.command](args)


if __name__ == "__main__":
    main()
