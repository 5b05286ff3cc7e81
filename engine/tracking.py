"""TensorBoard logging; a no-op on every process but the main one.

Every curve uses the optimizer step as its x-axis (the epoch is a curve of its own): one axis
that a resumed run can purge back to exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.tensorboard import SummaryWriter

from gmconv import GMConv2d, sigma_stats


class Tracker:
    def __init__(self, log_dir: Path, enabled: bool, purge_step: int | None = None) -> None:
        # purge_step drops events a crashed run wrote after its last checkpoint, so resumed curves do not double back
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step) if enabled else None

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def sigma(self, model: nn.Module, step: int) -> None:
        """Per-layer σ of a GMConv model: mean/min/max scalars and a histogram per layer."""
        if not self.writer:
            return
        for name, stats in sigma_stats(model).items():
            for key in ("mean", "min", "max"):
                self.writer.add_scalar(f"sigma/{name}/{key}", stats[key], step)
        for name, module in model.named_modules():
            if isinstance(module, GMConv2d) and not module.dynamic and module.sigma.numel() > 1:
                self.writer.add_histogram(f"sigma_hist/{name}", module.sigma, step)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """Written into the run's own event folder so TensorBoard's HPARAMS tab lines runs up."""
        if self.writer:
            self.writer.add_hparams(hparams, metrics, run_name=".")

    def close(self) -> None:
        if self.writer:
            self.writer.close()
