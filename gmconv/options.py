"""Every GMConv option with its default, written once.

An option either steers how ``convert_to_gmconv`` chooses and builds layers (``CONVERSION_OPTIONS``) or
is read by a layer, which names it in its ``OPTIONS`` (gmconv/conv.py, gmconv/dynamic.py); the layers
take their defaults from here and refuse an option they do not read, and the training framework's typed
config subclasses ``GMConvOptions``. Adding an option: a field and its check here, its name in a layer's
``OPTIONS`` or in ``CONVERSION_OPTIONS``, and the code that uses it; tests/test_gmconv.py fails for a
field that no layer or conversion step reads, or that changes nothing in the layer that names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .mask import PARAMETRIZATIONS

GRANULARITIES = ("layer", "channel", "kernel")
SIGMA_MODES = ("absolute", "relative")
# options of the conversion, not of a layer: which layers become GMConv layers, of which type, how large
CONVERSION_OPTIONS = ("dynamic", "min_kernel_size", "convert_patchify", "include", "exclude", "enlarge_by")


@dataclass
class GMConvOptions:
    """How convolutions become GMConv layers (gmconv/README.md explains each default).

    Plain str/bool/int/float/list[str] fields only: Hydra's structured configs subclass this.
    """

    sigma_init: float = 2.0
    sigma_mode: str = "absolute"
    sigma_granularity: str = "channel"
    sigma_parametrization: str = "softplus"
    sigma_min: float = 0.1
    learnable_sigma: bool = True
    dynamic: bool = False
    dynamic_reduction: int = 16
    min_kernel_size: int = 3
    convert_patchify: bool = False
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    enlarge_by: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first invalid option and its valid range or choices."""
        _check_choice("sigma_granularity", self.sigma_granularity, GRANULARITIES)
        _check_choice("sigma_parametrization", self.sigma_parametrization, tuple(PARAMETRIZATIONS))
        _check_choice("sigma_mode", self.sigma_mode, SIGMA_MODES)
        if not self.sigma_min > 0:
            raise ValueError(f"sigma_min={self.sigma_min} must be > 0 (at σ = 0 the centre tap is 0/0)")
        if not self.sigma_init > self.sigma_min:
            raise ValueError(
                f"sigma_init={self.sigma_init} must be greater than sigma_min={self.sigma_min} "
                "(σ is in kernel taps, > 0)"
            )
        if self.dynamic and not self.learnable_sigma:
            raise ValueError("dynamic=True predicts σ from the input, so learnable_sigma must stay True")
        if self.dynamic_reduction < 1:
            raise ValueError(f"dynamic_reduction={self.dynamic_reduction} must be >= 1")
        if self.min_kernel_size < 1:
            raise ValueError(f"min_kernel_size={self.min_kernel_size} must be >= 1")
        if self.enlarge_by < 0 or self.enlarge_by % 2:
            raise ValueError(f"enlarge_by={self.enlarge_by} must be an even number >= 0 (2 turns 3x3 into 5x5)")

    def layer_kwargs(self, layer_type: type) -> dict[str, Any]:
        """The options that ``layer_type`` (GMConv2d or DynamicGMConv2d) reads: its ``OPTIONS``."""
        return {name: getattr(self, name) for name in layer_type.OPTIONS}

    @classmethod
    def validated(cls, **options: Any) -> GMConvOptions:
        """``cls(**options)``, validated, with str-valued Enum members (from typed configs) as plain strings."""
        plain = {name: getattr(value, "value", value) for name, value in options.items()}
        result = cls(**plain)
        result.validate()
        return result


def option_names() -> list[str]:
    """The names ``GMConvOptions`` accepts, in declaration order."""
    return [f.name for f in fields(GMConvOptions)]


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(allowed)}")
