"""The numbers docs/STUDY.md's "Where the receptive field matters" quotes, from scripts/study/canvas.sh's outputs.

    python -m scripts.study.canvas_numbers OUT --figures DIR [--out numbers.md]

OUT holds the study's sweeps (cluttered/, scaled/, sigma_init/), DIR the erf.py and sigma_report.py reports
written from them (erf_cluttered/, erf_scaled/, sigma_cluttered/, sigma_scaled/, sigma_init/). Prints, and with
--out writes, markdown tables:

1. the cluttered digits: top-1 per convolution, Δ top-1 paired by seed with conv=standard, its 95 % interval,
   the seeds a 1-point Δ needs at that spread (80 % power, α = 0.05, two-sided paired t-test:
   analysis/power.py) and the smallest Δ the seeds that ran resolve; the ERF and learned σ per convolution;
2. learned σ by stage (stem, stages 1-3: the mean of every σ of the stage's layers) per digit size, and the
   effective receptive field per digit size and convolution, trained and at initialisation;
3. learned σ by stage and top-1 per σ₀.
Every number is a mean ± std over seeds (sample std).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from analysis.power import confidence_interval, detectable_difference, seeds_needed
from analysis.summary import Row, Stat, format_stat, group_runs, read_runs, stat, table_rows
from analysis.trained_run import find_run_folders

EFFECT = 1.0  # top-1 points: the difference the study is sized to resolve (the question)
STAGES = ("stem", "layer1", "layer2", "layer3")  # a CIFAR ResNet's stem conv and its three stages


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """The first column left-aligned (labels), the others right-aligned (numbers)."""
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"
    lines = ["| " + " | ".join(headers) + " |", rule]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def accuracy_rows(folders: list[Path]) -> list[Row]:
    runs, unfinished, _ = read_runs(find_run_folders(folders))
    if unfinished:
        raise SystemExit(
            f"error: {len(unfinished)} run(s) did not finish, e.g. {unfinished[0].path}: "
            f"{unfinished[0].what}; finish or remove them first"
        )
    return table_rows(group_runs(runs))


def power_table(rows: list[Row]) -> str:
    """Accuracy and the power of each paired comparison with the standard convolution."""
    table = []
    for row in rows:
        cells = [row.group.label, str(row.top1.n), format_stat(row.top1)]
        delta = row.delta
        if delta is None or delta.std is None:
            table.append(cells + ["—"] * 4)
            continue
        low, high = confidence_interval(delta.mean, delta.std, delta.n)
        table.append(
            cells
            + [
                format_stat(delta, "+"),
                f"[{low:+.2f}, {high:+.2f}]",
                str(seeds_needed(delta.std, EFFECT)),
                f"{detectable_difference(delta.std, delta.n):.2f}",
            ]
        )
    text = markdown_table(
        [
            "setting",
            "n",
            "top-1 (%)",
            "Δ top-1 vs standard",
            "95 % interval of Δ",
            f"seeds for a {EFFECT:g}-point Δ",
            "Δ resolved with n seeds",
        ],
        table,
    )
    spreads = [row.delta for row in rows if row.delta is not None and row.delta.std is not None]
    if spreads:  # each arm's spread is an estimate from few pairs: the pooled one plans the next study
        pooled = math.sqrt(sum((d.n - 1) * d.std**2 for d in spreads) / sum(d.n - 1 for d in spreads))
        text += (
            f"\nPooled spread of the paired Δ over the {len(spreads)} comparisons: {pooled:.2f} points; at that "
            f"spread a {EFFECT:g}-point Δ needs {seeds_needed(pooled, EFFECT)} seeds.\n"
        )
    return text


def stage_of(layer: str) -> str:
    first = layer.split(".")[0]
    return first if first in STAGES else "stem"


def stage_sigma(run: dict[str, Any]) -> dict[str, float]:
    """A run's mean σ per stage (every σ value of the stage's layers counted once) and over the network."""
    counts: dict[str, int] = defaultdict(int)
    sums: dict[str, float] = defaultdict(float)
    for name, layer in run["layers"].items():
        counts[stage_of(name)] += layer["count"]
        sums[stage_of(name)] += layer["count"] * layer["mean"]
    return {
        **{stage: sums[stage] / counts[stage] for stage in counts},
        "network": run["network"]["mean"],
        "moved": run["network"]["mean_abs_delta"],
    }


def sigma_table(report: Path, accuracy: dict[frozenset[Path], Stat] | None = None) -> str:
    """σ by stage per condition of a sigma_report.json: mean ± std over the condition's seeds."""
    numbers = json.loads(report.read_text())
    by_path = {run["run"]: stage_sigma(run) for run in numbers["runs"]}
    columns = [*STAGES, "network", "moved"]
    table = []
    for condition in numbers["conditions"]:
        per_run = [by_path[path] for path in condition["runs"]]
        cells = [format_stat(stat([run[column] for run in per_run]), digits=3) for column in columns]
        init = {layer["sigma_init"] for layer in condition["layers"].values()}
        runs = frozenset(Path(path).resolve() for path in condition["runs"])
        extra = [format_stat(accuracy[runs])] if accuracy else []
        table.append(
            [condition["label"], str(condition["n"]), ", ".join(f"{s:g}" for s in sorted(init)), *cells, *extra]
        )
    headers = [
        "condition",
        "n",
        "σ₀",
        "σ stem",
        "σ stage 1",
        "σ stage 2",
        "σ stage 3",
        "σ network",
        "mean \\|σ − σ₀\\|",
    ] + (["top-1 (%)"] if accuracy else [])
    return markdown_table(headers, table)


