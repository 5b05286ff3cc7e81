"""Deformable convolution (DCNv1, Dai et al. 2017; modulated DCNv2, Zhu et al. 2019) as a drop-in ``nn.Conv2d``.

    offsets, m = offset_conv(x)                     one more convolution, zero-initialised
    y = deform_conv2d(x, offsets, W, b, mask=2·sigmoid(m))   (torchvision.ops)

Each kernel tap samples the input at its grid position plus a learned, per-pixel offset (bilinear
interpolation), scaled by a learned modulation in (0, 2) with DCNv2. The offset branch starts at
zero weights and bias: no offset and a modulation of 2·sigmoid(0) = 1, so a converted layer computes
exactly what the convolution it replaces computed (up to torchvision's handling of samples that fall
outside the image, which matches zero padding for interior outputs). This is the rival GMConv's paper
argues against: an ERF shaped by moving samples rather than by weighting a fixed grid.

On a GPU the sampling runs in torchvision's ``deform_conv2d``; on a CPU in ``sampled_conv`` (the same result,
about 6× faster there). Like timm's ``StdConv2d``, the layer is an ``nn.Conv2d`` with its own ``forward``:
``weight`` and ``bias`` keep their names, so a standard checkpoint loads into it with ``strict=False`` (only the
offset branch is missing, and it starts at zero).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d


class DeformConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose taps sample at learned offsets, with DCNv2's modulation unless ``modulated=False``.

    offset_groups: input channels are split into this many groups, each with its own offsets (DCNv2's
        "deformable groups"); must divide ``in_channels``.
    """

    def __init__(self, *args: Any, modulated: bool = True, offset_groups: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError(
                f"a deformable convolution pads with zeros only, not padding_mode={self.padding_mode!r}; "
                "leave this layer out (conv.exclude) or use another conv type"
            )
        if isinstance(self.padding, str):
            raise ValueError(
                f"a deformable convolution needs numeric padding, not padding={self.padding!r}; "
                "leave this layer out (conv.exclude) or use another conv type"
            )
        if offset_groups < 1 or self.in_channels % offset_groups:
            raise ValueError(
                f"offset_groups={offset_groups} must be a positive divisor of the layer's "
                f"{self.in_channels} input channels"
            )
        self.modulated, self.offset_groups = modulated, offset_groups
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.offset = nn.Conv2d(
            self.in_channels,
            offset_groups * taps * (3 if modulated else 2),
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            bias=True,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out = self.offset(input)
        taps = self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        offsets, modulation = out[:, : 2 * taps], out[:, 2 * taps :]
        mask = 2 * torch.sigmoid(modulation) if self.modulated else None
        if input.is_cuda:
            # torchvision's kernel runs in one dtype: under autocast the input and offsets are bf16/fp16 while the
            # weight is fp32, so the whole call runs in the weight's (autocast has no rule for this op)
            dtype = self.weight.dtype
            return deform_conv2d(
                input.to(dtype),
                offsets.to(dtype),
                self.weight,
                self.bias,
                self.stride,
                self.padding,
                self.dilation,
                None if mask is None else mask.to(dtype),
            )
        return sampled_conv(
            input, offsets, self.weight, self.bias, self.stride, self.padding, self.dilation, mask, self.offset_groups
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, modulated={self.modulated}, offset_groups={self.offset_groups}"


def sampled_conv(
    input: torch.Tensor,
    offsets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    mask: torch.Tensor | None,
    offset_groups: int,
) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d``'s result (equal in float64 to ~1e-13, gradients included), computed as
    bilinear sampling (``F.grid_sample``, zeros outside the image, as torchvision's) and one matrix product.

    The CPU path: torchvision's CPU kernel computes its backward pixel by pixel, about 6× slower than this for a
    CIFAR ResNet's layers on a 2-core CPU (docs/BENCHMARKS.md). Sampling positions are computed in fp32 under
    autocast (bf16 would place a sample 0.03 px off on a 16 px map); the product follows autocast.
    """
    n, channels, height, width = input.shape
    out_channels, in_per_group, kh, kw = weight.shape
    taps, (out_h, out_w) = kh * kw, offsets.shape[-2:]
    float32 = dict(device=input.device, dtype=torch.promote_types(input.dtype, torch.float32))
    tap_y = (torch.arange(kh, **float32) * dilation[0]).repeat_interleave(kw).view(taps, 1, 1)
    tap_x = (torch.arange(kw, **float32) * dilation[1]).repeat(kh).view(taps, 1, 1)
    row = (torch.arange(out_h, **float32) * stride[0] - padding[0]).view(1, out_h, 1)
    col = (torch.arange(out_w, **float32) * stride[1] - padding[1]).view(1, 1, out_w)
    grid_of_taps = torch.stack(torch.broadcast_tensors(tap_x + col, tap_y + row), -1)  # (taps, out_h, out_w, x|y)
    # torchvision's offsets are (dy, dx) per tap; grid_sample takes (x, y) scaled to [-1, 1] at the pixel centres
    shift = offsets.to(float32["dtype"]).view(n, offset_groups, taps, 2, out_h, out_w).permute(0, 1, 2, 4, 5, 3)
    scale = torch.tensor([2 / max(width - 1, 1), 2 / max(height - 1, 1)], **float32)
    grid = ((grid_of_taps + shift.flip(-1)) * scale - 1).reshape(n * offset_groups, taps * out_h, out_w, 2)
    source = input.to(float32["dtype"]).contiguous().view(n * offset_groups, channels // offset_groups, height, width)
    columns = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    columns = columns.view(n, offset_groups, channels // offset_groups, taps, out_h * out_w)
    if mask is not None:
        columns = columns * mask.view(n, offset_groups, 1, taps, out_h * out_w)
    groups = channels // in_per_group
    columns = columns.reshape(n, groups, in_per_group * taps, out_h * out_w)
    out = torch.matmul(weight.reshape(groups, out_channels // groups, in_per_group * taps), columns)
    out = out.reshape(n, out_channels, out_h, out_w)
    return out if bias is None else out + bias.view(1, -1, 1, 1)
