"""Checkpoint files: written atomically, read with ``weights_only=True`` so a file can never run code."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import save_torch
from .state import TrainState, unwrap

LAST, BEST = "last.pt", "best.pt"


def capture_rng() -> dict[str, Any]:
    """Every RNG state a training step can draw from, as tensors and plain data."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {**np_state, "state": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                                        "pos": np_state["state"]["pos"]}},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(rng: dict[str, Any]) -> None:
    random.setstate(_as_tuples(rng["python"]))
    np_state = dict(rng["numpy"])
    np_state["state"] = {"key": np_state["state"]["key"].numpy().astype(np.uint32), "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(path: str | Path, state: TrainState, config: dict[str, Any], **extra: Any) -> None:
    save_torch({**state.state_dict(), "rng": capture_rng(), "config": config, **extra}, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint; one clear ValueError for anything that is not a readable checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of a last.pt or best.pt file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, random bytes, a pickle with code: all unreadable here
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot read checkpoint {path}: truncated, corrupt or not a checkpoint ({reason})") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint of this framework (no 'model' entry)")
    return ckpt


def load_model_weights(model: torch.nn.Module, ckpt: dict[str, Any], path: str | Path) -> None:
    """Load a checkpoint's weights, explaining an architecture mismatch instead of dumping key lists."""
    try:
        unwrap(model).load_state_dict(ckpt["model"])
    except RuntimeError as err:
        saved = ckpt.get("config", {})
        origin = f"model={saved.get('model', {}).get('name')} conv={saved.get('conv', {}).get('name')}" if saved else "another model"
        raise ValueError(
            f"checkpoint {path} holds weights of {origin}, which do not fit the model built here "
            f"({_first_line(err)}); pass the same model/conv settings as the run that wrote it"
        ) from err


def restore(state: TrainState, ckpt: dict[str, Any], path: str | Path) -> None:
    load_model_weights(state.model, ckpt, path)
    state.load_progress(ckpt)
    restore_rng(ckpt["rng"])


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:2])[:300]


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to continue from: a file, a run folder's last.pt, or (``auto``) this run's."""
    if not resume:
        return None
    if resume == "auto":
        candidate = run_dir / "checkpoints" / LAST
        return candidate if candidate.is_file() else None
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / LAST
    if not path.is_file():
        raise FileNotFoundError(f"resume={resume}: no checkpoint at {path}; pass a run folder that has checkpoints/last.pt or a .pt file")
    return path
