"""Run folders summarised per experimental setting: mean ± std over seeds and the gain over the standard conv.

    read_runs   run folders → completed training runs + unfinished ones (never averaged in)
    group_runs  runs → groups: equal in every setting of the resolved config except seed and bookkeeping
    table_rows  groups → rows: top-1/top-5 mean ± std, cost, and Δ top-1 paired by seed against the
                standard-conv group that is equal in every other setting
    markdown / csv_text  rows → the table (scripts/summarize.py prints and writes them)

Accuracies are the final epoch's (results.json ``top1``/``top5``), not the best epoch's, which is
chosen on the same validation set and so biased upwards. std is the sample standard deviation (n-1).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from data.text import as_typed
from engine.checkpoint import LAST, load_checkpoint
from engine.config import TrainConfig, flatten
from engine.loop import format_duration
from engine.run_folder import RESULTS, RunFolder
from models.config import ConvType
from models.conv_types import OPTIONS

# Keys of the resolved config that say how or where a run was executed, not what was trained: runs
# that differ only here are the same experiment. (trainer.device is "auto" almost always, so it does
# not even say where a run went; data.download only fetches missing files.)
BOOKKEEPING = frozenset(
    {
        "seed",
        "resume",
        "eval_only",
        "ckpt",
        "trainer.progress",
        "trainer.device",
        "trainer.log_every_steps",
        "trainer.checkpoint_every_steps",
        "trainer.log_masks",
        "data.root",
        "data.download",
        "data.num_workers",
        "data.pin_memory",
        "data.persistent_workers",
        "optimized_metric",
    }
)
# the recipe's description (a function of data and model), and where the curves go
BOOKKEEPING_PREFIXES = ("recipe.", "logger.")
# What a GMConv run may set and a standard run may not (engine/config.py refuses σ's learning-rate scale
# without a learned σ): a group's baseline is the standard-conv group equal in everything else.
CONV_ONLY = ("conv.", "optim.sigma_lr_scale")
STANDARD = "standard"
SHORT_MARK = "†"
# Config groups whose ``<group>.name`` labels a group instead of the sub-settings that come with it.
NAME_KEYS = {f"{group}.name": group for group in ("model", "conv", "data", "optim", "sched")}

Settings = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class CompletedRun:
    path: Path
    results: dict[str, Any]
    settings: dict[str, Any]  # flattened resolved config without BOOKKEEPING, plus world_size

    @property
    def seed(self) -> int:
        return self.results["config"]["seed"]


@dataclass(frozen=True)
class Unfinished:
    path: Path
    what: str  # what is there, e.g. "no results.json; last checkpoint at epoch 3/10"


@dataclass(frozen=True)
class Group:
    label: str
    settings: Settings
    runs: tuple[CompletedRun, ...]

    @property
    def is_standard(self) -> bool:
        return dict(self.settings).get("conv.type") == STANDARD


@dataclass(frozen=True)
class Stat:
    mean: float
    std: Optional[float]  # None for a single value
    n: int


@dataclass(frozen=True)
class Row:
    group: Group
    top1: Stat
    top5: Stat
    params_m: float
    gflops: float
    images_per_s: float
    wall_time_s: float  # the whole run, start-up and evaluation included
    baseline: Optional[Group]  # the matching standard-conv group (None for a standard group or without one)
    delta: Optional[Stat]  # paired top-1 differences; None where there is no pair


def experiment_settings(config: dict[str, Any]) -> dict[str, Any]:
    """What a resolved config says was trained: the flattened config (settings it predates at their defaults)
    without BOOKKEEPING, the recipe's description (a function of data and model, and long) and the loggers.
    Runs equal here are seeds of one setting; analysis/trained_run.py groups checkpoints by it too, so a
    figure's conditions are summarize.py's groups."""
    flat = {**_schema_defaults(), **flatten(config)}
    return {
        key: value
        for key, value in flat.items()
        if key not in BOOKKEEPING and not key.startswith(BOOKKEEPING_PREFIXES) and not _inert(key, flat)
    }


@functools.cache
def _schema_defaults() -> dict[str, Any]:
    """Every setting at its default: a run saved before a setting existed trained with that setting's default, so
    it groups with the runs made after it that leave it there."""
    return flatten(OmegaConf.to_container(OmegaConf.structured(TrainConfig), enum_to_str=True))


def _inert(key: str, flat: dict[str, Any]) -> bool:
    """A setting the run's conv type cannot act on: a conv option it does not read (models/conv_types.py), σ's
    learning rate without GMConv, the offsets' without deformable layers. Runs that differ only there (say,
    made before and after such a default changed) trained the same network the same way."""
    kind = flat.get("conv.type")
    if kind not in OPTIONS:  # a config older than the conv types
        return False
    if key.startswith("conv."):
        return key[len("conv.") :] not in ("name", "type", *OPTIONS[ConvType(kind)])
    return (key == "optim.sigma_lr_scale" and kind != ConvType.gmconv) or (
        key == "optim.offset_lr_scale" and kind != ConvType.deformable
    )


def settings_of(results: dict[str, Any]) -> dict[str, Any]:
    """The experimental settings of a completed run (experiment_settings of its config), and the number of
    processes (the global batch is data.batch_size × world_size)."""
    return {**experiment_settings(results["config"]), "world_size": results.get("world_size", 1)}


def read_runs(folders: list[Path]) -> tuple[list[CompletedRun], list[Unfinished], int]:
    """The completed training runs, the unfinished or failed ones, and how many evaluation-only runs were skipped."""
    runs, unfinished, evaluations = [], [], 0
    for path in folders:
        folder = RunFolder(path)
        if not folder.results.is_file():
            unfinished.append(Unfinished(path, f"no {RESULTS}; {checkpoint_state(folder)}"))
            continue
        try:
            results = json.loads(folder.results.read_text())
        except (OSError, ValueError) as err:
            unfinished.append(Unfinished(path, f"unreadable {RESULTS} ({err})"))
            continue
        status = results.get("status")
        if status == "evaluated":
            evaluations += 1
        elif status != "completed":
            unfinished.append(Unfinished(path, f"{RESULTS} with status {status!r}; {checkpoint_state(folder)}"))
        elif "config" not in results:
            unfinished.append(Unfinished(path, f"{RESULTS} without the resolved config (an older version wrote it)"))
        else:
            runs.append(CompletedRun(path, results, settings_of(results)))
    return runs, unfinished, evaluations


def checkpoint_state(folder: RunFolder) -> str:
    """How far an unfinished run got, from its last.pt (memory-mapped: the weights are not read)."""
    if not folder.last.is_file():
        saved = sorted(p.name for p in folder.checkpoints.glob("*.pt")) if folder.checkpoints.is_dir() else []
        return f"checkpoints: {', '.join(saved)}" if saved else "no checkpoint"
    try:
        ckpt = load_checkpoint(folder.last, mmap=True)
        epochs = ckpt["config"]["trainer"]["epochs"]
        where = f"last checkpoint at epoch {ckpt['epoch']}/{epochs}"
        if ckpt["batches_done"]:
            where += f" (+{ckpt['batches_done']} batches of epoch {ckpt['epoch'] + 1})"
        return where
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as err:
        return f"unreadable {LAST} ({type(err).__name__})"


def group_runs(runs: list[CompletedRun]) -> list[Group]:
    """Runs equal in every setting (seed and BOOKKEEPING aside) form a group, labelled by what differs
    between the groups."""
    keys = sorted({key for run in runs for key in run.settings})
    by_settings: dict[Settings, list[CompletedRun]] = {}
    for run in runs:
        # a key a run lacks (a setting its conv type cannot act on) is left out, not compared as None
        by_settings.setdefault(tuple((key, run.settings[key]) for key in keys if key in run.settings), []).append(run)
    shown = label_keys([dict(settings) for settings in by_settings])
    groups = [
        Group(_label(dict(settings), shown), settings, tuple(sorted(members, key=lambda r: (r.seed, r.path))))
        for settings, members in by_settings.items()
    ]
    return sorted(groups, key=lambda group: natural_key(group.label))


def label_keys(settings: list[dict[str, Any]]) -> list[str]:
    """The keys that differ between groups, with ``<group>.<key>`` left out where ``<group>.name`` already
    tells it; for a single group, its model, conv and data."""
    keys = list(dict.fromkeys(key for s in settings for key in s))
    differing = [key for key in keys if len({s[key] for s in settings if key in s}) > 1]
    names = {NAME_KEYS[key] for key in differing if key in NAME_KEYS}

    def implied(key: str) -> bool:
        group = key.split(".", 1)[0]
        if group not in names or key == f"{group}.name":
            return False
        values: dict[Any, set[Any]] = {}
        for s in settings:
            if key in s:
                values.setdefault(s[f"{group}.name"], set()).add(s[key])
        return all(len(v) == 1 for v in values.values())

    shown = [key for key in differing if not implied(key)] or [
        key for key in ("model.name", "conv.name", "data.name") if key in keys
    ]  # one group: what it is
    order = {key: i for i, key in enumerate(NAME_KEYS)}
    return sorted(shown, key=lambda key: (order.get(key, len(order)), key))


def _label(settings: dict[str, Any], keys: list[str]) -> str:
    """``conv=gmconv`` for conv.name, as the option is chosen on the command line; ``key=value`` otherwise. A
    standard-conv group is not labelled with σ's settings (CONV_ONLY), which it has in its config but not in
    its layers."""
    if settings.get("conv.type") == STANDARD:
        keys = [key for key in keys if key == "conv.name" or not key.startswith(CONV_ONLY)]
    return " ".join(f"{NAME_KEYS.get(key, key)}={as_typed(settings[key])}" for key in keys if key in settings)


def baseline_of(group: Group, groups: list[Group]) -> Optional[Group]:
    """The standard-conv group equal to ``group`` outside CONV_ONLY; None for a standard group, or
    where there is no such group (or, impossibly for validated configs, several)."""
    if group.is_standard:
        return None
    rest = _without_conv(group.settings)
    matches = [g for g in groups if g.is_standard and _without_conv(g.settings) == rest]
    return matches[0] if len(matches) == 1 else None


def _without_conv(settings: Settings) -> Settings:
    return tuple((key, value) for key, value in settings if not key.startswith(CONV_ONLY))


def stat(values: list[float]) -> Stat:
    return Stat(statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


def paired_delta(group: Group, baseline: Group) -> Optional[Stat]:
    """top-1 of ``group`` minus ``baseline``'s, over the seeds both ran (runs repeated with one seed averaged first)."""
    mine, theirs = _top1_by_seed(group), _top1_by_seed(baseline)
    seeds = sorted(mine.keys() & theirs.keys())
    return stat([mine[s] - theirs[s] for s in seeds]) if seeds else None


