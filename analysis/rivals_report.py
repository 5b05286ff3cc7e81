"""The rivals study's tables and figure, made from its record alone (``python -m scripts.study.rivals report``),
and the comparison of two records paired by seed (``compare``: fp32 against bf16)."""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
from pathlib import Path

from analysis.power import confidence_interval, detectable_difference, seeds_needed
from analysis.rivals_record import ARMS, ROOT, diverged_record, read_record
from analysis.summary import markdown_table
from engine.checkpoint import atomic_write

TABLES = ROOT / "docs" / "study" / "rivals" / "tables.md"
STEP_TIMES = ROOT / "docs" / "study" / "rivals" / "step_times.csv"  # scripts/bench/train_step.py --csv, run quiet


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
    return {
        (r["precision"], r["conv"]): f"{r['ms_per_step']} (×{r['x_standard']})"
        for r in read_record(path)
        if r["model"] == "resnet20"
    }


def paired_deltas(rows: list[dict[str, str]], data: str, size: str, base: str = "standard") -> dict[str, list[float]]:
    """Per arm other than ``base``, its top-1 minus ``base``'s, over the seeds both ran."""
    mine = [r for r in rows if r["data"] == data and r["digit_size"] == size]
    reference = {r["seed"]: float(r["top1"]) for r in mine if r["arm"] == base}
    deltas = {
        arm: [float(r["top1"]) - reference[r["seed"]] for r in mine if r["arm"] == arm and r["seed"] in reference]
        for arm in ARMS
        if arm != base
    }
    return {arm: values for arm, values in deltas.items() if values}


def interval(values: list[float]) -> str:
    """Mean Δ with its 95 % t-interval."""
    mean, std = stat(values)
    low, high = confidence_interval(mean, std, len(values))
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def gmconv_table(rows: list[dict[str, str]], data: str, size: str) -> str:
    """GMConv against every other arm, paired by seed: the paper's own comparison is with deformable convolution,
    and the fixed Gaussian asks whether learning σ matters."""
    table = [
        [arm, len(values), interval([-v for v in values]), f"{detectable_difference(stat(values)[1], len(values)):.2f}"]
        for arm, values in paired_deltas(rows, data, size, base="gmconv").items()
        if len(values) > 1
    ]
    return markdown_table(["GMConv against", "seeds", "Δ top-1 GMConv − arm [95 % CI]", "resolves Δ of"], table)


def task_table(rows: list[dict[str, str]], data: str, size: str, step_times: dict[tuple[str, str], str]) -> str:
    """One table of a task: every arm's numbers, Δ paired by seed with the standard convolution."""
    mine = [r for r in rows if r["data"] == data and r["digit_size"] == size]
    by_arm = {arm: {int(r["seed"]): r for r in mine if r["arm"] == arm} for arm in ARMS}
    all_deltas = paired_deltas(rows, data, size)
    table = []
    for arm, runs in by_arm.items():
        if not runs:
            continue
        top1 = [float(r["top1"]) for r in runs.values()]
        deltas = all_deltas.get(arm, [])
        if len(deltas) > 1:
            delta = interval(deltas)
            resolves = f"{detectable_difference(stat(deltas)[1], len(deltas)):.2f}"
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


def delta_figure(rows: list[dict[str, str]], data: str, path: Path) -> None:
    """Each arm's paired Δ against the standard convolution with its 95 % interval: the question the study asks,
    read at a glance (an interval that crosses 0 has not resolved a difference)."""
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, no display needed

    deltas = {arm: values for arm, values in paired_deltas(rows, data, "").items() if len(values) > 1}
    figure = Figure(figsize=(6.5, 0.8 + 0.45 * len(deltas)), layout="constrained")
    axes = figure.subplots()
    for y, (arm, values) in enumerate(reversed(deltas.items())):
        mean, std = stat(values)
        low, high = confidence_interval(mean, std, len(values))
        axes.errorbar([mean], [y], xerr=[[mean - low], [high - mean]], fmt="o", color="C0", capsize=4)
        axes.annotate(f"n={len(values)}", (high, y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8)
    axes.axvline(0, color="0.5", linewidth=1)
    axes.set(yticks=range(len(deltas)), yticklabels=list(reversed(deltas)), ylim=(-0.6, len(deltas) - 0.4))
    axes.set_xlabel("top-1 Δ against the standard convolution, points (mean, 95 % CI)")
    axes.set_title(data, fontsize=9)
    axes.margins(x=0.12)  # room for the seed counts
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))


