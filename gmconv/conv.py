"""GMConv2d: a Conv2d whose kernel is multiplied by a learned concentric Gaussian mask.

    W' = W ⊙ M,   M(i, j) = exp(-((i - ci)² + (j - cj)²) / (2σ²)),   y = conv2d(x, W', b)

The layer subclasses ``nn.Conv2d`` the way timm's ``StdConv2d`` does: only ``forward`` changes, so
``isinstance`` checks, the ``weight``/``bias`` state_dict keys, padding modes, groups and every
other Conv2d feature keep working, and a standard checkpoint loads into it with ``strict=False``
(only the σ keys are missing; σ then starts at ``sigma_init``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

GRANULARITIES = ("layer", "channel", "kernel")
PARAMETRIZATIONS = ("softplus", "exp")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    value = getattr(value, "value", value)  # accept str-valued Enums from typed configs
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(allowed)}")
    return value


def _inverse_positive(value: float, parametrization: str) -> float:
    """Raw parameter value that the parametrisation maps to ``value`` (> 0)."""
    if parametrization == "exp":
        return math.log(value)
    # softplus⁻¹(v) = log(exp(v) - 1), written to stay finite for large v
    return value + math.log(-math.expm1(-value))


def _positive(raw: torch.Tensor, parametrization: str) -> torch.Tensor:
    return torch.exp(raw) if parametrization == "exp" else F.softplus(raw)


class GMConv2d(nn.Conv2d):
    """Drop-in ``nn.Conv2d`` with a Gaussian mask of learnable width σ over every kernel.

    GMConv arguments (all keyword-only, after the usual Conv2d ones):

    sigma_init:
        Initial σ in kernel taps (> sigma_min). The default 2.0 keeps 3×3 kernels close to a
        plain convolution (corner taps weighted 0.78) so converted pretrained weights still work,
        while a 7×7 stem already gets a clearly Gaussian profile (outer taps 0.10–0.32).
    sigma_granularity:
        ``"layer"`` (one σ), ``"channel"`` (one σ per output channel, the default: each filter is
        its own detector and gets its own receptive field), or ``"kernel"`` (one σ per
        output-channel/input-channel-group pair).
    sigma_parametrization:
        How a raw parameter is mapped to σ > 0: ``"softplus"`` (default; gradients neither
        vanish nor explode for large raw values) or ``"exp"`` (multiplicative steps).
    sigma_min:
        Floor added to the parametrisation (default 0.1): keeps the mask finite at the centre
        tap and stops σ collapsing to exactly zero.
    learnable_sigma:
        ``False`` keeps σ fixed at ``sigma_init`` (a buffer, not a parameter) for ablations.
    dynamic:
        Predict σ per sample from the input (global average pool → MLP → positive σ). An
        extension beyond the paper; such a layer cannot be folded into a plain convolution.
    dynamic_reduction:
        Width of the dynamic predictor's hidden layer: ``max(8, in_channels // reduction)``.
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
        sigma_init: float = 2.0,
        sigma_granularity: str = "channel",
        sigma_parametrization: str = "softplus",
        sigma_min: float = 0.1,
        learnable_sigma: bool = True,
        dynamic: bool = False,
        dynamic_reduction: int = 16,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype,
        )
        self.sigma_granularity = _check_choice("sigma_granularity", sigma_granularity, GRANULARITIES)
        self.sigma_parametrization = _check_choice(
            "sigma_parametrization", sigma_parametrization, PARAMETRIZATIONS
        )
        if not sigma_min > 0:
            raise ValueError(f"sigma_min={sigma_min} must be > 0 (at σ = 0 the centre tap is 0/0)")
        if not sigma_init > sigma_min:
            raise ValueError(
                f"sigma_init={sigma_init} must be greater than sigma_min={sigma_min} (σ is in kernel taps, > 0)"
            )
        if dynamic and not learnable_sigma:
            raise ValueError("dynamic=True predicts σ from the input, so learnable_sigma must stay True")
        if dynamic_reduction < 1:
            raise ValueError(f"dynamic_reduction={dynamic_reduction} must be >= 1")
        self.sigma_init = float(sigma_init)
        self.sigma_min = float(sigma_min)
        self.learnable_sigma = learnable_sigma
        self.dynamic = dynamic

        kh, kw = self.kernel_size
        rows = torch.arange(kh, dtype=torch.float32, device=device) - (kh - 1) / 2
        cols = torch.arange(kw, dtype=torch.float32, device=device) - (kw - 1) / 2
        self.register_buffer("sq_dist", rows[:, None] ** 2 + cols[None, :] ** 2, persistent=False)

        raw_init = _inverse_positive(self.sigma_init - self.sigma_min, self.sigma_parametrization)
        if dynamic:
            hidden = max(8, in_channels // dynamic_reduction)
            self.sigma_predictor = nn.Sequential(
                nn.Linear(in_channels, hidden, device=device, dtype=dtype),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, self._num_sigmas(), device=device, dtype=dtype),
            )
            nn.init.normal_(self.sigma_predictor[2].weight, std=0.01)
            nn.init.constant_(self.sigma_predictor[2].bias, raw_init)
            self.last_sigma: torch.Tensor | None = None
        else:
            raw = torch.full(self._sigma_shape(), raw_init, device=device, dtype=dtype)
            if learnable_sigma:
                self.sigma_raw = nn.Parameter(raw)
            else:
                self.register_buffer("sigma_raw", raw)

    def _sigma_shape(self) -> tuple[int, ...]:
        if self.sigma_granularity == "layer":
            return (1,)
        if self.sigma_granularity == "channel":
            return (self.out_channels,)
        return (self.out_channels, self.in_channels // self.groups)

    def _num_sigmas(self) -> int:
        return math.prod(self._sigma_shape())

    def _sigma_from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        return _positive(raw, self.sigma_parametrization) + self.sigma_min

    def _mask_from_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """Gaussian mask broadcastable to the weight, in the weight's dtype.

        ``sigma`` may carry leading batch dims. The exponent is evaluated in at least float32
        (float64 for a float64 layer, so gradcheck is exact) and the result cast to the weight's dtype.
        """
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        grid = self.sq_dist if self.sq_dist.dtype == dtype else self.sq_dist.to(dtype)
        sigma = sigma if sigma.dtype == dtype else sigma.to(dtype)
        # -1/(2σ²) on the few σ values, then one view that broadcasts it over (in/groups?, kh, kw).
        # Written for few tensor ops: at small batch sizes their per-op overhead dominates the cost.
        coef = sigma.pow(-2).mul(-0.5)
        coef = coef.view(*coef.shape, *(1,) * (2 if self.sigma_granularity == "kernel" else 3))
        mask = torch.exp(grid * coef)
        return mask if mask.dtype == self.weight.dtype else mask.to(self.weight.dtype)

    @property
    def sigma(self) -> torch.Tensor:
        """Current σ (detached), shaped by granularity: (1,), (out,) or (out, in/groups).

        For a dynamic layer this is the σ predicted for the most recent batch, (batch, ...).
        """
        if self.dynamic:
            if self.last_sigma is None:
                raise RuntimeError("a dynamic GMConv2d has no σ until it has seen an input")
            return self.last_sigma
        return self._sigma_from_raw(self.sigma_raw).detach()

    def mask(self) -> torch.Tensor:
        """The current static mask, broadcastable to ``weight``, in the weight's dtype."""
        if self.dynamic:
            raise ValueError("a dynamic GMConv2d has one mask per sample; there is no single mask()")
        return self._mask_from_sigma(self._sigma_from_raw(self.sigma_raw))

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.dynamic:
            return self._conv_forward(input, self.masked_weight(), self.bias)
        return self._dynamic_forward(input)

    def _dynamic_forward(self, x: torch.Tensor) -> torch.Tensor:
        """All samples in one grouped convolution: sample b uses its own masked kernel."""
        batch = x.shape[0]
        pooled = x.mean(dim=(2, 3), dtype=torch.promote_types(x.dtype, torch.float32))
        raw = self.sigma_predictor(pooled.to(self.sigma_predictor[0].weight.dtype))
        raw = raw.to(torch.promote_types(raw.dtype, torch.float32))
        sigma = self._sigma_from_raw(raw).reshape(batch, *self._sigma_shape())
        self.last_sigma = sigma.detach()
        masks = self._mask_from_sigma(sigma)  # (B, out|1, in/g|1, kh, kw), in the weight's dtype
        weight = (self.weight.unsqueeze(0) * masks).reshape(-1, *self.weight.shape[1:])
        bias = self.bias.repeat(batch) if self.bias is not None else None
        x = x.reshape(1, -1, *x.shape[2:])
        padding: Any = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        out = F.conv2d(x, weight, bias, self.stride, padding, self.dilation, self.groups * batch)
        return out.reshape(batch, self.out_channels, *out.shape[2:])

    def extra_repr(self) -> str:
        gm = (
            f"sigma_init={self.sigma_init}, sigma_granularity={self.sigma_granularity}, "
            f"sigma_parametrization={self.sigma_parametrization}, sigma_min={self.sigma_min}"
        )
        if not self.learnable_sigma:
            gm += ", learnable_sigma=False"
        if self.dynamic:
            gm += ", dynamic=True"
        return f"{super().extra_repr()}, {gm}"
