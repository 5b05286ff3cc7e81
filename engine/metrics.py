"""Classification metrics kept as sums and counts, so they reduce exactly across processes."""

from __future__ import annotations

import torch
import torch.distributed as dist


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...]) -> list[torch.Tensor]:
    """Number of samples whose target is among the top-k logits, for each k (k capped at #classes)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hits = top.eq(targets[:, None])
    return [hits[:, : min(k, maxk)].any(dim=1).sum() for k in ks]


class MetricSums:
    """Running sums of loss, top-1 and top-5 hits and sample count, on the model's device.

    Nothing is copied to the host until ``compute`` (no per-step synchronisation); under
    torch.distributed, ``compute`` all-reduces the sums, so every sample counts exactly once.
    """

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count

    def update(self, loss_sum: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        top1, top5 = topk_correct(logits, targets, (1, 5))
        self.sums += torch.stack([loss_sum.detach().double(), top1.double(), top5.double(),
                                  torch.tensor(targets.shape[0], dtype=torch.float64, device=self.sums.device)])

    def compute(self) -> dict[str, float]:
        sums = self.sums.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        loss, top1, top5, count = sums.tolist()
        n = max(count, 1.0)
        return {"loss": loss / n, "top1": 100 * top1 / n, "top5": 100 * top5 / n, "samples": int(count)}
