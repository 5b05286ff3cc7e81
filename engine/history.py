"""A run's sessions: every command that trained in its folder, in ``<run>/history.json``.

A run is often made by several commands: the first, resumes after a preemption, an extension with more
epochs. Each is a session: when it started, the overrides its user typed (not the settings a resume
takes from the checkpoint), the checkpoint position it continued from, the settings it changed, its wall
time and how it ended. The file is a log, written atomically: a session is added once its command has
passed every check (a refused command adds nothing), updated at every checkpoint and when it ends. A
session killed after its last update still says ``running``; the next session marks it ``interrupted``.
results.json carries the whole list, and its wall time is their sum. ``.hydra/`` stays the first
session's composition.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from .checkpoint import save_json

log = logging.getLogger(__name__)

HISTORY = "history.json"
RUNNING, INTERRUPTED, COMPLETED, STOPPED = "running", "interrupted", "completed", "stopped by a signal"
RESULT_KEYS = ("epochs", "top1", "top5", "best_top1", "best_epoch", "ema_top1", "ema_top5")


class History:
    """The sessions of the run in ``run_dir``; only the main process writes (``enabled``)."""

    def __init__(self, run_dir: Path, enabled: bool, *, clock_start: float) -> None:
        self.path, self.enabled, self.clock_start = Path(run_dir) / HISTORY, enabled, clock_start
        self.sessions: list[dict[str, Any]] = []

    def begin(
        self, *, overrides: list[str], resumed_from: Optional[dict[str, Any]], changes: list[str], continuing: bool
    ) -> None:
        """Add this session. ``continuing``: the folder's run goes on (a resume of its own checkpoint, or
        ``resume=auto`` starting again where earlier sessions saved no checkpoint), so its earlier sessions
        are kept; otherwise (a new run, or one started from another run's checkpoint) the history starts here."""
        self.sessions = self._read(expected=resumed_from is not None) if continuing else []
        for session in self.sessions:
            if session.get("ended") == RUNNING:
                session["ended"] = INTERRUPTED
        self.sessions.append(
            {
                "session": len(self.sessions) + 1,
                "started": datetime.now().astimezone().isoformat(timespec="seconds"),
                "overrides": list(overrides),
                "resumed_from": resumed_from,
                "changes": list(changes),
                "wall_time_s": 0.0,
                "reached": {key: (resumed_from or {}).get(key, 0) for key in ("epoch", "batches_done", "step")},
                "ended": RUNNING,
            }
        )
        self._write()

    def update(self, *, epoch: int, batches_done: int, step: int, ended: str = RUNNING) -> None:
        """This session's position, wall time so far and state: at each checkpoint and at its end."""
        self.sessions[-1].update(
            wall_time_s=time.perf_counter() - self.clock_start,
            ended=ended,
            reached={"epoch": epoch, "batches_done": batches_done, "step": step},
        )
        self._write()

    def end(self, ended: str, *, results: Optional[dict[str, Any]] = None) -> None:
        """How this session ended, at the position of its last update; a completed session keeps its
        headline numbers, which outlive its results.json if the run is extended later."""
        if results is not None:
            self.sessions[-1]["results"] = {key: results[key] for key in RESULT_KEYS if key in results}
        self.update(**self.sessions[-1]["reached"], ended=ended)

    def wall_time_s(self) -> float:
        return sum(session["wall_time_s"] for session in self.sessions)

    def _read(self, *, expected: bool) -> list[dict[str, Any]]:
        if not self.path.is_file():
            if self.enabled and expected:
                log.warning(
                    "%s is missing (a run folder of an older version?): this run's history starts with this session",
                    self.path,
                )
            return []
        try:
            return list(json.loads(self.path.read_text())["sessions"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("cannot read %s (%s): this run's history starts again with this session", self.path, err)
            return []

    def _write(self) -> None:
        if self.enabled:
            save_json({"sessions": self.sessions}, self.path)
