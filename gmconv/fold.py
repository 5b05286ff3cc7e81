"""Bake learned Gaussian masks into plain convolutions for deployment."""

from __future__ import annotations

import torch
from torch import nn

from .conv import GMConv2d
from .convert import _copy_module_state, _module_aliases, _replace_everywhere


def fold_gmconv(model: nn.Module) -> nn.Module:
    """Replace every static ``GMConv2d`` in ``model`` (in place) by an ``nn.Conv2d`` with weight W ⊙ M.

    The result has the standard network's module types, state_dict keys and speed, and computes
    the same outputs. Dynamic layers depend on their input and cannot be folded.
    """
    if isinstance(model, GMConv2d):
        return fold_layer(model)
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, GMConv2d)]
    dynamic = [name for name, m in layers if m.dynamic]
    if dynamic:
        raise ValueError(
            f"cannot fold dynamic GMConv2d layers ({', '.join(dynamic)}): their mask depends on the input; "
            "train with dynamic=False to deploy as plain convolutions"
        )
    aliases = _module_aliases(model)
    for name, layer in layers:
        _replace_everywhere(model, aliases[id(layer)], fold_layer(layer))
    return model


def fold_layer(layer: GMConv2d) -> nn.Conv2d:
    """One GMConv2d as an equivalent ``nn.Conv2d``."""
    if layer.dynamic:
        raise ValueError("cannot fold a dynamic GMConv2d: its mask depends on the input")
    conv = nn.Conv2d(
        layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
        layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode,
        device=layer.weight.device, dtype=layer.weight.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(layer.masked_weight())
        if layer.bias is not None:
            conv.bias.copy_(layer.bias)
    _copy_module_state(layer, conv)
    return conv