def _top1_by_seed(group: Group) -> dict[int, float]:
    seeds: dict[int, list[float]] = {}
    for run in group.runs:
        seeds.setdefault(run.seed, []).append(run.results["top1"])
    return {seed: statistics.mean(values) for seed, values in seeds.items()}


def table_rows(groups: list[Group]) -> list[Row]:
    rows = []
    for group in groups:
        values = {
            key: [run.results[key] for run in group.runs]
            for key in ("top1", "top5", "params", "flops", "images_per_s", "wall_time_s")
        }
        baseline = baseline_of(group, groups)
        rows.append(
            Row(
                group,
                stat(values["top1"]),
                stat(values["top5"]),
                statistics.mean(values["params"]) / 1e6,
                statistics.mean(values["flops"]) / 1e9,
                statistics.mean(values["images_per_s"]),
                statistics.mean(values["wall_time_s"]),
                baseline,
                paired_delta(group, baseline) if baseline else None,
            )
        )
    return rows


SHORTENING = ("trainer.limit_train_batches", "trainer.limit_val_batches")


def shortened(group: Group) -> list[str]:
    """Why a group's runs are not full runs, whatever the other groups are: epochs cut short, a validation
    set cut short, or fewer epochs than the recipe the runs were started from (an experiment= overlay's, else
    the data's recipe for that model)."""
    settings = dict(group.settings)
    reasons = [f"{key}={settings[key]}" for key in SHORTENING if settings.get(key) is not None]
    for source in sorted({_recipe_source(run) for run in group.runs} - {None}):
        planned = planned_epochs(source)
        if planned is not None and settings.get("trainer.epochs", planned) < planned:
            reasons.append(f"trainer.epochs={settings['trainer.epochs']} of {' '.join(source)}'s {planned}")
    return reasons


