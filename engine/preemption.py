"""Stop at a step boundary on SIGTERM / SIGUSR1 (cluster preemption) or Ctrl-C, on every rank at the same step."""

from __future__ import annotations

import logging
import signal
import threading

import torch
import torch.distributed as dist

from .distributed import DistInfo

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preempted(Exception):
    """Training stopped at a step boundary on a signal, with its checkpoint saved: not a failure."""


class StopRequest:
    """Records a preemption signal; ``should_stop`` tells every rank whether any rank received one.

    torchrun forwards SIGTERM to every worker and SLURM signals every task, but not at the same
    instant: the flag is all-reduced, so all ranks stop after the same step and save one
    consistent checkpoint instead of deadlocking in the next collective. That all-reduce waits
    for the GPU, so under DDP it runs every ``SYNC_EVERY`` steps only, not on every step.
    """

    SYNC_EVERY = 10

    def __init__(self, dist_info: DistInfo, device: torch.device) -> None:
        self.dist_info = dist_info
        self.flag = torch.zeros(1, device=device)
        self.received: int | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        """A second Ctrl-C is someone who will not wait: stop at once (the last checkpoint is kept, and an
        interrupted checkpoint write leaves the previous file whole)."""
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        again = " (Ctrl-C again stops at once, without saving)" if signum == signal.SIGINT else ""
        log.warning("received %s: saving a checkpoint at the next step boundary%s", signal.Signals(signum).name, again)

    def should_stop(self, step: int, *, sync: bool = False) -> bool:
        """Whether any rank received a signal; under DDP known every SYNC_EVERY steps, or now with ``sync``."""
        if not self.dist_info.enabled:
            return self.received is not None
        if step % self.SYNC_EVERY and not sync:
            return False
        self.flag.fill_(float(self.received is not None))
        dist.all_reduce(self.flag)
        return bool(self.flag.item())

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
