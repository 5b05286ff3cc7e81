"""Per-layer σ summaries, for logging and analysis."""

from __future__ import annotations

from torch import nn

from .conv import GMConv2d


def sigma_stats(model: nn.Module) -> dict[str, dict[str, float]]:
    """``{layer name: {"mean", "min", "max", "count"}}`` of σ for every GMConv2d in ``model``.

    Dynamic layers report the σ they predicted for the last batch they saw and are left out
    until they have seen one.
    """
    stats: dict[str, dict[str, float]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, GMConv2d) or (module.dynamic and module.last_sigma is None):
            continue
        sigma = module.sigma.float()
        stats[name] = {
            "mean": sigma.mean().item(),
            "min": sigma.min().item(),
            "max": sigma.max().item(),
            "count": float(sigma.numel()),
        }
    return stats
