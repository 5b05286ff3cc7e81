"""A pre-resized copy of a class-folder dataset (shorter side at most N px), resumable, in parallel.

    python -m scripts.resize_images SRC DST --max-short-side 320 --quality 90 --workers 8

The code: data/resized_copy.py."""

import sys

from data.resized_copy import main

if __name__ == "__main__":
    sys.exit(main())