def _recipe_source(run: CompletedRun) -> Optional[tuple[str, ...]]:
    """What a run's epochs were planned by, as overrides: the experiment= it was started with (its first session's
    typed overrides), else its data and model, whose recipe plans them."""
    typed = run.results.get("overrides") or []
    experiment = next((o for o in typed if o.startswith("experiment=")), None)
    if experiment is not None:
        return (experiment,)
    config = run.results.get("config") or {}
    names = [(group, (config.get(group) or {}).get("name")) for group in ("data", "model")]
    return tuple(f"{group}={name}" for group, name in names) if all(name for _, name in names) else None


@functools.cache
def planned_epochs(overrides: tuple[str, ...]) -> Optional[int]:
    """The epochs the composed config plans for ``overrides`` (None where they cannot be composed here, e.g. a
    timm model, whose name is not a model= option)."""
    from hydra.errors import HydraException

    from engine.config import compose_config

    try:
        return int(compose_config(*overrides).trainer.epochs)
    except HydraException:
        return None


def format_stat(s: Stat, sign: str = "", digits: int = 2) -> str:
    """``mean ± std`` with ``digits`` decimals; ``± —`` for a single value."""
    return f"{s.mean:{sign}.{digits}f} ± {'—' if s.std is None else f'{s.std:.{digits}f}'}"


