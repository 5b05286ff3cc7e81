"""torch.distributed set-up from torchrun's environment; one process per GPU (or CPU worker)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group that torchrun describes in the environment (a no-op without torchrun).

    The group serves CPU tensors over gloo and, where CUDA exists, CUDA tensors over nccl, so it can
    be created before the config says which device trains. TORCH_DISTRIBUTED_BACKEND overrides it.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        default = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=os.environ.get("TORCH_DISTRIBUTED_BACKEND", default))
    return info


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
