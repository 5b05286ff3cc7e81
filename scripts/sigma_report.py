"""What σ did in trained GMConv runs: its distribution per layer, its path through training, a few masks.

    python scripts/sigma_report.py RUN_DIR [RUN_DIR ...] [--out DIR] [--channels K] [--checkpoint last|best]

For every run (a run folder of train.py) the report reads the network from its checkpoint and writes,
into --out (default: <first RUN_DIR>/sigma_report/):

* sigma_by_depth.png: σ of every GMConv2d layer in network order (box: quartiles and median,
  whiskers: min and max; one colour per run), with each layer's sigma_init marked;
* <i>_<run>_trajectory.png: the mean σ of each layer (min-max shaded) at every epoch's end, read from
  the run's TensorBoard scalars sigma/<layer>/{mean,min,max};
* <i>_<run>_masks.png: the masks of K entries of σ per layer (smallest ... largest σ), layers as rows;
* sigma_report.json: per run and layer count, mean, std, min, quartiles, max of σ, sigma_init and how
  far σ moved from it (mean and max |σ - sigma_init|), the same for the whole network, and the
  trajectories; and it prints one line per run with the network-wide numbers.

σ is read from last.pt (the end of training, where the trajectory ends) unless --checkpoint best.
DynamicGMConv2d layers predict σ per image and have no learned σ of their own: they are listed, not
reported. A folder without a checkpoint, or a run without a GMConv2d layer, stops the report (exit 2).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from engine.checkpoint import BEST, LAST  # noqa: E402
from analysis.trained_run import TrainedRun, distinct_labels, load_run  # noqa: E402
from gmconv import DynamicGMConv2d, GMConv2d  # noqa: E402
from gmconv.stats import masks_by_sigma  # noqa: E402

DPI = 110  # the figures are committed: keep the PNGs small
REPORT_JSON = "sigma_report.json"
BY_DEPTH_PNG = "sigma_by_depth.png"


class BadInput(Exception):
    """A run the report cannot cover; its message is the one line the user sees."""


@dataclass
class Layer:
    name: str
    module: GMConv2d
    sigma: torch.Tensor  # every σ value of the layer, flattened, float64
    sigma_init: float


@dataclass
class SigmaRun:
    path: Path
    trained: TrainedRun
    label: str
    checkpoint: Path
    ckpt: dict[str, Any]
    conv: str
    layers: list[Layer]  # in network order: index = depth
    dynamic: list[str]  # DynamicGMConv2d layers, left out
    trajectories: dict[str, list[dict[str, float | int | None]]]


def read_run(path: Path, checkpoint: str) -> SigmaRun:
    """The run's GMConv2d layers with their σ, and their trajectories from TensorBoard; BadInput if it has none."""
    if not path.is_dir():
        raise BadInput(f"{path} is not a folder; pass run folders of train.py")
    other = BEST if checkpoint == LAST else LAST
    try:
        trained = load_run(path, prefer=(checkpoint, other))
    except FileNotFoundError as err:
        raise BadInput(f"{path} holds no checkpoint (checkpoints/{LAST} or {BEST}): not a trained run folder") from err
    except ValueError as err:
        raise BadInput(str(err)) from err
    conv = str(trained.config.conv.name)
    layers = [Layer(name, m, m.sigma.flatten().double(), m.sigma_init)
              for name, m in trained.model.named_modules() if isinstance(m, GMConv2d)]
    dynamic = [name for name, m in trained.model.named_modules() if isinstance(m, DynamicGMConv2d)]
    if dynamic and not layers:
        raise BadInput(f"{path} was trained with conv={conv}: its σ is predicted for each image, no learned σ "
                       "to report")
    if not layers:
        raise BadInput(f"{path} was trained with conv={conv}: no σ to report")
    return SigmaRun(path, trained, trained.label, trained.checkpoint, trained.ckpt, conv, layers, dynamic,
               read_trajectories(path / "tb", [layer.name for layer in layers]))


