"""Class-folder trees (ImageNet and any ``<root>/{train,val}/<class>/<image>`` layout), decoded from disk per sample."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

from PIL import Image
from torchvision import datasets
from torchvision.transforms import v2

from engine.errors import DataError, MissingFile

from . import decoders
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
from .decoder_choice import resolve_decoder
from .decoders import Encoded, read_encoded
from .info import Splits
from .paths import require_root
from .reduced_decode import RandomResizedCropDecode, ShortSideDecode
from .text import first_line
from .transforms import folder_transforms, resize_for_crop, val_resize

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# what PIL (OSError, SyntaxError, ValueError, decompression bombs), torchvision.io (RuntimeError) and simplejpeg
# (ValueError) raise on a bad file
FILE_ERRORS = (OSError, SyntaxError, ValueError, RuntimeError, Image.DecompressionBombError)
Geometry = Callable[[Encoded], Any]  # an encoded image → the decoded image, reduced or cropped (data/reduced_decode.py)


def decode(path: str, decoder: str = "torchvision") -> Any:
    """An image file as RGB, whole: a uint8 3×H×W tensor (JPEG, PNG, WebP) or a PIL image (other formats);
    the transforms (torchvision v2) take either. ``decoder`` as ``data.decoder``, resolved (no ``auto``)."""
    return decoders.decode(read_encoded(path), decoder)


class FolderReader:
    """A split's loader: ``path`` → the decoded image, whole or through ``geometry`` (reduced decoding),
    with one error for every way a file can be unreadable."""

    def __init__(self, decoder: str, geometry: Optional[Geometry] = None) -> None:
        self.decoder, self.geometry = decoder, geometry

    def __call__(self, path: str) -> Any:
        try:
            if self.geometry is None:
                return decode(path, self.decoder)
            return self.geometry(read_encoded(path))
        except FILE_ERRORS as err:
            root = Path(path).parents[2]  # <root>/<split>/<class>/<file>
            raise UnreadableImage(
                f"cannot read image {path} ({first_line(err)}); replace or remove it (python "
                f"-m scripts.check_data {root} lists every bad file), or set "
                "data.skip_bad_images=true to train on without it"
            ) from None


def reduces(data: DataConfig) -> bool:
    """Whether the readers decode reduced: torchvision.io cannot scale a JPEG, and the header read and the
    crop in the reader would cost it 7 % for nothing (docs/BENCHMARKS.md, section 5)."""
    return data.reduced_decode and resolve_decoder(data.decoder) != "torchvision"


def readers(data: DataConfig) -> tuple[FolderReader, FolderReader]:
    """(train, val) loaders for ``data``: with ``data.reduced_decode``, training's RandomResizedCrop is drawn
    in the reader (``folder_transforms(..., crop_in_reader=True)`` leaves it out) and every other resize
    lets the reader decode at a reduced scale."""
    decoder = resolve_decoder(data.decoder)
    if not reduces(data):
        return FolderReader(decoder), FolderReader(decoder)
    test_size = data.test_image_size or data.image_size
    val = FolderReader(decoder, ShortSideDecode(val_resize(test_size, data), decoder))
    if not data.augment:
        return FolderReader(decoder, ShortSideDecode(resize_for_crop(data.image_size, data), decoder)), val
    return FolderReader(decoder, RandomResizedCropDecode(data.image_size, decoder)), val


class _ClassFolders(datasets.ImageFolder):
    """torchvision's ImageFolder under this project's rule of what a class folder is (data/class_folders.py)."""

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = class_folders(directory)
        return classes, {name: index for index, name in enumerate(classes)}


def _split(directory: Path, transform: v2.Compose, reader: FolderReader) -> datasets.ImageFolder:
    """One split, refused in one line naming the folder, the problem and the fix when it breaks the rule."""
    if not directory.is_dir():
        raise MissingFile(f"{directory} not found: data.root must hold {LAYOUT}; fix data.root or the tree")
    _refuse(too_few_classes_problem(directory, class_folders(directory)), directory.parent)
    split = _ClassFolders(
        str(directory), transform=transform, loader=reader, is_valid_file=is_image_file, allow_empty=True
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
    train_tf, val_tf = folder_transforms(data, IMAGENET_MEAN, IMAGENET_STD, crop_in_reader=reduces(data))
    train_reader, val_reader = readers(data)
    train = _split(root / "train", train_tf, train_reader) if with_train else None
    val = _split(root / "val", val_tf, val_reader)
    if train is not None:
        _refuse(mismatch_problem(root, train.classes, val.classes), root)
    classes = list(val.classes)
    if data.skip_bad_images:
        train, val = SkipUnreadable(train) if train is not None else None, SkipUnreadable(val)
    return Splits(train=train, val=val, classes=classes, mean=IMAGENET_MEAN, std=IMAGENET_STD)
