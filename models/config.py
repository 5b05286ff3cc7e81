"""Typed settings of the ``model`` and ``conv`` config groups (validated by Hydra at start-up)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional


class ConvType(str, Enum):
    standard = "standard"
    gmconv = "gmconv"


class Granularity(str, Enum):
    layer = "layer"
    channel = "channel"
    kernel = "kernel"


class Parametrization(str, Enum):
    softplus = "softplus"
    exp = "exp"


class ModelSource(str, Enum):
    cifar = "cifar"  # the CIFAR ResNets of He et al. (2016), written in models/cifar_resnet.py
    torchvision = "torchvision"  # torchvision.models.get_model(name)
    timm = "timm"  # timm.create_model(name)


@dataclass
class ModelConfig:
    name: str = "resnet20"
    source: ModelSource = ModelSource.cifar
    # null: random init; a path: a state_dict file (or a checkpoint with a "model"/"state_dict" entry);
    # "torchvision": torchvision's default weights, from the local torch hub cache only.
    pretrained: Optional[str] = None
    # auto: CIFAR-style stem when the data's images are 64 px or smaller; true / false force it.
    small_input: str = "auto"
    # extra keyword arguments for the backbone's constructor (e.g. timm's drop_rate)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConvConfig:
    name: str = "standard"  # the label used in run-folder names
    type: ConvType = ConvType.standard
    sigma_init: float = 2.0
    sigma_granularity: Granularity = Granularity.channel
    sigma_parametrization: Parametrization = Parametrization.softplus
    sigma_min: float = 0.1
    learnable_sigma: bool = True
    dynamic: bool = False
    dynamic_reduction: int = 16
    min_kernel_size: int = 3
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    enlarge_by: int = 0
