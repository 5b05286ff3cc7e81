"""Non-finite loss or gradients (a diverging run): found without a host sync per step, and stopped before
any checkpoint can hold them.

``trainer.nonfinite=stop`` (default): each step's loss and gradient norm stay on the device; they are
read every ``trainer.log_every_steps`` steps, at each epoch's end and before every checkpoint. The
weights in memory may already be non-finite by then, so the run stops *without* saving: last.pt and
best.pt keep the last state saved before it, which was checked finite.

``trainer.nonfinite=skip``: a non-finite step is skipped (no optimizer update) and counted, and the run
stops once ``trainer.nonfinite_limit`` steps were skipped. Deciding whether to step needs the value
now: one host sync per step in this mode.

Under ``trainer.amp=fp16`` the GradScaler skips steps whose scaled gradients overflow, by design, and
lowers its scale: there only the loss is checked, never the gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import nn

from .faults import RunFailed

ADVICE = (
    "try a lower optim.lr, a warmup (sched.warmup_epochs=5), gradient clipping (trainer.grad_clip=1.0), "
    "or trainer.amp=bf16 instead of fp16"
)
SKIPPED = "nonfinite_skipped"  # TrainState.counters key


class Diverged(RunFailed):
    """The loss, the gradients or the weights became NaN or infinite."""


@dataclass
class _Step:
    step: int
    epoch: int
    lr: float
    values: torch.Tensor  # [loss, gradient norm] on the device


class NonFiniteGuard:
    def __init__(
        self,
        mode: str,
        limit: int,
        check_every: int,
        counters: dict[str, int],
        *,
        distributed: bool,
        kept: Callable[[], str],
    ) -> None:
        """``counters``: the run's TrainState.counters (the skipped count survives a resume); ``kept``:
        what the run folder holds and how to continue, for the message."""
        self.mode, self.limit, self.check_every = mode, limit, check_every
        self.counters, self.distributed, self.kept = counters, distributed, kept
        self.window: list[_Step] = []
        self.last_finite: Optional[tuple[int, float]] = None  # (step, loss)

    def observe(
        self,
        loss: torch.Tensor,
        model: nn.Module,
        *,
        step: int,
        epoch: int,
        lr: float,
        grad_norm: Optional[torch.Tensor] = None,
        scaler: Optional[torch.amp.GradScaler] = None,
    ) -> bool:
        """Record a step after its backward pass; True when its optimizer update must be skipped."""
        values = torch.stack([loss.detach().float().reshape(()), self._grad_norm(model, grad_norm, scaler)])
        record = _Step(step, epoch, lr, values)
        if self.mode == "skip":
            return self._skip_now(record)
        self.window.append(record)
        if len(self.window) >= self.check_every:
            self.check()
        return False

    def check(self, model: Optional[nn.Module] = None) -> None:
        """Raise ``Diverged`` if a recorded step (or, given ``model``, a weight or buffer) is not finite."""
        window, self.window = self.window, []
        if window:
            values = torch.stack([record.values for record in window])
            bad = self._any_rank(~torch.isfinite(values).all(dim=1)).cpu().tolist()
            values = values.cpu().tolist()
            for record, (loss, _), is_bad in zip(window, values, bad):
                if is_bad:
                    raise Diverged(self._message(record, loss))
                self.last_finite = (record.step, loss)
        if model is not None and not _finite_state(model):
            raise Diverged(
                f"training diverged: the weights became non-finite (last finite loss "
                f"{self._last_finite()}) and were not saved; {self.kept()}; {ADVICE}"
            )

    def _skip_now(self, record: _Step) -> bool:
        if bool(self._any_rank(~torch.isfinite(record.values).all()).item()):
            self.counters[SKIPPED] = self.counters.get(SKIPPED, 0) + 1
            if self.counters[SKIPPED] > self.limit:
                raise Diverged(
                    f"training diverged: more than trainer.nonfinite_limit={self.limit} steps had a "
                    f"non-finite loss or gradients (the last at step {record.step}, lr {record.lr:.4g}); "
                    f"{self.kept()}; {ADVICE}"
                )
            return True
        return False

    def _grad_norm(
        self, model: nn.Module, grad_norm: Optional[torch.Tensor], scaler: Optional[torch.amp.GradScaler]
    ) -> torch.Tensor:
        """The global gradient norm (from clipping when it ran); 0 under fp16, whose scaler owns overflows."""
        if scaler is not None:
            return torch.zeros((), device=_device(model))
        if grad_norm is None:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=_device(model))
        return grad_norm.detach().float().reshape(())

    def _any_rank(self, bad: torch.Tensor) -> torch.Tensor:
        """Every rank stops (or skips) at the same step, so none waits in a collective the others left."""
        bad = bad.float()
        if self.distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bad > 0

    def _last_finite(self) -> str:
        return "none yet" if self.last_finite is None else f"{self.last_finite[1]:.4g} at step {self.last_finite[0]}"

    def _message(self, record: _Step, loss: float) -> str:
        what = "gradients" if math.isfinite(loss) else f"loss ({loss})"
        return (
            f"training diverged: non-finite {what} at step {record.step} (epoch {record.epoch}, "
            f"lr {record.lr:.4g}; last finite loss {self._last_finite()}); {self.kept()}; {ADVICE}"
        )


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _finite_state(model: nn.Module) -> bool:
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all().item()) if tensors else True
