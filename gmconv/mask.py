"""The maths both GMConv layers share, as pure functions of tensors and option values.

σ = positive(raw) + sigma_min,   M(i, j) = exp(-((i - ci)² + (j - cj)²) / (2σ²))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sigma_shape(granularity: str, out_channels: int, in_per_group: int) -> tuple[int, ...]:
    """Shape of one set of σ: (1,) per layer, (out,) per channel, (out, in/groups) per kernel."""
    if granularity == "layer":
        return (1,)
    if granularity == "channel":
        return (out_channels,)
    return (out_channels, in_per_group)


def _inverse_softplus(value: float) -> float:
    """softplus⁻¹(v) = log(exp(v) - 1), written to stay finite for large v."""
    return value + math.log(-math.expm1(-value))


# How an unconstrained raw parameter becomes the positive part of σ, and back: (forward, inverse).
PARAMETRIZATIONS = {"softplus": (F.softplus, _inverse_softplus), "exp": (torch.exp, math.log)}


def _parametrization(name: str) -> tuple:
    try:
        return PARAMETRIZATIONS[name]
    except KeyError:
        raise ValueError(
            f"sigma_parametrization={name!r} is not valid; choose one of {', '.join(PARAMETRIZATIONS)}"
        ) from None


def sigma_from_raw(raw: torch.Tensor, parametrization: str, sigma_min: float) -> torch.Tensor:
    """σ > sigma_min from an unconstrained raw parameter."""
    forward, _ = _parametrization(parametrization)
    return forward(raw) + sigma_min


def initial_sigma(sigma_init: float, sigma_mode: str, kernel_size: tuple[int, int]) -> float:
    """Where σ starts, in taps: ``sigma_init`` itself ("absolute"), or ``sigma_init`` × the kernel radius
    ("relative"; radius (k - 1) / 2 of the larger side, at least 1, so a 3×3 kernel starts alike in both modes)."""
    if sigma_mode == "absolute":
        return sigma_init
    return sigma_init * max(1.0, (max(kernel_size) - 1) / 2)


def raw_from_sigma(sigma: float, parametrization: str, sigma_min: float) -> float:
    """The raw value that ``sigma_from_raw`` maps to ``sigma`` (> sigma_min): where σ starts."""
    _, inverse = _parametrization(parametrization)
    return inverse(sigma - sigma_min)


def squared_distances(kernel_size: tuple[int, int], device: torch.device | str | None = None) -> torch.Tensor:
    """(kh, kw) float32 grid of squared distances, in taps, from the kernel centre ((kh-1)/2, (kw-1)/2)."""
    kh, kw = kernel_size
    rows = torch.arange(kh, dtype=torch.float32, device=device) - (kh - 1) / 2
    cols = torch.arange(kw, dtype=torch.float32, device=device) - (kw - 1) / 2
    return rows[:, None] ** 2 + cols[None, :] ** 2


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype σ and the mask are computed in: at least float32 (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


def gaussian_mask(sigma: torch.Tensor, sq_dist: torch.Tensor, granularity: str, dtype: torch.dtype) -> torch.Tensor:
    """The mask for ``sigma`` (leading batch dims allowed), broadcastable to an (out, in/groups, kh, kw) weight.

    The exponent is evaluated in at least float32 (float64 for a float64 layer, so gradcheck is
    exact) and the result cast to ``dtype``, the weight's: under autocast the mask stays accurate.
    """
    compute = compute_dtype(dtype)
    grid = sq_dist if sq_dist.dtype == compute else sq_dist.to(compute)
    sigma = sigma if sigma.dtype == compute else sigma.to(compute)
    # -1/(2σ²) on the few σ values, then one view that broadcasts it over (in/groups?, kh, kw).
    # Written for few tensor ops: at small batch sizes their per-op overhead dominates the cost.
    coef = sigma.pow(-2).mul(-0.5)
    coef = coef.view(*coef.shape, *(1,) * (2 if granularity == "kernel" else 3))
    mask = torch.exp(grid * coef)
    return mask if mask.dtype == dtype else mask.to(dtype)
