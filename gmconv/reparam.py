"""Re-parameterisation (RepVGG, MobileOne, FastViT, RepViT, ...) after GMConv: masks first, then branches.

A re-parameterisable block merges its branches by reading each convolution's raw ``weight``; a GMConv
layer's mask is not in that tensor, so re-parameterising a converted block silently drops the masks.
Folding the block's GMConv layers first (W ⊙ M into a plain ``nn.Conv2d``) makes it exact.
"""

from __future__ import annotations

import copy
import functools

from torch import nn

from .conv import GMConv2d
from .dynamic import DynamicGMConv2d
from .fold import fold_gmconv

# The methods timm.utils.reparameterize_model calls on a block (and users call directly).
REPARAMETERIZE_METHODS = ("fuse", "reparameterize", "switch_to_deploy")


def reparameterize(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """``fold_gmconv`` then ``timm.utils.reparameterize_model``: the deployment form of a re-parameterisable model.

    A copy is re-parameterised unless ``inplace`` (as timm does). Needs timm.
    """
    try:
        from timm.utils import reparameterize_model
    except ImportError as err:  # gmconv itself depends on torch alone
        raise ImportError("gmconv.reparameterize needs timm (pip install timm); fold_gmconv alone does not") from err
    model = model if inplace else copy.deepcopy(model)
    return reparameterize_model(fold_gmconv(model), inplace=True)


def guard_reparameterization(model: nn.Module) -> list[str]:
    """Make every re-parameterisation method of a block holding GMConv layers fold those layers first.

    The block's own ``fuse`` / ``reparameterize`` / ``switch_to_deploy`` is shadowed, on that block only,
    by one that calls ``fold_gmconv(block)`` and then the original, so ``timm.utils.reparameterize_model``
    (or a direct call) keeps the masks. Nothing changes for the forward pass. Returns the guarded names.
    """
    guarded = []
    for name, module in model.named_modules():
        if isinstance(module, (GMConv2d, DynamicGMConv2d)):
            continue
        methods = [m for m in REPARAMETERIZE_METHODS if callable(getattr(type(module), m, None))]
        if methods and any(isinstance(m, (GMConv2d, DynamicGMConv2d)) for m in module.modules()):
            for method in methods:
                module.__dict__[method] = functools.partial(_fold_then, module, method)
            guarded.append(name)
    return guarded


def _fold_then(block: nn.Module, method: str) -> object:
    """Fold ``block``'s GMConv layers (a dynamic one raises: it has no single mask), then re-parameterise."""
    fold_gmconv(block)
    return getattr(type(block), method)(block)
