"""The CIFAR ResNets of He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), Sec. 4.2.

A 3×3 stem convolution, three stages of n BasicBlocks with 16, 32 and 64 channels (feature maps
32, 16 and 8 px on CIFAR), global average pooling and a linear head: 6n + 2 weight layers, so
depth ∈ {20, 32, 44, 56, 110} gives n ∈ {3, 5, 7, 9, 18}. These are the GMConv paper's CIFAR
backbones; every convolution is a plain ``nn.Conv2d`` so ``convert_to_gmconv`` finds all of them.
They are registered as ``model.source=local`` models ``resnet20`` ... ``resnet110``.

Shortcuts where the shape changes (the first block of stages 2 and 3):

- ``"A"`` (default, the paper's choice for CIFAR): identity on every second pixel, zero-padded
  with the missing channels. Parameter-free, so the parameter counts match the paper's table
  (ResNet-20: 0.27M, ResNet-56: 0.85M) and every convolution is 3×3.
- ``"B"``: a 1×1 stride-2 convolution and BatchNorm (the paper's ImageNet choice); slightly
  more parameters, and its 1×1 convolutions stay plain under GMConv's default min_kernel_size=3.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import ConfigError

from .registry import register_model

SHORTCUTS = ("A", "B")
STAGE_WIDTHS = (16, 32, 64)
DEPTHS = (20, 32, 44, 56, 110)


class PadShortcut(nn.Module):
    """Option A shortcut: subsample by ``stride`` and zero-pad the channels (no parameters)."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        before = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, before, self.extra_channels - before))

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers and a residual connection (He et al. 2016, Fig. 2 left)."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = PadShortcut(planes - in_planes, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-``depth`` for 32 px RGB inputs; ``shortcut`` is ``"A"`` or ``"B"`` (see the module docstring).

    ``zero_init_residual=False`` is the paper's initialisation; the ``model=resnet56`` and ``resnet110``
    configs turn it on (docs/BACKBONES.md), the paper recipes (``experiment=cifar*``) turn it off again.
    """

    def __init__(
        self, depth: int, num_classes: int = 10, shortcut: str = "A", zero_init_residual: bool = False
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth={depth} must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...)")
        if shortcut not in SHORTCUTS:
            raise ConfigError(f"shortcut={shortcut!r} must be one of {', '.join(SHORTCUTS)}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, STAGE_WIDTHS[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        stages = []
        in_planes = STAGE_WIDTHS[0]
        for index, planes in enumerate(STAGE_WIDTHS):
            first_stride = 1 if index == 0 else 2
            blocks = [
                BasicBlock(in_planes if i == 0 else planes, planes, first_stride if i == 0 else 1, shortcut)
                for i in range(blocks_per_stage)
            ]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(STAGE_WIDTHS[-1], num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # He et al. train these from scratch with the initialisation of their ref. [13] (He et al. 2015):
        # without it the 110-layer network's signal shrinks with depth and it barely starts training.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            # Each block's last BatchNorm starts at zero (Goyal et al. 2017), as torchvision's flag of the same
            # name does: every block starts as the identity, so a deep stack keeps its stem's scale while lr is large.
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


for _depth in DEPTHS:
    register_model(f"resnet{_depth}")(partial(CifarResNet, _depth))
