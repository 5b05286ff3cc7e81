"""Which decoder ``data.decoder`` names, checked without importing any decoder: the config checks run it for every
dataset, and only a dataset that decodes files should pay for torchvision.io (data/decoders.py decodes)."""

from __future__ import annotations

import importlib.util

from engine.errors import ConfigError

DECODERS = ("auto", "torchvision", "pil", "simplejpeg")


def simplejpeg_installed() -> bool:
    return importlib.util.find_spec("simplejpeg") is not None


def resolve_decoder(name: str) -> str:
    """The decoder ``data.decoder=name`` runs: ``auto`` is simplejpeg where installed (the fastest measured,
    docs/BENCHMARKS.md), else torchvision.io. Raises a one-line ConfigError for an unknown name, and for
    simplejpeg when it is not installed."""
    if name not in DECODERS:
        raise ConfigError(f"data.decoder={name} is unknown: choose one of {', '.join(DECODERS)}")
    if name == "auto":
        return "simplejpeg" if simplejpeg_installed() else "torchvision"
    if name == "simplejpeg" and not simplejpeg_installed():
        raise ConfigError(
            "data.decoder=simplejpeg needs the simplejpeg package: pip install -e '.[jpeg]' "
            "(or pip install simplejpeg), or choose data.decoder=auto, torchvision or pil"
        )
    return name
