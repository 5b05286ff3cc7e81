"""Config → model: build the backbone, then swap its convolutions as ``conv`` says.

The order matters and is fixed here: pretrained weights are loaded into the backbone as its
source defines it (so torchvision/timm checkpoints fit), then the small-input stem replaces
layers the weights cannot describe anyway, then GMConv conversion sees the final convolutions and
keeps whatever weights they hold. Last, the weights file gets a second pass for what only the
converted model has room for: the σ of a GMConv run's checkpoint.
"""

from __future__ import annotations

import inspect
import logging

from torch import nn

from engine.errors import ConfigError
from gmconv import ConversionReport, GMConvOptions, convert_to_gmconv, replace_convs

from .config import REGULARISATION_ARGS, ConvConfig, ConvType, ModelConfig, ModelSource, gmconv_options
from .conv_types import LABELS, rival_builder, selection
from .pretrained import PretrainedWeights, read_pretrained
from .registry import create_backbone
from .small_input import maybe_adapt_to_small_input, parse_small_input

log = logging.getLogger(__name__)

_EXAMPLE_NAMES = 3  # layer names quoted in the error for a pattern that matches nothing


def build_model(model_cfg: ModelConfig, conv_cfg: ConvConfig, *, num_classes: int, image_size: int) -> nn.Module:
    """The configured network; what GMConv conversion did is logged (``apply_conv``)."""
    model, weights = _backbone(model_cfg, num_classes=num_classes, image_size=image_size)
    apply_conv(model, conv_cfg, model_name=model_cfg.name)
    if weights is not None:
        weights.load_into(model)  # σ of a GMConv checkpoint: only the converted model has them
        weights.finish(model)
    return model


def build_backbone(model_cfg: ModelConfig, *, num_classes: int, image_size: int) -> nn.Module:
    """The backbone with plain convolutions: built, pretrained weights loaded, small-input stem applied.

    ``image_size`` is the side of the training images; it only decides ``small_input="auto"``.
    """
    model, weights = _backbone(model_cfg, num_classes=num_classes, image_size=image_size)
    if weights is not None:
        weights.finish(model)
    return model


def _backbone(
    model_cfg: ModelConfig, *, num_classes: int, image_size: int
) -> tuple[nn.Module, PretrainedWeights | None]:
    """The backbone after the first pass of its weights file, and that file (None without one)."""
    small_input = parse_small_input(model_cfg.small_input)  # a typo fails before the (slow) build
    source = ModelSource(model_cfg.source)
    model = _create_regularised(model_cfg, source, num_classes)
    weights = read_pretrained(model_cfg.pretrained, source=source, name=model_cfg.name)
    if weights is not None:
        weights.load_into(model)
    model = maybe_adapt_to_small_input(model, small_input, source=source, name=model_cfg.name, image_size=image_size)
    return model, weights


def _create_regularised(model_cfg: ModelConfig, source: ModelSource, num_classes: int) -> nn.Module:
    """The backbone with ``model.drop_rate`` / ``drop_path_rate`` passed as its constructor's arguments;
    a backbone without such an argument is a ConfigError naming the setting (never silently ignored)."""
    settings = _regularisation(model_cfg, source)
    names = REGULARISATION_ARGS[source]
    kwargs = {names[key]: value for key, value in settings.items()}
    try:
        model = create_backbone(source, model_cfg.name, num_classes, **kwargs, **dict(model_cfg.kwargs))
    except TypeError as err:
        rejected = next((key for key in settings if f"'{names[key]}'" in str(err)), None)
        if rejected is None:
            raise
        raise _unsupported(rejected, settings[rejected], model_cfg.name, names[rejected]) from err
    taken = inspect.signature(type(model).__init__).parameters  # some constructors swallow unknown **kwargs
    missing = next((key for key in settings if names[key] not in taken), None)
    if missing is not None:
        raise _unsupported(missing, settings[missing], model_cfg.name, names[missing])
    return model


def _regularisation(model_cfg: ModelConfig, source: ModelSource) -> dict[str, float]:
    """The dropout / stochastic-depth settings given, refused where the source has no such argument or
    model.kwargs repeats them."""
    settings = {
        key: getattr(model_cfg, key) for key in ("drop_rate", "drop_path_rate") if getattr(model_cfg, key) is not None
    }
    unsupported = [key for key in settings if key not in REGULARISATION_ARGS[source]]
    if unsupported:
        raise ConfigError(
            f"model.{unsupported[0]}={settings[unsupported[0]]} is not supported by the {source.value} "
            f"model {model_cfg.name} (no dropout or stochastic-depth argument); remove it"
        )
    clash = sorted({REGULARISATION_ARGS[source][key] for key in settings} & dict(model_cfg.kwargs).keys())
    if clash:
        raise ConfigError(f"model.kwargs.{clash[0]} repeats model.drop_rate/drop_path_rate; set it once")
    return settings


def _unsupported(key: str, value: float, model_name: str, argument: str) -> ConfigError:
    return ConfigError(
        f"model.{key}={value} is not supported by {model_name} (its builder does not accept {argument}); remove it"
    )


def apply_conv(model: nn.Module, conv_cfg: ConvConfig, *, model_name: str | None = None) -> ConversionReport | None:
    """Convert ``model``'s convolutions in place as ``conv_cfg`` says and log what was done.

    Returns the report, or None for standard convolutions. GMConv receives every ``GMConvOptions``
    field of ``conv_cfg``, so a new option needs no change here; a rival type (models/conv_types.py)
    replaces the same layers with its own. An include/exclude pattern that matches no convolution is
    a ConfigError: it is almost always a typo that would silently change the experiment.
    """
    kind = ConvType(conv_cfg.type)
    if kind is ConvType.standard:
        return None
    report = ConversionReport(layer=LABELS.get(kind, "GMConv"))
    options = gmconv_options(conv_cfg) if kind is ConvType.gmconv else selection(conv_cfg)
    converted = _converted(model, conv_cfg, kind, options, report)
    if converted is not model:  # only happens for a bare nn.Conv2d, which cannot change type in place
        raise TypeError("apply_conv converts a network in place; a bare nn.Conv2d cannot be converted in place")
    name = model_name or type(model).__name__
    log.info("%s: %s", name, report.summary())
    if report.unmatched:
        raise ConfigError(_unmatched_message(model, options, report.unmatched, name))
    return report


def _converted(
    model: nn.Module, conv_cfg: ConvConfig, kind: ConvType, options: GMConvOptions, report: ConversionReport
) -> nn.Module:
    """The conversion itself. gmconv/ and the layers (models/layers/) check their arguments with ValueError, as
    libraries do; here those arguments are the user's conv settings and the model's layers, so the message is a
    ConfigError (the original, with its traceback, is its cause)."""
    try:
        if kind is ConvType.gmconv:
            return convert_to_gmconv(model, options, report=report)
        return replace_convs(model, rival_builder(conv_cfg), options, report)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def _unmatched_message(model: nn.Module, options: GMConvOptions, unmatched: list[str], name: str) -> str:
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    example = ", ".join(convs[:_EXAMPLE_NAMES]) + (", ..." if len(convs) > _EXAMPLE_NAMES else "")
    bad = "; ".join(
        f"conv.{option}=[{', '.join(patterns)}]"
        for option in ("include", "exclude")
        if (patterns := [p for p in getattr(options, option) if p in unmatched])
    )
    return f"{bad} matches no convolution of {name} (layer names look like {example}); fix the pattern"
