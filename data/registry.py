"""The dataset table: a new dataset is one file and one line here.

Entries name their builder as ``"module:function"`` and import it only when that dataset is built, so
a run pays for its own dataset's dependencies only (ImageNet never imports scikit-learn or SciPy).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from .config import DataConfig
from .info import Splits


@dataclass(frozen=True)
class Builder:
    target: str  # "package.module:function", the function taking a DataConfig and returning Splits
    # The dataset-specific data.* settings it reads; check_data_config rejects the others when set,
    # since the run would silently ignore them.
    takes: tuple[str, ...] = ()

    def load(self) -> Callable[[DataConfig], Splits]:
        """Import the builder's module now (first use), not when the table is read."""
        module, function = self.target.split(":")
        return getattr(importlib.import_module(module), function)


BUILDERS: dict[str, Builder] = {
    "digits": Builder("data.digits:build_digits"),
    "cifar10": Builder("data.cifar:build_cifar", takes=("root", "download")),
    "cifar100": Builder("data.cifar:build_cifar", takes=("root", "download")),
    "imagenet": Builder("data.folder:build_folder", takes=("root", "val_resize", "skip_bad_images")),
    "imagefolder": Builder("data.folder:build_folder", takes=("root", "val_resize", "skip_bad_images")),
    "fake": Builder("data.fake:build_fake", takes=("num_classes", "train_size", "val_size")),
}
