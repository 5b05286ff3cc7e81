"""Module-tree surgery shared by conversion and folding: rebuilding a convolution as another, replacing a
layer everywhere it is used."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def rebuilt_conv(source: nn.Conv2d, layer_type: type[nn.Conv2d], weight: torch.Tensor, **changes: Any) -> nn.Conv2d:
    """A ``layer_type`` with ``source``'s configuration (``changes`` replacing some of it, e.g. kernel_size and
    padding, or adding a GMConv layer's options), holding ``weight``, ``source``'s bias, train/eval mode and
    frozen flags: what converting, enlarging and folding a convolution each need."""
    config = dict(
        in_channels=source.in_channels,
        out_channels=source.out_channels,
        kernel_size=source.kernel_size,
        stride=source.stride,
        padding=source.padding,
        dilation=source.dilation,
        groups=source.groups,
        bias=source.bias is not None,
        padding_mode=source.padding_mode,
        device=source.weight.device,
        dtype=source.weight.dtype,
    )
    rebuilt = layer_type(**{**config, **changes})
    with torch.no_grad():
        rebuilt.weight.copy_(weight)
        if source.bias is not None:
            rebuilt.bias.copy_(source.bias)
    copy_module_state(source, rebuilt)
    return rebuilt


def copy_module_state(src: nn.Conv2d, dst: nn.Conv2d) -> None:
    """Carry train/eval mode and frozen (requires_grad=False) weight/bias over to a replacement."""
    dst.train(src.training)
    dst.weight.requires_grad_(src.weight.requires_grad)
    if src.bias is not None and dst.bias is not None:
        dst.bias.requires_grad_(src.bias.requires_grad)


def module_aliases(model: nn.Module) -> dict[int, list[str]]:
    """Every name under which each module is reachable (a shared module has several)."""
    aliases: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        aliases.setdefault(id(module), []).append(name)
    return aliases


def replace_everywhere(model: nn.Module, names: list[str], module: nn.Module) -> None:
    """Put ``module`` at every name of a (possibly shared) module, so that sharing survives."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
