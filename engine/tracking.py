"""What a run reports while it trains: TensorBoard curves and metrics.csv (rank 0 only).

Both are views of the run's epoch records (engine/epoch_record.py), which checkpoints carry. Every
TensorBoard curve uses the optimizer step as its x-axis (the epoch is a curve of its own). A resumed
run first makes both agree with the checkpoint it continues from: metrics.csv is rewritten from the
checkpoint's records, and the TensorBoard events written after the checkpoint's step (by a session
killed after it) are removed from the event files (``compact_events``), so every reader, not only
TensorBoard's own, sees each epoch once. metrics.csv has one row per epoch (what timm's summary.csv
gives), under a header fixed for the run, and is rewritten whole and atomically at every epoch.

Curves are worth less than the run: a write that fails (full disk, lost mount) is reported once and the
curves stop there, while training and its checkpoints go on.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.summary.writer.record_writer import RecordWriter
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from gmconv import GMConv2d, sigma_stats
from gmconv.stats import masks_by_sigma

from . import epoch_record
from .checkpoint import atomic_write
from .faults import StorageError
from .tracker_run import TrackerRun

log = logging.getLogger(__name__)

METRICS_CSV = "metrics.csv"
EVENTS = "tb"
EVENT_FILES = "*tfevents*"
# a compaction in progress (see compact_events): the new folder, and the old one once replaced
COMPACTING, REPLACED = ".tb.compacting", ".tb.replaced"
HPARAMS_TAGS = ("_hparams_/", "hparam/")  # the run-level summary of a completed session
SIGMA_STATS = ("mean", "min", "max")  # of each layer's σ, a curve each
MASK_CHANNELS = 3  # Tracker.masks shows the masks of the smallest, median and largest σ of a layer
MASK_PIXELS = 24  # at least this many pixels per mask side, so a 3×3 mask is visible in TensorBoard


class Tracker:
    """The run's curves: ``start`` once the run is committed to its folder, then ``epoch`` per record."""

    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        *,
        with_ema: bool = False,
        tensorboard: bool = True,
        trackers: tuple[TrackerRun, ...] = (),
    ) -> None:
        self.run_dir, self.enabled, self.with_ema = Path(run_dir), enabled, with_ema
        self.csv_path = self.run_dir / METRICS_CSV
        self.tensorboard = tensorboard
        self.trackers = trackers if enabled else ()  # MLflow, W&B: each logs what TensorBoard gets
        self.writer: Any = None

    def start(self, records: list[dict[str, Any]], resumed_step: int | None = None) -> None:
        """metrics.csv from ``records`` (a resumed run's checkpoint holds them), the events kept up to
        ``resumed_step`` (a fresh run: none), then the event writer for this session."""
        if not self.enabled:
            return
        compact_events(self.run_dir / EVENTS, keep_up_to=-1 if resumed_step is None else resumed_step)
        self.write_csv(records)
        if self.tensorboard:
            self.writer = _Tolerant(SummaryWriter(str(self.run_dir / EVENTS)))
        for tracker in self.trackers:
            tracker.start(records)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)
        for tracker in self.trackers:
            tracker.metrics(values, step)

    def epoch(self, row: dict[str, Any], records: list[dict[str, Any]]) -> None:
        """One epoch's record: its TensorBoard scalars at its step, and metrics.csv with every record."""
        if not self.enabled:
            return
        self.scalars(epoch_record.scalars(row), row["step"])
        self.write_csv(records)

    def write_csv(self, records: list[dict[str, Any]]) -> None:
        """metrics.csv, whole: one row per record under the run's header (empty cells where an epoch
        measured nothing), written atomically, so a reader or a kill never sees half a file. Rank 0 only."""
        if not self.enabled:
            return
        header = epoch_record.columns(self.with_ema, [key for row in records for key in row])

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=header)
                writer.writeheader()
                writer.writerows(records)

        try:
            atomic_write(self.csv_path, write)
        except StorageError as err:
            log.warning("%s; training and checkpoints go on", err)

    def flush(self) -> None:
        """Everything logged so far onto the disk: called before each checkpoint, so the curves of the
        state a checkpoint holds survive a kill (the writer otherwise flushes every two minutes)."""
        if self.writer:
            self.writer.flush()

    def sigma(self, model: nn.Module, step: int) -> None:
        """Per-layer σ of a GMConv model: mean/min/max scalars and a histogram per layer."""
        if not self.enabled:
            return
        self.scalars(
            {f"sigma/{name}/{key}": stats[key] for name, stats in sigma_stats(model).items() for key in SIGMA_STATS},
            step,
        )
        if not self.writer:
            return
        for name, module in model.named_modules():
            # TensorBoard cannot bin NaN or inf ("The histogram is empty"); a diverged σ shows in the scalars
            if isinstance(module, GMConv2d) and module.sigma.numel() > 1 and torch.isfinite(module.sigma).all():
                self.writer.add_histogram(f"sigma_hist/{name}", module.sigma, step)

    def masks(self, model: nn.Module, step: int) -> None:
        """An image per GMConv2d layer: the masks of its smallest, median and largest σ, side by side.

        Grey levels are the mask values (white = 1 at the centre), on one scale for every layer and step, so
        a narrowing σ shows as a shrinking bright spot. ``DynamicGMConv2d`` has no mask of its own: skipped.
        """
        if not self.writer:
            return
        for name, module in model.named_modules():
            if isinstance(module, GMConv2d):
                self.writer.add_image(f"sigma_mask/{name}", mask_strip(module), step, dataformats="HW")

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        """The completed run's final numbers: written into the run's own event folder so TensorBoard's HPARAMS tab
        lines runs up, and logged to MLflow and W&B at the last step (W&B's run summary shows them)."""
        if self.writer:
            self.writer.add_hparams(hparams, metrics, run_name=".", global_step=step)
        for tracker in self.trackers:
            tracker.metrics(metrics, step)

    def close(self, status: str = "FINISHED") -> None:
        """``status`` (MLflow's): FINISHED, FAILED, or KILLED for a stop on a signal that a resume continues."""
        if self.writer:
            self.writer.close()
        for tracker in self.trackers:
            tracker.finish(status)


