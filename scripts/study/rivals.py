"""GMConv against the rivals its paper argues against, on the same bench: accuracy, cost and the ERF's shape.

    python -m scripts.study.rivals --help

The code: analysis/rivals_study.py (the runs), rivals_record.py (the CSV), rivals_report.py (tables, figure)."""

import sys

from analysis.rivals_study import main

if __name__ == "__main__":
    sys.exit(main())
