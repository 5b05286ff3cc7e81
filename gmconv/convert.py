"""Swap the ``nn.Conv2d`` layers of any network for ``GMConv2d``, keeping every weight exactly."""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .conv import GMConv2d


@dataclass
class ConversionReport:
    """What ``convert_to_gmconv`` did, for the caller to log."""

    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"GMConv: converted {len(self.converted)} conv layers, skipped {len(self.skipped)}"]
        reasons: dict[str, list[str]] = {}
        for name, reason in self.skipped.items():
            reasons.setdefault(reason, []).append(name)
        for reason, names in reasons.items():
            shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
            lines.append(f"  skipped ({reason}): {shown}")
        return "\n".join(lines)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _skip_reason(
    name: str, module: nn.Conv2d, min_kernel_size: int, include: list[str], exclude: list[str]
) -> str | None:
    if isinstance(module, GMConv2d):
        return "already GMConv2d"
    if type(module) is not nn.Conv2d:
        # Subclasses (timm's Conv2dSame, StdConv2d, ...) change forward(); a GMConv2d in their
        # place would silently drop that behaviour.
        return f"{type(module).__name__} is a Conv2d subclass with its own forward"
    if max(module.kernel_size) < min_kernel_size:
        return f"kernel smaller than min_kernel_size={min_kernel_size}"
    if include and not _matches(name, include):
        return "not matched by include"
    if _matches(name, exclude):
        return "matched by exclude"
    return None


def enlarge_kernel(conv: nn.Conv2d, kernel_size: int | tuple[int, int]) -> nn.Conv2d:
    """Return a copy of ``conv`` with a larger kernel that computes exactly the same function.

    The old taps sit centred in a zero-padded kernel and the padding grows by the same amount,
    so every output shape and value is unchanged until training moves the new outer taps.
    """
    new_kh, new_kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    kh, kw = conv.kernel_size
    if new_kh < kh or new_kw < kw:
        raise ValueError(
            f"kernel_size={new_kh}x{new_kw} is smaller than the convolution's {kh}x{kw} kernel; "
            "an enlargement must be at least the current size"
        )
    if (new_kh - kh) % 2 or (new_kw - kw) % 2:
        raise ValueError(
            f"enlarging {kh}x{kw} to {new_kh}x{new_kw} would move the kernel centre; "
            "grow each side by an even number of taps (3 -> 5, 7 -> 9)"
        )
    pad_h, pad_w = (new_kh - kh) // 2, (new_kw - kw) // 2
    padding: Any = conv.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (conv.dilation[0] * pad_h, conv.dilation[1] * pad_w)
    else:
        padding = (padding[0] + conv.dilation[0] * pad_h, padding[1] + conv.dilation[1] * pad_w)
    bigger = nn.Conv2d(
        conv.in_channels, conv.out_channels, (new_kh, new_kw), conv.stride, padding, conv.dilation,
        conv.groups, conv.bias is not None, conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        bigger.weight.copy_(F.pad(conv.weight, (pad_w, pad_w, pad_h, pad_h)))
        if conv.bias is not None:
            bigger.bias.copy_(conv.bias)
    _copy_module_state(conv, bigger)
    return bigger


def _copy_module_state(src: nn.Conv2d, dst: nn.Conv2d) -> None:
    """Carry train/eval mode and frozen (requires_grad=False) weight/bias over to a replacement."""
    dst.train(src.training)
    dst.weight.requires_grad_(src.weight.requires_grad)
    if src.bias is not None and dst.bias is not None:
        dst.bias.requires_grad_(src.bias.requires_grad)


def gmconv_from_conv(conv: nn.Conv2d, **gmconv_kwargs: Any) -> GMConv2d:
    """A GMConv2d with the same configuration, weights and bias as ``conv``."""
    gm = GMConv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype, **gmconv_kwargs,
    )
    with torch.no_grad():
        gm.weight.copy_(conv.weight)
        if conv.bias is not None:
            gm.bias.copy_(conv.bias)
    _copy_module_state(conv, gm)
    return gm


def convert_to_gmconv(
    model: nn.Module,
    *,
    min_kernel_size: int = 3,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    enlarge_by: int = 0,
    return_report: bool = False,
    **gmconv_kwargs: Any,
) -> nn.Module | tuple[nn.Module, ConversionReport]:
    """Replace ``nn.Conv2d`` modules of ``model`` by ``GMConv2d`` in place and return the model.

    (If ``model`` is itself a bare ``nn.Conv2d`` it cannot change type in place; the returned
    module is then a new GMConv2d, so always use the return value.) A convolution shared by several
    parents is converted once, under its first name, and replaced at every place it is used.

    min_kernel_size: convolutions whose largest kernel side is smaller stay plain (default 3:
        on a 1×1 kernel a centred mask is only a rescaling of the weight).
    include / exclude: glob patterns on module names (``"layer*.conv2"``, ``"conv1"``); with
        ``include`` only matching layers convert, ``exclude`` always wins.
    enlarge_by: grow every converted kernel by this many taps per side pair (an even number,
        e.g. 2 turns 3×3 into 5×5), zero-padded and re-padded so outputs are unchanged at first.
    return_report: also return a ``ConversionReport`` (converted and skipped layers, with reasons).
    gmconv_kwargs: passed to every ``GMConv2d`` (sigma_init, sigma_granularity, ...).
    """
    if enlarge_by < 0 or enlarge_by % 2:
        raise ValueError(f"enlarge_by={enlarge_by} must be an even number >= 0 (2 turns 3x3 into 5x5)")
    if min_kernel_size < 1:
        raise ValueError(f"min_kernel_size={min_kernel_size} must be >= 1")
    include, exclude = list(include), list(exclude)
    GMConv2d(1, 1, 1, **gmconv_kwargs)  # validate the GMConv options once, before touching the model
    report = ConversionReport()
    targets: list[tuple[str, nn.Conv2d]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            reason = _skip_reason(name, module, min_kernel_size, include, exclude)
            if reason is None:
                targets.append((name, module))
            else:
                report.skipped[name] = reason
    if not targets and not report.skipped:
        warnings.warn(f"convert_to_gmconv: {type(model).__name__} has no nn.Conv2d layer; nothing converted")
    aliases = _module_aliases(model)
    for name, conv in targets:
        source = conv
        if enlarge_by:
            conv = enlarge_kernel(conv, (conv.kernel_size[0] + enlarge_by, conv.kernel_size[1] + enlarge_by))
        gm = gmconv_from_conv(conv, **gmconv_kwargs)
        if name:
            _replace_everywhere(model, aliases[id(source)], gm)
        else:  # ``model`` is itself a Conv2d: it cannot be replaced in place, return the new layer
            model = gm
        report.converted.append(name)
    return (model, report) if return_report else model


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _module_aliases(model: nn.Module) -> dict[int, list[str]]:
    """Every name under which each module is reachable (a shared module has several)."""
    aliases: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        aliases.setdefault(id(module), []).append(name)
    return aliases


def _replace_everywhere(model: nn.Module, names: list[str], module: nn.Module) -> None:
    """Put ``module`` at every name of a (possibly shared) module, so that sharing survives."""
    for name in names:
        _set_submodule(model, name, module)
