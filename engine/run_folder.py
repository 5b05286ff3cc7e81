"""A run folder and the rule that protects it: its record is written only by the run that owns it.

    <run>/.hydra/{config,hydra,overrides}.yaml   the first session's composition, written when the run starts
    <run>/history.json                           every session: overrides, changes, wall time (engine/history.py)
    <run>/train.log                              the log of every command that ran here (engine/run_log.py)
    <run>/tb/, metrics.csv                       curves (engine/tracking.py)
    <run>/checkpoints/{last,best}.pt             engine/checkpoint.py
    <run>/results.json                           written when the run completes (again after an extension)
    <run>/.lock                                  locked by the process writing the run, see ``hold``

Hydra would write .hydra/ into whatever folder it is given, before any check could run, so it is
told not to (``hydra.output_subdir: null`` in configs/train.yaml) and the run writes it here, after
it has checked that the folder is free. The folder itself is made by ``ClaimRunFolder``, a Hydra
callback that runs before Hydra opens train.log in it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch.distributed as dist
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from .checkpoint import BEST, LAST, PARTIAL, atomic_write, save_json
from .distributed import init_distributed
from .errors import RunFolderError
from .faults import storage_error
from .sweep_folders import announce_swept_settings

log = logging.getLogger(__name__)

CONFIG_DIR = ".hydra"
# on top of .hydra/config.yaml and overrides.yaml: they are not the whole story of a resumed run
FIRST_SESSION_NOTE = (
    "# The composition of this run's first session. Later sessions (resumes, extensions) and the "
    "settings\n# each changed are in ../history.json; ../results.json holds the final config.\n"
)
RESULTS = "results.json"
LOG = "train.log"
LOCK = ".lock"


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.last, self.best = self.checkpoints / LAST, self.checkpoints / BEST
        self.results = self.path / RESULTS

    def holds_run(self) -> bool:
        """Whether a run's record is here: its config, a checkpoint or its results."""
        return (self.path / CONFIG_DIR / "config.yaml").is_file() or self.holds_progress()

    def holds_progress(self) -> bool:
        """Whether a run got anywhere here that can be continued or read: its last.pt or its results. A
        best.pt alone is a first epoch whose last.pt a kill interrupted (best.pt is written first): such a
        run starts again (``resume=auto``) and retrains that epoch."""
        return self.results.is_file() or self.last.is_file()

    def owns(self, checkpoint: Path) -> bool:
        return checkpoint.resolve().parent == self.checkpoints.resolve()

    def describe(self) -> str:
        if self.results.is_file():
            try:
                results = json.loads(self.results.read_text())
                return f"a {results.get('status', 'finished')} run (top-1 {results.get('top1', float('nan')):.2f}%)"
            except (OSError, ValueError, TypeError):
                return "a run with a results.json"
        return "a run's checkpoints" if self.checkpoints.is_dir() else "a run's config"

    def check_free(self, *, restart: bool = False) -> None:
        """A new run may start here only if no other run's record is here.

        ``restart`` (``resume=auto`` without a checkpoint): the same command started here before and
        died before its first checkpoint, e.g. a torchrun restart; its config alone may be replaced.
        """
        if self.holds_progress() or (self.holds_run() and not restart):
            how = (
                f"continue it with resume={self.path}"
                if self.holds_progress()
                else f"it saved no last.pt: start it again there with resume=auto hydra.run.dir={self.path}"
            )
            raise RunFolderError(
                f"{self.path} already holds {self.describe()}; {how}, or start a new run in "
                "another folder (leave hydra.run.dir unset for a fresh one)"
            )

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Be the one process writing this folder: a second one (two resumes of one run) is refused.

        The lock is a POSIX record lock (``lockf``): the kernel releases it when its process dies, however
        it dies, and, unlike an ``flock``, the processes it forks (DataLoader workers, which outlive a
        SIGKILLed parent by seconds) do not hold it, so a killed run never leaves the folder locked. The
        partial files a killed process left are removed later, by a command that passed its checks
        (``remove_partial_writes``): a refused one changes nothing.
        """
        path = self.path / LOCK
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            lock = path.open("a")
        except OSError as err:
            raise storage_error(err, path) from err
        with lock:
            try:
                fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EACCES, errno.EAGAIN):
                    raise RunFolderError(
                        f"{self.path} is in use by another process (it holds {path}); wait for "
                        "that run to end or stop it, then try again (a killed process frees it at "
                        "once)"
                    ) from None
                log.warning(
                    "cannot lock %s (%s): nothing stops a second process from writing this run folder "
                    "at the same time (a file system without locks, e.g. some NFS mounts)",
                    path,
                    err.strerror,
                )
            yield

    def remove_partial_writes(self) -> None:
        """The temporary files of writes that a killed process never finished (see ``atomic_write``); a
        compaction of the TensorBoard events that one left half done is finished by ``Tracker.start``."""
        for folder in (self.path, self.path / CONFIG_DIR, self.checkpoints):
            for partial in folder.glob(f".*{PARTIAL}"):
                partial.unlink(missing_ok=True)

    def write_config(
        self, config: DictConfig, hydra_config: DictConfig | None, overrides: list[str], *, header: str = ""
    ) -> None:
        """.hydra/, as Hydra would write it; ``header`` (a YAML comment) goes on top of config and overrides."""
        folder = self.path / CONFIG_DIR
        for name, node in (("config.yaml", config), ("hydra.yaml", hydra_config), ("overrides.yaml", overrides)):
            if node is not None:
                text = OmegaConf.to_yaml(node if OmegaConf.is_config(node) else OmegaConf.create(node))
                text = header + text if name != "hydra.yaml" else text
                atomic_write(folder / name, lambda tmp, text=text: Path(tmp).write_text(text))

    def write_results(self, results: dict[str, Any]) -> None:
        save_json(results, self.results)

    def read_results(self) -> dict[str, Any] | None:
        return json.loads(self.results.read_text()) if self.results.is_file() else None

    def remove_if_unused(self) -> None:
        """After a failed start: remove the folder if nothing but the start-up log was written to it."""
        if not self.path.is_dir() or {p.name for p in self.path.iterdir()} - {LOG, LOCK}:
            return
        shutil.rmtree(self.path, ignore_errors=True)


class ClaimRunFolder(Callback):
    """Hydra callback (configs/train.yaml) that makes the run folder before Hydra opens train.log in it.

    A folder named by the start time (the default, ``${run_time:...}``) is made unique: a second run
    started in the same second gets ``<time>_2``, so two runs never share a folder. A folder that cannot
    be made or written (its parent is a file, no permission, a read-only disk) stops the run in one line
    instead of Hydra's traceback. Under torchrun rank 0 chooses and every rank uses its choice.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A sweep names its jobs' folders after the settings it sweeps (engine/sweep_folders.py)."""
        announce_swept_settings(config.hydra.overrides.task, OmegaConf.select(config, "hydra.sweeper.params") or ())

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run = config.hydra.run
        unique = "${run_time:" in OmegaConf.to_container(run, resolve=False)["dir"]
        info = init_distributed()
        chosen: list[Any] = [None]
        if info.is_main:
            try:
                chosen = [str(claim_folder(Path(run.dir), unique=unique))]
            except RunFolderError as err:
                chosen = [err]
        if info.enabled:
            dist.broadcast_object_list(chosen, src=0)
        if isinstance(chosen[0], RunFolderError):
            print(f"error: {chosen[0]}", file=sys.stderr)
            sys.exit(2)
        with read_write(run), open_dict(run):
            run.dir = chosen[0]


def claim_folder(path: Path, *, unique: bool) -> Path:
    """Make ``path`` (with ``unique``, the first free one of ``path``, ``path_2``, ``path_3``, ...: ``mkdir``
    is atomic, so two processes never get the same one) and check that a file can be written in it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        folder, number = path, 1
        while unique:
            try:
                folder.mkdir()
                break
            except FileExistsError:
                number += 1
                folder = path.with_name(f"{path.name}_{number}")
        folder.mkdir(exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        blocking_file = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        code = errno.errorcode.get(err.errno, "") if err.errno else ""
        reason = f"{blocking_file} is a file, not a folder" if blocking_file else f"{err.strerror or err} [{code}]"
        raise RunFolderError(
            f"cannot use {path} as the run folder: {reason}; choose a writable place with hydra.run.dir=<folder>"
        ) from err
    return folder
