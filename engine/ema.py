"""The weights' moving average (timm's ModelEmaV3), evaluated beside the trained weights."""

from __future__ import annotations

from typing import Optional

from omegaconf import DictConfig
from timm.utils import ModelEmaV3
from torch import nn


def build_ema(model: nn.Module, trainer: DictConfig) -> Optional[ModelEmaV3]:
    """A moving average of ``model``'s weights and buffers (None when ``trainer.ema_decay`` is null).

    Updated after every optimizer step with the step count: timm's decay is 0 at step 1 (the average
    starts as the weights), then ``ema_decay``, or with ``ema_warmup`` 1 - (1 + step)^(-2/3) capped there.
    """
    if trainer.ema_decay is None:
        return None
    return ModelEmaV3(model, decay=trainer.ema_decay, use_warmup=trainer.ema_warmup)
