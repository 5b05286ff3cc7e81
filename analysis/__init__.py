"""Using and studying trained runs: a run folder's network, classes, preprocessing and numbers (trained_run.py,
``load_run``), how its validation images were prepared (preprocess.py), and the seed-aggregated table of
scripts/summarize.py (summary.py). Training never imports this package."""

from .trained_run import TrainedRun, load_run

__all__ = ["TrainedRun", "load_run"]
