"""This process: its place in a torchrun group, its device, its seeds and determinism.

One process per GPU (or CPU worker); without torchrun everything here is a no-op or the obvious
single-process choice, so one code path serves 1 and N processes.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

from .errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False  # launched by torchrun (or SLURM): a process group exists, DDP is used

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group that torchrun describes in the environment (a no-op without torchrun).

    Idempotent: three places ask, each before it can be handed the answer: train.py before Hydra starts
    (every rank must agree on the run folder's name), the Hydra callback that claims the run folder, and
    ``engine.runner.run``, which the tests also call directly.

    Under torchrun even one process uses the group and DDP, so ``--nproc_per_node=1`` exercises
    the same code path as a multi-GPU run.

    The group serves CPU tensors over gloo and, where CUDA exists, CUDA tensors over nccl, so it can
    be created before the config says which device trains. TORCH_DISTRIBUTED_BACKEND overrides it.
    """
    export_submitit_environment()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    info = DistInfo(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")), enabled=True
    )
    if not dist.is_initialized():
        default = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        backend = os.environ.get("TORCH_DISTRIBUTED_BACKEND", default)
        store = _restart_scoped_store(info)
        if store is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=store, rank=info.rank, world_size=info.world_size)
    return info


def export_submitit_environment() -> None:
    """Under hydra-submitit-launcher every SLURM task runs the job with SLURM's variables only:
    export the MASTER_ADDR/PORT, RANK, WORLD_SIZE and LOCAL_RANK that torch.distributed reads."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or "WORLD_SIZE" in os.environ:
        return
    from submitit.helpers import TorchDistributedEnvironment  # optional dependency: the "slurm" extra

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def _restart_scoped_store(info: DistInfo) -> dist.Store | None:
    """torchrun's own key-value store, under a prefix unique to this restart of the worker group.

    With the plain env:// init, the keys gloo publishes to connect its full mesh survive in torchrun's
    store when ``--max-restarts`` restarts the group, and the new workers dial the dead ones' addresses
    and hang. Outside torchrun's agent store (e.g. plain srun), the default init is used.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    base = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        info.world_size,
        is_master=False,
        timeout=default_pg_timeout,
    )
    return dist.PrefixStore(f"gmconv/restart{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", base)


def agree_on_run_time(info: DistInfo) -> datetime:
    """Rank 0's clock, on every rank: all processes of a run must pick the same run folder."""
    now = [datetime.now()]
    if info.enabled:
        dist.broadcast_object_list(now, src=0)
    return now[0]


def quiet_non_main_logging(info: DistInfo) -> None:
    """Only rank 0 writes train.log; the others print warnings and errors, tagged with their rank."""
    if info.is_main:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
        else:
            handler.setFormatter(logging.Formatter(f"[rank {info.rank}][%(name)s][%(levelname)s] - %(message)s"))
    root.setLevel(logging.WARNING)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def select_device(device: str, dist_info: DistInfo) -> torch.device:
    """``trainer.device``: auto picks CUDA when present; under torchrun, GPU number LOCAL_RANK."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is available; use trainer.device=cpu or auto")
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(dist_info.local_rank)
    return torch.device("cuda", dist_info.local_rank)


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch with ``seed + rank`` (timm's rule): each process draws its own
    augmentation (num_workers=0) and mixup/cutmix, and a run stays reproducible. The model's initial
    weights differ per rank too, until DDP broadcasts rank 0's."""
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


def gather_to_main(obj: Any, info: DistInfo) -> list[Any]:
    """``obj`` of every rank, in rank order, on rank 0 (other ranks get an empty list); a collective:
    every rank must call it at the same point."""
    if not info.enabled:
        return [obj]
    gathered = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered or []


def configure_determinism(deterministic: bool) -> None:
    """``trainer.deterministic``: torch's deterministic kernels (errors on ops that have none)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