def report(args: argparse.Namespace) -> None:
    rows = read_record(args.record)
    if not rows:
        raise SystemExit(f"{args.record} holds no runs yet; run: python -m scripts.study.rivals run")
    step_times = read_step_times(args.step_times)
    diverged = read_record(diverged_record(args.record))
    parts = [
        "<!-- generated by python -m scripts.study.rivals report from runs.csv; do not edit -->",
        "",
        "ResNet-20 with the data's recipe, every arm converting the same layers. Top-1 at the final epoch, mean ± "
        "sample std over seeds; Δ paired by seed with the standard convolution, with its 95 % t-interval; "
        '"resolves Δ of": the smallest true Δ these seeds detect with 80 % power at that spread. ERF: the last '
        "stage's, 64 validation images; R² against its moment-matched Gaussian, mass inside its 1σ ellipse (a "
        "Gaussian: 0.39). Step: a ResNet-20 training step at batch 128, median, and its ratio to the standard "
        f"network's, from {display_path(args.step_times)} (`python -m scripts.bench.train_step --csv`, run with "
        "nothing else on the machine).",
        "",
    ]
    tasks = sorted({(r["data"], r["digit_size"]) for r in rows}, key=lambda t: (t[0], int(t[1] or 0)))
    for data, size in tasks:
        precision = ", ".join(
            sorted({f"{r['amp']} / channels_last {r['channels_last']}" for r in rows if r["data"] == data})
        )
        parts += [
            f"### {data}{f' at {size} px' if size else ''}",
            "",
            f"Precision: {precision}.",
            "",
            task_table(rows, data, size, step_times),
            "",
        ]
        lost = [r for r in diverged if (r["data"], r["digit_size"]) == (data, size)]
        if lost:
            seeds = {arm: [r["seed"] for r in lost if r["arm"] == arm] for arm in ARMS}
            parts += [
                "Diverged before finishing, so left out of the table: "
                + "; ".join(f"{arm} seed {', '.join(found)}" for arm, found in seeds.items() if found)
                + f" ({display_path(diverged_record(args.record))}).",
                "",
            ]
        needed = [
            f"{arm} {seeds_needed(stat(values)[1], 1.0)} ({len(values)} in, spread {stat(values)[1]:.2f})"
            for arm, values in paired_deltas(rows, data, size).items()
            if len(values) > 2
        ]
        if needed:
            parts += [
                "Seeds a 1-point Δ against the standard convolution needs at 80 % power, from each arm's own spread "
                "of the paired Δ (`analysis.power.seeds_needed`): " + "; ".join(needed) + ".",
                "",
            ]
        if any(len(v) > 1 for v in paired_deltas(rows, data, size, base="gmconv").values()):
            parts += [gmconv_table(rows, data, size), ""]
        if not size and any(len(v) > 1 for v in paired_deltas(rows, data, size).values()):
            delta_figure(rows, data, args.tables.with_name(f"delta_{data}.png"))
            parts += [f"![paired Δ against the standard convolution, {data}]({link(f'delta_{data}.png')})", ""]
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
            f"![ERF σ against the digit size]({link('erf_by_size.png')})",
            "",
        ]
    text = "\n".join(parts)
    atomic_write(args.tables, lambda tmp: Path(tmp).write_text(resolve_links(text, Path("."))))
    print(f"wrote {args.tables}")
    if args.study is not None:
        folder = Path(os.path.relpath(args.tables.parent, args.study.parent))
        replace_block(args.study, resolve_links("\n".join(parts[2:]), folder))
        print(f"updated the tables in {args.study}")


def link(name: str) -> str:
    """A figure's link, made relative to each document that shows it by ``resolve_links``."""
    return f"<figure:{name}>"


def resolve_links(text: str, folder: Path) -> str:
    """The figures written beside the tables, linked from a document that sees that folder as ``folder``."""
    return re.sub(r"<figure:([^>]+)>", lambda m: (folder / m.group(1)).as_posix(), text)


def display_path(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


BEGIN, END = "<!-- rivals tables: begin (python -m scripts.study.rivals report) -->", "<!-- rivals tables: end -->"


def replace_block(path: Path, text: str) -> None:
    """Put ``text`` between the BEGIN and END markers of ``path``, so a document's tables are the script's."""
    document = path.read_text()
    if BEGIN not in document or END not in document:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} block to put the tables in")
    head, rest = document.split(BEGIN, 1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(f"{head}{BEGIN}\n{text.strip()}\n{END}{rest.split(END, 1)[1]}"))


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
        table.append(
            [
                data,
                arm,
                len(seeds),
                pm([float(fp32[s]["top1"]) for s in seeds]),
                pm([float(bf16[s]["top1"]) for s in seeds]),
                interval(deltas),
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
