"""Shared by the test modules: compose the real config, run train.py as a user does, read run folders."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import preloaded
import torch
from omegaconf import DictConfig, OmegaConf

from data import DataConfig
from engine.config import compose_config, register_configs
from engine.runner import run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# A few seconds a run: CIFAR ResNet-20 on 4 batches of digits per epoch.
QUICK = [
    "trainer.epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "data.batch_size=32",
    "trainer.progress=false",
]


def folder_args(root: Path, *more: str) -> list[str]:
    """QUICK on a class-folder tree of 32 px images, every batch of both splits."""
    return [
        *QUICK,
        "data=imagefolder",
        f"data.root={root}",
        "data.image_size=32",
        "data.val_resize=36",
        "data.batch_size=4",
        "trainer.limit_train_batches=null",
        "trainer.limit_val_batches=null",
        *more,
    ]


register_configs()


def compose_train(*overrides: str, hydra: bool = False) -> DictConfig:
    """configs/train.yaml with ``overrides``, composed as train.py composes it."""
    return compose_config(*overrides, hydra=hydra)


def from_yaml(name: str, **overrides: object) -> DataConfig:
    """What ``data=<name>`` composes to (its YAML over the typed schema), with test-sized overrides."""
    merged = OmegaConf.merge(
        OmegaConf.structured(DataConfig), OmegaConf.load(CONFIGS / "data" / f"{name}.yaml"), overrides
    )
    return OmegaConf.to_object(merged)


def run_in_process(run_dir: Path, *overrides: str) -> dict[str, Any]:
    """The runner on a composed config, without a new interpreter (what train.py does after Hydra)."""
    return run(compose_train(*overrides), run_dir, overrides=list(overrides))


def train(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python train.py *args`` in the repository, as a user types it (in a preloaded interpreter's fork)."""
    return preloaded.run("train.py", *args, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def failed_with(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """The output of a run that failed as a user should see it: non-zero, no traceback, the fragments."""
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert "Traceback" not in out, out[-3000:]
    for fragment in fragments:
        assert fragment in out, out[-2000:]
    return out


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def wait_for_checkpoint(
    proc: subprocess.Popen | preloaded.Command,
    path: Path,
    done: Callable[[dict], bool] = lambda ckpt: True,
    timeout: float = 240,
) -> dict:
    """Poll ``path`` until the checkpoint there satisfies ``done`` (the run is still going)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.is_file():
            try:
                ckpt = load(path)
            except (RuntimeError, EOFError, OSError):  # replaced between the check and the read
                ckpt = None
            if ckpt is not None and done(ckpt):
                return ckpt
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at {path} before the run ended (exit {proc.poll()})")
