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
import csv
import fcntl
import io
import math
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.power import confidence_interval, detectable_difference, seeds_needed
from analysis.summary import markdown_table
from analysis.trained_run import build_untrained, load_run, validation_images
from engine.checkpoint import LAST, atomic_write
from gmconv import erf_map, erf_stats, sigma_stats

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "docs" / "study" / "rivals" / "runs.csv"
TABLES = ROOT / "docs" / "study" / "rivals" / "tables.md"
STEP_TIMES = ROOT / "docs" / "study" / "rivals" / "step_times.csv"  # scripts/bench/train_step.py --csv, run quiet
ARMS = ("standard", "gmconv", "gmconv_fixed", "deformable", "dcls", "dilated", "large_kernel")
TASKS = {
    "cluttered": [("digits_cluttered", None)],
    "scaled": [("digits_scaled", size) for size in (8, 16, 24)],
    "digits": [("digits", None)],
}
COMMON = ("model=resnet20", "trainer.eval_every=5", "trainer.progress=false")
ERF_IMAGES = 64
ERF_KEYS = (
    "gauss_r2",
    "gauss_mass_1sigma",
    "gauss_mass_2sigma",
    "gauss_sigma_major",
    "gauss_sigma_minor",
    "area_ratio@0.5",
)
COLUMNS = (
    "data",
    "digit_size",
    "arm",
    "seed",
    "top1",
    "best_top1",
    "top5",
    "params",
    "flops",
    "train_images_per_s",
    "train_time_s",
    "wall_time_s",
    "amp",
    "channels_last",
    "sigma_mean",
    *(f"{kind}_{key}" for kind in ("init", "trained") for key in ERF_KEYS),
)


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


def read_record(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_record(path: Path, rows: list[dict[str, Any]]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text.getvalue()))


def train(job: Job, folder: Path, extra: list[str]) -> None:
    """The run, or the rest of it after a stop (``resume=auto`` continues this folder's last.pt)."""
    command = [sys.executable, "train.py", *job.overrides(), *extra, "resume=auto", f"hydra.run.dir={folder}"]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


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
    rows = read_record(args.record)
    done = {(r["data"], r["digit_size"], r["arm"], r["seed"]) for r in rows}
    jobs = [
        Job(data, size, arm, seed) for seed in range(args.seeds) for data, size in TASKS[args.task] for arm in args.arms
    ]
    todo = [job for job in jobs if job.key not in done]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs already in {args.record}; {len(todo)} to go", flush=True)
    for job in todo:
        folder = job.folder(args.out)
        train(job, folder, args.overrides)
        add_row(args.record, measure(job, folder))


def add_row(path: Path, row: dict[str, Any]) -> None:
    """Append one run's row to the record as it is on disk now, under a lock: runners of other tasks (or arms)
    may share the record, and each keeps the others' rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        write_record(path, [*read_record(path), row])


def stat(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def pm(values: list[float], digits: int = 2) -> str:
    if not values:
        return ""
    mean, std = stat(values)
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def read_step_times(path: Path) -> dict[tuple[str, str], str]:
    """(precision, arm) → "ms (× standard)" of ResNet-20 from the benchmark's table: the runs' own throughput
    is measured beside other jobs and says nothing about an arm's cost."""
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {
            (r["precision"], r["conv"]): f"{r['ms_per_step']} (×{r['x_standard']})"
            for r in csv.DictReader(f)
            if r["model"] == "resnet20"
        }


def task_table(rows: list[dict[str, str]], data: str, size: str, step_times: dict[tuple[str, str], str]) -> str:
    """One table of a task: every arm's numbers, Δ paired by seed with the standard convolution."""
    mine = [r for r in rows if r["data"] == data and r["digit_size"] == size]
    by_arm = {arm: {int(r["seed"]): r for r in mine if r["arm"] == arm} for arm in ARMS}
    base = by_arm["standard"]
    table = []
    for arm, runs in by_arm.items():
        if not runs:
            continue
        top1 = [float(r["top1"]) for r in runs.values()]
        seeds = sorted(set(runs) & set(base))
        deltas = [float(runs[s]["top1"]) - float(base[s]["top1"]) for s in seeds]
        if arm != "standard" and len(deltas) > 1:
            mean, std = stat(deltas)
            low, high = confidence_interval(mean, std, len(deltas))
            delta = f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"
            resolves = f"{detectable_difference(std, len(deltas)):.2f}"
        else:
            delta = resolves = "—"
        first = next(iter(runs.values()))
        sigma = [float(r["sigma_mean"]) for r in runs.values() if r["sigma_mean"]]
        table.append(
            [
                arm,
                len(runs),
                pm(top1),
                delta,
                resolves,
                f"{int(first['params']) / 1e3:.0f}k",
                f"{int(first['flops']) / 1e6:.0f}M",
                step_times.get(("fp32" if first["amp"] == "none" else first["amp"], arm), "—"),
                pm([float(r["init_gauss_r2"]) for r in runs.values()]),
                pm([float(r["trained_gauss_r2"]) for r in runs.values()]),
                pm([float(r["trained_gauss_mass_1sigma"]) for r in runs.values()]),
                pm([float(r["trained_gauss_sigma_major"]) for r in runs.values()], 1),
                pm(sigma) if sigma else "—",
            ]
        )
    headers = [
        "arm",
        "seeds",
        "top-1 %",
        "Δ top-1 vs standard [95 % CI]",
        "resolves Δ of",
        "params",
        "FLOPs",
        "step ms (× standard)",
        "ERF R² init",
        "ERF R² trained",
        "mass in 1σ",
        "ERF σ major px",
        "mean σ (GMConv)",
    ]
    return markdown_table(headers, table)


