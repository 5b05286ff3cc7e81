"""Effective receptive fields per condition, mean over its seeds, at initialisation and trained.

    python -m scripts.erf --help

The code: analysis/erf_report.py."""

import sys

from analysis.erf_report import main

if __name__ == "__main__":
    sys.exit(main())
