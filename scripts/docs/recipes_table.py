"""docs/RECIPES.md: what every data × model option trains with by default, composed from the configs themselves.

    python -m scripts.docs.recipes_table --help

The code: analysis/recipes_table.py."""

import sys

from analysis.recipes_table import main

if __name__ == "__main__":
    sys.exit(main())
