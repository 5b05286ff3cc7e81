"""Check a class-folder dataset (data=imagenet / imagefolder) before training on it.

    python scripts/check_data.py /datasets/imagenet [--workers 16]

Lists unreadable, empty and non-image files under ROOT/train/<class>/ and ROOT/val/<class>/ and class
folders that differ between train/ and val/. Every image is decoded, in parallel, with a progress bar.
Exit status: 0 all good, 1 problems found (listed), 2 ROOT is not a folder.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.check_files import file_problem, scan  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the folder holding train/ and val/ (data.root)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes decoding images")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a folder; pass the data.root that holds train/ and val/", file=sys.stderr)
        return 2
    findings = scan(args.root)
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        checked = pool.map(file_problem, findings.files, chunksize=64)
        problems = findings.problems + [p for p in tqdm(checked, total=len(findings.files), desc="checking images",
                                                           unit="file") if p]
    for problem in problems:
        print(problem)
    print(f"{len(findings.files)} files checked: {len(problems)} problem{'s' if len(problems) != 1 else ''}"
          f"{' (listed above)' if problems else ''}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
