"""A pre-resized copy of a class-folder tree, for loaders that decode faster than the originals allow.

    python -m scripts.resize_images SRC DST [--max-short-side 320] [--quality 90] [--workers N]

Decoding cost grows with the pixels stored, not the 224 px the network sees: on ImageNet the originals
(most about 500×375, a tail past 2,000 px) hold several times the pixels of a copy whose shorter side is
320 px. The copy keeps the tree (``train/`` and ``val/``, every class folder, file names), and training
reads it unchanged (``data.root=DST``).

- What an image file is: training's own rule (data/class_folders.py); other files are not copied.
- An image whose shorter side is above ``--max-short-side`` is resized (Lanczos, after a DCT-scaled
  JPEG decode that stays at least that size) and written as a JPEG at ``--quality`` (other formats
  keep their format); a smaller JPEG is copied byte for byte, so it loses nothing.
- Unreadable files are left out and listed: training on the copy is training with
  ``data.skip_bad_images=true`` on the original, without the replacements.
- Resumable: each file is written to a hidden temporary name (which training ignores) and renamed into
  place, so a file that exists is whole; a rerun after a kill skips it.

The accuracy cost cannot be measured here; docs/TRAINING.md ("Data") cites the published numbers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from PIL import Image
from tqdm import tqdm

from .class_folders import SPLITS, scan_split
from .decoders import is_jpeg
from .folder import FILE_ERRORS
from .loaders import available_cores
from .text import first_line

WRITTEN, COPIED, DONE, UNREADABLE = "written", "copied", "done", "unreadable"


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path
    max_short_side: int
    quality: int


def jobs(src: Path, dst: Path, max_short_side: int, quality: int) -> Iterator[Job]:
    """One job per image file of every split of ``src``, in the tree's order."""
    for split in SPLITS:
        if not (src / split).is_dir():
            continue
        for images in scan_split(src / split).images.values():
            for path in images:
                yield Job(path, dst / path.relative_to(src), max_short_side, quality)


def resize_one(job: Job) -> tuple[str, Optional[str]]:
    """(what was done, the problem of an unreadable file or None); writes ``job.target`` atomically."""
    if job.target.exists():
        return DONE, None
    job.target.parent.mkdir(parents=True, exist_ok=True)
    partial = job.target.with_name(f".{job.target.name}.partial")  # hidden: training never reads it
    try:
        done = _write(job, partial)
    except FILE_ERRORS as err:
        partial.unlink(missing_ok=True)
        return UNREADABLE, f"{job.source} ({first_line(err)})"
    os.replace(partial, job.target)
    return done, None


def _write(job: Job, partial: Path) -> str:
    with Image.open(job.source) as image:
        width, height = image.size
        short = min(width, height)
        if short <= job.max_short_side and is_jpeg(str(job.source)):
            image.load()  # a readable file: copied as it is
            shutil.copyfile(job.source, partial)
            return COPIED
        scale = min(1.0, job.max_short_side / short)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image.draft("RGB", size)  # JPEG: decode at the smallest DCT scale still at least `size`
        image = image.convert("RGB") if image.mode not in ("RGB", "L") else image
        image = image.resize(size, Image.LANCZOS) if image.size != size else image
        kind = Image.registered_extensions()[job.source.suffix.lower()]
        image.save(partial, format=kind, **({"quality": job.quality} if kind == "JPEG" else {}))
    return WRITTEN


def resize_tree(src: Path, dst: Path, *, max_short_side: int, quality: int, workers: int) -> tuple[dict, list[str]]:
    """Copy ``src`` to ``dst`` as the module says; returns (count per outcome, unreadable files)."""
    todo = list(jobs(src, dst, max_short_side, quality))
    counts, unreadable = {WRITTEN: 0, COPIED: 0, DONE: 0, UNREADABLE: 0}, []
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None  # 1: in this process (tests)
    with pool or nullcontext():
        results = pool.map(resize_one, todo, chunksize=32) if pool else map(resize_one, todo)
        for done, problem in tqdm(results, total=len(todo), desc="resizing images", unit="file"):
            counts[done] += 1
            unreadable += [problem] if problem else []
    return counts, unreadable


def _argument_problem(args: argparse.Namespace) -> Optional[str]:
    if not (args.src / "train").is_dir() and not (args.src / "val").is_dir():
        return f"{args.src} holds neither train/ nor val/; pass the data.root of a class-folder tree"
    if args.dst.resolve() == args.src.resolve():
        return f"DST is SRC ({args.src}); give the copy its own folder"
    if args.max_short_side < 1 or not 1 <= args.quality <= 95:
        return "--max-short-side must be a positive number of px and --quality in 1..95 (Pillow's range)"
    return None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="the data.root to copy: train/<class>/<image>, val/<class>/<image>")
    parser.add_argument("dst", type=Path, help="where the copy goes (a rerun continues it)")
    parser.add_argument("--max-short-side", type=int, default=320, help="px; larger images are resized to it")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of resized images (1-95)")
    parser.add_argument("--workers", type=int, default=available_cores(), help="processes (default: the cores)")
    args = parser.parse_args(argv)
    problem = _argument_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    counts, unreadable = resize_tree(
        args.src, args.dst, max_short_side=args.max_short_side, quality=args.quality, workers=max(1, args.workers)
    )
    for line in unreadable:
        print(f"unreadable, left out: {line}")
    print(
        f"{args.dst}: {counts[WRITTEN]} resized, {counts[COPIED]} copied unchanged, {counts[DONE]} already "
        f"there, {len(unreadable)} unreadable left out{' (listed above)' if unreadable else ''}"
    )
    return 0