def text_table(headers: list[str], rows: list[list[Any]]) -> str:
    """Plain-text columns as the study scripts print them: the first left-aligned, the others right-aligned."""
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[j]) for row in cells) for j in range(len(headers))]
    return "\n".join(
        "  ".join(cell.rjust(width) if j else cell.ljust(width) for j, (cell, width) in enumerate(zip(row, widths)))
        for row in cells
    )


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table: the first column left-aligned, the others right-aligned (numbers)."""
    lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def format_delta(row: Row) -> str:
    if row.baseline is None:
        return "—"
    if row.delta is None:
        return "— (no common seed)"
    return f"{format_stat(row.delta, '+')} ({row.delta.n} pair{'s' if row.delta.n > 1 else ''})"


def markdown(rows: list[Row], unfinished: list[Unfinished], evaluations: int) -> str:
    """The table, then the runs it leaves out and why."""
    lines = (
        [
            "| group | n | top-1 (%) | top-5 (%) | params (M) | GFLOPs | images/s | wall time | Δ top-1 vs standard |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        if rows
        else ["No completed training run."]
    )
    short = {r.group.label: shortened(r.group) for r in rows}
    lines += [
        f"| {r.group.label}{SHORT_MARK if short[r.group.label] else ''} | {r.top1.n} | {format_stat(r.top1)} "
        f"| {format_stat(r.top5)} | {r.params_m:.4f} | {r.gflops:.4f} | {r.images_per_s:.0f} "
        f"| {format_duration(r.wall_time_s)} | {format_delta(r)} |"
        for r in rows
    ]
    if rows:
        lines += [
            "",
            "top-1/top-5: final epoch, mean ± sample std over seeds; Δ: paired by seed with the "
            "standard-conv group of the same other settings.",
        ]
    if any(short.values()):
        lines += [
            "",
            f"{SHORT_MARK} Short runs, not results: "
            + "; ".join(f"{label}: {', '.join(reasons)}" for label, reasons in short.items() if reasons)
            + ".",
        ]
    if unfinished:
        lines += ["", f"Unfinished or failed runs ({len(unfinished)}, not averaged in):", ""]
        lines += [f"- `{u.path}`: {u.what}" for u in unfinished]
    if evaluations:
        lines += ["", f"{evaluations} evaluation-only run{'s' if evaluations > 1 else ''} (eval_only=true) left out."]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = [
    "group",
    "n",
    "top1_mean",
    "top1_std",
    "top5_mean",
    "top5_std",
    "params_m",
    "gflops",
    "images_per_s",
    "wall_time_s",
    "delta_top1_mean",
    "delta_top1_std",
    "delta_pairs",
    "baseline",
    "short_run",
]


def csv_text(rows: list[Row]) -> str:
    """One line per group, full precision; empty cells where a value does not exist (std of one run, no baseline)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        delta = (r.delta.mean, r.delta.std, r.delta.n) if r.delta else (None, None, 0 if r.baseline else None)
        cells = [
            r.group.label,
            r.top1.n,
            r.top1.mean,
            r.top1.std,
            r.top5.mean,
            r.top5.std,
            r.params_m,
            r.gflops,
            r.images_per_s,
            r.wall_time_s,
            *delta,
            r.baseline.label if r.baseline else None,
            "; ".join(shortened(r.group)) or None,
        ]
        writer.writerow(["" if cell is None else cell for cell in cells])
    return out.getvalue()


def natural_key(label: str) -> list:
    """Sort key that puts sigma_lr_scale=30 before 100, and sweep job 2_... before 10_... (numbers compared as
    numbers)."""
    return [(0, float(part), "") if _is_number(part) else (1, 0.0, part) for part in re.split(r"([0-9.]+)", label)]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
