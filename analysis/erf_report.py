"""Effective receptive fields per condition, mean over its seeds, at initialisation and trained.

    python -m scripts.erf RUN [RUN ...] [--images N] [--layer NAME] [--out DIR] [--log]

RUN: a run folder, a checkpoint file, or a folder of run folders such as a sweep (every run folder under
it; one there without a checkpoint is skipped with a note). Runs that differ only in their seed are one
condition, grouped and labelled as scripts/summarize.py groups them (analysis.trained_run.conditions).
For every run: the ERF (gmconv.erf.erf_map, a map summing to 1) of its trained network (best.pt, else
last.pt) and of the same architecture at initialisation with the run's seed, both on the same first N
validation images of the run's own data (random images where that data is not available here: the
script says which). A condition's map is the mean of its runs' maps, so every seed weighs the same;
training is what should move an ERF, and the init map shows from where.

Writes into --out (default: <first RUN>/erf, or next to the checkpoint file given):
  erf.png   a column per condition: its mean map at initialisation above its mean trained map, the
            titles giving σx and σy as mean ± std over the seeds; axes in input pixels (0 = the top-left
            pixel, the frame of erf_stats' centroids); one colour scale and colour bar (--log: logarithmic)
  erf.json  {"images_per_run", "layer_option", "log_scale", "num_conditions", "conditions": [...]}, each
            condition {"label", "n", "seeds", "layer", "images", "stats", "init_stats", "runs"}: "stats"
            (trained) and "init_stats" map every gmconv.erf.erf_stats key (centroid_y, centroid_x, sigma_y,
            sigma_x, area_ratio@0.2/0.3/0.5/0.99) to {"mean", "std", "n"} over the condition's runs (std:
            sample std, null for one run); "runs" lists each run's {"label", "run", "checkpoint", "seed",
            "layer", "images", "stats", "init_stats"} with its own erf_stats
and prints a table of each condition's spread (σ, in input pixels) and high-contribution area ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure  # no pyplot: the figure renders with Agg, no display needed
from matplotlib.ticker import MaxNLocator
from omegaconf import OmegaConf
from torch import nn

from analysis.summary import Stat, format_stat, stat, text_table
from analysis.trained_run import TrainedRun, build_untrained, conditions, distinct_labels, load_runs, validation_images
from engine.errors import BadInput, ConfigError
from gmconv.erf import erf_map, erf_stats, spatial_layers

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
KINDS = ("init", "trained")  # the rows of a condition's column, top to bottom: it reads "init → trained"
COLUMNS = 6  # conditions per figure row
PANEL_INCHES = 2.4
DPI = 120


@dataclass
class RunMaps:
    """One run's ERF maps, trained and at initialisation, measured on the same images."""

    run: TrainedRun
    label: str  # analysis.trained_run.distinct_labels
    layer: str
    images: str  # which images, in words
    maps: dict[str, torch.Tensor]  # KINDS → (H, W) map summing to 1 (erf_map)

    @functools.cached_property
    def stats(self) -> dict[str, dict[str, float]]:
        return {kind: erf_stats(erf, THRESHOLDS) for kind, erf in self.maps.items()}


@dataclass
class ConditionMaps:
    """The runs of one condition (analysis.trained_run.Condition), ordered by seed."""

    label: str
    runs: list[RunMaps]

    @property
    def seeds(self) -> list[int]:
        return [int(r.run.config.seed) for r in self.runs]

    def mean_map(self, kind: str) -> torch.Tensor:
        """The mean of the runs' maps; each sums to 1, so no seed dominates and the mean sums to 1 too."""
        return torch.stack([r.maps[kind] for r in self.runs]).mean(dim=0)

    def stats(self, kind: str) -> dict[str, Stat]:
        """Every erf_stats key as mean ± sample std over the runs' own stats (not the stats of the mean map)."""
        per_run = [r.stats[kind] for r in self.runs]
        return {key: stat([s[key] for s in per_run]) for key in per_run[0]}

    def describe(self, kind: str) -> str:
        """``trained, mean of 5 seeds`` or ``at init, seed 0``: what a panel averages."""
        which = f"mean of {len(self.runs)} seeds" if len(self.runs) > 1 else f"seed {self.seeds[0]}"
        return f"{'at init' if kind == 'init' else 'trained'}, {which}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "runs", nargs="+", metavar="RUN", help="run folders, checkpoint files, or folders of run folders (sweeps)"
    )
    parser.add_argument("--images", type=int, default=32, help="validation images per run (default 32)")
    parser.add_argument(
        "--layer", default=None, help="module name of the feature map (default: the last spatial one before pooling)"
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <first RUN>/erf)")
    parser.add_argument("--log", action="store_true", help="logarithmic colour scale")
    return parser.parse_args(argv)


