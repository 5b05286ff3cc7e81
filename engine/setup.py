"""Process-wide settings a run needs before anything is built: device, seeds, determinism."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from .distributed import DistInfo


def select_device(device: str, dist_info: DistInfo) -> torch.device:
    """``trainer.device``: auto picks CUDA when present; under torchrun, GPU number LOCAL_RANK."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda but no CUDA device is available; use trainer.device=cpu or auto")
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(dist_info.local_rank)
    return torch.device("cuda", dist_info.local_rank)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool) -> None:
    """``trainer.deterministic``: torch's deterministic kernels (errors on ops that have none)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
