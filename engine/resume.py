"""Planning a resume before anything is built or written: which checkpoint, whether the run folder's own
run goes on, which settings change, and the refusals (a setting that cannot change, fewer epochs than
already trained). A refused resume raises here and leaves the run folder as it was."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from . import checkpoint
from .checkpoint import LAST
from .config import resume_changes
from .errors import ConfigError
from .run_folder import RunFolder


@dataclass
class Resume:
    path: Path  # the checkpoint
    ckpt: dict[str, Any]
    continuing: bool  # the checkpoint is the run folder's own: its run goes on (else: a new run starts from it)
    changes: list[str]  # "key old → new", the settings this session changes

    def position(self) -> dict[str, Any]:
        """Where training continues: the checkpoint and its epoch, batch within the epoch and step."""
        return {"checkpoint": str(self.path), **{key: self.ckpt[key] for key in ("epoch", "batches_done", "step")}}

    def complete(self, cfg: DictConfig) -> bool:
        """The checkpoint has trained every epoch ``cfg`` asks for (a complete run, or one whose end was
        saved but whose results.json was not written)."""
        return self.ckpt["epoch"] >= cfg.trainer.epochs and not self.ckpt["batches_done"]


def plan_resume(cfg: DictConfig, folder: RunFolder) -> Optional[Resume]:
    """The resume that ``cfg.resume`` asks for in ``folder``, or None for a fresh run."""
    path = _checkpoint_to_resume(cfg.resume, folder)
    if path is None:
        return None
    ckpt = checkpoint.load_checkpoint(path)
    changes = resume_changes(ckpt.get("config", {}), cfg)
    if ckpt["epoch"] > cfg.trainer.epochs:
        raise ConfigError(
            f"trainer.epochs={cfg.trainer.epochs} is less than the {ckpt['epoch']} epochs {path} "
            "has already trained; pass a larger trainer.epochs or evaluate it with eval_only=true"
        )
    return Resume(path, ckpt, folder.owns(path), changes)


def _checkpoint_to_resume(resume: Optional[str], folder: RunFolder) -> Optional[Path]:
    """``resume``'s checkpoint: None (a fresh run), this folder's last.pt for ``auto`` (if any), or a path."""
    if not resume:
        return None
    if resume == "auto":
        return folder.last if folder.last.is_file() else None
    return checkpoint.find_checkpoint(resume, (LAST,))
