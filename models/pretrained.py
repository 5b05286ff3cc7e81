"""``model.pretrained``: load weights into a freshly built backbone, never downloading anything.

Training nodes are often offline, and a download in the middle of a launch fails late and
differently on every node, so torchvision's weights are read from the local torch hub cache only
and a missing file is an immediate error that says where to put it.

Weights are loaded by name and shape: tensors whose shape differs from the model's (typically a
1000-class ImageNet head when ``num_classes=10``) are dropped and logged, so fine-tuning on another
label set works without editing checkpoints. A file of which nothing fits is an error, because
training silently from scratch would waste the whole run. A file is loaded in passes (before and
after GMConv conversion, see ``PretrainedWeights``) so that a GMConv run's learned σ survive.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from engine.errors import CheckpointError, ConfigError, MissingFile

from .config import ModelSource

log = logging.getLogger(__name__)

TORCHVISION = "torchvision"  # the model.pretrained value that means torchvision's default weights
_CHECKPOINT_ENTRIES = ("model", "state_dict")  # where checkpoints (ours, timm's, Lightning's) keep weights
_MAX_NAMED = 8


def read_pretrained(pretrained: str | None, *, source: ModelSource | str, name: str) -> PretrainedWeights | None:
    """The weights ``pretrained`` (None, a file path or ``"torchvision"``) names, or None for none.

    Raises MissingFile for a missing file (or an uncached torchvision download) and
    CheckpointError for a file that cannot be read.
    """
    if pretrained is None:
        return None
    path = torchvision_cache_path(source, name) if pretrained == TORCHVISION else Path(pretrained).expanduser()
    return PretrainedWeights(_read_state_dict(path), path, name)


class PretrainedWeights:
    """The tensors of one weights file, loaded into a model in passes.

    Each pass (``load_into``) loads every entry not loaded yet that fits the model by name and
    shape. Two passes let a GMConv run's checkpoint start a new run: its plain weights go into the
    backbone before conversion (so ``enlarge_by`` still zero-pads pretrained 3×3 kernels), its σ
    (and dynamic σ predictors) into the converted model, which is the first to have room for them.
    ``finish`` then rejects a file of which nothing fitted and logs, over all passes, what was not loaded.
    """

    def __init__(self, state: Mapping[str, object], path: Path, name: str) -> None:
        self.state = state
        self.path = path
        self.name = name
        self.loaded: set[str] = set()
        self.known: set[str] = set()  # every parameter/buffer name of the models passed to load_into

    def load_into(self, model: nn.Module) -> None:
        """Load the entries that fit ``model`` and were not loaded by an earlier pass."""
        own = model.state_dict()
        self.known.update(own)
        fitting = {
            key: value
            for key, value in self.state.items()
            if key not in self.loaded
            and key in own
            and isinstance(value, torch.Tensor)
            and value.shape == own[key].shape
        }
        model.load_state_dict(fitting, strict=False)
        self.loaded.update(fitting)

    def finish(self, model: nn.Module) -> None:
        """CheckpointError if nothing was loaded; otherwise log what was loaded and what was not, for ``model``."""
        own = model.state_dict()
        if not self.loaded:
            raise CheckpointError(
                f"{self.path} does not look like weights for {self.name}: none of its {len(self.state)} entries "
                f"matches a parameter or buffer of the model by name and shape "
                f"(e.g. model: {_names(own)}; file: {_names(self.state)})"
            )
        log.info("pretrained: loaded %d of %d tensors of %s from %s", len(self.loaded), len(own), self.name, self.path)
        mismatched = [key for key in self.state if key in self.known and key not in self.loaded]
        unexpected = [key for key in self.state if key not in self.known]
        missing = [key for key in own if key not in self.loaded]
        for keys, what in [
            (mismatched, "dropped from the file (shape differs from the model's)"),
            (unexpected, "ignored in the file (not in the model)"),
            (missing, "left at their initialisation"),
        ]:
            if keys:
                log.warning("pretrained: %d tensors %s: %s", len(keys), what, _names(keys))


def torchvision_cache_path(source: ModelSource | str, name: str) -> Path:
    """Where ``torch.hub`` keeps torchvision's default weights for ``name``; MissingFile if absent."""
    if ModelSource(source) is not ModelSource.torchvision:
        raise ConfigError(
            f"model.pretrained=torchvision needs model.source=torchvision (this is a {ModelSource(source).value} "
            f"model); set model.pretrained to the path of a weights file for {name!r}"
        )
    weights = torchvision.models.get_model_weights(name).DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if not path.is_file():
        raise MissingFile(
            f"torchvision's default weights for {name} ({weights}) are not in the local torch hub cache: "
            f"expected {path}. Nothing is downloaded here: fetch {weights.url} on a machine with network "
            f"access and copy it to {path} (TORCH_HOME moves the cache), "
            "or set model.pretrained=<path of a weights file>"
        )
    return path


def _read_state_dict(path: Path) -> Mapping[str, object]:
    """The tensors of a raw state_dict, or of a checkpoint's "model"/"state_dict" entry."""
    if not path.is_file():
        raise MissingFile(f"pretrained weights file {path} does not exist (model.pretrained)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, random bytes, a pickle with code: all unreadable here
        raise CheckpointError(
            f"cannot read pretrained weights {path} (model.pretrained): {type(err).__name__}: {err}"
        ) from err
    if not isinstance(obj, Mapping):
        return {}
    return next((obj[key] for key in _CHECKPOINT_ENTRIES if isinstance(obj.get(key), Mapping)), obj)


def _names(keys: Iterable[str]) -> str:
    keys = list(keys)
    return ", ".join(keys[:_MAX_NAMED]) + (f", ... ({len(keys)} in all)" if len(keys) > _MAX_NAMED else "")
