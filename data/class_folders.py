"""What counts in a class-folder tree (``<root>/{train,val}/<class>/<image>``): one rule, used by the
loaders (data/folder.py) and by ``scripts/check_data.py``, so the checker passes exactly the trees that
training accepts.

- A **class folder** is a folder directly under a split whose name does not start with ``.``
  (``.ipynb_checkpoints`` or ``.git`` is not a class).
- An **image file** is a file below a class folder whose name does not start with ``.`` and ends with one
  of torchvision's image extensions. Other files (``.DS_Store``, ``readme.txt``, macOS's ``._photo.jpg``)
  are ignored by training, and listed as ignored by the checker.
- A **problem** stops training and fails the checker: a class folder without image files (training would
  have a class it never sees), train/ and val/ with different class folders (labels are folder indices,
  so every label after the first difference would shift), fewer than two classes, and, found by decoding
  (the checker decodes every image; training when it reads one), an unreadable or empty image file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from torchvision.datasets.folder import IMG_EXTENSIONS

SPLITS = ("train", "val")
LAYOUT = "train/<class>/<image> and val/<class>/<image>"


def is_image_file(path: str | Path) -> bool:
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def class_folders(split: str | Path) -> list[str]:
    """The class folders of a split, sorted (their index is the label)."""
    return sorted(entry.name for entry in os.scandir(split) if entry.is_dir() and not entry.name.startswith("."))


@dataclass
class SplitFiles:
    """A split's class folders, its image files by class, and the files training ignores."""

    classes: list[str]
    images: dict[str, list[Path]] = field(default_factory=dict)
    ignored: list[Path] = field(default_factory=list)


def scan_split(split: Path) -> SplitFiles:
    files = SplitFiles(class_folders(split))
    for name in files.classes:
        found = files.images.setdefault(name, [])
        for dirpath, _, filenames in sorted(os.walk(split / name, followlinks=True)):
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                (found if is_image_file(path) else files.ignored).append(path)
    return files


def empty_classes_problem(split: Path, counts: dict[str, int]) -> Optional[str]:
    """The problem of a split whose class folders hold no image file (``counts``: image files per class)."""
    empty = sorted(name for name, count in counts.items() if count == 0)
    if not empty:
        return None
    shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
    return (
        f"{split}: {len(empty)} class folder{'s' if len(empty) > 1 else ''} without image files ({shown}); "
        f"add images or remove the folder (image files end with {', '.join(IMG_EXTENSIONS)})"
    )


def mismatch_problem(root: Path, train: list[str], val: list[str]) -> Optional[str]:
    if train == val:
        return None
    only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    return (
        f"{root}: train/ and val/ hold different class folders (only in train: "
        f"{', '.join(only_train[:5]) or 'none'}; only in val: {', '.join(only_val[:5]) or 'none'}); "
        "give both the same class folders"
    )


def too_few_classes_problem(split: Path, classes: list[str]) -> Optional[str]:
    """One class folder would train to 100 % top-1 on a task with nothing to learn."""
    if len(classes) >= 2:
        return None
    return (
        f"{split} holds {len(classes)} class folder{'' if len(classes) == 1 else 's'} "
        f"({', '.join(classes) or 'none'}); a classifier needs at least 2: add class folders or fix data.root"
    )
