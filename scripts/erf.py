"""Effective receptive fields of trained runs, next to the same architectures at initialisation.

    python scripts/erf.py RUN_DIR [RUN_DIR ...] [--images N] [--layer NAME] [--out DIR] [--log]

For every run folder (or checkpoint file): the ERF (gmconv.erf.erf_map) of its trained network
(best.pt, else last.pt) and, once per distinct architecture, of that architecture at initialisation
with the run's seed, both on the same first N validation images of the run's own data (random images
where that data is not available here: the script says which). Training is what should move an ERF;
the init reference shows how far it moved.

Writes into --out (default: <first RUN_DIR>/erf, or next to the checkpoint file given):
  erf.png   the maps side by side on one colour scale (--log: a logarithmic one)
  erf.json  per panel: the run, checkpoint, layer, images used and gmconv.erf.erf_stats
and prints a table of each map's spread (σ, in input pixels) and high-contribution area ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure  # no pyplot: the figure renders with Agg, no display needed
from omegaconf import OmegaConf
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from analysis.trained_run import build_untrained, distinct_labels, load_run, validation_images  # noqa: E402
from gmconv.erf import erf_map, erf_stats, spatial_layers  # noqa: E402

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
COLUMNS = 4  # panels per figure row
PANEL_INCHES = 2.6
DPI = 120


@dataclass
class Panel:
    label: str
    kind: str  # "trained" or "init"
    run: str
    checkpoint: str
    layer: str
    images: str
    erf: torch.Tensor

    @property
    def stats(self) -> dict[str, float]:
        return erf_stats(self.erf, THRESHOLDS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (or checkpoint files)")
    parser.add_argument("--images", type=int, default=32, help="validation images per run (default 32)")
    parser.add_argument("--layer", default=None,
                        help="module name of the feature map (default: the last spatial one before pooling)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <first RUN_DIR>/erf)")
    parser.add_argument("--log", action="store_true", help="logarithmic colour scale")
    return parser.parse_args(argv)


def measure(model: nn.Module, images: torch.Tensor, layer: str | None) -> tuple[str | None, torch.Tensor]:
    """(layer used, ERF map); the default layer is the last spatial one, as erf_map chooses it."""
    layer = layer or next(reversed(spatial_layers(model, images)), None)
    return layer, erf_map(model, images, layer=layer)


def collect(run_dirs: list[str], count: int, layer: str | None) -> list[Panel]:
    """A trained panel per run, each followed by an init panel if its architecture is new."""
    runs = [load_run(run_dir) for run_dir in run_dirs]
    panels, seen = [], set()
    for run, label in zip(runs, distinct_labels(runs)):
        images, described = validation_images(run, count)
        print(f"{label}: {described}")
        used, erf = measure(run.model, images, layer)
        panels.append(Panel(label, "trained", str(run.path), str(run.checkpoint), used, described, erf))
        info = run.ckpt["data_info"]
        architecture = (OmegaConf.to_yaml(run.config.model), OmegaConf.to_yaml(run.config.conv),
                        info["num_classes"], info["image_size"])
        if architecture not in seen:
            seen.add(architecture)
            used, erf = measure(build_untrained(run.config, info), images, layer)
            init_label = f"{run.config.model.name}-{run.config.conv.name} at init (seed {run.config.seed})"
            panels.append(Panel(init_label, "init", str(run.path), "", used, described, erf))
    return panels


def erf_figure(panels: list[Panel], log: bool = False) -> Figure:
    """The maps in rows of up to COLUMNS panels, on one shared colour scale and colour bar."""
    maps = [panel.erf.cpu().numpy() for panel in panels]
    top = max(m.max() for m in maps)
    if log:
        smallest = min((m[m > 0].min() for m in maps), default=top)
        norm: Normalize = LogNorm(vmin=max(smallest, top * 1e-5), vmax=top, clip=True)
    else:
        norm = Normalize(vmin=0.0, vmax=top)
    columns, rows = min(len(panels), COLUMNS), math.ceil(len(panels) / COLUMNS)
    fig = Figure(figsize=(PANEL_INCHES * columns + 0.8, PANEL_INCHES * rows + 0.3), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).flatten()
    for ax, panel, erf in zip(axes, panels, maps):
        image = ax.imshow(erf, cmap="magma", norm=norm, interpolation="nearest")
        stats = panel.stats
        ax.set_title(f"{textwrap.fill(panel.label, 40)}\n{panel.layer}: σx {stats['sigma_x']:.1f}, σy {stats['sigma_y']:.1f} px",
                     fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(panels):]:
        fig.delaxes(ax)
    fig.colorbar(image, ax=list(axes[: len(panels)]), shrink=0.8, label="share of |gradient|")
    return fig


def table(panels: list[Panel]) -> str:
    ratios = [f"area_ratio@{t:g}" for t in THRESHOLDS]
    width = max(len(panel.label) for panel in panels)
    lines = [f"{'run':<{width}}  {'sigma_x':>7}  {'sigma_y':>7}  " + "  ".join(f"{r:>15}" for r in ratios)]
    for panel in panels:
        stats = panel.stats
        lines.append(f"{panel.label:<{width}}  {stats['sigma_x']:7.2f}  {stats['sigma_y']:7.2f}  "
                     + "  ".join(f"{stats[r]:15.4f}" for r in ratios))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.images < 1:
        print(f"erf.py: error: --images={args.images} must be at least 1", file=sys.stderr)
        return 2
    try:
        panels = collect(args.runs, args.images, args.layer)
    except (FileNotFoundError, ValueError) as err:
        print(f"erf.py: error: {err}", file=sys.stderr)
        return 2
    first = Path(args.runs[0])
    out = args.out or (first if first.is_dir() else first.parent) / "erf"
    out.mkdir(parents=True, exist_ok=True)
    erf_figure(panels, args.log).savefig(out / "erf.png")
    summary = {
        "images_per_run": args.images,
        "layer_option": args.layer,
        "log_scale": args.log,
        "num_panels": len(panels),
        "panels": [{"label": p.label, "kind": p.kind, "run": p.run, "checkpoint": p.checkpoint, "layer": p.layer,
                    "images": p.images, "stats": p.stats} for p in panels],
    }
    (out / "erf.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table(panels))
    print(f"wrote {out / 'erf.png'} and {out / 'erf.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
