"""Swap the ``nn.Conv2d`` layers of any network for GMConv layers, keeping every weight exactly."""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

import torch.nn.functional as F
from torch import nn

from .conv import GMConv2d
from .dynamic import DynamicGMConv2d
from .modules import module_aliases, rebuilt_conv, replace_everywhere
from .options import GMConvOptions, option_names
from .reparam import guard_reparameterization

GMConvLayer = GMConv2d | DynamicGMConv2d


@dataclass
class ConversionReport:
    """What ``convert_to_gmconv`` did, for the caller to log.

    converted: names of the converted layers. skipped: name → reason for every other nn.Conv2d.
    unmatched: include/exclude patterns that matched no nn.Conv2d name (most likely a typo).
    reparameterizable: blocks holding GMConv layers whose re-parameterisation (timm's ``fuse`` /
    ``reparameterize`` / ``switch_to_deploy``) now folds their masks first (gmconv/reparam.py).
    """

    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    reparameterizable: list[str] = field(default_factory=list)
    layer: str = "GMConv"  # what the convolutions became, for the summary

    def summary(self) -> str:
        lines = [f"{self.layer}: converted {len(self.converted)} conv layers, skipped {len(self.skipped)}"]
        reasons: dict[str, list[str]] = {}
        for name, reason in self.skipped.items():
            reasons.setdefault(reason, []).append(name)
        for reason, names in reasons.items():
            lines.append(f"  skipped ({reason}): {_shorten(names)}")
        if self.unmatched:
            lines.append(f"  patterns matching no convolution: {', '.join(self.unmatched)}")
        if self.reparameterizable:
            names = _shorten(self.reparameterizable)
            lines.append(f"  re-parameterisable blocks (they fold their masks first): {names}")
        return "\n".join(lines)


def _shorten(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _skip_reason(name: str, module: nn.Conv2d, options: GMConvOptions) -> str | None:
    if isinstance(module, (GMConv2d, DynamicGMConv2d)):
        return f"already {type(module).__name__}"
    if type(module) is not nn.Conv2d:
        # Subclasses (timm's Conv2dSame, StdConv2d, ...) change forward(); a GMConv layer in their
        # place would silently drop that behaviour.
        return f"{type(module).__name__} is a Conv2d subclass with its own forward"
    if max(module.kernel_size) < options.min_kernel_size:
        return f"kernel smaller than min_kernel_size={options.min_kernel_size}"
    if module.stride == module.kernel_size and max(module.kernel_size) > 1 and not options.convert_patchify:
        # A patch embedding: each output sees one non-overlapping patch, there is no receptive field
        # to modulate, and a mask would only down-weight the patch's outer pixels.
        return "patchify (stride equals the kernel size; convert_patchify=True converts it)"
    if options.include and not _matches(name, options.include):
        return "not matched by include"
    if _matches(name, options.exclude):
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
    return rebuilt_conv(
        conv,
        nn.Conv2d,
        F.pad(conv.weight.detach(), (pad_w, pad_w, pad_h, pad_h)),
        kernel_size=(new_kh, new_kw),
        padding=padding,
    )


def gmconv_from_conv(conv: nn.Conv2d, layer_type: type[GMConvLayer] = GMConv2d, **layer_kwargs: Any) -> GMConvLayer:
    """A ``layer_type`` layer with the same configuration, weights and bias as ``conv``.

    ``layer_kwargs`` are that layer's GMConv arguments (sigma_init, sigma_granularity, ...).
    """
    return rebuilt_conv(conv, layer_type, conv.weight.detach(), **layer_kwargs)


def convert_to_gmconv(
    model: nn.Module,
    options: GMConvOptions | None = None,
    *,
    report: ConversionReport | None = None,
    **overrides: Any,
) -> nn.Module:
    """Replace ``nn.Conv2d`` modules of ``model`` by GMConv layers in place and return the model.

    (If ``model`` is itself a bare ``nn.Conv2d`` it cannot change type in place; the returned
    module is then a new layer, so always use the return value.) A convolution shared by several
    parents is converted once, under its first name, and replaced at every place it is used.

    options: every setting (``GMConvOptions``: σ, ``dynamic``, ``min_kernel_size``, ``include`` /
        ``exclude`` globs on module names, ``enlarge_by``); the defaults when None.
    overrides: ``GMConvOptions`` fields that replace those of ``options``
        (``convert_to_gmconv(model, sigma_init=3.0)``); an unknown name raises TypeError.
    report: if given, filled in with the converted and skipped layers (with reasons) and the
        include/exclude patterns that matched no convolution.

    ``dynamic=True`` builds ``DynamicGMConv2d`` layers, otherwise ``GMConv2d``. The options are
    validated (ValueError) before the model is touched.
    """
    options = _resolved(options, overrides)
    report = report if report is not None else ConversionReport()
    layer_type = DynamicGMConv2d if options.dynamic else GMConv2d
    layer_kwargs = options.layer_kwargs(layer_type)

    def build(conv: nn.Conv2d) -> nn.Module:
        if options.enlarge_by:
            conv = enlarge_kernel(conv, tuple(side + options.enlarge_by for side in conv.kernel_size))
        return gmconv_from_conv(conv, layer_type, **layer_kwargs)

    model = replace_convs(model, build, options, report)
    report.reparameterizable.extend(guard_reparameterization(model))
    return model


def replace_convs(
    model: nn.Module, build: Callable[[nn.Conv2d], nn.Module], options: GMConvOptions, report: ConversionReport
) -> nn.Module:
    """Replace each ``nn.Conv2d`` that ``options`` selects (``min_kernel_size``, ``convert_patchify``, ``include``,
    ``exclude``) by ``build(conv)``, in place, and record what was done in ``report``; returns the model (a new
    layer when ``model`` is itself a Conv2d). GMConv's conversion uses it, and so can any other layer type that
    should be compared with GMConv on the same layers."""
    aliases = module_aliases(model)
    for name, conv in _targets(model, options, report):
        replacement = build(conv)
        if name:
            replace_everywhere(model, aliases[id(conv)], replacement)
        else:  # ``model`` is itself a Conv2d: it cannot be replaced in place, return the new layer
            model = replacement
        report.converted.append(name)
    return model


def _resolved(options: GMConvOptions | None, overrides: dict[str, Any]) -> GMConvOptions:
    """``options`` (the defaults when None) with ``overrides`` applied, validated before the model is touched."""
    unknown = sorted(set(overrides) - set(option_names()))
    if unknown:
        raise TypeError(
            f"convert_to_gmconv got unknown option(s) {', '.join(unknown)}; valid options: {', '.join(option_names())}"
        )
    resolved = replace(options if options is not None else GMConvOptions(), **overrides)
    resolved.validate()
    return resolved


def _targets(model: nn.Module, options: GMConvOptions, report: ConversionReport) -> list[tuple[str, nn.Conv2d]]:
    """The convolutions to convert; the others go to ``report.skipped`` with the reason, and include/exclude
    patterns that match no convolution to ``report.unmatched``."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        warnings.warn(f"convert_to_gmconv: {type(model).__name__} has no nn.Conv2d layer; nothing converted")
    patterns = dict.fromkeys([*options.include, *options.exclude])
    report.unmatched.extend(p for p in patterns if not any(_matches(name, [p]) for name, _ in convs))
    targets = []
    for name, module in convs:
        reason = _skip_reason(name, module, options)
        if reason is None:
            targets.append((name, module))
        else:
            report.skipped[name] = reason
    return targets
