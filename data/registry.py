"""The dataset table: a new dataset is its builder's file, one line here and configs/data/<name>.yaml.

Entries name their builder as ``"module:function"`` and import it only when that dataset is built, so
a run pays for its own dataset's dependencies only (ImageNet never imports scikit-learn or SciPy).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from .info import Splits


@dataclass(frozen=True)
class DatasetBuilder:
    # "package.module:function": the function taking a DataConfig (and with_train: False when only the
    # validation split is needed, so a builder may skip reading the training files) and returning Splits
    target: str
    # The dataset-specific data.* settings it reads; check_data_config rejects the others when set,
    # since the run would silently ignore them.
    takes: tuple[str, ...] = ()

    def load(self) -> Callable[..., Splits]:
        """Import the builder's module now (first use), not when the table is read."""
        module, function = self.target.split(":")
        return getattr(importlib.import_module(module), function)


# Settings read by every dataset that augments (all but fake), and by those that resize for validation.
AUGMENTATIONS = ("auto_augment", "color_jitter", "random_erasing")
CENTRE_CROP = ("val_resize", "crop_pct", "test_image_size")

FOLDER = ("root", *CENTRE_CROP, *AUGMENTATIONS, "skip_bad_images", "decoder", "reduced_decode")
# Digits on a canvas: the sizes that draw them (data/config_checks.py requires each to be set).
CANVAS = ("canvas", "digit_size", "train_size", "val_size", "generator_seed", *AUGMENTATIONS)

BUILDERS: dict[str, DatasetBuilder] = {
    "digits": DatasetBuilder("data.digits:build_digits", takes=(*AUGMENTATIONS, "test_image_size")),
    "digits_cluttered": DatasetBuilder("data.digit_canvas:build_digit_canvases", takes=(*CANVAS, "clutter")),
    "digits_scaled": DatasetBuilder("data.digit_canvas:build_digit_canvases", takes=CANVAS),
    "cifar10": DatasetBuilder("data.cifar:build_cifar", takes=("root", "download", *AUGMENTATIONS)),
    "cifar100": DatasetBuilder("data.cifar:build_cifar", takes=("root", "download", *AUGMENTATIONS)),
    "imagenet": DatasetBuilder("data.folder:build_folder", takes=FOLDER),
    "imagefolder": DatasetBuilder("data.folder:build_folder", takes=FOLDER),
    "fake": DatasetBuilder("data.fake:build_fake", takes=("num_classes", "train_size", "val_size", "test_image_size")),
}