def scale_rows(rows: list[dict[str, str]]) -> dict[str, dict[int, list[dict[str, str]]]]:
    """arm → digit size → that size's runs, for the tasks that vary the digit size."""
    by_arm: dict[str, dict[int, list[dict[str, str]]]] = {}
    for r in rows:
        if r["digit_size"]:
            by_arm.setdefault(r["arm"], {}).setdefault(int(r["digit_size"]), []).append(r)
    return {arm: by_arm[arm] for arm in ARMS if arm in by_arm}


def scale_table(rows: list[dict[str, str]]) -> str:
    """Per arm and digit size: the trained ERF's σ (its major axis) and top-1, the question being whether the ERF
    follows the scale of the features."""
    by_arm = scale_rows(rows)
    sizes = sorted({size for runs in by_arm.values() for size in runs})
    table = [
        [
            arm,
            *(pm([float(r["trained_gauss_sigma_major"]) for r in runs.get(size, [])], 1) or "—" for size in sizes),
            *(pm([float(r["top1"]) for r in runs.get(size, [])]) or "—" for size in sizes),
            ", ".join(str(len(runs.get(size, []))) for size in sizes),
        ]
        for arm, runs in by_arm.items()
    ]
    headers = [
        "arm",
        *(f"ERF σ px, {size} px digits" for size in sizes),
        *(f"top-1 %, {size} px" for size in sizes),
        "seeds per size",
    ]
    return markdown_table(headers, table)


def scale_figure(rows: list[dict[str, str]], path: Path) -> None:
    """The trained ERF's σ against the digit size, one line per arm (mean ± std over seeds), with the
    initialisation's as dashes: a receptive field that followed the features would rise with the digits."""
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, no display needed

    figure = Figure(figsize=(5.5, 3.8), layout="constrained")
    axes = figure.subplots()
    for index, (arm, runs) in enumerate(scale_rows(rows).items()):
        sizes = sorted(runs)
        color = f"C{index}"
        for kind, style in (("trained", "-o"), ("init", "--x")):
            values = [stat([float(r[f"{kind}_gauss_sigma_major"]) for r in runs[size]]) for size in sizes]
            axes.errorbar(
                sizes,
                [mean for mean, _ in values],
                yerr=[0 if math.isnan(std) else std for _, std in values],
                fmt=style,
                color=color,
                capsize=3,
                label=arm if kind == "trained" else None,
            )
    axes.set(xlabel="digit size (px) on the 32 px canvas", ylabel="ERF σ, major axis (px)", xticks=[8, 16, 24])
    axes.set_title("Last stage's ERF: trained (solid) and at initialisation (dashed)", fontsize=9)
    axes.legend(fontsize=8)
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))


