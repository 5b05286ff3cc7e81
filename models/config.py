"""Typed settings of the ``model`` and ``conv`` config groups (validated by Hydra at start-up)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Optional

from omegaconf import OmegaConf

from gmconv import GMConvOptions


class ConvType(str, Enum):
    """What a backbone's convolutions become (models/conv_types.py): GMConv, or a rival that also shapes or widens
    the receptive field, to compare with it on the same layers."""

    standard = "standard"
    gmconv = "gmconv"
    deformable = "deformable"  # DCNv2 (DCNv1 with modulated=false): taps sampled at learned offsets
    dcls = "dcls"  # dilated convolution with learnable spacings, Gaussian interpolation
    dilated = "dilated"  # the same kernel, dilated
    large_kernel = "large_kernel"  # the kernel zero-padded to kernel_size × kernel_size


class ModelSource(str, Enum):
    local = "local"  # this project's registry: builders decorated with @register_model in models/
    torchvision = "torchvision"  # torchvision.models.get_model(name)
    timm = "timm"  # timm.create_model(name)


@dataclass
class ModelConfig:
    name: str = "resnet20"
    source: ModelSource = ModelSource.local
    # null: random init; a path: a state_dict file (or a checkpoint with a "model"/"state_dict" entry);
    # "torchvision": torchvision's default weights, from the local torch hub cache only.
    pretrained: Optional[str] = None
    # auto: CIFAR-style stem when the data's images are 64 px or smaller; true / false force it.
    small_input: str = "auto"
    # null: the backbone's own default. timm models: drop_rate (before the classifier) and drop_path_rate
    # (stochastic depth); torchvision: its `dropout` and `stochastic_depth_prob` where the model has them.
    drop_rate: Optional[float] = None
    drop_path_rate: Optional[float] = None
    # extra keyword arguments for the backbone's constructor
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConvConfig(GMConvOptions):
    """The GMConv options (``GMConvOptions``, defaults there) plus the config's label and conv type."""

    name: str = "standard"  # the label used in run-folder names
    type: ConvType = ConvType.standard
    # the rivals' options (each type reads its own: models/conv_types.py)
    modulated: bool = True  # deformable: DCNv2's modulation (false: DCNv1)
    offset_groups: int = 1  # deformable: channel groups with offsets of their own
    dcls_size: int = 5  # dcls: the side of the kernel the k² elements move in
    dcls_sigma_init: float = 0.5  # dcls: each element's initial Gaussian width, in taps
    dilation: int = 2  # dilated
    kernel_size: int = 5  # large_kernel


# model.drop_rate / model.drop_path_rate → the constructor argument of each source (none for the local models)
REGULARISATION_ARGS = {
    ModelSource.timm: {"drop_rate": "drop_rate", "drop_path_rate": "drop_path_rate"},
    ModelSource.torchvision: {"drop_rate": "dropout", "drop_path_rate": "stochastic_depth_prob"},
    ModelSource.local: {},
}


def plain(value: Any) -> Any:
    """A config value as plain Python: a ListConfig as a list, a str Enum as its string."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else getattr(value, "value", value)


def gmconv_options(conv_cfg: Any) -> GMConvOptions:
    """The library's options as the ``conv`` config sets them (a ConvConfig or its Hydra DictConfig)."""
    return GMConvOptions(**{f.name: plain(getattr(conv_cfg, f.name)) for f in fields(GMConvOptions)})
