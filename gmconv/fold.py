"""Bake learned Gaussian masks into plain convolutions for deployment."""

from __future__ import annotations

import torch
from torch import nn

from .conv import GMConv2d
from .dynamic import DynamicGMConv2d
from .modules import module_aliases, rebuilt_conv, replace_everywhere


def fold_gmconv(model: nn.Module) -> nn.Module:
    """Replace every ``GMConv2d`` in ``model`` (in place) by an ``nn.Conv2d`` with weight W ⊙ M.

    The result has the standard network's module types, state_dict keys and speed, and computes
    the same outputs. ``DynamicGMConv2d`` layers depend on their input and cannot be folded: a model
    holding one raises ValueError and is left untouched.
    """
    if isinstance(model, (GMConv2d, DynamicGMConv2d)):
        return fold_layer(model)
    dynamic = [name for name, m in model.named_modules() if isinstance(m, DynamicGMConv2d)]
    if dynamic:
        raise ValueError(
            f"cannot fold DynamicGMConv2d layers ({', '.join(dynamic)}): their mask depends on the input; "
            "train with dynamic=False to deploy as plain convolutions"
        )
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, GMConv2d)]
    aliases = module_aliases(model)
    for name, layer in layers:
        replace_everywhere(model, aliases[id(layer)], fold_layer(layer))
    return model


def fold_layer(layer: GMConv2d) -> nn.Conv2d:
    """One GMConv2d as an equivalent ``nn.Conv2d``."""
    if isinstance(layer, DynamicGMConv2d):
        raise ValueError(
            "cannot fold a DynamicGMConv2d: its mask depends on the input; train with dynamic=False to deploy"
        )
    with torch.no_grad():
        return rebuilt_conv(layer, nn.Conv2d, layer.masked_weight())
