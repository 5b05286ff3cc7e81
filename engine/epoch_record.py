"""One epoch's numbers, defined once: the log line, metrics.csv, TensorBoard and results.json all read them.

``METRICS`` is the table: a metric's column in metrics.csv (and key in results.json's records), its
TensorBoard tag and how the epoch's log line shows it. Adding a metric is one row here plus the code that
measures it; every writer picks it up. A run's metrics.csv header is fixed from its config
(``columns``): every column the run can ever write, so an epoch without validation leaves empty cells
instead of changing the shape of the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

Value = Optional[float]  # None: not measured this epoch (no validation, no EMA)


@dataclass(frozen=True)
class Metric:
    column: str  # metrics.csv column, the key in a record
    tag: Optional[str]  # TensorBoard scalar tag; None: not a curve
    shown: Optional[str]  # the log line's format (with its separator); None: not in the line
    ema: bool = False  # written by runs with an EMA (trainer.ema_decay) only


METRICS: tuple[Metric, ...] = (
    Metric("epoch", "epoch", None),  # a curve of its own: the x-axis of every curve is the step
    Metric("step", None, None),
    Metric("train_loss", "train/loss", "  train loss {:.4f}"),
    Metric("train_top1", "train/top1", " top1 {:.2f}%"),
    Metric("val_loss", "val/loss", "  val loss {:.4f}"),
    Metric("val_top1", "val/top1", " top1 {:.2f}%"),
    Metric("val_top5", "val/top5", " top5 {:.2f}%"),
    Metric("val_images", None, " ({:.0f} images)"),
    Metric("val_ema_loss", "val_ema/loss", "  EMA loss {:.4f}", ema=True),
    Metric("val_ema_top1", "val_ema/top1", " top1 {:.2f}%", ema=True),
    Metric("val_ema_top5", "val_ema/top5", " top5 {:.2f}%", ema=True),
    Metric("lr", "lr", "  lr {:.4g}"),
    Metric("images_per_s", "perf/images_per_s", "  {:.0f} img/s"),
    Metric("epoch_time_s", "perf/epoch_time_s", "  {:.1f}s"),
)
BY_COLUMN = {metric.column: metric for metric in METRICS}
# what evaluate() returns → the record's columns, for the trained weights and for their EMA
VALIDATION = {"loss": "val_loss", "top1": "val_top1", "top5": "val_top5", "samples": "val_images"}
EMA_VALIDATION = {"loss": "val_ema_loss", "top1": "val_ema_top1", "top5": "val_ema_top5"}


def columns(with_ema: bool, seen: Iterable[str] = ()) -> list[str]:
    """metrics.csv's header: every column a run with (or without) an EMA can write, plus any column that
    earlier records already hold (an EMA turned off on resume keeps its column), in ``METRICS`` order;
    columns this version does not know (a newer version's) go last."""
    seen = list(seen)
    known = [m.column for m in METRICS if (with_ema or not m.ema) or m.column in seen]
    return known + [column for column in seen if column not in BY_COLUMN]


def record(epoch: int, step: int, **values: Value) -> dict[str, Any]:
    """An epoch's record: ``{column: value}``, None where the epoch measured nothing."""
    unknown = sorted(set(values) - set(BY_COLUMN))
    if unknown:
        raise KeyError(f"{', '.join(unknown)}: not a metric of engine/epoch_record.py's METRICS; add a row there")
    return {"epoch": epoch, "step": step, **values}


def validation_values(val: dict[str, float], ema_val: Optional[dict[str, float]]) -> dict[str, Value]:
    """evaluate()'s results (trained weights, and their EMA if any) as record columns."""
    values = {column: val[key] for key, column in VALIDATION.items()}
    if ema_val is not None:
        values.update({column: ema_val[key] for key, column in EMA_VALIDATION.items()})
    return values


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The record's TensorBoard scalars, ``{tag: value}``, for the metrics it has a value of."""
    return {
        BY_COLUMN[column].tag: value
        for column, value in row.items()
        if column in BY_COLUMN and BY_COLUMN[column].tag and value is not None
    }


def log_line(row: dict[str, Any], epochs: int) -> str:
    """``epoch 3/10  train loss 0.1234 top1 95.00%  val loss … top1 …% top5 …% (360 images)  lr 0.1  …``"""
    shown = (
        metric.shown.format(row[metric.column])
        for metric in METRICS
        if metric.shown and row.get(metric.column) is not None
    )
    return f"epoch {row['epoch']}/{epochs}" + "".join(shown)


def has_validation(row: dict[str, Any]) -> bool:
    return row.get("val_top1") is not None and row.get("val_images") is not None
