"""Class-folder trees (ImageNet and any ``<root>/{train,val}/<class>/<image>`` layout), decoded from disk per sample."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Optional

import torch
from PIL import Image
from torchvision import datasets
from torchvision.datasets.folder import default_loader
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import v2

from engine.errors import DataError, MissingFile

from .bad_images import SkipUnreadable, UnreadableImage
from .class_folders import (
    LAYOUT,
    class_folders,
    empty_classes_problem,
    is_image_file,
    mismatch_problem,
    too_few_classes_problem,
)
from .config import DataConfig
from .info import Splits
from .paths import require_root
from .text import first_line
from .transforms import folder_transforms

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# what PIL (OSError, SyntaxError, ValueError, decompression bombs) and torchvision.io (RuntimeError) raise on a bad file
FILE_ERRORS = (OSError, SyntaxError, ValueError, RuntimeError, Image.DecompressionBombError)
# Decoded by torchvision.io (libjpeg-turbo, libpng, libwebp) straight to a uint8 tensor: about twice PIL's
# images/s per loader worker (docs/BENCHMARKS.md). Other formats (BMP, TIFF, PPM, ...) go through PIL.
TENSOR_DECODED = (".jpg", ".jpeg", ".png", ".webp")


def decode(path: str) -> Any:
    """An image file as RGB: a uint8 3×H×W tensor (JPEG, PNG, WebP) or a PIL image (other formats);
    the transforms (torchvision v2) take either."""
    if not path.lower().endswith(TENSOR_DECODED):
        return default_loader(path)
    image = decode_image(read_file(path), mode=ImageReadMode.RGB)
    return image if image.dtype == torch.uint8 else v2.functional.to_dtype(image, torch.uint8, scale=True)


def read_image(path: str) -> Any:
    """``decode``, with one error for every way a file can be unreadable."""
    try:
        return decode(path)
    except FILE_ERRORS as err:
        root = Path(path).parents[2]  # <root>/<split>/<class>/<file>
        raise UnreadableImage(
            f"cannot read image {path} ({first_line(err)}); replace or remove it (python "
            f"-m scripts.check_data {root} lists every bad file), or set "
            "data.skip_bad_images=true to train on without it"
        ) from None


class _ClassFolders(datasets.ImageFolder):
    """torchvision's ImageFolder under this project's rule of what a class folder is (data/class_folders.py)."""

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = class_folders(directory)
        return classes, {name: index for index, name in enumerate(classes)}


def _split(directory: Path, transform: v2.Compose) -> datasets.ImageFolder:
    """One split, refused in one line naming the folder, the problem and the fix when it breaks the rule."""
    if not directory.is_dir():
        raise MissingFile(f"{directory} not found: data.root must hold {LAYOUT}; fix data.root or the tree")
    _refuse(too_few_classes_problem(directory, class_folders(directory)), directory.parent)
    split = _ClassFolders(
        str(directory), transform=transform, loader=read_image, is_valid_file=is_image_file, allow_empty=True
    )
    counts = Counter(split.targets)
    _refuse(
        empty_classes_problem(directory, {name: counts[index] for index, name in enumerate(split.classes)}),
        directory.parent,
    )
    return split


def _refuse(problem: Optional[str], root: Path) -> None:
    if problem is not None:
        raise DataError(f"{problem}; python -m scripts.check_data {root} lists every problem of the tree")


def build_folder(data: DataConfig, *, with_train: bool = True) -> Splits:
    """``with_train=False`` (evaluating a checkpoint) reads val/ alone. With both, train/ and val/ must hold
    the same class folders: labels are folder indices, so a mismatch would relabel every class after it."""
    root = require_root(data, LAYOUT)
    if not root.is_dir():
        raise MissingFile(f"data.root={root} does not exist; set data.root to a folder holding {LAYOUT}")
    train_tf, val_tf = folder_transforms(data, IMAGENET_MEAN, IMAGENET_STD)
    train = _split(root / "train", train_tf) if with_train else None
    val = _split(root / "val", val_tf)
    if train is not None:
        _refuse(mismatch_problem(root, train.classes, val.classes), root)
    classes = list(val.classes)
    if data.skip_bad_images:
        train, val = SkipUnreadable(train) if train is not None else None, SkipUnreadable(val)
    return Splits(train=train, val=val, classes=classes, mean=IMAGENET_MEAN, std=IMAGENET_STD)
