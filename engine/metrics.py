"""Classification metrics kept as sums and counts, so they reduce exactly across processes."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...]) -> list[torch.Tensor]:
    """Number of samples whose target is among the top-k logits, for each k (k capped at #classes)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hits = top.eq(targets[:, None])
    return [hits[:, : min(k, maxk)].any(dim=1).sum() for k in ks]


class MetricSums:
    """Running sums of loss and top-1/top-5 hits on the model's device, and the sample count on the host.

    ``update`` never waits for the device: the sums stay where the logits are and the count is a
    Python int (a ``torch.tensor(n, device=cuda)`` per step would be a blocking host→device copy).
    ``running`` reads the sums for a progress display without waiting either; ``compute`` is the one
    synchronising read, at the end of a pass, and all-reduces under torch.distributed so every
    sample counts exactly once.
    """

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top1, top5
        self.count = 0
        self._readout = _AsyncReadout(self.sums) if self.sums.is_cuda else None

    def update(self, loss_sum: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        top1, top5 = topk_correct(logits, targets, (1, 5))
        self.sums += torch.stack([loss_sum.detach().double(), top1.double(), top5.double()])
        self.count += targets.shape[0]

    def running(self) -> tuple[float, float]:
        """(mean loss, top-1 %) of this process so far; on CUDA as of an earlier call."""
        if self._readout is None:
            loss, top1, _ = self.sums.tolist()
            count = self.count
        else:
            (loss, top1, _), count = self._readout.read(self.count)
        seen = max(count, 1)
        return loss / seen, 100 * top1 / seen

    def compute(self) -> dict[str, float]:
        sums = torch.cat([self.sums, self.sums.new_full((1,), self.count)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        loss, top1, top5, count = sums.tolist()
        n = max(count, 1.0)
        return {"loss": loss / n, "top1": 100 * top1 / n, "top5": 100 * top5 / n, "samples": int(count)}


class _AsyncReadout:
    """Copies a CUDA tensor to pinned host memory without blocking; each read returns the newest copy
    that has landed (so a progress bar lags by at most one refresh instead of stalling the GPU queue)."""

    def __init__(self, source: torch.Tensor) -> None:
        self.source = source
        self.host = torch.zeros(source.shape, dtype=source.dtype, pin_memory=True)
        self.event = torch.cuda.Event()
        self.in_flight: int | None = None  # the count that the copy in flight belongs to
        self.values, self.count = [0.0] * source.numel(), 0

    def read(self, count: int) -> tuple[list[float], int]:
        if self.in_flight is not None and self.event.query():
            self.values, self.count, self.in_flight = self.host.tolist(), self.in_flight, None
        if self.in_flight is None:
            self.host.copy_(self.source, non_blocking=True)
            self.event.record()
            self.in_flight = count
        return self.values, self.count


class EpochTotals:
    """The sums of the epoch being trained: its metrics, learning rates and time.

    A mid-epoch checkpoint keeps them (one per rank), so an epoch that was stopped and resumed reports
    all of its batches and all of its training time, as the uninterrupted epoch would have.
    """

    def __init__(self, device: torch.device) -> None:
        self.metrics = MetricSums(device)
        self.lr_sum, self.steps = 0.0, 0
        self.seconds = 0.0  # of the stretches already finished (before a stop, or earlier in this one)
        self._since: float | None = None  # perf_counter() when the current stretch started

    def start(self) -> None:
        self._since = time.perf_counter()

    def stop(self) -> None:
        self.seconds = self.elapsed()
        self._since = None

    def elapsed(self) -> float:
        return self.seconds + (time.perf_counter() - self._since if self._since is not None else 0.0)

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": self.metrics.sums.cpu(),
            "count": self.metrics.count,
            "lr_sum": self.lr_sum,
            "steps": self.steps,
            "seconds": self.elapsed(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.metrics.sums.copy_(state["sums"])
        self.metrics.count, self.lr_sum, self.steps, self.seconds = (
            state["count"],
            state["lr_sum"],
            state["steps"],
            state["seconds"],
        )
