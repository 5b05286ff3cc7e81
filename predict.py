"""Predict the classes of image files with a trained run, prepared as the run prepared its validation images.

    python predict.py RUN_OR_CKPT INPUT... [--top-k 5] [--out preds.csv|preds.json] [--batch-size 64]
                      [--device auto|cpu|cuda] [--weights best|last|ema] [--skip-bad-images]

INPUT: image files, folders (searched recursively) or list files (.txt: one path per line, relative to the
list's folder). Image files are those training reads (data/class_folders.py: hidden files and names without
an image extension are left out and counted). An unreadable image stops with one line naming it, as in
training; --skip-bad-images lists it and goes on. Where every image lies in a folder named after one of the
run's classes, top-1 and top-5 against those names are printed too. Output: one line per image with its
top-k classes and probabilities, on the terminal or in --out (CSV or JSON, by its suffix), and a summary.
Exit status: 0 done, 2 bad input (no image, no checkpoint, an unreadable image), 1 another failure.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from tqdm import tqdm

from analysis import load_run
from analysis.trained_run import WEIGHTS
from data.class_folders import is_image_file
from data.folder import FILE_ERRORS, decode
from data.text import first_line
from engine.checkpoint import atomic_write
from engine.distributed import DistInfo, select_device
from engine.errors import BadInput, ConfigError, DataError, MissingFile

LIST_SUFFIXES = (".txt", ".lst")


@dataclass
class Inputs:
    images: list[Path] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # files that are not image files by training's rule


def collect(paths: list[Path]) -> Inputs:
    """Every image file the arguments name: files, folders (recursively, sorted), list files."""
    found = Inputs()
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                (found.images if is_image_file(file) else found.ignored).append(file)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            listed = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            found.images += [(path.parent / line) for line in listed]
        elif path.is_file():
            (found.images if is_image_file(path) else found.ignored).append(path)
        else:
            raise MissingFile(f"{path} does not exist; pass image files, folders of images or a list file")
    if not found.images:
        raise DataError(
            f"no image file in {', '.join(map(str, paths))} ({len(found.ignored)} other files ignored); "
            "image files end with .jpg, .jpeg, .png, .webp, .bmp, .ppm, .pgm, .tif or .tiff"
        )
    return found


def batches(
    images: list[Path], transform: Any, size: int, skip_bad: bool, skipped: list[str]
) -> Iterator[tuple[list[Path], torch.Tensor]]:
    """(files, their model inputs) ``size`` at a time; an unreadable file stops, or with ``skip_bad`` is
    recorded in ``skipped`` and left out."""
    for start in range(0, len(images), size):
        kept, tensors = [], []
        for path in images[start : start + size]:
            try:
                tensors.append(transform(decode(str(path))))
                kept.append(path)
            except FILE_ERRORS as err:
                if not skip_bad:
                    raise DataError(
                        f"cannot read image {path} ({first_line(err)}); remove it or pass "
                        "--skip-bad-images to predict the others"
                    ) from None
                skipped.append(f"{path}: {first_line(err)}")
        if kept:
            yield kept, torch.stack(tensors)


def predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    run = load_run(args.run, weights=args.weights)
    inputs = collect(args.inputs)
    device = select_device(args.device, DistInfo())
    model, classes = run.model.to(device), run.classes
    top_k = min(args.top_k, len(classes))
    rows, skipped = [], []
    with torch.inference_mode():
        for files, images in tqdm(
            batches(inputs.images, run.transform, args.batch_size, args.skip_bad_images, skipped),
            total=-(-len(inputs.images) // args.batch_size),
            desc="predict",
            unit="batch",
            file=sys.stderr,
        ):
            probabilities = model(images.to(device)).float().softmax(dim=1).cpu()
            values, indices = probabilities.topk(top_k, dim=1)
            for file, p, i in zip(files, values.tolist(), indices.tolist()):
                rows.append({"file": str(file), "top": [{"class": classes[c], "probability": q} for c, q in zip(i, p)]})
    for line in skipped:
        print(f"skipped: {line}", file=sys.stderr)
    print(summary(run, rows, inputs, skipped))
    return rows


def summary(run: Any, rows: list[dict[str, Any]], inputs: Inputs, skipped: list[str]) -> str:
    line = (
        f"{len(rows)} images predicted by {run.label} ({run.checkpoint}, {run.weights} weights)"
        f"{f'; {len(skipped)} unreadable skipped' if skipped else ''}"
        f"{f'; {len(inputs.ignored)} other files ignored' if inputs.ignored else ''}"
    )
    labels = [Path(row["file"]).parent.name for row in rows]
    if rows and all(label in run.classes for label in labels):  # class folders: score against their names
        top1 = sum(row["top"][0]["class"] == label for row, label in zip(rows, labels)) / len(rows)
        top5 = sum(label in [t["class"] for t in row["top"][:5]] for row, label in zip(rows, labels)) / len(rows)
        line += f"\nagainst the folder names: top-1 {100 * top1:.2f}%, top-5 {100 * top5:.2f}% ({len(rows)} images)"
    return line


def terminal_line(row: dict[str, Any]) -> str:
    """``file  class 0.973  class 0.012 ...``: an image's top-k on the terminal, where no --out file takes them."""
    return "  ".join([row["file"], *(f"{t['class']} {t['probability']:.3f}" for t in row["top"])])


def write(rows: list[dict[str, Any]], out: Path, top_k: int) -> None:
    if out.suffix.lower() == ".json":
        atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=1) + "\n"))
        return

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                ["file", *(f"{name}_{k}" for k in range(1, top_k + 1) for name in ("class", "probability"))]
            )
            for row in rows:
                writer.writerow(
                    [row["file"], *(value for t in row["top"] for value in (t["class"], f"{t['probability']:.6g}"))]
                )

    atomic_write(out, write_csv)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder (its best.pt, else last.pt) or a checkpoint file")
    parser.add_argument("inputs", nargs="+", type=Path, help="image files, folders or list files")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write the predictions here: .csv or .json")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--weights", default="best", choices=WEIGHTS, help="which weights of the run")
    parser.add_argument("--skip-bad-images", action="store_true", help="list unreadable images and go on")
    args = parser.parse_args(argv)
    try:
        if args.top_k < 1 or args.batch_size < 1:
            raise ConfigError(f"--top-k={args.top_k} and --batch-size={args.batch_size} must be positive")
        if args.out is not None and args.out.suffix.lower() not in (".csv", ".json"):
            raise ConfigError(f"--out {args.out}: the file must end with .csv or .json")
        rows = predict(args)
        if args.out is not None:
            write(rows, args.out, min(args.top_k, len(rows[0]["top"])) if rows else args.top_k)
            print(f"predictions: {args.out}")
        else:
            print(*(terminal_line(row) for row in rows), sep="\n")
    except BadInput as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