def measure(model: nn.Module, images: torch.Tensor, layer: str | None) -> tuple[str | None, torch.Tensor]:
    """(layer used, ERF map); the default layer is the last spatial one, as erf_map chooses it. gmconv checks the
    layer with ValueError, as a library does; here the layer is --layer on the run's model: a ConfigError."""
    try:
        layer = layer or next(reversed(spatial_layers(model, images)), None)
        return layer, erf_map(model, images, layer=layer)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def init_key(run: TrainedRun) -> tuple[Any, ...]:
    """What the init map depends on: the architecture, the seed it is built with and the images measured."""
    info = run.ckpt["data_info"]
    return (
        OmegaConf.to_yaml(run.config.model),
        OmegaConf.to_yaml(run.config.conv),
        OmegaConf.to_yaml(run.config.data),
        info["num_classes"],
        info["image_size"],
        int(run.config.seed),
    )


def collect(paths: list[str], count: int, layer: str | None) -> list[ConditionMaps]:
    """Every run's trained and init maps, grouped by condition; an init map is measured once per architecture
    and seed (conditions that differ only in training share it)."""
    runs, notes = load_runs(paths)
    for note in notes:
        print(f"note: {note}")
    labels = distinct_labels(runs)
    init_maps: dict[tuple[Any, ...], torch.Tensor] = {}
    measured = []
    for condition in conditions(runs):
        members = []
        for i in condition.members:
            run = runs[i]
            images, described = validation_images(run, count)
            print(f"{labels[i]}: {described}")
            used, trained = measure(run.model, images, layer)
            key = init_key(run)
            if key not in init_maps:
                init_maps[key] = measure(build_untrained(run.config, run.ckpt["data_info"]), images, used)[1]
            members.append(RunMaps(run, labels[i], used, described, {"init": init_maps[key], "trained": trained}))
        measured.append(ConditionMaps(condition.label, members))
    return measured


def colour_norm(maps: list[np.ndarray], log: bool) -> Normalize:
    """One scale for every map, from 0 (log: from 1e-5 of the largest value, or the smallest positive one)."""
    top = max(m.max() for m in maps)
    if not log:
        return Normalize(vmin=0.0, vmax=top)
    smallest = min((m[m > 0].min() for m in maps), default=top)
    return LogNorm(vmin=max(smallest, top * 1e-5), vmax=top, clip=True)


