"""Run train.py with a fault injected at a chosen moment: the reliability tests' tool, not part of the framework.

    python tests/inject.py [--kill-in-write N] [--kill-in-eval N] [--kill-at-step N] [--term-at-step N]
                           [--hold-at-step N] [--bug-at-step N] [--run-time "YYYY-MM-DD HH:MM:SS"] -- ARGS

--kill-in-write N: the process SIGKILLs itself halfway through writing its N-th checkpoint file.
--kill-in-eval N:  the process SIGKILLs itself during its N-th evaluation, after the first batch.
--kill-at-step N:  the process SIGKILLs itself right after optimizer step N (and the checkpoint due then).
--term-at-step N:  the process sends itself SIGTERM at optimizer step N (a preemption: it saves and stops).
--hold-at-step N:  the process waits, still training, after optimizer step N until a signal from outside ends it
                   (so an outside kill lands mid-training however fast or loaded the machine is).
--bug-at-step N:   the engine raises ValueError("boom") at optimizer step N (a_bug_in_the_engine): an internal
                   error, which train.py must report as a bug, not as bad input.
--run-time T:      the run's start time is T (two runs "started in the same second").
ARGS are train.py's arguments; train.py then runs as ``python train.py ARGS`` would.
"""

from __future__ import annotations

import argparse
import builtins
import os
import runpy
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import engine.checkpoint  # noqa: E402
import engine.distributed  # noqa: E402
import engine.fit  # noqa: E402


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_in_write(n: int) -> None:
    """The n-th binary file engine.checkpoint opens (a checkpoint's temporary file) gets half its bytes."""
    calls = [0]

    class HalfWritten:
        def __init__(self, file: Any) -> None:
            self.file = file

        def write(self, data: Any) -> int:
            data = memoryview(data)
            self.file.write(data[: len(data) // 2])
            self.file.flush()
            os.fsync(self.file.fileno())
            die()

        def __getattr__(self, name: str) -> Any:
            return getattr(self.file, name)

        def __enter__(self) -> "HalfWritten":
            return self

        def __exit__(self, *exc: Any) -> None:
            self.file.close()

    def patched_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        file = builtins.open(path, mode, *args, **kwargs)
        if mode == "wb":
            calls[0] += 1
            if calls[0] == n:
                return HalfWritten(file)
        return file

    engine.checkpoint.open = patched_open


def kill_in_eval(n: int) -> None:
    calls = [0]
    original = engine.fit.evaluate

    class DieAfterFirstBatch:
        def __init__(self, loader: Any) -> None:
            self.loader = loader

        def __len__(self) -> int:
            return len(self.loader)

        def __iter__(self) -> Any:
            for i, batch in enumerate(self.loader):
                if i == 1:
                    die()
                yield batch

    def patched(model: Any, loader: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(model, DieAfterFirstBatch(loader) if calls[0] == n else loader, *args, **kwargs)

    engine.fit.evaluate = patched


def a_bug_in_the_engine() -> None:
    raise ValueError("boom")


def at_step(n: int, action: str) -> None:
    """After step ``n``'s work: SIGKILL (``kill``) or wait for a signal (``hold``); or SIGTERM (``term``) or a
    ValueError (``bug``) before the step's stop check."""
    original = engine.fit.Fit.on_step

    def patched(self: Any, state: Any) -> bool:
        if state.step == n and action == "term":
            os.kill(os.getpid(), signal.SIGTERM)
        if state.step == n and action == "bug":
            a_bug_in_the_engine()
        stop = original(self, state)
        if state.step == n and action == "kill":
            die()
        while state.step == n and action == "hold":
            signal.pause()
        return stop

    engine.fit.Fit.on_step = patched


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-in-write", type=int)
    parser.add_argument("--kill-in-eval", type=int)
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--term-at-step", type=int)
    parser.add_argument("--hold-at-step", type=int)
    parser.add_argument("--bug-at-step", type=int)
    parser.add_argument("--run-time")
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.kill_in_write:
        kill_in_write(args.kill_in_write)
    if args.kill_in_eval:
        kill_in_eval(args.kill_in_eval)
    for action in ("kill", "term", "hold", "bug"):
        step = getattr(args, f"{action}_at_step")
        if step:
            at_step(step, action)
    if args.run_time:
        start = datetime.fromisoformat(args.run_time)
        engine.distributed.agree_on_run_time = lambda info: start
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    sys.argv = [str(ROOT / "train.py"), *train_args]
    runpy.run_path(str(ROOT / "train.py"), run_name="__main__")


if __name__ == "__main__":
    main()
