"""Class-folder trees (ImageNet and any ``<root>/{train,val}/<class>/<image>`` layout), decoded from disk per sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision import datasets
from torchvision.datasets.folder import default_loader
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import v2

from .bad_images import SkipUnreadable, UnreadableImage
from .config import DataConfig
from .info import Splits
from .paths import require_root
from .transforms import folder_transforms

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LAYOUT = "train/<class>/<image> and val/<class>/<image>"
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
        raise UnreadableImage(f"cannot read image {path} ({first_line(err)}); replace or remove it (python "
                              f"scripts/check_data.py {root} lists every bad file), or set "
                              "data.skip_bad_images=true to train on without it") from None


def first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _split(directory: Path, transform: v2.Compose) -> datasets.ImageFolder:
    """Re-raises torchvision's multi-cause errors as one line naming the folder and the fix."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} not found: data.root must hold {LAYOUT}; fix data.root or the tree")
    try:
        # Every image is decoded to RGB (greyscale and CMYK JPEGs exist in ImageNet).
        return datasets.ImageFolder(str(directory), transform=transform, loader=read_image)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"no images under {directory} ({err}); put images in {directory}/<class>/ "
                                f"or fix data.root") from err


def _require_two_classes(directory: Path, classes: list[str]) -> None:
    """One class folder would train to 100 % top-1 on a task with nothing to learn: refuse it."""
    if len(classes) < 2:
        raise ValueError(f"{directory} holds {len(classes)} class folder ({', '.join(classes)}); a classifier needs "
                         f"at least 2: add class folders or fix data.root")


def _differences(a: list[str], b: list[str], limit: int = 5) -> str:
    return ", ".join(sorted(set(a) - set(b))[:limit]) or "none"


def build_folder(cfg: DataConfig) -> Splits:
    """Train and val must list the same classes: labels are folder indices, so a mismatch would silently
    relabel every class after the first difference."""
    root = require_root(cfg, LAYOUT)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={root} does not exist; set data.root to a folder holding {LAYOUT}")
    train_tf, val_tf = folder_transforms(cfg, IMAGENET_MEAN, IMAGENET_STD)
    train, val = _split(root / "train", train_tf), _split(root / "val", val_tf)
    _require_two_classes(root / "train", train.classes)
    if train.classes != val.classes:
        raise ValueError(f"train/ and val/ under {root} hold different classes (only in train: "
                         f"{_differences(train.classes, val.classes)}; only in val: "
                         f"{_differences(val.classes, train.classes)}); give both the same class folders")
    classes = list(train.classes)
    if cfg.skip_bad_images:
        train, val = SkipUnreadable(train), SkipUnreadable(val)
    return Splits(train=train, val=val, classes=classes, mean=IMAGENET_MEAN, std=IMAGENET_STD)
