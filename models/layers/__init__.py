"""The layers GMConv is compared with (models/conv_types.py converts backbones to them)."""

from torch import nn

from .dcls import Dcls2d
from .deformable import DeformConv2d

__all__ = ["Dcls2d", "DeformConv2d", "receptive_field_groups"]


def receptive_field_groups(model: nn.Module, weight_decay: float, offset_lr_scale: float) -> list[dict]:
    """Optimizer groups for what the rivals learn about the receptive field: the deformable layers' offset
    branch at lr × ``offset_lr_scale`` (decayed like the other weights, as in the DCN papers), and DCLS's
    positions and widths, never decayed (decay would pull every element to the kernel's centre)."""
    offsets = [p for m in model.modules() if isinstance(m, DeformConv2d) for p in m.offset.parameters()]
    spacings = [p for m in model.modules() if isinstance(m, Dcls2d) for p in (m.positions, m.sigma_raw)]
    return [
        {"params": offsets, "weight_decay": weight_decay, "lr_scale": offset_lr_scale},
        {"params": spacings, "weight_decay": 0.0},
    ]
