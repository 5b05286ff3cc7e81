"""What a training and an evaluation command share: where this process runs, and the model built for
the data, described for results.json and prepared for the device (compile, DDP)."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig
from torch import nn

from data import DataInfo
from models import build_model, count_flops, count_parameters

from .distributed import DistInfo
from .run_folder import RunFolder

log = logging.getLogger(__name__)


@dataclass
class Context:
    """Where and how this process runs, and how it was launched (for the run folder's record)."""

    dist: DistInfo
    device: torch.device
    folder: RunFolder
    overrides: list[str]  # what the user typed for this command (a resume's re-inserted settings excluded)
    hydra_config: Optional[DictConfig] = None
    recipe_changes: Optional[list[str]] = None  # what the command line and experiment= change of the recipe
    ignored_settings: list[str] = field(default_factory=list)  # a sweep job's settings its options ignore


def loader_options(cfg: DictConfig, ctx: Context) -> dict[str, Any]:
    """What this process's data loaders depend on besides ``cfg.data``: its seeds, its share of the torchrun
    group's samples and where its batches go."""
    return {
        "seed": cfg.seed,
        "rank": ctx.dist.rank,
        "world_size": ctx.dist.world_size,
        "pin_memory": cfg.data.pin_memory and ctx.device.type == "cuda",
        "device": ctx.device,
    }


def build_described_model(cfg: DictConfig, info: DataInfo, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The model for the data ``info`` describes, and the run's description for results.json."""
    if cfg.trainer.amp == "fp16" and device.type == "cpu":
        log.warning(
            "trainer.amp=fp16 on the CPU is emulated and many times slower than fp32; "
            "use trainer.amp=bf16 or none on the CPU"
        )
    model = build_model(cfg.model, cfg.conv, num_classes=info.num_classes, image_size=info.image_size)
    description = {
        "model": cfg.model.name,
        "conv": cfg.conv.name,
        "data": cfg.data.name,
        "seed": cfg.seed,
        "params": count_parameters(model),
        "flops": count_flops(model, info.test_image_size),
        "git_commit": _git_commit(),
    }
    log.info(
        "%s (%s): %.2fM parameters, %.3f GFLOPs per %d px image",
        cfg.model.name,
        cfg.conv.name,
        description["params"] / 1e6,
        description["flops"] / 1e9,
        info.test_image_size,
    )
    return model, description


def prepare_model(model: nn.Module, trainer: DictConfig, device: torch.device, dist_info: DistInfo) -> nn.Module:
    """Device and memory format, then SyncBatchNorm, torch.compile and DDP as configured.

    DDP wraps the compiled module, so evaluation can use the compiled model without DDP
    (``without_ddp``) and never enters a collective on the uneven validation shards.
    """
    model = model.to(device, memory_format=torch.channels_last if trainer.channels_last else torch.preserve_format)
    if dist_info.enabled and trainer.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if trainer.compile:
        model = torch.compile(model, mode=trainer.compile_mode.value)
    if dist_info.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def peak_gpu_memory(device: torch.device) -> dict[str, float]:
    """This process's peak GPU memory held by tensors, for results.json (nothing on a CPU)."""
    if device.type != "cuda":
        return {}
    return {"peak_gpu_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