def read_trajectories(tb_dir: Path, names: list[str]) -> dict[str, list[dict[str, float | int | None]]]:
    """``{layer: [{step, epoch, mean, min, max}, ...]}`` from the scalars the tracker logs at every epoch's end
    (empty where the run has no TensorBoard events)."""
    if not tb_dir.is_dir():
        return {}
    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "histograms": 1, "images": 1,
                                                          "tensors": 1, "compressedHistograms": 1}).Reload()
    scalars = set(events.Tags()["scalars"])

    def by_step(tag: str) -> dict[int, float]:
        return {e.step: e.value for e in events.Scalars(tag)} if tag in scalars else {}

    epochs = by_step("epoch")
    trajectories = {}
    for name in names:
        mean, low, high = (by_step(f"sigma/{name}/{key}") for key in ("mean", "min", "max"))
        if mean:
            trajectories[name] = [
                {"step": step, "epoch": int(epochs[step]) if step in epochs else None, "mean": value,
                 "min": low.get(step), "max": high.get(step)}
                for step, value in sorted(mean.items())
            ]
    return trajectories


def describe(sigma: torch.Tensor, sigma_init: torch.Tensor | float) -> dict[str, float]:
    """Distribution of σ values and how far they moved from their initial value (std: population)."""
    q1, median, q3 = torch.quantile(sigma, torch.tensor([0.25, 0.5, 0.75], dtype=sigma.dtype)).tolist()
    moved = (sigma - sigma_init).abs()
    return {"count": sigma.numel(), "mean": sigma.mean().item(), "std": sigma.std(correction=0).item(),
            "min": sigma.min().item(), "q1": q1, "median": median, "q3": q3, "max": sigma.max().item(),
            "mean_abs_delta": moved.mean().item(), "max_abs_delta": moved.max().item()}


def report_numbers(run: SigmaRun) -> dict[str, Any]:
    """The run's numbers for the JSON: per layer (network order) and for all σ values of the network together."""
    layers = {layer.name: {"depth": depth, "kernel_size": list(layer.module.kernel_size),
                           "granularity": layer.module.sigma_granularity, "sigma_init": layer.sigma_init,
                           **describe(layer.sigma, layer.sigma_init)}
              for depth, layer in enumerate(run.layers)}
    every_sigma = torch.cat([layer.sigma for layer in run.layers])
    every_init = torch.cat([torch.full_like(layer.sigma, layer.sigma_init) for layer in run.layers])
    return {"run": str(run.path), "label": run.label, "conv": run.conv, "checkpoint": str(run.checkpoint),
            "epoch": run.ckpt.get("epoch"), "step": run.ckpt.get("step"),
            "network": describe(every_sigma, every_init), "layers": layers,
            "dynamic_layers_not_reported": run.dynamic, "trajectories": run.trajectories}


def colour(index: int) -> Any:
    return plt.get_cmap("tab10")(index % 10)


def figure_by_depth(runs: list[SigmaRun]) -> Figure:
    """One panel: a box per layer and run (quartiles, median, whiskers at min and max), sigma_init marked."""
    depth = max(len(run.layers) for run in runs)
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(min(20.0, 2.0 + 0.3 * depth * len(runs) ** 0.5), 4.0), layout="constrained")
    for i, run in enumerate(runs):
        positions = [d - 0.4 + width * (i + 0.5) for d in range(len(run.layers))]
        boxes = ax.boxplot([layer.sigma.numpy() for layer in run.layers], positions=positions, widths=width * 0.85,
                           whis=(0, 100), showfliers=False, patch_artist=True, manage_ticks=False,
                           medianprops={"color": "black"})
        for box in boxes["boxes"]:
            box.set(facecolor=colour(i), alpha=0.6)
        ax.scatter(positions, [layer.sigma_init for layer in run.layers], marker="_", s=120, color="red",
                   zorder=3, label="sigma_init" if i == 0 else None)
    names = [[layer.name for layer in run.layers] for run in runs]
    ax.set_xticks(range(depth))
    ax.set_xticklabels(names[0] if all(n == names[0] for n in names) else range(depth), rotation=90, fontsize=7)
    ax.set_xlabel("GMConv layer, in network order")
    ax.set_ylabel("σ (kernel taps)")
    ax.set_title("learned σ per layer (box: quartiles and median, whiskers: min and max)", fontsize=9)
    handles = [Patch(facecolor=colour(i), alpha=0.6, label=run.label) for i, run in enumerate(runs)]
    ax.legend(handles=[*handles, *ax.get_legend_handles_labels()[0]], fontsize=7, loc="best")
    return fig


def figure_trajectories(run: SigmaRun) -> Figure:
    """A panel per layer with a trajectory: mean σ (min-max shaded) against the epoch, sigma_init dashed."""
    layers = [layer for layer in run.layers if layer.name in run.trajectories]
    columns = min(5, len(layers))
    rows = math.ceil(len(layers) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 1.7 * rows + 0.5), squeeze=False,
                             layout="constrained")
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
    for ax in axes.flat[len(layers):]:
        fig.delaxes(ax)
    fig.suptitle(f"{run.label}: mean σ per layer (min-max shaded, sigma_init dashed)", fontsize=9)
    return fig


