"""What ``scripts/check_data.py`` finds in a class-folder tree before a run spends GPU hours on it:
unreadable, empty and non-image files, and class folders that differ between train/ and val/."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from torchvision.datasets.folder import IMG_EXTENSIONS

from .folder import FILE_ERRORS, decode, first_line

SPLITS = ("train", "val")


@dataclass
class Findings:
    files: list[Path] = field(default_factory=list)  # the candidate image files, to be checked one by one
    problems: list[str] = field(default_factory=list)  # "<path>: <what is wrong>"


def scan(root: Path) -> Findings:
    """Every file under ``root/{train,val}/<class>/``, and the problems seen without opening one."""
    findings = Findings()
    classes = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            findings.problems.append(f"{folder}: missing (expected {root}/{split}/<class>/<image>)")
            continue
        classes[split] = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
        for name in classes[split]:
            for dirpath, _, filenames in os.walk(folder / name):
                findings.files.extend(Path(dirpath) / filename for filename in sorted(filenames))
    if len(classes) == len(SPLITS) and classes["train"] != classes["val"]:
        only_train = sorted(set(classes["train"]) - set(classes["val"]))
        only_val = sorted(set(classes["val"]) - set(classes["train"]))
        findings.problems.append(f"{root}: train/ and val/ hold different class folders (only in train: "
                                 f"{', '.join(only_train) or 'none'}; only in val: {', '.join(only_val) or 'none'}; "
                                 "the same name in another order also shifts every label)")
    return findings


def file_problem(path: Path) -> Optional[str]:
    """What is wrong with one file (None: an image the training reads); decodes it fully, so run in parallel."""
    if not path.name.lower().endswith(IMG_EXTENSIONS):
        return f"{path}: not an image file (training ignores it)"
    try:
        if path.stat().st_size == 0:
            return f"{path}: empty file"
        decode(str(path))
    except FILE_ERRORS as err:
        return f"{path}: unreadable ({first_line(err)})"
    return None
