"""Module-tree surgery shared by conversion and folding: replacing a layer everywhere it is used."""

from __future__ import annotations

from torch import nn


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
