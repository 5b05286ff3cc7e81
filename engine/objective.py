"""What turns a training batch into a loss, from timm: Mixup/CutMix with soft targets, then cross-entropy
or binary cross-entropy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from omegaconf import DictConfig
from timm.data import Mixup
from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy
from torch import nn


@dataclass
class Objective:
    """How a training batch becomes a loss: optional Mixup/CutMix, then the criterion."""

    criterion: nn.Module
    mixup: Optional[Mixup] = None

    def mix(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, targets for the criterion): mixed images and soft targets under mixup/cutmix."""
        return self.mixup(images, targets) if self.mixup is not None else (images, targets)

    @staticmethod
    def dominant_labels(targets: torch.Tensor) -> torch.Tensor:
        """The label with the largest share of each (mixed) target: what train top-1 is counted against."""
        return targets.argmax(dim=1) if targets.ndim == 2 else targets


def build_objective(data: DictConfig, trainer: DictConfig, num_classes: int) -> Objective:
    """timm train.py's choice: with mixing, soft targets (label smoothing applied by Mixup) and
    SoftTargetCrossEntropy or BinaryCrossEntropy; without, cross-entropy or BCE with label smoothing."""
    mixing = data.mixup_alpha > 0 or data.cutmix_alpha > 0
    mixup = (
        Mixup(
            mixup_alpha=data.mixup_alpha,
            cutmix_alpha=data.cutmix_alpha,
            prob=data.mix_prob,
            switch_prob=data.mix_switch_prob,
            label_smoothing=trainer.label_smoothing,
            num_classes=num_classes,
        )
        if mixing
        else None
    )
    smoothing = 0.0 if mixing else trainer.label_smoothing
    if trainer.loss == "bce":
        criterion = BinaryCrossEntropy(smoothing=smoothing, target_threshold=trainer.bce_target_threshold)
    elif mixing:
        criterion = SoftTargetCrossEntropy()
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=smoothing)
    return Objective(criterion, mixup)
