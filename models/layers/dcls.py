"""Dilated convolution with learnable spacings (DCLS; Khalfaoui-Hassani, Pellegrini, Masquelier, ICLR 2023),
in its Gaussian-interpolation form (Khalfaoui-Hassani et al. 2023, "beyond bilinear interpolation").

A k×k convolution becomes k² kernel elements, each with a weight, a continuous position (y, x) inside
a larger ``size``×``size`` kernel and a width (σy, σx) of its own. The dense kernel is built at every
forward pass and convolved as usual:

    K[o, i, y, x] = Σ_e  w[o, i, e] · g(y; p_y, σ_y) · g(x; p_x, σ_x),   g normalised to sum 1 over the grid

Positions start on the grid of a dilated convolution spanning the larger kernel (a 3×3 kernel in 5×5:
taps 2 apart), widths at ``sigma_init``; positions stay inside the kernel (clamped before each use, so
the step that moved one outside is undone before it counts). Where GMConv weighs a fixed grid by one
Gaussian per filter, DCLS moves each tap: the two learn the receptive field from opposite ends.

Written here in PyTorch from the papers (the ``dcls`` package's licence is ambiguous): the separable
Gaussians make the dense kernel one batched matrix product per layer. ``dense_conv()`` folds the layer
into the plain ``nn.Conv2d`` it computes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Dcls2d(nn.Module):
    """A convolution whose ``in/groups × k²`` taps per filter move inside a ``size``×``size`` kernel."""

    def __init__(self, conv: nn.Conv2d, size: int, sigma_init: float = 0.5) -> None:
        super().__init__()
        kh, kw = conv.kernel_size
        if kh != kw or kh < 2:
            raise ValueError(
                f"DCLS spreads a square kernel of 2×2 or more, not {kh}×{kw}; leave this layer out "
                "(conv.exclude) or raise conv.min_kernel_size"
            )
        if size < kh:
            raise ValueError(f"conv.dcls_size={size} must be at least the converted kernel's {kh}")
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ValueError(
                "DCLS needs numeric zero padding (padding_mode='zeros', no 'same'/'valid'); leave this "
                "layer out (conv.exclude)"
            )
        self.in_channels, self.out_channels, self.groups = conv.in_channels, conv.out_channels, conv.groups
        self.kernel_size, self.size = (kh, kw), size
        self.stride, self.dilation = conv.stride, conv.dilation
        if (size - kh) % 2:
            raise ValueError(
                f"conv.dcls_size={size} and a {kh}×{kh} kernel must differ by an even number (the "
                "kernel's centre stays where it is)"
            )
        grow = (size - kh) // 2
        self.padding = tuple(p + d * grow for p, d in zip(conv.padding, conv.dilation))
        weight = conv.weight.detach()
        self.weight = nn.Parameter(weight.flatten(2).clone())  # (out, in/groups, k²)
        spacing = (size - 1) / (kh - 1)
        grid = (torch.arange(kh, dtype=weight.dtype, device=weight.device) - (kh - 1) / 2) * spacing
        start = torch.stack(torch.meshgrid(grid, grid, indexing="ij")).flatten(1)  # (2, k²): y, x of each tap
        self.positions = nn.Parameter(start[:, None, None, :].expand(2, *self.weight.shape).clone())
        self.sigma_raw = nn.Parameter(torch.full_like(self.positions, math.log(math.expm1(sigma_init - SIGMA_MIN))))
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        self.register_buffer(
            "grid", torch.arange(size, dtype=weight.dtype, device=weight.device) - (size - 1) / 2, persistent=False
        )
        self.train(conv.training)
        self.weight.requires_grad_(conv.weight.requires_grad)

    @property
    def sigma(self) -> torch.Tensor:
        """Each element's width along y and x, in taps: (2, out, in/groups, k²)."""
        return F.softplus(self.sigma_raw) + SIGMA_MIN

    def dense_weight(self) -> torch.Tensor:
        """The (out, in/groups, size, size) kernel the elements make."""
        limit = (self.size - 1) / 2
        with torch.no_grad():
            self.positions.clamp_(-limit, limit)
        # (2, out, in/groups, k², size): the two separable Gaussians of each element, each summing to 1
        profile = torch.exp(-0.5 * ((self.grid - self.positions.unsqueeze(-1)) / self.sigma.unsqueeze(-1)) ** 2)
        profile = profile / profile.sum(-1, keepdim=True)
        rows = (self.weight.unsqueeze(-1) * profile[0]).flatten(0, 1)  # (out·in/groups, k², size)
        cols = profile[1].flatten(0, 1)
        dense = torch.bmm(rows.transpose(1, 2), cols)  # Σ over the elements: (out·in/groups, size, size)
        return dense.view(self.out_channels, self.in_channels // self.groups, self.size, self.size)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.conv2d(input, self.dense_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def dense_conv(self) -> nn.Conv2d:
        """The plain ``nn.Conv2d`` this layer computes now (for inference and export)."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        conv.train(self.training)
        return conv

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, elements={self.kernel_size[0]}x{self.kernel_size[1]}, "
            f"size={self.size}, stride={self.stride}, padding={self.padding}, groups={self.groups}"
        )


SIGMA_MIN = 0.1  # keeps each element's Gaussian finite on the grid