def pixel_axes(ax: Axes, xlabel: bool, ylabel: bool) -> None:
    """Ticks at input-pixel indices (imshow's default frame); the labels only on the figure's outer panels."""
    ax.xaxis.set_major_locator(MaxNLocator(4, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(4, integer=True))
    ax.tick_params(labelsize=6, length=2, pad=1)
    if xlabel:
        ax.set_xlabel("x (input px, 0 = left)", fontsize=7)
    if ylabel:
        ax.set_ylabel("y (input px, 0 = top)", fontsize=7)


def spread(stats: dict[str, Stat]) -> str:
    return f"σx {format_stat(stats['sigma_x'], digits=1)}, σy {format_stat(stats['sigma_y'], digits=1)} px"


def erf_figure(measured: list[ConditionMaps], log: bool = False) -> Figure:
    """A column per condition (COLUMNS a row, then two more rows): its mean init map above its mean trained
    map, on one colour scale with one colour bar."""
    maps = {(i, kind): c.mean_map(kind).cpu().numpy() for i, c in enumerate(measured) for kind in KINDS}
    norm = colour_norm(list(maps.values()), log)
    columns, blocks = min(len(measured), COLUMNS), math.ceil(len(measured) / COLUMNS)
    fig = Figure(
        figsize=(PANEL_INCHES * columns + 0.9, (PANEL_INCHES + 0.3) * len(KINDS) * blocks),
        dpi=DPI,
        layout="constrained",
    )
    axes = fig.subplots(len(KINDS) * blocks, columns, squeeze=False)
    used = []
    for i, condition in enumerate(measured):
        block, column = divmod(i, COLUMNS)
        for row, kind in enumerate(KINDS):
            ax = axes[len(KINDS) * block + row, column]
            image = ax.imshow(maps[i, kind], cmap="magma", norm=norm, interpolation="nearest")
            heading = f"{textwrap.fill(condition.label, 34)}\n{condition.runs[0].layer}, " if row == 0 else ""
            ax.set_title(f"{heading}{condition.describe(kind)}\n{spread(condition.stats(kind))}", fontsize=7)
            pixel_axes(ax, xlabel=row == len(KINDS) - 1, ylabel=column == 0)
            used.append(ax)
    for ax in axes.flat:
        if ax not in used:
            fig.delaxes(ax)
    bar = fig.colorbar(image, ax=used, shrink=0.8)
    bar.set_label("share of |∂ centre output / ∂ input| per pixel", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    return fig


def table(measured: list[ConditionMaps]) -> str:
    """Two lines per condition (at init, trained): n and mean ± std over its seeds of σ and the area ratios."""
    keys = {"sigma_x": 2, "sigma_y": 2, **{f"area_ratio@{t:g}": 4 for t in THRESHOLDS}}  # key → decimals
    rows = [
        [
            f"{c.label}{' at init' if kind == 'init' else ''}",
            len(c.runs),
            *(format_stat(c.stats(kind)[key], digits=digits) for key, digits in keys.items()),
        ]
        for c in measured
        for kind in KINDS
    ]
    return text_table(["condition", "n", *keys], rows)


def condition_record(condition: ConditionMaps) -> dict[str, Any]:
    """A condition's entry of erf.json (layout in the module docstring)."""
    first = condition.runs[0]
    return {
        "label": condition.label,
        "n": len(condition.runs),
        "seeds": condition.seeds,
        "layer": first.layer,
        "images": first.images,
        "stats": {key: dataclasses.asdict(s) for key, s in condition.stats("trained").items()},
        "init_stats": {key: dataclasses.asdict(s) for key, s in condition.stats("init").items()},
        "runs": [
            {
                "label": r.label,
                "run": str(r.run.path),
                "checkpoint": str(r.run.checkpoint),
                "seed": int(r.run.config.seed),
                "layer": r.layer,
                "images": r.images,
                "stats": r.stats["trained"],
                "init_stats": r.stats["init"],
            }
            for r in condition.runs
        ],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.images < 1:
        print(f"erf.py: error: --images={args.images} must be at least 1", file=sys.stderr)
        return 2
    try:
        measured = collect(args.runs, args.images, args.layer)
    except BadInput as err:
        print(f"erf.py: error: {err}", file=sys.stderr)
        return 2
    first = Path(args.runs[0])
    out = args.out or (first if first.is_dir() else first.parent) / "erf"
    out.mkdir(parents=True, exist_ok=True)
    erf_figure(measured, args.log).savefig(out / "erf.png")
    summary = {
        "images_per_run": args.images,
        "layer_option": args.layer,
        "log_scale": args.log,
        "num_conditions": len(measured),
        "conditions": [condition_record(c) for c in measured],
    }
    (out / "erf.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table(measured))
    print(f"wrote {out / 'erf.png'} and {out / 'erf.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
