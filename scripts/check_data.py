"""Check a class-folder dataset (data=imagenet / imagefolder) before training on it.

    python -m scripts.check_data /datasets/imagenet [--workers 16] [--image-size 224]

Applies training's own rule of what a class folder, an image file and a problem are
(data/class_folders.py) and decodes every image, in parallel, with a progress bar. Lists:
- problems, which stop training: unreadable or empty images, class folders without images, class
  folders that differ between train/ and val/, fewer than two classes;
- ignored files, which training skips (hidden files, names without an image extension);
- warnings: images smaller than --image-size on a side, which the crop has to upscale.
Exit status: 0 no problem (ignored files and warnings allowed), 1 problems found, 2 ROOT is not a folder.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from data.class_folders import (
    LAYOUT,
    SPLITS,
    SplitFiles,
    empty_classes_problem,
    mismatch_problem,
    scan_split,
    too_few_classes_problem,
)
from data.folder import FILE_ERRORS, decode
from data.loaders import available_cores
from data.text import first_line


def tree_problems(root: Path) -> tuple[list[str], dict[str, SplitFiles]]:
    """The problems seen without opening a file, and each split's files."""
    problems, splits = [], {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            problems.append(f"{folder}: missing (expected {LAYOUT} under {root})")
            continue
        splits[split] = scan_split(folder)
        counts = {name: len(images) for name, images in splits[split].images.items()}
        problems += [
            p
            for p in (too_few_classes_problem(folder, splits[split].classes), empty_classes_problem(folder, counts))
            if p
        ]
    if len(splits) == len(SPLITS):
        mismatch = mismatch_problem(root, splits["train"].classes, splits["val"].classes)
        problems += [mismatch] if mismatch else []
    return problems, splits


def decode_problem(path: Path) -> tuple[Optional[str], Optional[tuple[int, int]]]:
    """What is wrong with one image file (None: training reads it) and its (height, width)."""
    try:
        if path.stat().st_size == 0:
            return f"{path}: empty file", None
        image = decode(str(path))
    except FILE_ERRORS as err:
        return f"{path}: unreadable ({first_line(err)})", None
    height, width = image.shape[-2:] if hasattr(image, "shape") else (image.height, image.width)
    return None, (int(height), int(width))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the folder holding train/ and val/ (data.root)")
    parser.add_argument("--workers", type=int, default=available_cores(), help="processes decoding images")
    parser.add_argument(
        "--image-size",
        type=int,
        default=224,
        help="the crop size (data.image_size): smaller images are listed as warnings",
    )
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a folder; pass the data.root that holds train/ and val/", file=sys.stderr)
        return 2
    problems, splits = tree_problems(args.root)
    images = [path for files in splits.values() for found in files.images.values() for path in found]
    ignored = [path for files in splits.values() for path in files.ignored]
    warnings = []
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        checked = pool.map(decode_problem, images, chunksize=64)
        for path, (problem, size) in zip(images, tqdm(checked, total=len(images), desc="checking images", unit="file")):
            if problem:
                problems.append(problem)
            elif min(size) < args.image_size:
                warnings.append(
                    f"{path}: {size[1]}×{size[0]} px, smaller than the {args.image_size} px crop "
                    "(--image-size), which upscales it"
                )
    for line in problems:
        print(f"problem: {line}")
    for path in ignored:
        print(f"ignored: {path} (not an image file: training skips it)")
    for line in warnings:
        print(f"warning: {line}")
    print(
        f"{len(images)} image files checked: {_count(len(problems), 'problem')}, {len(ignored)} other "
        f"file{'s' if len(ignored) != 1 else ''} ignored, {_count(len(warnings), 'warning')}"
        f"{' (listed above)' if problems or ignored or warnings else ''}"
    )
    return 1 if problems else 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


if __name__ == "__main__":
    sys.exit(main())
