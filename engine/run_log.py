"""train.log holds the lines of the commands that ran in a run folder, not of the ones refused there.

Hydra opens its log file in the run folder before any check of ours can run, so a refused resume
(a setting that cannot change, a folder in use) would append its lines to the log of the run it did
not touch. ``RunLogHandler`` (Hydra's file handler in configs/train.yaml) keeps the lines in memory
until ``commit_run_log()``: the runner calls it once the command has passed every check and is about
to write the run's record; then the held lines are written in order and later ones go straight to
the file. A command refused before that leaves train.log as it was (the terminal still shows every
line). train.py commits on an unexpected failure too, so a crash's traceback reaches the log.
"""

from __future__ import annotations

import logging
from typing import Optional


class RunLogHandler(logging.FileHandler):
    def __init__(self, filename: str, mode: str = "a", encoding: Optional[str] = None) -> None:
        super().__init__(filename, mode, encoding, delay=True)  # the file is opened at the first write
        self.held: Optional[list[logging.LogRecord]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is not None:
            self.held.append(record)
        else:
            super().emit(record)

    def commit(self) -> None:
        held, self.held = self.held, None
        for record in held or []:
            super().emit(record)


def commit_run_log() -> None:
    """The command goes ahead: train.log gets the lines held so far, and every later one."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, RunLogHandler):
            handler.commit()
