"""The rivals study's record: one CSV row per finished run (docs/study/rivals/runs.csv), which the runner appends
to and the report reads. Runners of other tasks or arms may share it: rows are appended under a lock and the file
is rewritten atomically."""

from __future__ import annotations

import csv
import fcntl
import io
from pathlib import Path
from typing import Any

from engine.checkpoint import atomic_write

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "docs" / "study" / "rivals" / "runs.csv"
ARMS = ("standard", "gmconv", "gmconv_fixed", "deformable", "dcls", "dilated", "large_kernel")
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


DIVERGED_COLUMNS = ("data", "digit_size", "arm", "seed", "error")


def diverged_record(record: Path) -> Path:
    """The runs that diverged before finishing, kept beside ``record``: an outcome of their arm, not a missing
    run, so the report lists them and ``run`` does not train them again."""
    return record.with_name(f"{record.stem}_diverged.csv")


def read_record(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_record(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text.getvalue()))


def add_row(path: Path, row: dict[str, Any], columns: tuple[str, ...] = COLUMNS) -> None:
    """Append one run's row to the record as it is on disk now, under a lock: runners of other tasks (or arms)
    may share the record, and each keeps the others' rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        write_record(path, [*read_record(path), row], columns)
