"""Per-layer σ summaries, for logging and analysis."""

from __future__ import annotations

import torch
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


def sigma_without_gradient(model: nn.Module) -> list[str]:
    """Names of the GMConv layers whose σ got no gradient (None or exactly 0) in the last backward pass.

    Call it after ``backward()`` and before ``zero_grad()``. Fixed-σ layers are left out (they never
    learn σ). The usual causes (gmconv/README.md): the layer's output is multiplied by a zero-initialised
    norm (timm's ``zero_init_last``) so nothing behind it gets a gradient in the first step, or the layer
    sees 1×1 feature maps, where only the centre tap touches the input and the mask is 1 there.
    """
    names = []
    for name, module in model.named_modules():
        if isinstance(module, GMConv2d) and module.learnable_sigma:
            params = [module.sigma_raw]
        elif isinstance(module, DynamicGMConv2d):
            params = list(module.sigma_predictor.parameters())
        else:
            continue
        if all(p.grad is None or not p.grad.any() for p in params):
            names.append(name)
    return names


def masks_by_sigma(layer: GMConv2d, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` of the layer's masks, (k, kh, kw), and their σ, (k,), from the smallest σ to the largest.

    The σ values are picked evenly along their sorted order (3: smallest, median, largest), so a few
    small images show the range of receptive fields a layer learned; k < ``count`` when the layer has
    fewer σ values. With ``sigma_granularity="kernel"`` an entry is one (output, input) kernel.
    """
    if count < 1:
        raise ValueError(f"count={count} must be >= 1")
    sigma = layer.sigma.flatten()
    masks = layer.mask().detach().reshape(-1, *layer.kernel_size)  # one mask per σ value, in σ's order
    order = sigma.argsort()
    chosen = order[torch.linspace(0, len(order) - 1, min(count, len(order))).round().long()]
    return masks[chosen].float(), sigma[chosen].float()
