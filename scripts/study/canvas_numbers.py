"""The numbers docs/STUDY.md's "Where the receptive field matters" quotes, from scripts/study/canvas.sh's outputs.

    python -m scripts.study.canvas_numbers --help

The code: analysis/canvas_numbers.py."""

import sys

from analysis.canvas_numbers import main

if __name__ == "__main__":
    sys.exit(main())
