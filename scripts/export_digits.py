"""Write the built-in digits data as an ImageFolder tree of PNGs: real files to try ``data=imagefolder``
and to benchmark folder loading (scripts/bench/loader_vs_model.py, docs/BENCHMARKS.md) without downloading anything.

    python -m scripts.export_digits /tmp/digits_png   # then: python train.py data=imagefolder data.root=/tmp/digits_png

Same 1,437 / 360 split and the same 32 px RGB images as ``data=digits`` (``data.image_size`` sets the size).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torchvision.io import write_png

from data import DataConfig
from data.digits import build_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to create (must not exist)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    args = parser.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} exists; choose a new folder so that no other files mix into the tree")
    splits = build_digits(DataConfig(image_size=args.size, augment=False))
    for split, dataset in (("train", splits.train), ("val", splits.val)):
        for index, (image, target) in enumerate(zip(dataset.images, dataset.targets.tolist())):
            folder = args.out / split / splits.classes[target]
            folder.mkdir(parents=True, exist_ok=True)
            write_png(image, str(folder / f"{index:04d}.png"))
        print(f"{split}: {len(dataset)} images in {len(splits.classes)} class folders under {args.out / split}")


if __name__ == "__main__":
    main()
