"""Per-layer σ summaries, for logging and analysis."""

from __future__ import annotations

from torch import nn

from .conv import GMConv2d
from .dynamic import DynamicGMConv2d


def sigma_stats(model: nn.Module) -> dict[str, dict[str, float]]:
    """``{layer name: {"mean", "min", "max", "count"}}`` of σ for every GMConv layer in ``model``.

    ``DynamicGMConv2d`` layers report the σ they predicted for the last batch they saw and are left
    out until they have seen one.
    """
    stats: dict[str, dict[str, float]] = {}
    for name, module in model.named_modules():
        seen_input = isinstance(module, DynamicGMConv2d) and module.last_sigma is not None
        if not (isinstance(module, GMConv2d) or seen_input):
            continue
        sigma = module.sigma.float()
        stats[name] = {
            "mean": sigma.mean().item(),
            "min": sigma.min().item(),
            "max": sigma.max().item(),
            "count": float(sigma.numel()),
        }
    return stats
