"""CIFAR-style stems for ImageNet backbones on small images (``model.small_input``).

An ImageNet stem shrinks its input 4× (ResNet: 7×7 stride-2 conv + max-pool) to 32× (AlexNet,
VGG heads sized for 224 px) before the interesting layers; on 32 px images that leaves feature
maps of 1–2 px, so both accuracy and any comparison of spatial kernels (GMConv's point) suffer.
The adaptations below are the usual CIFAR recipes: keep the full resolution in the stem and size
the classifier for the feature map it actually receives. Each keeps every output shape valid at
32 px. Replaced layers are freshly initialised, so pretrained weights for them are lost.

Families are recognised by their torchvision class (``ResNet`` covers resnet*, resnext* and
wide_resnet*), not by name, so a misleading name cannot select the wrong surgery; timm models
are never instances of these classes and so are never adapted.
"""

from __future__ import annotations

import logging
from typing import Callable

from torch import nn
from torchvision import models as tvm

from engine.errors import ConfigError

from .config import ModelSource

log = logging.getLogger(__name__)

SMALL_INPUT_SETTINGS = ("auto", "true", "false")
SMALL_INPUT_MAX_SIZE = 64  # "auto" adapts at this image size (px) and below


def parse_small_input(value: object) -> str:
    """``model.small_input`` as one of ``auto``/``true``/``false``.

    The field is a string, but Hydra turns a YAML ``true`` into ``"True"``, hence the lower-casing.
    ``build_backbone`` calls it first; a framework can also call it at start-up to reject a typo
    before anything is built.
    """
    setting = str(value).lower()
    if setting not in SMALL_INPUT_SETTINGS:
        raise ConfigError(f"model.small_input={value!r} is not valid; choose one of {', '.join(SMALL_INPUT_SETTINGS)}")
    return setting


def maybe_adapt_to_small_input(
    model: nn.Module, setting: str, *, source: ModelSource | str, name: str, image_size: int
) -> nn.Module:
    """Apply ``adapt_to_small_input`` when ``setting`` (see ``parse_small_input``) asks for it.

    ``auto`` adapts torchvision backbones for images of ``SMALL_INPUT_MAX_SIZE`` px or less and only
    warns for an unsupported family (the run still works, just at low resolution); ``true`` insists
    and raises for an unsupported family; ``false`` never adapts. ``local`` models (this project's
    registry, e.g. the CIFAR ResNets) are built for small inputs and are always left alone.
    """
    source = ModelSource(source)
    if source is ModelSource.local or setting == "false":
        return model
    if setting == "true":
        return adapt_to_small_input(model, source, name)
    if image_size > SMALL_INPUT_MAX_SIZE:
        return model
    if _adapter_for(model) is None:
        log.warning(
            "%s model %s keeps its ImageNet stem on %d px images: model.small_input supports only %s",
            source.value,
            name,
            image_size,
            _SUPPORTED,
        )
        return model
    return adapt_to_small_input(model, source, name)


def adapt_to_small_input(model: nn.Module, source: ModelSource | str, name: str) -> nn.Module:
    """Give a torchvision ResNet/VGG/AlexNet/MobileNetV2 a CIFAR-style stem, in place; returns ``model``."""
    adapter = _adapter_for(model)
    if adapter is None:
        raise ConfigError(
            f"model.small_input=true is only supported for {_SUPPORTED}, not for "
            f"{ModelSource(source).value} model {name!r}; set model.small_input=auto or false"
        )
    adapter(model)
    log.info("%s: CIFAR-style stem for small inputs (model.small_input)", name)
    return model


def _adapt_resnet(model: tvm.ResNet) -> None:
    # 7×7 stride-2 conv + stride-2 max-pool → one 3×3 stride-1 conv: the CIFAR ResNet stem.
    model.conv1 = _conv_like(model.conv1, kernel_size=3, stride=1, padding=1)
    model.maxpool = nn.Identity()


def _adapt_vgg(model: tvm.VGG) -> None:
    # The five max-pools already take 32 px to 1 px; only the 7×7-sized head has to shrink.
    _pool_to_one_pixel_head(model)


def _adapt_alexnet(model: tvm.AlexNet) -> None:
    # 11×11 stride 4 would leave 1 px after the max-pools; 5×5 stride 1 keeps a spatial kernel
    # (for GMConv to shape) and enough resolution for the three max-pools.
    model.features[0] = _conv_like(model.features[0], kernel_size=5, stride=1, padding=2)
    _pool_to_one_pixel_head(model)


def _adapt_mobilenet_v2(model: tvm.MobileNetV2) -> None:
    # Only the stride changes, so (pretrained) stem weights survive; the rest downsamples 16×.
    model.features[0][0].stride = (1, 1)


_ADAPTERS: dict[type[nn.Module], Callable[[nn.Module], None]] = {
    tvm.ResNet: _adapt_resnet,
    tvm.VGG: _adapt_vgg,
    tvm.AlexNet: _adapt_alexnet,
    tvm.MobileNetV2: _adapt_mobilenet_v2,
}
_SUPPORTED = "torchvision resnet*/resnext*/wide_resnet*, vgg*, alexnet and mobilenet_v2"


def _adapter_for(model: nn.Module) -> Callable[[nn.Module], None] | None:
    return next((adapter for cls, adapter in _ADAPTERS.items() if isinstance(model, cls)), None)


def _pool_to_one_pixel_head(model: tvm.VGG | tvm.AlexNet) -> None:
    """Global-average-pool the features and resize the first classifier layer to the channel count.

    torchvision pools to 7×7 (VGG) or 6×6 (AlexNet) and flattens, i.e. copies a 1 px map 49 or 36
    times into a classifier sized for 224 px; pooling to 1 px removes those redundant weights.
    """
    channels = [m for m in model.features if isinstance(m, nn.Conv2d)][-1].out_channels
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    index = next(i for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear))
    old = model.classifier[index]
    model.classifier[index] = nn.Linear(
        channels, old.out_features, old.bias is not None, device=old.weight.device, dtype=old.weight.dtype
    )


def _conv_like(old: nn.Conv2d, *, kernel_size: int, stride: int, padding: int) -> nn.Conv2d:
    """A new stem conv with ``old``'s channels, bias, device and dtype, He-initialised like torchvision's."""
    conv = nn.Conv2d(
        old.in_channels,
        old.out_channels,
        kernel_size,
        stride,
        padding,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv
