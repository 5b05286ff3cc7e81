"""The masks of many GMConv2d layers, computed together: a dozen operations per step instead of a dozen per layer.

A mask depends on σ alone, so the σ of every layer with the same kernel size (and dtype, device and
parametrisation) are concatenated and turned into masks, and their derivatives for σ's gradient, in one
batched computation outside autograd; each layer then takes its slice (gmconv/masked_weight.py uses it).

When the masks are computed: a layer's slice serves one forward. The first layer of the next forward
finds its slice used and recomputes every layer's, so each forward pass (a training step, an evaluation
batch) computes them once, whatever part of the network it runs and however σ was changed in between,
``.data`` included. A slice that was not used (its layer skipped that pass) is still checked against σ's
identity and version counter before it serves.

``convert_to_gmconv`` shares one ``SharedMasks`` among the layers it builds; for GMConv2d layers built by
hand, ``share_masks(model)`` does it. A layer outside any (or on a ``DataParallel`` replica) computes its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import torch
from torch import nn

from .mask import masks_and_derivatives

if TYPE_CHECKING:
    from .conv import GMConv2d


@dataclass
class _Slice:
    """One layer's masks (``(1 or 2, *mask shape)``) and what they were computed from."""

    masks: torch.Tensor
    sigma_raw: torch.Tensor
    state: tuple


def _state(layer: GMConv2d) -> tuple:
    """What the masks depend on beyond σ's values: σ's storage and version, the weight's dtype and device."""
    raw = layer.sigma_raw
    return raw.data_ptr(), raw._version, layer.weight.dtype, raw.device


def _group_key(layer: GMConv2d, with_derivative: bool) -> tuple:
    """Layers with equal keys have their masks computed in one batch."""
    return (layer.kernel_size, layer.sigma_raw.device, layer.weight.dtype, layer.sigma_parametrization,
            layer.sigma_min, with_derivative and layer.sigma_raw.requires_grad)


def mask_shape(layer: GMConv2d) -> tuple[int, ...]:
    """The shape of one mask set, broadcastable to the layer's (out, in/groups, kh, kw) weight."""
    sigma_shape = tuple(layer.sigma_raw.shape)  # (1,), (out,) or (out, in/groups)
    return (*sigma_shape, *(1,) * (2 - len(sigma_shape)), *layer.kernel_size)


def compute_masks(layers: Iterable[GMConv2d], with_derivative: bool) -> dict[GMConv2d, _Slice]:
    """Every layer's masks (and, where σ is learnable and ``with_derivative``, ∂M/∂raw), batched by group."""
    groups: dict[tuple, list[GMConv2d]] = {}
    for layer in layers:
        groups.setdefault(_group_key(layer, with_derivative), []).append(layer)
    slices: dict[GMConv2d, _Slice] = {}
    with torch.no_grad():
        for (_, _, dtype, parametrization, sigma_min, derivative), members in groups.items():
            raws = [m.sigma_raw.reshape(-1) for m in members]
            flat = torch.cat(raws) if len(raws) > 1 else raws[0]
            masks = masks_and_derivatives(flat, members[0].sq_dist, parametrization, sigma_min, dtype, derivative)
            start = 0
            for layer, raw in zip(members, raws):
                stop = start + raw.numel()
                sliced = masks[:, start:stop].view(masks.shape[0], *mask_shape(layer))
                slices[layer] = _Slice(sliced, layer.sigma_raw, _state(layer))
                start = stop
    return slices


class SharedMasks:
    """The masks of a set of GMConv2d layers, computed in one batch per forward pass (module docstring)."""

    def __init__(self, layers: Iterable[GMConv2d]) -> None:
        self.layers = list(layers)
        self._members = set(self.layers)
        self._unused: dict[GMConv2d, _Slice] = {}

    def masks(self, layer: GMConv2d, with_derivative: bool) -> torch.Tensor:
        """``layer``'s masks, (1, *mask shape), or (2, *mask shape) with ∂M/∂raw when ``with_derivative``."""
        if layer not in self._members:  # e.g. a DataParallel replica, which shares its original's attributes
            return compute_masks([layer], with_derivative)[layer].masks
        found = self._unused.pop(layer, None)
        if found is None or not _serves(found, layer, with_derivative):
            self._unused = compute_masks(self.layers, with_derivative)
            found = self._unused.pop(layer)
        return found.masks

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles keep the layers, never the computed masks (a copy's σ are other tensors)."""
        return {"layers": self.layers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["layers"])


def _serves(found: _Slice, layer: GMConv2d, with_derivative: bool) -> bool:
    has_derivative = found.masks.shape[0] == 2
    return (found.sigma_raw is layer.sigma_raw and found.state == _state(layer)
            and (has_derivative or not (with_derivative and layer.sigma_raw.requires_grad)))


def share_masks(model: nn.Module) -> SharedMasks | None:
    """Let every ``GMConv2d`` of ``model`` compute its mask in one batch with the others (None: there are none).

    ``convert_to_gmconv`` calls it; call it for a network built with GMConv2d layers directly. Results are
    the same either way; only the number of operations per step changes.
    """
    from .conv import GMConv2d

    layers = [m for m in model.modules() if isinstance(m, GMConv2d)]
    if not layers:
        return None
    shared = SharedMasks(layers)
    for layer in layers:
        layer._shared_masks = shared
    return shared
