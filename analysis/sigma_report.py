"""What σ did in trained GMConv runs: its mean per layer by condition, its path through training, a few masks.

    python -m scripts.sigma_report RUN [RUN ...] [--out DIR] [--channels K] [--mask-layers L]
                                   [--checkpoint last|best]

RUN: a run folder of train.py, a checkpoint file, or a folder of run folders such as a sweep
(outputs/multirun/<date>, expanded as scripts/summarize.py expands it); several may be mixed. Every run
with learned σ (GMConv2d layers) is reported; a run without (conv=standard, or DynamicGMConv2d layers
only) is skipped with a one-line note, and so is a run folder inside a given folder that holds no
checkpoint. Runs that differ only in their seed are one condition, grouped and labelled as summarize.py
groups them (analysis.trained_run.conditions). Writes, into --out (default: <first RUN>/sigma_report/):

* sigma_by_depth.png: a line per condition: the mean σ of every GMConv2d layer in network order, averaged
  over the condition's seeds, with a band of ± 1 std over them (no band for a single seed), and each
  layer's sigma_init as a dashed reference line;
* <i>_<run>_trajectory.png (per run): the mean σ of each layer (min-max shaded) at every epoch's end,
  read from the run's TensorBoard scalars sigma/<layer>/{mean,min,max};
* <i>_<run>_masks.png (per run): a compact grid of masks, L layers evenly spaced in depth (rows, first and
  last included) by K σ values each (columns, smallest to largest σ), on one 0..1 colour scale with a
  colour bar, each mask's σ written in its panel;
* sigma_report.json: {"checkpoint", "channels", "mask_layers", "figures": {"by_depth"}, "runs", "conditions"}.
  "runs": per run its label, seed, checkpoint, epoch and step; per layer count, mean, std, min, quartiles,
  max of σ, sigma_init and how far σ moved from it (mean and max |σ - sigma_init|); the same for the whole
  network; the trajectories; and its figures. "conditions": per condition {"label", "n", "seeds", "runs"
  (the run folders), "network": {"sigma_mean", "mean_abs_delta", "max_abs_delta"}, "layers": {layer:
  {"depth", "sigma_init", "sigma_mean", "mean_abs_delta"}}}, each number {"mean", "std", "n"} over the
  condition's runs of the run's own value (std: sample std, null for one run).
It prints a line per run and a line per condition with the network-wide numbers.

σ is read from last.pt (the end of training, where the trajectory ends) unless --checkpoint best.
DynamicGMConv2d layers predict σ per image and have no learned σ of their own: they are listed, not
reported. A RUN that is not a trained run (no checkpoint), or a set of RUNs without any learned σ, stops
the report (exit 2) before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: the figures render with Agg, no display needed
from matplotlib.ticker import MaxNLocator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from analysis.summary import Stat, format_stat, stat, text_table
from analysis.trained_run import TrainedRun, conditions, distinct_labels, load_runs
from engine.checkpoint import BEST, LAST
from engine.errors import BadInput, ConfigError, DataError
from gmconv import DynamicGMConv2d, GMConv2d
from gmconv.stats import masks_by_sigma

DPI = 110  # the figures are committed: keep the PNGs small
REPORT_JSON = "sigma_report.json"
BY_DEPTH_PNG = "sigma_by_depth.png"


class NoSigma(DataError):
    """A run without learned σ: skipped with a note, so a sweep that compares against conv=standard reports
    its GMConv runs."""


@dataclass
class Layer:
    name: str
    module: GMConv2d
    sigma: torch.Tensor  # every σ value of the layer, flattened, float64
    sigma_init: float


@dataclass
class SigmaRun:
    trained: TrainedRun
    label: str
    layers: list[Layer]  # in network order: index = depth
    dynamic: list[str]  # DynamicGMConv2d layers, left out
    tb: Path  # the TensorBoard folder the trajectories come from
    trajectories: dict[str, list[dict[str, float | int | None]]]

    @property
    def path(self) -> Path:
        return self.trained.path


def sigma_run(trained: TrainedRun) -> SigmaRun:
    """The run's GMConv2d layers with their σ, and their trajectories from TensorBoard; NoSigma if it has none."""
    conv = str(trained.config.conv.name)
    layers = [
        Layer(name, m, m.sigma.flatten().double(), m.sigma_init)
        for name, m in trained.model.named_modules()
        if isinstance(m, GMConv2d)
    ]
    dynamic = [name for name, m in trained.model.named_modules() if isinstance(m, DynamicGMConv2d)]
    if dynamic and not layers:
        raise NoSigma(f"{trained.path}: trained with conv={conv}, σ predicted for each image, no learned σ to report")
    if not layers:
        raise NoSigma(f"{trained.path}: trained with conv={conv}, no σ to report")
    tb = trained.checkpoint.parent.parent / "tb"  # <run>/checkpoints/last.pt → <run>/tb
    trajectories = read_trajectories(tb, [layer.name for layer in layers])
    return SigmaRun(trained, trained.label, layers, dynamic, tb, trajectories)


