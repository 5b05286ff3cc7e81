"""Which parameters make σ, so that an optimizer can treat them apart (no weight decay)."""

from __future__ import annotations

from torch import nn

from .conv import GMConv2d
from .dynamic import DynamicGMConv2d


def sigma_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``model`` that produces σ, each once, in module order.

    That is ``GMConv2d.sigma_raw`` where σ is learnable (a fixed σ is a buffer, not a parameter)
    and all of a ``DynamicGMConv2d``'s ``sigma_predictor``. Keep them out of weight decay: decay
    pulls the raw σ towards 0, shrinking every receptive field towards one pixel whatever the data
    says.
    """
    found: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, GMConv2d) and isinstance(module.sigma_raw, nn.Parameter):
            found.setdefault(id(module.sigma_raw), module.sigma_raw)
        elif isinstance(module, DynamicGMConv2d):
            for p in module.sigma_predictor.parameters():
                found.setdefault(id(p), p)
    return list(found.values())
