"""Backbone names → modules, for the three model sources (local, torchvision, timm).

The ``local`` source is this package's own registry: any builder decorated with ``register_model``
becomes selectable from a config (``model.name=<name> model.source=local``) without touching the
factory. torchvision and timm keep their own registries; this module only forwards to them, so
every backbone is built randomly initialised (pretrained weights are ``models.pretrained``'s job,
which never downloads). Every backbone takes 3-channel images.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

import timm
import torchvision
from torch import nn

from engine.errors import ConfigError

from .config import ModelSource

ModelBuilder = Callable[..., nn.Module]

_LOCAL_MODELS: dict[str, ModelBuilder] = {}

# How a user lists each source's names; appended to "unknown model" errors.
_LISTING_HINTS = {
    ModelSource.local: "add one with @register_model in models/",
    ModelSource.torchvision: "torchvision.models.list_models() lists them",
    ModelSource.timm: "timm.list_models('*pattern*') searches them",
}
_MAX_LISTED = 20  # a source with at most this many models lists them all
_MAX_CLOSE = 8


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: make ``builder`` the ``local``-source model called ``name``.

        @register_model("my_net")
        def my_net(num_classes: int, **kwargs) -> nn.Module: ...

    The builder is called as ``builder(num_classes=..., **model.kwargs)`` and takes 3-channel
    images. A second registration of the same name is an error rather than a silent override, so
    two modules can never disagree about which network a config name means.
    """

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _LOCAL_MODELS:
            raise ValueError(f"a local model called {name!r} is already registered (@register_model)")
        _LOCAL_MODELS[name] = builder
        return builder

    return decorator


def registered_models() -> list[str]:
    """Names of the ``local``-source models, sorted."""
    return sorted(_LOCAL_MODELS)


def create_backbone(source: ModelSource | str, name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """A randomly initialised backbone ``name`` from ``source`` with a ``num_classes``-way head.

    ``kwargs`` go to the builder (e.g. timm's ``drop_rate``). An unknown name raises ConfigError
    listing valid (or the closest) names of that source.
    """
    source = ModelSource(source)
    if source is ModelSource.local:
        if name not in _LOCAL_MODELS:
            raise _unknown_model(name, source, list(_LOCAL_MODELS))
        return _LOCAL_MODELS[name](num_classes=num_classes, **kwargs)
    if source is ModelSource.torchvision:
        choices = torchvision.models.list_models(module=torchvision.models)  # classification models only
        if name not in choices:
            raise _unknown_model(name, source, choices)
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if not timm.is_model(name):
        raise _unknown_model(name, source, timm.list_models())
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


def _unknown_model(name: str, source: ModelSource, choices: list[str]) -> ConfigError:
    """The error for a misspelt name: every choice when there are few, else the closest ones."""
    if len(choices) <= _MAX_LISTED:
        listing = f"choose one of: {', '.join(sorted(choices))}"
    else:
        close = difflib.get_close_matches(name, choices, n=_MAX_CLOSE, cutoff=0.5)
        label, shown = ("closest", close) if close else ("for example", sorted(choices)[:_MAX_LISTED])
        listing = f"{len(choices)} available, {label}: {', '.join(shown)}"
    return ConfigError(f"unknown {source.value} model {name!r} (model.name); {listing} ({_LISTING_HINTS[source]})")