def figure_masks(run: SigmaRun, channels: int) -> Figure:
    """Layers as rows, ``channels`` masks per row from the smallest σ to the largest, on one grey scale (0-1)."""
    rows = len(run.layers)
    fig, axes = plt.subplots(rows, channels, figsize=(0.8 * channels + 1.2, 0.8 * rows + 0.4), squeeze=False,
                             layout="constrained")
    for row, layer in zip(axes, run.layers):
        masks, sigma = masks_by_sigma(layer.module, channels)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax, mask, value in zip(row, masks, sigma):
            ax.imshow(mask.numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"σ={value:.3f}", fontsize=6, pad=2)
        for ax in row[len(masks):]:
            ax.set_axis_off()
        row[0].set_ylabel(layer.name, rotation=0, ha="right", va="center", fontsize=6)
    fig.suptitle(f"{run.label}: masks, smallest to largest σ", fontsize=8)
    return fig


def table(summaries: list[dict[str, Any]], top: int = 3) -> str:
    """One line per run: network-wide mean σ, mean and max |Δσ|, and the layers that moved most."""
    width = max(len("run"), *(len(summary["label"]) for summary in summaries))
    lines = [f"{'run':<{width}} {'layers':>6} {'mean σ':>8} {'mean |Δσ|':>10} {'max |Δσ|':>9}  largest mean |Δσ|"]
    for summary in summaries:
        network = summary["network"]
        moved = sorted(summary["layers"].items(), key=lambda item: -item[1]["mean_abs_delta"])[:top]
        largest = ", ".join(f"{name} {stats['mean_abs_delta']:.4f}" for name, stats in moved)
        lines.append(f"{summary['label']:<{width}} {len(summary['layers']):>6} {network['mean']:>8.4f} "
                     f"{network['mean_abs_delta']:>10.4f} {network['max_abs_delta']:>9.4f}  {largest}")
    return "\n".join(lines)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def save(fig: Figure, path: Path) -> str:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path.name


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders of train.py")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the figures and sigma_report.json (default: <first RUN_DIR>/sigma_report/)")
    parser.add_argument("--channels", type=int, default=4,
                        help="masks shown per layer, picked evenly from the smallest to the largest σ (default 4)")
    parser.add_argument("--checkpoint", choices=[LAST.removesuffix(".pt"), BEST.removesuffix(".pt")], default="last",
                        help="which checkpoint's σ to report (default last: the end of training)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The command line; 2 with a one-line error for input it cannot report on."""
    args = parse_args(argv)
    try:
        if args.channels < 1:
            raise BadInput(f"--channels={args.channels} is invalid: expected a positive integer")
        runs = [read_run(path, f"{args.checkpoint}.pt") for path in args.runs]  # all checked before writing
    except BadInput as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for run, label in zip(runs, distinct_labels([run.trained for run in runs])):
        run.label = label
    write_report(runs, args.out or args.runs[0] / "sigma_report", args.channels, args.checkpoint)
    return 0


def write_report(runs: list[SigmaRun], out: Path, channels: int, checkpoint: str) -> None:
    """The figures and the JSON into ``out``, and the table on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    summaries = [report_numbers(run) for run in runs]
    figures = {"by_depth": save(figure_by_depth(runs), out / BY_DEPTH_PNG)}
    for i, (run, summary) in enumerate(zip(runs, summaries)):
        stem = f"{i}_{slug(run.path.resolve().name)}"
        summary["figures"] = {"masks": save(figure_masks(run, channels), out / f"{stem}_masks.png"),
                              "trajectory": None}
        if run.trajectories:
            summary["figures"]["trajectory"] = save(figure_trajectories(run), out / f"{stem}_trajectory.png")
        else:
            print(f"note: {run.path / 'tb'} holds no sigma/<layer>/mean scalars: no trajectory for {run.label}")
        if run.dynamic:
            print(f"note: {run.label}: {len(run.dynamic)} DynamicGMConv2d layer(s) not reported (σ per image)")
    content = {"checkpoint": checkpoint, "channels": channels, "figures": figures, "runs": summaries}
    (out / REPORT_JSON).write_text(json.dumps(content, indent=1))
    print(table(summaries))
    print(f"report: {out}")


if __name__ == "__main__":
    sys.exit(main())
