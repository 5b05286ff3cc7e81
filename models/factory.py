"""Config → model: build the backbone, then swap its convolutions as ``conv`` says.

The order matters and is fixed here: pretrained weights are loaded into the backbone as its
source defines it (so torchvision/timm checkpoints fit), then the small-input stem replaces
layers the weights cannot describe anyway, and GMConv conversion comes last, so it sees the final
convolutions and keeps whatever weights they hold.
"""

from __future__ import annotations

import logging

from torch import nn

from gmconv import ConversionReport, convert_to_gmconv

from .config import ConvConfig, ConvType, Granularity, ModelConfig, ModelSource, Parametrization
from .pretrained import load_pretrained
from .registry import create_backbone
from .small_input import maybe_adapt_to_small_input, parse_small_input

log = logging.getLogger(__name__)


def build_model(
    model_cfg: ModelConfig, conv_cfg: ConvConfig, *, num_classes: int, image_size: int, in_chans: int = 3
) -> tuple[nn.Module, ConversionReport | None]:
    """The configured network and what GMConv conversion did to it (None for standard convolutions)."""
    model = build_backbone(model_cfg, num_classes=num_classes, image_size=image_size, in_chans=in_chans)
    report = apply_conv(model, conv_cfg)
    if report is not None:
        log.info("%s: %s", model_cfg.name, report.summary())
    return model, report


def build_backbone(model_cfg: ModelConfig, *, num_classes: int, image_size: int, in_chans: int = 3) -> nn.Module:
    """The backbone with plain convolutions: built, pretrained weights loaded, small-input stem applied.

    ``image_size`` is the side of the training images; it only decides ``small_input="auto"``.
    """
    small_input = parse_small_input(model_cfg.small_input)  # a typo fails before the (slow) build
    source = ModelSource(model_cfg.source)
    model = create_backbone(source, model_cfg.name, num_classes, in_chans, **dict(model_cfg.kwargs))
    load_pretrained(model, model_cfg.pretrained, source=source, name=model_cfg.name)
    return maybe_adapt_to_small_input(model, small_input, source=source, name=model_cfg.name, image_size=image_size)


def apply_conv(model: nn.Module, conv_cfg: ConvConfig) -> ConversionReport | None:
    """Convert ``model``'s convolutions in place as ``conv_cfg`` says; the report, or None when standard."""
    if ConvType(conv_cfg.type) is ConvType.standard:
        return None
    report = ConversionReport()
    converted = convert_to_gmconv(
        model,
        report=report,
        min_kernel_size=conv_cfg.min_kernel_size,
        include=list(conv_cfg.include),
        exclude=list(conv_cfg.exclude),
        enlarge_by=conv_cfg.enlarge_by,
        sigma_init=conv_cfg.sigma_init,
        sigma_granularity=Granularity(conv_cfg.sigma_granularity).value,
        sigma_parametrization=Parametrization(conv_cfg.sigma_parametrization).value,
        sigma_min=conv_cfg.sigma_min,
        learnable_sigma=conv_cfg.learnable_sigma,
        dynamic=conv_cfg.dynamic,
        dynamic_reduction=conv_cfg.dynamic_reduction,
    )
    if converted is not model:  # only happens for a bare nn.Conv2d, which cannot change type in place
        raise TypeError("apply_conv converts a network in place; a bare nn.Conv2d cannot be converted in place")
    return report
