"""Backbones for GMConv experiments: the CIFAR ResNets, any torchvision or timm classifier, a
small-input stem for ImageNet backbones, offline pretrained weights, and the conversion to GMConv.

    from models import build_model, count_flops, count_parameters
    model = build_model(cfg.model, cfg.conv, num_classes=10, image_size=32)
"""

from . import cifar_resnet  # noqa: F401  (registers resnet20 ... resnet110 for model.source=local)
from .complexity import count_flops, count_parameters
from .factory import apply_conv, build_backbone, build_model
from .registry import create_backbone, register_model, registered_models
from .small_input import adapt_to_small_input, parse_small_input

__all__ = [
    "adapt_to_small_input",
    "apply_conv",
    "build_backbone",
    "build_model",
    "count_flops",
    "count_parameters",
    "create_backbone",
    "parse_small_input",
    "register_model",
    "registered_models",
]