def read_runs(paths: list[Path], checkpoint: str) -> list[SigmaRun]:
    """Every run with learned σ at ``paths`` (sweep folders expanded), labelled apart; the runs skipped are
    noted on stdout. BadInput where a path is no trained run or no run has σ."""
    other = BEST if checkpoint == LAST else LAST
    trained, notes = load_runs(paths, prefer=(checkpoint, other))
    runs = []
    for run in trained:
        try:
            runs.append(sigma_run(run))
        except NoSigma as err:
            notes.append(f"skipped {err}")
    for note in notes:
        print(f"note: {note}")
    if not runs:
        raise DataError(f"no run with learned σ in {', '.join(map(str, paths))} (the notes above say why)")
    for run, label in zip(runs, distinct_labels([run.trained for run in runs])):
        run.label = label
    return runs


def read_trajectories(tb_dir: Path, names: list[str]) -> dict[str, list[dict[str, float | int | None]]]:
    """``{layer: [{step, epoch, mean, min, max}, ...]}`` from the scalars the tracker logs at every epoch's end
    (empty where the run has no TensorBoard events)."""
    if not tb_dir.is_dir():
        return {}
    events = EventAccumulator(
        str(tb_dir), size_guidance={"scalars": 0, "histograms": 1, "images": 1, "tensors": 1, "compressedHistograms": 1}
    ).Reload()
    scalars = set(events.Tags()["scalars"])

    def by_step(tag: str) -> dict[int, float]:
        return {e.step: e.value for e in events.Scalars(tag)} if tag in scalars else {}

    epochs = by_step("epoch")
    trajectories = {}
    for name in names:
        mean, low, high = (by_step(f"sigma/{name}/{key}") for key in ("mean", "min", "max"))
        if mean:
            trajectories[name] = [
                {
                    "step": step,
                    "epoch": int(epochs[step]) if step in epochs else None,
                    "mean": value,
                    "min": low.get(step),
                    "max": high.get(step),
                }
                for step, value in sorted(mean.items())
            ]
    return trajectories


def describe(sigma: torch.Tensor, sigma_init: torch.Tensor | float) -> dict[str, float]:
    """Distribution of σ values and how far they moved from their initial value (std: population)."""
    q1, median, q3 = torch.quantile(sigma, torch.tensor([0.25, 0.5, 0.75], dtype=sigma.dtype)).tolist()
    moved = (sigma - sigma_init).abs()
    return {
        "count": sigma.numel(),
        "mean": sigma.mean().item(),
        "std": sigma.std(correction=0).item(),
        "min": sigma.min().item(),
        "q1": q1,
        "median": median,
        "q3": q3,
        "max": sigma.max().item(),
        "mean_abs_delta": moved.mean().item(),
        "max_abs_delta": moved.max().item(),
    }


def report_numbers(run: SigmaRun) -> dict[str, Any]:
    """The run's numbers for the JSON: per layer (network order) and for all σ values of the network together."""
    layers = {
        layer.name: {
            "depth": depth,
            "kernel_size": list(layer.module.kernel_size),
            "granularity": layer.module.sigma_granularity,
            "sigma_init": layer.sigma_init,
            **describe(layer.sigma, layer.sigma_init),
        }
        for depth, layer in enumerate(run.layers)
    }
    every_sigma = torch.cat([layer.sigma for layer in run.layers])
    every_init = torch.cat([torch.full_like(layer.sigma, layer.sigma_init) for layer in run.layers])
    ckpt = run.trained.ckpt
    return {
        "run": str(run.path),
        "label": run.label,
        "seed": int(run.trained.config.seed),
        "conv": str(run.trained.config.conv.name),
        "checkpoint": str(run.trained.checkpoint),
        "epoch": ckpt.get("epoch"),
        "step": ckpt.get("step"),
        "network": describe(every_sigma, every_init),
        "layers": layers,
        "dynamic_layers_not_reported": run.dynamic,
        "trajectories": run.trajectories,
    }


# A condition's numbers in the JSON → the number of each run's report they are the mean ± std of, over its runs.
CONDITION_NETWORK = {"sigma_mean": "mean", "mean_abs_delta": "mean_abs_delta", "max_abs_delta": "max_abs_delta"}
CONDITION_LAYER = {"sigma_mean": "mean", "mean_abs_delta": "mean_abs_delta"}


