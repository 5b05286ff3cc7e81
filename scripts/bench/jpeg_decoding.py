"""Folder-image decoding per core: each decoder × (full, reduced) decoding × (original, pre-resized) tree.

    python -m scripts.bench.jpeg_decoding [--images 300] [--repeats 5] [--max-short-side 320]

Writes a JPEG tree with ImageNet's size distribution (most images about 500×375 or 375×500, a fifth
600-1,200 px, a tail of 1,600-2,500 px; quality 85-95) cut from the photographs scikit-learn ships, and a
copy pre-resized by scripts/resize_images. Each configuration runs the training reader and pipeline
(data/folder.py, data/transforms.py: RandomResizedCrop(224), flip, float, normalise) and the validation one
(Resize(256), CenterCrop(224)) over every file, in this process with one thread: images/s per core.
The configurations are interleaved, in a new random order per repetition, and the medians are reported
with their ratio to torchvision.io / full / original measured in the same run, so that a background
load on the machine shifts all of them alike. "reader" is the decode (and, reduced, the crop) alone.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from data.config import DataConfig
from data.folder import IMAGENET_MEAN, IMAGENET_STD, readers, reduces
from data.resized_copy import resize_tree
from data.transforms import folder_transforms

DECODERS = ("torchvision", "pil", "simplejpeg")
BASELINE = ("torchvision", False, "original")


def imagenet_like_size(rng: random.Random) -> tuple[int, int]:
    """(width, height): 75 % the usual 500×375 / 375×500 / 500×333, 20 % 600-1,200 px, 5 % 1,600-2,500 px
    on the longer side, landscape two times in three."""
    draw = rng.random()
    if draw < 0.75:
        width, height = rng.choice(((500, 375), (500, 375), (500, 333), (375, 500)))
        return width, height
    long_side = rng.randint(600, 1200) if draw < 0.95 else rng.randint(1600, 2500)
    short_side = round(long_side * rng.uniform(0.6, 0.8))
    return (long_side, short_side) if rng.random() < 2 / 3 else (short_side, long_side)


def write_tree(root: Path, images: int, seed: int = 0) -> None:
    """``images`` photographs per split, in two classes: random crops of scikit-learn's sample photographs
    resized to ImageNet-like sizes."""
    rng, photos = random.Random(seed), [Image.fromarray(p) for p in load_sample_images().images]
    for split, index in itertools.product(("train", "val"), range(images)):
        photo = rng.choice(photos)
        width, height = imagenet_like_size(rng)
        crop_w = rng.randint(photo.width // 2, photo.width)
        crop_h = min(photo.height, round(crop_w * height / width))
        left, top = rng.randint(0, photo.width - crop_w), rng.randint(0, photo.height - crop_h)
        image = photo.resize((width, height), Image.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
        folder = root / split / f"class{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:05d}.JPEG", quality=rng.randint(85, 95))


def rate(root: Path, decoder: str, reduced: bool, split: str, reader_only: bool) -> float:
    """Images/s of the reader (and pipeline) of ``split`` over every file of it."""
    cfg = DataConfig(name="imagenet", root=str(root), image_size=224, decoder=decoder, reduced_decode=reduced)
    train_tf, val_tf = folder_transforms(cfg, IMAGENET_MEAN, IMAGENET_STD, crop_in_reader=reduces(cfg))
    train_reader, val_reader = readers(cfg)
    reader, transform = (train_reader, train_tf) if split == "train" else (val_reader, val_tf)
    paths = sorted(str(p) for p in (root / split).rglob("*.JPEG"))
    torch.manual_seed(0)
    start = time.perf_counter()
    for path in paths:
        image = reader(path)
        if not reader_only:
            transform(image)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="images per split")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions (median)")
    parser.add_argument("--max-short-side", type=int, default=320, help="of the pre-resized copy")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"original": Path(tmp) / "original", "pre-resized": Path(tmp) / "resized"}
        write_tree(trees["original"], args.images)
        resize_tree(trees["original"], trees["pre-resized"], max_short_side=args.max_short_side, quality=90, workers=1)
        pixels = {name: _megapixels(root) for name, root in trees.items()}
        configs = list(itertools.product(DECODERS, (False, True), trees))
        runs = list(itertools.product(configs, ("train", "val"), (False, True)))
        samples: dict[tuple, list[float]] = {run: [] for run in runs}
        for repeat in range(args.repeats):
            random.Random(repeat).shuffle(runs)
            for (decoder, reduced, tree), split, reader_only in runs:
                samples[(decoder, reduced, tree), split, reader_only].append(
                    rate(trees[tree], decoder, reduced, split, reader_only)
                )
    median = {run: statistics.median(values) for run, values in samples.items()}
    _report(median, pixels, args)


def _megapixels(root: Path) -> float:
    sizes = [Image.open(p).size for p in (root / "train").rglob("*.JPEG")]
    return float(np.mean([w * h for w, h in sizes])) / 1e6


def _report(median: dict, pixels: dict, args: argparse.Namespace) -> None:
    base = {split: median[BASELINE, split, False] for split in ("train", "val")}
    print(
        f"\n{args.images} images per split, mean {pixels['original']:.3f} MP (pre-resized to a shorter side "
        f"<= {args.max_short_side}: {pixels['pre-resized']:.3f} MP); 1 thread; medians of {args.repeats}\n"
    )
    print("| decoder | decoding | tree | train img/s | ratio | reader alone | val img/s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for decoder, reduced, tree in itertools.product(DECODERS, (False, True), pixels):
        key = (decoder, reduced, tree)
        train, val = median[key, "train", False], median[key, "val", False]
        print(
            f"| {decoder} | {'reduced' if reduced else 'full'} | {tree} | {train:,.0f} | {train / base['train']:.2f} "
            f"| {median[key, 'train', True]:,.0f} | {val:,.0f} | {val / base['val']:.2f} |"
        )


if __name__ == "__main__":
    main()
