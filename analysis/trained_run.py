"""A run folder read back for analysis: its config, its network with the checkpoint's weights, and
some of its validation images, without retyping any setting (scripts/erf.py, scripts/sigma_report.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from data import build_loaders
from models import build_model

from engine.checkpoint import BEST, LAST, find_checkpoint, load_checkpoint, load_model_weights
from engine.config import TrainConfig, flatten


@dataclass
class TrainedRun:
    path: Path
    config: DictConfig
    checkpoint: Path
    ckpt: dict[str, Any]
    model: nn.Module  # in eval mode, on the CPU, with the checkpoint's weights

    @property
    def label(self) -> str:
        return f"{self.config.model.name}-{self.config.conv.name} seed {self.config.seed}"


def load_run(run_dir: str | Path, prefer: tuple[str, ...] = (BEST, LAST)) -> TrainedRun:
    """The run in ``run_dir`` (its best.pt, else last.pt), rebuilt from the checkpoint alone."""
    path = find_checkpoint(run_dir, prefer)
    ckpt = load_checkpoint(path)
    if "data_info" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path} predates analysis support (no data_info); retrain it with this version")
    config = OmegaConf.merge(OmegaConf.structured(TrainConfig), ckpt["config"])
    model = build_untrained(config, ckpt["data_info"])
    load_model_weights(model, ckpt, path)
    return TrainedRun(Path(run_dir), config, path, ckpt, model.eval())


def distinct_labels(runs: list[TrainedRun]) -> list[str]:
    """Each run's label, followed where labels repeat by the settings that tell those runs apart
    (``resnet20-gmconv seed 0 (optim.sigma_lr_scale=100)``), and by its position if none does."""
    labels = [run.label for run in runs]
    result = []
    for i, (run, label) in enumerate(zip(runs, labels)):
        twins = [other for other, other_label in zip(runs, labels) if other_label == label]
        if len(twins) > 1:
            settings = [flatten(OmegaConf.to_container(twin.config, resolve=True, enum_to_str=True)) for twin in twins]
            mine = flatten(OmegaConf.to_container(run.config, resolve=True, enum_to_str=True))
            differing = sorted(key for key in mine if any(other.get(key) != mine[key] for other in settings))
            label += f" ({', '.join(f'{key}={mine[key]}' for key in differing)})" if differing else f" #{i + 1}"
        result.append(label)
    return result


def build_untrained(config: DictConfig, data_info: dict[str, Any]) -> nn.Module:
    """The run's architecture at initialisation (its seed), without the pretrained file it may name."""
    config = config.copy()
    config.model.pretrained = None
    torch.manual_seed(config.seed)
    return build_model(config.model, config.conv, num_classes=data_info["num_classes"],
                       image_size=data_info["image_size"]).eval()


def validation_images(run: TrainedRun, count: int) -> tuple[torch.Tensor, str]:
    """The first ``count`` validation images of the run's own data, normalised as in training; where the
    data is unavailable here, ``count`` standard-normal images of the same size. The text says which."""
    try:
        _, val_loader, _ = build_loaders(run.config.data, seed=run.config.seed)
    except (FileNotFoundError, ValueError) as err:
        info = run.ckpt["data_info"]
        size = info.get("test_image_size", info["image_size"])  # checkpoints before data.test_image_size lack it
        generator = torch.Generator().manual_seed(0)
        return torch.randn(count, 3, size, size, generator=generator), f"random images ({err})"
    images = []
    for batch, _ in val_loader:
        images.append(batch)
        if sum(len(b) for b in images) >= count:
            break
    images = torch.cat(images)[:count]
    return images, f"{len(images)} validation images of {run.config.data.name}"


def find_run_folders(roots: list[str | Path]) -> list[Path]:
    """Every run folder (one holding .hydra/config.yaml, results.json or checkpoints/) under ``roots``."""
    found = set()
    for root in map(Path, roots):
        for marker in ("results.json", ".hydra/config.yaml", "checkpoints"):
            for hit in root.rglob(marker):
                found.add(hit.parent.parent if marker.startswith(".hydra") else hit.parent)
    return sorted(found)
