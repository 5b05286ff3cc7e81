"""Model size and cost, for results.json and for comparing GMConv with its baseline at equal budget."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    """All parameters (trainable or frozen, shared ones once), GMConv's σ included."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, image_size: int) -> int:
    """FLOPs of one forward pass on one 3×``image_size``×``image_size`` image.

    Counted by ``torch.utils.flop_counter.FlopCounterMode``, which counts 2 FLOPs per multiply-add
    of convolutions and matrix products and nothing for element-wise work (BatchNorm, activations,
    pooling, GMConv's mask). Divide by 2 to compare with papers that quote multiply-adds as "FLOPs"
    (He et al.'s ResNet-20: 41M multiply-adds = 82M FLOPs here).

    The pass runs in eval mode without gradients so BatchNorm's running statistics are not
    touched; every submodule's train/eval mode is restored afterwards and the input is created on
    the model's device and in its dtype, so the model is not moved either.
    """
    reference = next(model.parameters(), None)
    if reference is None:
        reference = next(model.buffers(), torch.empty(0))
    image = torch.zeros(1, 3, image_size, image_size, device=reference.device, dtype=reference.dtype)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(image)
    finally:
        for module, training in modes.items():
            module.train(training)
    return counter.get_total_flops()
