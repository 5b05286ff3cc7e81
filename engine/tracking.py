"""What a run reports while it trains: TensorBoard curves and a per-epoch metrics.csv (rank 0 only).

Every TensorBoard curve uses the optimizer step as its x-axis (the epoch is a curve of its own): one
axis that a resumed run can purge back to exactly. metrics.csv has one row per epoch (what timm's
summary.csv gives), for people who plot with pandas; a resumed run drops the rows after its checkpoint.

Curves are worth less than the run: a write that fails (full disk, lost mount) is reported once and the
curves stop there, while training and its checkpoints go on.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from gmconv import GMConv2d, sigma_stats
from gmconv.stats import masks_by_sigma

from .checkpoint import atomic_write

log = logging.getLogger(__name__)

METRICS_CSV = "metrics.csv"
# metrics.csv column → TensorBoard tag (other columns keep their name; "step" is the x-axis)
TB_TAGS = {"train_loss": "train/loss", "train_top1": "train/top1", "val_loss": "val/loss", "val_top1": "val/top1",
           "val_top5": "val/top5", "val_ema_loss": "val_ema/loss", "val_ema_top1": "val_ema/top1",
           "val_ema_top5": "val_ema/top5", "images_per_s": "perf/images_per_s", "epoch_time_s": "perf/epoch_time_s"}
MASK_CHANNELS = 3  # Tracker.masks shows the masks of the smallest, median and largest σ of a layer
MASK_PIXELS = 24  # at least this many pixels per mask side, so a 3×3 mask is visible in TensorBoard


class Tracker:
    def __init__(self, run_dir: Path, enabled: bool, resumed_at: tuple[int, int] | None = None) -> None:
        """``resumed_at``: (step, epoch) of the checkpoint a resumed run continues from."""
        self.csv_path = run_dir / METRICS_CSV
        self.writer = None
        if not enabled:
            return
        # purge_step drops events a crashed run wrote after its last checkpoint, so resumed curves do not double back
        self.writer = _Tolerant(SummaryWriter(str(run_dir / "tb"), purge_step=resumed_at[0] if resumed_at else None))
        if resumed_at:
            self._keep_rows_up_to(resumed_at[1])
        else:
            self.csv_path.unlink(missing_ok=True)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def epoch(self, row: dict[str, Any]) -> None:
        """One epoch's numbers (with its ``step``): TensorBoard scalars and a metrics.csv row."""
        if not self.writer:
            return
        self.scalars({TB_TAGS.get(key, key): value for key, value in row.items() if key != "step"}, row["step"])
        new = not self.csv_path.is_file()
        try:
            with self.csv_path.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    writer.writeheader()
                writer.writerow(row)
        except OSError as err:
            log.warning("cannot write %s (%s); training and checkpoints go on", self.csv_path, err)

    def sigma(self, model: nn.Module, step: int) -> None:
        """Per-layer σ of a GMConv model: mean/min/max scalars and a histogram per layer."""
        if not self.writer:
            return
        for name, stats in sigma_stats(model).items():
            for key in ("mean", "min", "max"):
                self.writer.add_scalar(f"sigma/{name}/{key}", stats[key], step)
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

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """Written into the run's own event folder so TensorBoard's HPARAMS tab lines runs up."""
        if self.writer:
            self.writer.add_hparams(hparams, metrics, run_name=".")

    def close(self) -> None:
        if self.writer:
            self.writer.close()

    def _keep_rows_up_to(self, epoch: int) -> None:
        if not self.csv_path.is_file():
            return
        with self.csv_path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        kept = [row for row in rows if int(row["epoch"]) <= epoch]
        if not rows:
            return

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(kept)

        atomic_write(self.csv_path, write)


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
                log.warning("TensorBoard cannot write (%s): its curves stop here; training and checkpoints go on",
                            err)
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