def erf_table(report: Path) -> str:
    """The ERF's spread per condition of an erf.json, trained and at initialisation."""
    table = []
    for condition in json.loads(report.read_text())["conditions"]:
        for kind, stats in (("at init", condition["init_stats"]), ("trained", condition["stats"])):
            cells = [
                format_stat(Stat(**stats[key]), digits=digits)
                for key, digits in (("sigma_x", 2), ("sigma_y", 2), ("area_ratio@0.5", 3), ("area_ratio@0.99", 3))
            ]
            table.append([f"{condition['label']} {kind}", str(condition["n"]), *cells])
    return markdown_table(["condition", "n", "σx (px)", "σy (px)", "area@0.5", "area@0.99"], table)


def accuracy_of(rows: list[Row]) -> dict[frozenset[Path], Stat]:
    """top-1 of each summary group, keyed by its run folders: a σ report's condition is the same runs."""
    return {frozenset(run.path.resolve() for run in row.group.runs): row.top1 for row in rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="scripts/study/canvas.sh's output folder (its OUT)")
    parser.add_argument("--figures", type=Path, required=True, help="where its erf.py and sigma_report.py wrote")
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = parser.parse_args(argv)
    cluttered = accuracy_rows([args.runs / "cluttered", args.runs / "sigma_init"])
    text = "\n".join(
        [
            "## 1. Cluttered digits: accuracy and power\n",
            power_table(cluttered),
            "## 1. Cluttered digits: effective receptive field of layer3\n",
            erf_table(args.figures / "erf_cluttered" / "erf.json"),
            "## 1. Cluttered digits: σ by stage at the default σ learning rate\n",
            sigma_table(args.figures / "sigma_cluttered" / "sigma_report.json"),
            "## 2. Rescaled digits: σ by stage per digit size (conv=gmconv, optim.sigma_lr_scale=100)\n",
            sigma_table(args.figures / "sigma_scaled" / "sigma_report.json"),
            "## 2. Rescaled digits: effective receptive field of layer3 per digit size\n",
            erf_table(args.figures / "erf_scaled" / "erf.json"),
            "## 3. Cluttered digits: σ by stage and top-1 per σ₀ (optim.sigma_lr_scale=100)\n",
            sigma_table(args.figures / "sigma_init" / "sigma_report.json", accuracy_of(cluttered)),
        ]
    )
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
