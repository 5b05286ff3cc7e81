"""GMConv2d: a Conv2d whose kernel is multiplied by a learned concentric Gaussian mask.

    W' = W ⊙ M,   M(i, j) = exp(-((i - ci)² + (j - cj)²) / (2σ²)),   y = conv2d(x, W', b)

The layer subclasses ``nn.Conv2d`` the way timm's ``StdConv2d`` does: only ``forward`` changes, so
``isinstance`` checks, the ``weight``/``bias`` state_dict keys, padding modes, groups and every
other Conv2d feature keep working, and a standard checkpoint loads into it with ``strict=False``
(only the σ keys are missing; σ then starts at ``sigma_init``). σ predicted per sample is
``DynamicGMConv2d`` (gmconv/dynamic.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .mask import gaussian_mask, initial_sigma, raw_from_sigma, sigma_from_raw, sigma_shape, squared_distances
from .options import GMConvOptions

# torch.fx traces ``gaussian_mask`` as one call: its dtype checks are Python control flow that a
# symbolic tracer cannot follow, and the eager forward keeps them (free) instead of extra casts.
torch.fx.wrap("gaussian_mask")


@dataclass
class Reused:
    """The masked weight ``reuse_masked_weights`` keeps, and what it came from: the weight and σ tensors
    themselves (held, so a replacement can never reuse their address) and their data pointers and version
    counters (an in-place change such as an optimizer step bumps a counter)."""

    weight: torch.Tensor | None = None
    sigma_raw: torch.Tensor | None = None
    versions: tuple[int, ...] = ()
    masked_weight: torch.Tensor | None = None


def _in_graph_capture(weight: torch.Tensor) -> bool:
    """True while torch.compile, torch.export, jit.trace or fx records the forward: a graph must hold the plain
    product (which a compiler fuses), never a tensor cached outside it."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or isinstance(weight, torch.fx.Proxy)


class GaussianMaskConv(nn.Conv2d):
    """What ``GMConv2d`` and ``DynamicGMConv2d`` share: the Conv2d arguments, then the GMConv options the
    layer reads (``OPTIONS``, keyword-only, defaults from ``GMConvOptions``), validated once and kept as
    attributes; an option the layer does not read is a TypeError, never silently dropped."""

    OPTIONS: ClassVar[tuple[str, ...]] = ()
    IMPLIED: ClassVar[dict[str, Any]] = {}  # options the layer type itself fixes (the dynamic layer: dynamic=True)

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
        **options: Any,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device,
            dtype,
        )
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no option {', '.join(unknown)}; its options are {', '.join(self.OPTIONS)}"
            )
        validated = GMConvOptions.validated(**self.IMPLIED, **options)
        for name in self.OPTIONS:
            setattr(self, name, getattr(validated, name))
        self.sigma_init, self.sigma_min = float(self.sigma_init), float(self.sigma_min)
        self.register_buffer("sq_dist", squared_distances(self.kernel_size, device), persistent=False)

    def sigma_shape(self) -> tuple[int, ...]:
        return sigma_shape(self.sigma_granularity, self.out_channels, self.in_channels // self.groups)

    def initial_raw(self) -> float:
        """The raw parameter value of the initial σ (``sigma_init``, in taps or relative to the kernel)."""
        start = initial_sigma(self.sigma_init, self.sigma_mode, self.kernel_size)
        return raw_from_sigma(start, self.sigma_parametrization, self.sigma_min)

    def extra_repr(self) -> str:
        return ", ".join([super().extra_repr(), *(f"{name}={getattr(self, name)}" for name in self.OPTIONS)])


class GMConv2d(GaussianMaskConv):
    """Drop-in ``nn.Conv2d`` with a Gaussian mask of learnable width σ over every kernel.

    GMConv options (keyword-only, after the usual Conv2d arguments; defaults from ``GMConvOptions``):

    sigma_init:
        Initial σ in kernel taps (> sigma_min). The default 2.0 keeps 3×3 kernels close to a
        plain convolution (corner taps weighted 0.78) so converted pretrained weights still work,
        while a 7×7 stem already gets a clearly Gaussian profile (outer taps 0.10–0.32).
    sigma_mode:
        ``"absolute"`` (default): ``sigma_init`` is in taps, whatever the kernel size.
        ``"relative"``: σ starts at ``sigma_init`` × the kernel radius ((k - 1) / 2, at least 1), so
        every kernel size starts with the profile a 3×3 kernel gets at σ = ``sigma_init``.
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
    """

    OPTIONS = ("sigma_init", "sigma_mode", "sigma_granularity", "sigma_parametrization", "sigma_min", "learnable_sigma")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        raw = torch.full(self.sigma_shape(), self.initial_raw(), device=self.weight.device, dtype=self.weight.dtype)
        if self.learnable_sigma:
            self.sigma_raw = nn.Parameter(raw)
        else:
            self.register_buffer("sigma_raw", raw)
        self._reused: Reused | None = None  # set by gmconv.reuse_masked_weights

    @property
    def sigma(self) -> torch.Tensor:
        """Current σ (detached), shaped by granularity: (1,), (out,) or (out, in/groups)."""
        return sigma_from_raw(self.sigma_raw, self.sigma_parametrization, self.sigma_min).detach()

    def mask(self) -> torch.Tensor:
        """The current mask, broadcastable to ``weight``, in the weight's dtype (differentiable in σ)."""
        return self.mask_from(self.sigma_raw)

    def mask_from(self, sigma_raw: torch.Tensor) -> torch.Tensor:
        """The mask of this layer for a raw σ of its shape, with autograd."""
        sigma = sigma_from_raw(sigma_raw, self.sigma_parametrization, self.sigma_min)
        return gaussian_mask(sigma, self.sq_dist, self.sigma_granularity, self.weight.dtype)

    def masked_weight(self) -> torch.Tensor:
        """``W ⊙ M``, under autograd; inside ``gmconv.reuse_masked_weights`` and without autograd, computed once and
        reused while neither the weight nor σ changes."""
        # the capture check comes first, so that torch.compile never reads (nor guards on) the layer's state
        if _in_graph_capture(self.weight) or torch.is_grad_enabled():
            return self.weight * self.mask()
        reused = getattr(self, "_reused", None)
        if reused is None:
            return self.weight * self.mask()
        weight, sigma_raw = self.weight, self.sigma_raw
        versions = (weight.data_ptr(), weight._version, sigma_raw.data_ptr(), sigma_raw._version)
        if reused.weight is not weight or reused.sigma_raw is not sigma_raw or reused.versions != versions:
            reused.weight, reused.sigma_raw, reused.versions = weight, sigma_raw, versions
            reused.masked_weight = weight * self.mask()
        return reused.masked_weight

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, self.masked_weight(), self.bias)

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` asks this first: say what works instead of failing inside the mask code."""
        raise RuntimeError(
            "torch.jit.script cannot compile GMConv2d; fold the masks into plain convolutions first "
            "(gmconv.fold_gmconv(model), then torch.jit.script works), or use torch.export.export(model, (x,)) "
            "or torch.jit.trace(model, x)"
        )
