"""The one check every file-backed dataset starts with."""

from __future__ import annotations

from pathlib import Path

from engine.errors import ConfigError

from .config import DataConfig


def require_root(data: DataConfig, layout: str) -> Path:
    """Fail at start-up, naming the setting, rather than deep inside torchvision with a relative-path error."""
    if data.root is None:
        raise ConfigError(f"data.root is not set: data={data.name} needs data.root=/path/to/folder holding {layout}")
    return Path(data.root).expanduser()