def condition_numbers(label: str, summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """A condition's entry of the JSON from its runs' (report_numbers): each number as {mean, std, n} over the
    runs, so a figure of several seeds shows the condition and how much its seeds disagree."""

    def over_runs(values: list[float]) -> dict[str, Any]:
        return dataclasses.asdict(stat(values))

    layers = {
        name: {
            "depth": first["depth"],
            "sigma_init": first["sigma_init"],
            **{key: over_runs([s["layers"][name][of] for s in summaries]) for key, of in CONDITION_LAYER.items()},
        }
        for name, first in summaries[0]["layers"].items()
    }
    network = {key: over_runs([s["network"][of] for s in summaries]) for key, of in CONDITION_NETWORK.items()}
    return {
        "label": label,
        "n": len(summaries),
        "seeds": [s["seed"] for s in summaries],
        "runs": [s["run"] for s in summaries],
        "network": network,
        "layers": layers,
    }


def colour(index: int) -> Any:
    return matplotlib.colormaps["tab10"](index % 10)


def figure_by_depth(numbers: list[dict[str, Any]]) -> Figure:
    """One panel: a line per condition through its layers' mean σ (mean over seeds, ± 1 std band over seeds
    where it has several), and every distinct sigma_init profile dashed: a line per condition, not per run,
    so a figure of many seeds stays readable."""
    depth = max(len(condition["layers"]) for condition in numbers)
    fig = Figure(figsize=(min(20.0, 3.0 + 0.25 * depth), 4.0), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    initial = []
    for i, condition in enumerate(numbers):
        layers = list(condition["layers"].values())
        x = [layer["depth"] for layer in layers]
        mean = np.array([layer["sigma_mean"]["mean"] for layer in layers])
        ax.plot(x, mean, marker=".", color=colour(i), label=f"{condition['label']} (n={condition['n']})")
        if condition["n"] > 1:
            std = np.array([layer["sigma_mean"]["std"] for layer in layers])
            ax.fill_between(x, mean - std, mean + std, color=colour(i), alpha=0.25, linewidth=0)
        profile = (tuple(x), tuple(layer["sigma_init"] for layer in layers))
        if profile not in initial:
            initial.append(profile)
    for j, (x, init) in enumerate(initial):
        ax.plot(x, init, linestyle="--", color="black", linewidth=0.8, zorder=3, label="sigma_init" if j == 0 else None)
    names = [list(condition["layers"]) for condition in numbers]
    ax.set_xticks(range(depth))
    ax.set_xticklabels(names[0] if all(n == names[0] for n in names) else range(depth), rotation=90, fontsize=7)
    ax.set_xlabel("GMConv layer, in network order")
    ax.set_ylabel("mean σ of the layer (kernel taps)")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_title("learned σ per layer: mean over seeds, band ± 1 std over seeds", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return fig


def figure_trajectories(run: SigmaRun) -> Figure:
    """A panel per layer with a trajectory: mean σ (min-max shaded) against the epoch, sigma_init dashed."""
    layers = [layer for layer in run.layers if layer.name in run.trajectories]
    columns = min(5, len(layers))
    rows = math.ceil(len(layers) / columns)
    fig = Figure(figsize=(2.2 * columns, 1.7 * rows + 0.5), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, layer in zip(axes.flat, layers):
        points = run.trajectories[layer.name]
        by_epoch = all(p["epoch"] is not None for p in points)
        x = [p["epoch"] if by_epoch else p["step"] for p in points]
        ax.plot(x, [p["mean"] for p in points], marker=".", color=colour(0))
        if all(p["min"] is not None and p["max"] is not None for p in points):
            ax.fill_between(x, [p["min"] for p in points], [p["max"] for p in points], color=colour(0), alpha=0.25)
        ax.axhline(layer.sigma_init, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(layer.name, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_xlabel("epoch" if by_epoch else "step", fontsize=6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes.flat[len(layers) :]:
        fig.delaxes(ax)
    fig.suptitle(f"{run.label}: mean σ per layer (min-max shaded, sigma_init dashed)", fontsize=9)
    return fig


def evenly(count: int, chosen: int) -> list[int]:
    """``chosen`` indices of range(count) evenly spaced, first and last included; all of them for 0."""
    steps = min(chosen, count) if chosen else count
    return torch.linspace(0, count - 1, steps).round().long().tolist()


def figure_masks(run: SigmaRun, channels: int, layers: int = 0) -> Figure:
    """A compact grid: ``layers`` layers evenly spaced in depth (rows; 0: every layer) by ``channels`` masks
    from the smallest σ to the largest (columns, gmconv.stats.masks_by_sigma), without axes, on one 0..1
    colour scale with a colour bar, and each mask's σ written small in its panel: the range of receptive
    fields each depth learned, at a size a page can hold."""
    shown = [run.layers[i] for i in evenly(len(run.layers), layers)]
    fig = Figure(figsize=(0.6 * channels + 1.9, 0.6 * len(shown) + 0.6), dpi=DPI, layout="compressed")
    axes = fig.subplots(len(shown), channels, squeeze=False)
    for row, layer in zip(axes, shown):
        masks, sigma = masks_by_sigma(layer.module, channels)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax, mask, value in zip(row, masks, sigma):
            image = ax.imshow(mask.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.text(
                0.5,
                0.04,
                f"σ={value:.3f}",
                transform=ax.transAxes,
                ha="center",
                va="bottom",
                fontsize=5,
                bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "alpha": 0.7, "linewidth": 0},
            )
        for ax in row[len(masks) :]:
            ax.set_axis_off()
        row[0].set_ylabel(layer.name, rotation=0, ha="right", va="center", fontsize=6)
    bar = fig.colorbar(image, ax=axes, shrink=0.9, aspect=30, ticks=[0, 0.5, 1])
    bar.set_label("mask value", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    fig.suptitle(f"{textwrap.fill(run.label, 40)}\nmasks, smallest σ (left) to largest", fontsize=7)
    return fig


def table(summaries: list[dict[str, Any]], top: int = 3) -> str:
    """One line per run: network-wide mean σ, mean and max |Δσ|, and the layers that moved most."""
    width = max(len("run"), *(len(summary["label"]) for summary in summaries))
    lines = [f"{'run':<{width}} {'layers':>6} {'mean σ':>8} {'mean |Δσ|':>10} {'max |Δσ|':>9}  largest mean |Δσ|"]
    for summary in summaries:
        network = summary["network"]
        moved = sorted(summary["layers"].items(), key=lambda item: -item[1]["mean_abs_delta"])[:top]
        largest = ", ".join(f"{name} {stats['mean_abs_delta']:.4f}" for name, stats in moved)
        lines.append(
            f"{summary['label']:<{width}} {len(summary['layers']):>6} {network['mean']:>8.4f} "
            f"{network['mean_abs_delta']:>10.4f} {network['max_abs_delta']:>9.4f}  {largest}"
        )
    return "\n".join(lines)


def condition_table(numbers: list[dict[str, Any]]) -> str:
    """One line per condition: n and the network-wide numbers as mean ± std over its runs."""
    rows = [
        [
            condition["label"],
            condition["n"],
            *(format_stat(Stat(**condition["network"][key]), digits=4) for key in CONDITION_NETWORK),
        ]
        for condition in numbers
    ]
    return text_table(["condition", "n", "mean σ", "mean |Δσ|", "max |Δσ|"], rows)  # CONDITION_NETWORK's order


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def save(fig: Figure, path: Path) -> str:
    fig.savefig(path)
    return path.name


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="RUN",
        help="run folders of train.py, checkpoint files, or folders of run folders (sweeps)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the figures and sigma_report.json (default: <first RUN>/sigma_report/)",
    )
    parser.add_argument(
        "--channels",
        type=int,
        default=4,
        help="masks shown per layer, picked evenly from the smallest to the largest σ (default 4)",
    )
    parser.add_argument(
        "--mask-layers",
        type=int,
        default=6,
        help="layers in the mask figures, evenly spaced in depth, first and last included (default 6; 0: every layer)",
    )
    parser.add_argument(
        "--checkpoint",
        choices=[LAST.removesuffix(".pt"), BEST.removesuffix(".pt")],
        default="last",
        help="which checkpoint's σ to report (default last: the end of training)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The command line; 2 with a one-line error for input it cannot report on."""
    args = parse_args(argv)
    try:
        if args.channels < 1:
            raise ConfigError(f"--channels={args.channels} is invalid: expected a positive integer")
        if args.mask_layers < 0:
            raise ConfigError(f"--mask-layers={args.mask_layers} is invalid: expected 0 (every layer) or more")
        runs = read_runs(args.runs, f"{args.checkpoint}.pt")  # all checked before writing
    except BadInput as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    first = args.runs[0]
    out = args.out or (first if first.is_dir() else first.parent) / "sigma_report"
    write_report(runs, out, args)
    return 0


def write_report(runs: list[SigmaRun], out: Path, args: argparse.Namespace) -> None:
    """The figures and the JSON into ``out``, and the tables on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    summaries = [report_numbers(run) for run in runs]
    numbers = [
        condition_numbers(c.label, [summaries[i] for i in c.members]) for c in conditions([run.trained for run in runs])
    ]
    figures = {"by_depth": save(figure_by_depth(numbers), out / BY_DEPTH_PNG)}
    for i, (run, summary) in enumerate(zip(runs, summaries)):
        stem = f"{i}_{slug(run.path.resolve().name)}"
        masks = figure_masks(run, args.channels, args.mask_layers)
        summary["figures"] = {"masks": save(masks, out / f"{stem}_masks.png"), "trajectory": None}
        if run.trajectories:
            summary["figures"]["trajectory"] = save(figure_trajectories(run), out / f"{stem}_trajectory.png")
        else:
            print(f"note: {run.tb} holds no sigma/<layer>/mean scalars: no trajectory for {run.label}")
        if run.dynamic:
            print(f"note: {run.label}: {len(run.dynamic)} DynamicGMConv2d layer(s) not reported (σ per image)")
    content = {
        "checkpoint": args.checkpoint,
        "channels": args.channels,
        "mask_layers": args.mask_layers,
        "figures": figures,
        "runs": summaries,
        "conditions": numbers,
    }
    (out / REPORT_JSON).write_text(json.dumps(content, indent=1))
    print(table(summaries))
    print(condition_table(numbers))
    print(f"report: {out}")


if __name__ == "__main__":
    sys.exit(main())
