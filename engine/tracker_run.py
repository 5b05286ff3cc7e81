"""What the experiment trackers beside TensorBoard (MLflow, Weights & Biases) share: the run folder names the
tracker run it logs into, so a resume, a SLURM requeue or a torchrun restart continues that run; and a tracker
that fails is reported once and left behind, because curves are worth less than the run they describe."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from .checkpoint import atomic_write

log = logging.getLogger(__name__)


class TrackerRun:
    """Subclasses set ``name`` (for messages) and ``run_file`` (kept in the run folder), and call the tracker
    through ``_call``."""

    name = ""
    run_file = ""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.failed = False

    def kept(self) -> dict[str, Any] | None:
        """The tracker run this folder logged into in an earlier session, or None for a new run."""
        path = self.run_dir / self.run_file
        return json.loads(path.read_text()) if path.is_file() else None

    def keep(self, record: dict[str, Any]) -> None:
        atomic_write(self.run_dir / self.run_file, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))

    def start(self, records: list[dict[str, Any]]) -> None:
        """Continue the folder's tracker run, or create it with the run's settings; ``records``: the epochs the
        checkpoint holds, for a tracker that may have lost some of them in a killed session."""
        raise NotImplementedError

    def metrics(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def finish(self, status: str) -> None:
        """``status``: FINISHED, FAILED or KILLED (a stop on a signal, continued by a resume)."""
        raise NotImplementedError

    def where(self) -> str:
        return str(self.run_dir)

    def artifact_files(self) -> list[Path]:
        """What ``logger.<tracker>.artifacts=true`` uploads at the end of a completed session: the best weights
        (the last ones where no epoch was evaluated) and the run's resolved config."""
        checkpoints = self.run_dir / "checkpoints"
        weights = checkpoints / "best.pt" if (checkpoints / "best.pt").is_file() else checkpoints / "last.pt"
        return [path for path in (weights, self.run_dir / ".hydra" / "config.yaml") if path.is_file()]

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """``method`` unless the tracker failed before; a failure is reported, not raised."""
        if self.failed:
            return
        try:
            method(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any failure of the tracker: the run goes on without it
            log.warning("%s (%s): %s; training and checkpoints go on without it", self.name, self.where(), err)
            self.failed = True
