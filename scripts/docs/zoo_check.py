"""Convert many timm and torchvision networks with GMConv and check what gmconv/README.md promises, per model.

    python -m scripts.docs.zoo_check --help

The code: analysis/zoo_check.py."""

import sys

from analysis.zoo_check import main

if __name__ == "__main__":
    sys.exit(main())
