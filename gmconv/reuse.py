"""Evaluate an unfolded GMConv network at a plain one's speed, without folding it.

Every forward of a ``GMConv2d`` rebuilds ``W ⊙ M``: a pass over the weights, a measurable share of an
inference forward (docs/BENCHMARKS.md measures it). While nothing trains (an evaluation loop, EMA
evaluation), that product does not change, so it can be computed once per layer and reused.

Reuse is scoped to a ``with`` block rather than automatic: a weight changed through ``.data`` keeps its
version counter, so only code that knows the weights are fixed can promise it. Within the block the
product is still recomputed if the weight or σ is replaced or changed in place through autograd-visible
ops, and never reused when gradients are on or a graph is being traced, compiled or exported.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

from .conv import GMConv2d, Reused


@contextmanager
def reuse_masked_weights(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, each ``GMConv2d`` of ``model`` computes its masked weight once (under ``no_grad`` or
    ``inference_mode``) and reuses it; leaving the block frees the copies (one per layer, the weights' size).

        with torch.inference_mode(), gmconv.reuse_masked_weights(model):
            logits = model(images)
    """
    layers = [m for m in model.modules() if isinstance(m, GMConv2d)]
    for layer in layers:
        layer._reused = Reused()
    try:
        yield model
    finally:
        for layer in layers:
            layer._reused = None
