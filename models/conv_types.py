"""``conv.type``: what each conv type does to a backbone's convolutions, and which ``conv.*`` options it reads.

Every type but ``standard`` replaces the convolutions that the selection options choose (``min_kernel_size``,
``convert_patchify``, ``include``, ``exclude``: gmconv.replace_convs), so GMConv and its rivals are compared on
the same layers of the same backbone. Adding a type: a member of ``ConvType``, its options here and a
builder in BUILDERS, a file in configs/conv/.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable

from torch import nn

from engine.errors import ConfigError
from gmconv import GMConvOptions, fold_gmconv
from gmconv.convert import enlarge_kernel
from gmconv.modules import module_aliases, rebuilt_conv, replace_everywhere

from .config import ConvConfig, ConvType, plain
from .layers.dcls import Dcls2d
from .layers.deformable import DeformConv2d

SELECTION = ("min_kernel_size", "convert_patchify", "include", "exclude")
GMCONV_OPTIONS = tuple(f.name for f in fields(GMConvOptions))

# the conv.* options each type reads; any other option changed from its default is refused (engine/config.py)
OPTIONS: dict[ConvType, tuple[str, ...]] = {
    ConvType.standard: (),
    ConvType.gmconv: GMCONV_OPTIONS,
    ConvType.deformable: (*SELECTION, "modulated", "offset_groups"),
    ConvType.dcls: (*SELECTION, "dcls_size", "dcls_sigma_init"),
    ConvType.dilated: (*SELECTION, "dilation"),
    ConvType.large_kernel: (*SELECTION, "kernel_size"),
}
LABELS = {
    ConvType.deformable: "deformable conv",
    ConvType.dcls: "DCLS",
    ConvType.dilated: "dilated conv",
    ConvType.large_kernel: "large kernel",
}


def unused_options(conv_cfg: Any) -> list[str]:
    """``conv.key=value`` for each option changed from its default that ``conv.type`` does not read."""
    reads = OPTIONS[ConvType(conv_cfg.type)]
    defaults = ConvConfig()
    return [
        f"conv.{f.name}={plain(getattr(conv_cfg, f.name))}"
        for f in fields(ConvConfig)
        if f.name not in ("name", "type", *reads)
        and plain(getattr(conv_cfg, f.name)) != plain(getattr(defaults, f.name))
    ]


def check_rival_options(conv_cfg: Any) -> None:
    """Ranges of the rivals' options, in one line naming the key."""
    checks = [
        (conv_cfg.offset_groups >= 1, "offset_groups", "a positive integer dividing each layer's channels"),
        (conv_cfg.dcls_size >= 2, "dcls_size", "an integer >= the converted kernels' side (e.g. 5 for 3×3)"),
        (conv_cfg.dcls_sigma_init > 0, "dcls_sigma_init", "a positive number of taps"),
        (conv_cfg.dilation >= 1, "dilation", "a positive integer"),
        (conv_cfg.kernel_size >= 1, "kernel_size", "a positive integer"),
    ]
    for ok, key, expected in checks:
        if not ok:
            raise ConfigError(f"conv.{key}={conv_cfg[key]} is invalid: expected {expected}")


def rival_builder(conv_cfg: Any) -> Callable[[nn.Conv2d], nn.Module]:
    """The function that turns one selected ``nn.Conv2d`` into the rival ``conv.type`` names (BUILDERS)."""
    build = BUILDERS[ConvType(conv_cfg.type)]
    return lambda conv: build(conv, conv_cfg)


def _deformable(conv: nn.Conv2d, conv_cfg: Any) -> nn.Module:
    return rebuilt_conv(
        conv, DeformConv2d, conv.weight.detach(), modulated=conv_cfg.modulated, offset_groups=conv_cfg.offset_groups
    )


def _dcls(conv: nn.Conv2d, conv_cfg: Any) -> nn.Module:
    # a kernel already as large (a 7×7 stem) keeps its side: its elements move within it
    return Dcls2d(conv, max(conv.kernel_size[0], conv_cfg.dcls_size), conv_cfg.dcls_sigma_init)


def _large_kernel(conv: nn.Conv2d, conv_cfg: Any) -> nn.Module:
    return enlarge_kernel(conv, tuple(max(side, conv_cfg.kernel_size) for side in conv.kernel_size))


def dilated(conv: nn.Conv2d, dilation: int) -> nn.Conv2d:
    """``conv`` with its taps ``dilation`` apart and its padding grown to keep every output's size and centre."""
    padding: Any = conv.padding
    if not isinstance(padding, str):
        padding = tuple(p + (dilation - d) * (k - 1) // 2 for p, d, k in zip(padding, conv.dilation, conv.kernel_size))
    return rebuilt_conv(conv, nn.Conv2d, conv.weight.detach(), dilation=(dilation, dilation), padding=padding)


BUILDERS: dict[ConvType, Callable[[nn.Conv2d, Any], nn.Module]] = {
    ConvType.deformable: _deformable,
    ConvType.dcls: _dcls,
    ConvType.dilated: lambda conv, conv_cfg: dilated(conv, conv_cfg.dilation),
    ConvType.large_kernel: _large_kernel,
}


def selection(conv_cfg: Any) -> GMConvOptions:
    """The options that choose which convolutions a type replaces."""
    return GMConvOptions(**{key: plain(getattr(conv_cfg, key)) for key in SELECTION})


def fold_convs(model: nn.Module) -> nn.Module:
    """Plain convolutions in place of every layer that computes one (GMConv's masked kernels, DCLS's dense
    kernels), in place; dilated and large kernels already are. A deformable layer samples where its input
    says, so no fixed kernel computes it: refused in one line, the model untouched."""
    deformable = [name for name, m in model.named_modules() if isinstance(m, DeformConv2d)]
    if deformable:
        raise ConfigError(
            f"cannot fold deformable convolutions ({deformable[0]}, ...): where they sample depends on "
            "the input, so no plain convolution computes them; export without folding (--no-fold)"
        )
    model = fold_gmconv(model)
    aliases = module_aliases(model)
    for m in [m for m in model.modules() if isinstance(m, Dcls2d)]:
        replace_everywhere(model, aliases[id(m)], m.dense_conv())
    return model


def folded_config(conv_cfg: Any) -> dict[str, Any]:
    """The ``conv`` settings that build, untrained, the network ``fold_convs`` makes: GMConv folds into the
    standard network, DCLS into its dense ``dcls_size`` kernels (a large kernel's shapes); the others stay."""
    kind = ConvType(conv_cfg.type)
    if kind is ConvType.gmconv:
        return {"type": "standard", "name": "standard"}
    if kind is ConvType.dcls:
        return {"type": "large_kernel", "name": "large_kernel", "kernel_size": conv_cfg.dcls_size}
    return {}
