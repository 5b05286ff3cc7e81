"""DynamicGMConv2d: GMConv with σ predicted per sample from the input (an extension beyond the paper).

global average pool → Linear → ReLU → Linear → the same positive parametrisation (+ sigma_min)
gives one set of σ per sample; the whole batch then runs as one grouped convolution with one masked
kernel per sample, so a sample's output does not depend on the rest of its batch. Such a layer has
no single mask and cannot be folded into a plain convolution.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .conv import GaussianMaskConv
from .mask import compute_dtype, gaussian_mask, sigma_from_raw

# One call each in an fx graph, as in conv.py: a traced dtype cannot go through torch.promote_types.
torch.fx.wrap("gaussian_mask")
torch.fx.wrap("compute_dtype")


class DynamicGMConv2d(GaussianMaskConv):
    """``nn.Conv2d`` whose Gaussian mask width σ is predicted for each sample.

    sigma_init, sigma_mode, sigma_granularity, sigma_parametrization and sigma_min mean what they mean
    for ``GMConv2d`` (every sample starts near the initial σ: the predictor's last layer starts with
    small weights and its bias at the raw value of ``sigma_init``).

    dynamic_reduction:
        Width of the predictor's hidden layer: ``max(8, in_channels // dynamic_reduction)``, as in
        squeeze-and-excitation blocks.
    """

    OPTIONS = (
        "sigma_init",
        "sigma_mode",
        "sigma_granularity",
        "sigma_parametrization",
        "sigma_min",
        "dynamic_reduction",
    )
    IMPLIED = {"dynamic": True}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sigma_shape = self.sigma_shape()
        device, dtype = self.weight.device, self.weight.dtype
        hidden = max(8, self.in_channels // self.dynamic_reduction)
        self.sigma_predictor = nn.Sequential(
            nn.Linear(self.in_channels, hidden, device=device, dtype=dtype),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, math.prod(self._sigma_shape), device=device, dtype=dtype),
        )
        nn.init.normal_(self.sigma_predictor[2].weight, std=0.01)
        nn.init.constant_(self.sigma_predictor[2].bias, self.initial_raw())
        self.last_sigma: torch.Tensor | None = None

    @property
    def sigma(self) -> torch.Tensor:
        """The σ predicted for the most recent batch (detached), (batch, *σ shape of the granularity)."""
        if self.last_sigma is None:
            raise RuntimeError("a DynamicGMConv2d has no σ until it has seen an input")
        return self.last_sigma

    def mask_for(self, sigma: torch.Tensor) -> torch.Tensor:
        """The masks for ``sigma`` (leading batch dims allowed), broadcastable to ``weight``, in its dtype."""
        return gaussian_mask(sigma, self.sq_dist, self.sigma_granularity, self.weight.dtype)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """All samples in one grouped convolution: sample b uses its own masked kernel."""
        batch = input.shape[0]
        pooled = input.mean(dim=(2, 3), dtype=compute_dtype(input.dtype))
        raw = self.sigma_predictor(pooled.to(self.sigma_predictor[0].weight.dtype))
        raw = raw.to(compute_dtype(raw.dtype))
        sigma = sigma_from_raw(raw, self.sigma_parametrization, self.sigma_min).reshape(batch, *self._sigma_shape)
        if not (isinstance(sigma, torch.fx.Proxy) or torch.compiler.is_exporting()):  # a graph keeps no σ
            self.last_sigma = sigma.detach()
        masks = self.mask_for(sigma)  # (B, out|1, in/g|1, kh, kw), in the weight's dtype
        weight = (self.weight.unsqueeze(0) * masks).flatten(0, 1)
        bias = self.bias.repeat(batch) if self.bias is not None else None
        x = input.reshape(1, -1, input.shape[-2], input.shape[-1])
        padding: Any = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        out = F.conv2d(x, weight, bias, self.stride, padding, self.dilation, self.groups * batch)
        return out.reshape(batch, self.out_channels, out.shape[-2], out.shape[-1])

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` asks this first: say what works instead of failing inside the mask code."""
        raise RuntimeError(
            "torch.jit.script cannot compile DynamicGMConv2d (and, its mask depending on the input, it cannot be "
            "folded); use torch.export.export(model, (x,)) or torch.jit.trace(model, x) instead"
        )
