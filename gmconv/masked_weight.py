"""``W ⊙ M`` with σ's gradient written out: one product forward, two backward.

Left to autograd, the product and the mask's own small operations (softplus, pow, exp, ...) each add
their backward node: about 20 operations per layer per training step, each a kernel launch on a GPU,
which at CIFAR sizes doubled a step's launches. Here the masks and their derivatives ∂M/∂raw come
precomputed (for all layers at once, gmconv/shared_masks.py), so a layer adds

    forward   W · [M; ∂M/∂raw]                           one product (the second half is kept)
    backward  ∂L/∂W = g · M,   ∂L/∂raw = Σ g · W · ∂M/∂raw   a product and one batched dot product
                                                            (on a CPU, or a σ per kernel: a product and a sum)

and both gradients are ready when autograd reaches the layer, as a plain convolution's are: DDP's
gradient buckets still fill, and all-reduce, during the backward pass.

A backward that builds a graph (``create_graph=True``: higher derivatives, gradient penalties)
differentiates the plain product instead, so every derivative order stays exact.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

_SHORT_ROW = 64  # taps per σ below which a product and a sum beat a batched dot product (a σ per 3×3 kernel: 9)


def sigma_gradient(grad: torch.Tensor, weighted_derivative: torch.Tensor, sigma_shape: torch.Size,
                   one_kernel: bool | None = None) -> torch.Tensor:
    """Σ grad · W · ∂M/∂raw over the taps each σ covers: the whole weight (one σ), an output channel's filter,
    or one kernel. ``weighted_derivative`` is W · ∂M/∂raw, shaped like the weight.

    As one batched dot product (``one_kernel``: one launch on a GPU), or as a product and a sum: on a CPU, where
    that measured 3× faster, and for rows of a few taps (a σ per kernel), which would make the batched product
    a multitude of tiny ones. None: chosen so.
    """
    rows = sigma_shape.numel()
    grad, weighted_derivative = grad.reshape(rows, -1), weighted_derivative.reshape(rows, -1)
    if one_kernel is None:
        one_kernel = grad.device.type != "cpu" and grad.shape[1] >= _SHORT_ROW
    if one_kernel:
        return torch.bmm(grad.unsqueeze(1), weighted_derivative.unsqueeze(2)).reshape(sigma_shape)
    return (grad * weighted_derivative).sum(1).reshape(sigma_shape)


class MaskedWeight(torch.autograd.Function):
    """``weight * masks[0]``, differentiable in ``weight`` and ``sigma_raw``.

    ``masks``: (2, *mask shape): the masks and ∂M/∂raw, computed without autograd from ``sigma_raw``, each
    broadcastable to the weight. ``mask_of(sigma_raw)``: the same masks built with autograd, for a backward
    that must itself be differentiable.
    """

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, sigma_raw: torch.Tensor, masks: torch.Tensor,
                mask_of: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        both = weight * masks  # (2, out, in/groups, kh, kw): the masked weight, and W · ∂M/∂raw kept for backward
        ctx.save_for_backward(weight, sigma_raw, masks[0], both[1])
        ctx.mask_of = mask_of
        return both[0]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        weight, sigma_raw, mask, weighted_derivative = ctx.saved_tensors
        need_weight, need_sigma = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():  # create_graph=True: a graph of the plain product gives every order exactly
            wanted = [t for t, need in ((weight, need_weight), (sigma_raw, need_sigma)) if need]
            with torch.enable_grad():
                grads = iter(torch.autograd.grad(weight * ctx.mask_of(sigma_raw), wanted, grad, create_graph=True))
            return (next(grads) if need_weight else None), (next(grads) if need_sigma else None), None, None
        grad_weight = grad * mask if need_weight else None
        grad_sigma = sigma_gradient(grad, weighted_derivative, sigma_raw.shape) if need_sigma else None
        return grad_weight, grad_sigma, None, None


def masked_weight(weight: torch.Tensor, sigma_raw: torch.Tensor, masks: torch.Tensor,
                  mask_of: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``weight ⊙ M`` for training: see ``MaskedWeight``."""
    return MaskedWeight.apply(weight, sigma_raw, masks, mask_of)
