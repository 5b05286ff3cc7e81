"""Reading trained runs back for study: a run folder's network and data (trained_run.py) and the
seed-aggregated table of scripts/summarize.py (summary.py). Training never imports this package."""