def report(args: argparse.Namespace) -> None:
    rows = read_record(args.record)
    if not rows:
        raise SystemExit(f"{args.record} holds no runs yet; run: python -m scripts.study.rivals run")
    step_times = read_step_times(args.step_times)
    parts = ["<!-- generated by python -m scripts.study.rivals report from runs.csv; do not edit -->", ""]
    tasks = sorted({(r["data"], r["digit_size"]) for r in rows}, key=lambda t: (t[0], int(t[1] or 0)))
    for data, size in tasks:
        precision = ", ".join(
            sorted({f"{r['amp']} / channels_last {r['channels_last']}" for r in rows if r["data"] == data})
        )
        parts += [
            f"### {data}{f' at {size} px' if size else ''}",
            "",
            f"ResNet-20, the data's recipe; precision {precision}."
            " Top-1 at the final epoch, mean ± sample std over seeds; Δ paired by seed with the standard "
            'convolution, with its 95 % t-interval; "resolves Δ of": the smallest true Δ these seeds detect '
            "with 80 % power at that spread. ERF: the last stage's, 64 validation images; R² against its "
            "moment-matched Gaussian, mass inside its 1σ ellipse (a Gaussian: 0.39). Step: a ResNet-20 "
            f"training step at batch 128, median, from {STEP_TIMES.relative_to(ROOT)} "
            "(`python -m scripts.bench.train_step --csv`, run with nothing else on the machine).",
            "",
            task_table(rows, data, size, step_times),
            "",
        ]
        spreads = [
            stat([float(r["top1"]) - float(s["top1"]) for r, s in pairs])[1]
            for pairs in _pairs(rows, data, size)
            if len(pairs) > 2
        ]
        if spreads:
            pooled = math.sqrt(statistics.fmean(s * s for s in spreads))
            parts += [
                f"Pooled spread of the paired Δ: {pooled:.2f} points; a 1-point Δ needs "
                f"{seeds_needed(pooled, 1.0)} seeds per arm at 80 % power.",
                "",
            ]
    if any(r["digit_size"] for r in rows):
        scale_figure(rows, args.tables.with_name("erf_by_size.png"))
        parts += [
            "### The ERF against the digit size",
            "",
            "`data=digits_scaled`: the same digits drawn at 8, 16 and 24 px on the 32 px canvas, without clutter. "
            "The trained ERF's σ along its major axis (px), mean ± std over seeds, and top-1 at each size.",
            "",
            scale_table(rows),
            "",
            f"![ERF σ against the digit size]({FIGURE_LINK})",
            "",
        ]
    text = "\n".join(parts)
    atomic_write(args.tables, lambda tmp: Path(tmp).write_text(text.replace(FIGURE_LINK, "erf_by_size.png")))
    print(f"wrote {args.tables}")
    if args.study is not None:
        link = os.path.relpath(args.tables.with_name("erf_by_size.png"), args.study.parent)
        replace_block(args.study, "\n".join(parts[2:]).replace(FIGURE_LINK, link))
        print(f"updated the tables in {args.study}")


FIGURE_LINK = "<erf_by_size.png>"  # the figure's link, relative to each document that shows it
BEGIN, END = "<!-- rivals tables: begin (python -m scripts.study.rivals report) -->", "<!-- rivals tables: end -->"


def replace_block(path: Path, text: str) -> None:
    """Put ``text`` between the BEGIN and END markers of ``path``, so a document's tables are the script's."""
    document = path.read_text()
    if BEGIN not in document or END not in document:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} block to put the tables in")
    head, rest = document.split(BEGIN, 1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(f"{head}{BEGIN}\n{text.strip()}\n{END}{rest.split(END, 1)[1]}"))


def _pairs(rows: list[dict[str, str]], data: str, size: str) -> list[list[tuple[dict, dict]]]:
    """Per arm, the (arm run, standard run) pairs of one task that share a seed."""
    mine = [r for r in rows if r["data"] == data and r["digit_size"] == size]
    base = {r["seed"]: r for r in mine if r["arm"] == "standard"}
    return [
        [(r, base[r["seed"]]) for r in mine if r["arm"] == arm and r["seed"] in base]
        for arm in ARMS
        if arm != "standard"
    ]


def compare(args: argparse.Namespace) -> None:
    """Precision against precision: every (data, arm) that two or more records share, paired by seed."""
    rows = [row for path in args.records for row in read_record(path)]
    lines = ["<!-- generated by python -m scripts.study.rivals compare; do not edit -->", ""]
    table = []
    for data, arm in sorted({(r["data"], r["arm"]) for r in rows}):
        by_amp: dict[str, dict[str, dict[str, str]]] = {}
        for r in rows:
            if (r["data"], r["arm"]) == (data, arm):
                by_amp.setdefault(r["amp"], {})[r["seed"]] = r
        if {"none", "bf16"} - set(by_amp):
            continue
        fp32, bf16 = by_amp["none"], by_amp["bf16"]
        seeds = sorted(set(fp32) & set(bf16), key=int)
        if len(seeds) < 2:
            continue
        deltas = [float(bf16[s]["top1"]) - float(fp32[s]["top1"]) for s in seeds]
        mean, std = stat(deltas)
        low, high = confidence_interval(mean, std, len(deltas))
        table.append(
            [
                data,
                arm,
                len(seeds),
                pm([float(fp32[s]["top1"]) for s in seeds]),
                pm([float(bf16[s]["top1"]) for s in seeds]),
                f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]",
                pm([float(fp32[s]["sigma_mean"]) for s in seeds if fp32[s]["sigma_mean"]], 3) or "—",
                pm([float(bf16[s]["sigma_mean"]) for s in seeds if bf16[s]["sigma_mean"]], 3) or "—",
            ]
        )
    lines.append(
        markdown_table(
            [
                "data",
                "arm",
                "seeds",
                "top-1 fp32 %",
                "top-1 bf16 %",
                "Δ bf16 − fp32 [95 % CI]",
                "mean σ fp32",
                "mean σ bf16",
            ],
            table,
        )
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", help="train and measure every run not yet in the record")
    runner.add_argument("--task", choices=sorted(TASKS), default="cluttered")
    runner.add_argument("--seeds", type=int, default=17, help="seeds per arm (17: a 1-point Δ at 80 %% power)")
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
