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

from .mask import (
    compute_dtype, gaussian_mask, initial_sigma, raw_from_sigma, sigma_from_raw, sigma_shape, squared_distances,
)
from .options import GMConvOptions

# One call each in an fx graph, as in conv.py: a traced dtype cannot go through torch.promote_types.
torch.fx.wrap("gaussian_mask")
torch.fx.wrap("compute_dtype")


class DynamicGMConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose Gaussian mask width σ is predicted for each sample.

    sigma_init, sigma_mode, sigma_granularity, sigma_parametrization and sigma_min mean what they mean
    for ``GMConv2d`` (every sample starts near the initial σ: the predictor's last layer starts with
    small weights and its bias at the raw value of ``sigma_init``).

    dynamic_reduction:
        Width of the predictor's hidden layer: ``max(8, in_channels // dynamic_reduction)``, as in
        squeeze-and-excitation blocks.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        sigma_init: float = GMConvOptions.sigma_init,
        sigma_mode: str = GMConvOptions.sigma_mode,
        sigma_granularity: str = GMConvOptions.sigma_granularity,
        sigma_parametrization: str = GMConvOptions.sigma_parametrization,
        sigma_min: float = GMConvOptions.sigma_min,
        dynamic_reduction: int = GMConvOptions.dynamic_reduction,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype,
        )
        options = GMConvOptions.validated(
            sigma_init=sigma_init, sigma_mode=sigma_mode, sigma_granularity=sigma_granularity,
            sigma_parametrization=sigma_parametrization,
            sigma_min=sigma_min, dynamic=True, dynamic_reduction=dynamic_reduction,
        )
        self.sigma_init = float(options.sigma_init)
        self.sigma_mode = options.sigma_mode
        self.sigma_granularity = options.sigma_granularity
        self.sigma_parametrization = options.sigma_parametrization
        self.sigma_min = float(options.sigma_min)
        self.dynamic_reduction = options.dynamic_reduction
        self.register_buffer("sq_dist", squared_distances(self.kernel_size, device), persistent=False)
        self._sigma_shape = sigma_shape(self.sigma_granularity, out_channels, in_channels // groups)
        hidden = max(8, in_channels // self.dynamic_reduction)
        self.sigma_predictor = nn.Sequential(
            nn.Linear(in_channels, hidden, device=device, dtype=dtype),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, math.prod(self._sigma_shape), device=device, dtype=dtype),
        )
        nn.init.normal_(self.sigma_predictor[2].weight, std=0.01)
        start = initial_sigma(self.sigma_init, self.sigma_mode, self.kernel_size)
        raw_start = raw_from_sigma(start, self.sigma_parametrization, self.sigma_min)
        nn.init.constant_(self.sigma_predictor[2].bias, raw_start)
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

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, sigma_init={self.sigma_init}, sigma_mode={self.sigma_mode}, "
            f"sigma_granularity={self.sigma_granularity}, sigma_parametrization={self.sigma_parametrization}, "
            f"sigma_min={self.sigma_min}, dynamic_reduction={self.dynamic_reduction}"
        )
