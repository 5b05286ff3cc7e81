"""What σ did in trained GMConv runs: its mean per layer by condition, its path through training, a few masks.

    python -m scripts.sigma_report --help

The code: analysis/sigma_report.py."""

import sys

from analysis.sigma_report import main

if __name__ == "__main__":
    sys.exit(main())
