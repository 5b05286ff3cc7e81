"""``model.pretrained``: load weights into a freshly built backbone, never downloading anything.

Training nodes are often offline, and a download in the middle of a launch fails late and
differently on every node, so torchvision's weights are read from the local torch hub cache only
and a missing file is an immediate error that says where to put it.

Weights are loaded by name and shape: tensors whose shape differs from the model's (typically a
1000-class ImageNet head when ``num_classes=10``) are dropped and logged, so fine-tuning on another
label set works without editing checkpoints. A file of which nothing fits is an error, because
training silently from scratch would waste the whole run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from .config import ModelSource

log = logging.getLogger(__name__)

TORCHVISION = "torchvision"  # the model.pretrained value that means torchvision's default weights
_CHECKPOINT_ENTRIES = ("model", "state_dict")  # where checkpoints (ours, timm's, Lightning's) keep weights
_MAX_NAMED = 8


def load_pretrained(model: nn.Module, pretrained: str | None, *, source: ModelSource | str, name: str) -> None:
    """Load ``pretrained`` (None, a file path or ``"torchvision"``) into ``model`` in place.

    Raises FileNotFoundError for a missing file (or an uncached torchvision download) and
    ValueError for a file that is unreadable or holds no tensor that fits ``model``.
    """
    if pretrained is None:
        return
    path = torchvision_cache_path(source, name) if pretrained == TORCHVISION else Path(pretrained).expanduser()
    _load_matching(model, _read_state_dict(path), name, path)


def torchvision_cache_path(source: ModelSource | str, name: str) -> Path:
    """Where ``torch.hub`` keeps torchvision's default weights for ``name``; FileNotFoundError if absent."""
    if ModelSource(source) is not ModelSource.torchvision:
        raise ValueError(
            f"model.pretrained=torchvision needs model.source=torchvision (this is a {ModelSource(source).value} "
            f"model); set model.pretrained to the path of a weights file for {name!r}"
        )
    weights = torchvision.models.get_model_weights(name).DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if not path.is_file():
        raise FileNotFoundError(
            f"torchvision's default weights for {name} ({weights}) are not in the local torch hub cache: "
            f"expected {path}. Nothing is downloaded here: fetch {weights.url} on a machine with network "
            f"access and copy it to {path} (TORCH_HOME moves the cache), "
            "or set model.pretrained=<path of a weights file>"
        )
    return path


def _read_state_dict(path: Path) -> Mapping[str, object]:
    """The tensors of a raw state_dict, or of a checkpoint's "model"/"state_dict" entry."""
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {path} does not exist (model.pretrained)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, random bytes, a pickle with code: all unreadable here
        raise ValueError(
            f"cannot read pretrained weights {path} (model.pretrained): {type(err).__name__}: {err}"
        ) from err
    if not isinstance(obj, Mapping):
        return {}
    return next((obj[key] for key in _CHECKPOINT_ENTRIES if isinstance(obj.get(key), Mapping)), obj)


def _load_matching(model: nn.Module, state: Mapping[str, object], name: str, path: Path) -> None:
    own = model.state_dict()
    matched = {
        key: value for key, value in state.items()
        if key in own and isinstance(value, torch.Tensor) and value.shape == own[key].shape
    }
    if not matched:
        raise ValueError(
            f"{path} does not look like weights for {name}: none of its {len(state)} entries matches a "
            f"parameter or buffer of the model by name and shape (e.g. model: {_names(own)}; file: {_names(state)})"
        )
    model.load_state_dict(matched, strict=False)
    log.info("pretrained: loaded %d of %d tensors of %s from %s", len(matched), len(own), name, path)
    mismatched = [key for key in state if key in own and key not in matched]
    unexpected = [key for key in state if key not in own]
    missing = [key for key in own if key not in matched]
    for keys, what in [
        (mismatched, "dropped from the file (shape differs from the model's)"),
        (unexpected, "ignored in the file (not in the model)"),
        (missing, "left at their random initialisation"),
    ]:
        if keys:
            log.warning("pretrained: %d tensors %s: %s", len(keys), what, _names(keys))


def _names(keys: Iterable[str]) -> str:
    keys = list(keys)
    return ", ".join(keys[:_MAX_NAMED]) + (f", ... ({len(keys)} in all)" if len(keys) > _MAX_NAMED else "")