class _Tolerant:
    """A SummaryWriter whose first failed write (an OSError, raised by the call after the one whose
    background write failed) is logged once and turns the writer off."""

    def __init__(self, writer: SummaryWriter) -> None:
        self.writer, self.failed = writer, False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.writer, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.failed:
                return None
            try:
                return method(*args, **kwargs)
            except OSError as err:
                self.failed = True
                log.warning("TensorBoard cannot write (%s): its curves stop here; training and checkpoints go on", err)
                return None

        return call


def mask_strip(layer: GMConv2d) -> torch.Tensor:
    """(H, W) image in [0, 1]: ``MASK_CHANNELS`` masks of ``layer``, upscaled (nearest), one black column apart."""
    masks, _ = masks_by_sigma(layer, MASK_CHANNELS)
    scale = math.ceil(MASK_PIXELS / max(layer.kernel_size))
    big = F.interpolate(masks[:, None], scale_factor=scale, mode="nearest")[:, 0]
    gap = torch.zeros(big.shape[1], 1)
    tiles = [part for mask in big for part in (mask, gap)][:-1]
    return torch.cat(tiles, dim=1)


def compact_events(folder: Path, keep_up_to: int) -> None:
    """Remove the events after step ``keep_up_to`` (and a completed session's hparams summary) from the
    event files in ``folder``: what a resumed run does first, so the events a killed session wrote after
    its last checkpoint never stand beside the ones the resumed run writes again. ``-1`` removes all.

    The kept events are written to one new file in a new folder, which then replaces ``folder`` in two
    renames; ``finish_compaction`` completes or undoes a compaction that a kill interrupted. Nothing is
    rewritten when nothing is to be removed (a run resumed after a clean stop).
    """
    finish_compaction(folder)
    files = sorted(folder.glob(EVENT_FILES)) if folder.is_dir() else []
    events = [event for path in files for event in _read_events(path)]
    kept = [event for event in events if _kept(event, keep_up_to)]
    if len(kept) == len(events):
        return
    versions = [event for event in kept if event.HasField("file_version")]
    kept = versions[:1] + [event for event in kept if not event.HasField("file_version")]
    new, old = folder.parent / COMPACTING, folder.parent / REPLACED
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir()
    if kept:
        with open(new / files[0].name, "wb") as f:  # the first file's name: it sorts before the new session's
            writer = RecordWriter(f)
            for event in kept:
                writer.write(event.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
    folder.rename(old)
    new.rename(folder)
    shutil.rmtree(old)
    redone = (
        sum(
            1
            for event in events
            if event.step > keep_up_to and not event.HasField("file_version") and not _is_run_marker(event)
        )
        if keep_up_to >= 0
        else 0
    )
    if redone:  # a killed session's points past the checkpoint: this session trains those steps again
        log.info(
            "TensorBoard: %d point(s) after step %d, from a session stopped before its next checkpoint, are "
            "replaced by this session's, which trains those steps again",
            redone,
            keep_up_to,
        )


def finish_compaction(folder: Path) -> None:
    """After a kill during ``compact_events``: the new folder replaces the old one if it had been moved
    away (the new one was complete by then), and the leftovers are removed."""
    new, old = folder.parent / COMPACTING, folder.parent / REPLACED
    if new.is_dir() and not folder.exists() and old.is_dir():
        new.rename(folder)
    shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def _read_events(path: Path) -> Iterable[Event]:
    """A file's events; a record that a killed writer left half-written ends the file."""
    for raw in RawEventFileLoader(str(path)).Load():
        yield Event.FromString(raw)


def _is_run_marker(event: Event) -> bool:
    """A completed session's hparams summary (written again when the run completes again), or a purge marker
    (SummaryWriter's purge_step) of an older version: never kept, and nothing a reader loses."""
    return event.HasField("session_log") or (
        event.HasField("summary") and any(value.tag.startswith(HPARAMS_TAGS) for value in event.summary.value)
    )


def _kept(event: Event, keep_up_to: int) -> bool:
    if event.HasField("file_version"):
        return keep_up_to >= 0
    return not _is_run_marker(event) and event.step <= keep_up_to
