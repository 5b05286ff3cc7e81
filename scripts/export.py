"""Export a trained run as a self-contained model: torch.export (pt2), ONNX, TorchScript or a state_dict.

    python -m scripts.export --help

The code: analysis/export.py."""

import sys

from analysis.export import main

if __name__ == "__main__":
    sys.exit(main())
