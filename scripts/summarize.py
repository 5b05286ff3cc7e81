"""One table of every run under some folders: mean ± std over seeds per setting, and the gain over standard conv.

Completed training runs are grouped by every setting of their resolved config that differs between
them, except the seed and bookkeeping (analysis/summary.py: BOOKKEEPING); each group is compared with
the standard-conv group of the same other settings, paired by seed. Unfinished or failed runs are
listed below the table, never averaged in.

    python -m scripts.summarize outputs/multirun/2025-01-01_10-00-00 outputs/digits
    python -m scripts.summarize outputs --out results/summary.md    # also results/summary.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.summary import csv_text, group_runs, markdown, read_runs, table_rows
from analysis.trained_run import find_run_folders


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="folders holding run folders (single runs, sweeps)")
    parser.add_argument("--out", type=Path, help="also write the table to this .md file and a .csv beside it")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        sys.exit(f"error: no such folder: {', '.join(missing)}")
    if args.out is not None and args.out.suffix != ".md":
        sys.exit(f"error: --out {args.out} must name a .md file (the .csv is written beside it)")
    folders = find_run_folders(args.dirs)
    if not folders:
        sys.exit(
            f"error: no run folder (results.json, .hydra/config.yaml or checkpoints/) under "
            f"{' '.join(map(str, args.dirs))}"
        )
    runs, unfinished, evaluations = read_runs(folders)
    rows = table_rows(group_runs(runs)) if runs else []
    text = markdown(rows, unfinished, evaluations)
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".csv").write_text(csv_text(rows))


if __name__ == "__main__":
    main()
