"""Which precision and memory format a run computes in, chosen for its device.

``trainer.amp=auto`` (the default) trains under bf16 autocast where the device computes bf16 in
hardware: a CUDA device with native bf16 (Ampere and later), a CPU with AMX or AVX-512 BF16 units
(asked through ``torch.cpu.get_capabilities()``). Elsewhere it stays in fp32, where emulated bf16 would
only be slower. ``trainer.channels_last=auto`` follows it: NHWC is the layout the bf16 convolution
kernels of cuDNN and oneDNN run natively.

Parameters, σ, the Gaussian masks, optimizer state and the loss stay fp32 whatever is chosen: autocast
casts the convolutions' inputs only, the loss is computed on fp32 logits (engine/loop.py) and the masks
are computed in fp32 before the product (gmconv/mask.py).

The choice is written back into the run's config (``trainer.amp=bf16``, ``trainer.channels_last=true``),
so the run's record says what it computed in, and a resume, which takes its settings from the
checkpoint, continues in the same precision on any machine unless the command line says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from .errors import ConfigError

AUTO = "auto"
FP32 = ("none", "fp32")  # two names for no autocast: "none" is what the run's config records


@dataclass(frozen=True)
class Precision:
    amp: str  # none | bf16 | fp16
    channels_last: bool
    why: str  # for the log: how amp and channels_last were chosen

    def line(self) -> str:
        name = "fp32" if self.amp == "none" else f"{self.amp} autocast"
        layout = "channels_last" if self.channels_last else "contiguous (NCHW)"
        return f"precision: {name}, {layout} ({self.why})"


def fast_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 in hardware, and what was found (for the log)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch before 2.5 knows no emulation: its answer is the hardware's
            native = torch.cuda.is_bf16_supported()
        if native:
            return True, f"{name} computes bf16 natively"
        return False, f"{name} has no native bf16 (trainer.amp=fp16 uses its fp16 tensor cores)"
    if device.type == "cpu":
        capabilities = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.10; older: no way to ask
        if capabilities is None:
            return False, "this torch cannot report the CPU's bf16 units (torch.cpu.get_capabilities)"
        found = capabilities()
        units = [unit for unit in ("amx_bf16", "avx512_bf16") if found.get(unit)]
        cpu = found.get("cpu_name") or "this CPU"
        if units:
            return True, f"{cpu} has {' and '.join(u.upper().replace('_', '-') for u in units)} units"
        return False, f"{cpu} has no AMX or AVX-512 BF16 units"
    return False, f"no bf16 check for a {device.type} device"


def channels_last_setting(value: Any) -> bool | None:
    """``trainer.channels_last`` as typed: True, False, or None for auto; anything else is a ConfigError."""
    if value == AUTO:
        return None
    if isinstance(value, bool):
        return value
    raise ConfigError(f"trainer.channels_last={value} is invalid: expected auto, true or false")


def choose_precision(trainer: DictConfig, device: torch.device) -> Precision:
    """The precision and memory format ``trainer.amp`` / ``trainer.channels_last`` ask for on ``device``."""
    requested = str(getattr(trainer.amp, "value", trainer.amp))
    channels_last = channels_last_setting(trainer.channels_last)
    if requested == AUTO:
        fast, found = fast_bf16(device)
        amp = "bf16" if fast else "none"
        why = f"trainer.amp=auto: {found}"
    else:
        amp = "none" if requested in FP32 else requested
        why = f"trainer.amp={requested}"
    if channels_last is None:
        channels_last = amp != "none"
        why += f"; trainer.channels_last=auto: {'on' if channels_last else 'off'} with {amp_name(amp)}"
    return Precision(amp, channels_last, why)


def amp_name(amp: str) -> str:
    return "fp32" if amp in FP32 else amp


def apply_precision(cfg: DictConfig, device: torch.device) -> Precision:
    """Choose the precision for ``device`` and write it into ``cfg.trainer``; returns the choice."""
    precision = choose_precision(cfg.trainer, device)
    cfg.trainer.amp = precision.amp
    cfg.trainer.channels_last = precision.channels_last
    return precision
