"""Run ``python ARGS`` as a user would, in a fork of an interpreter that has already imported the framework.

A fresh interpreter spends 3-4 s of a 2-core CPU importing torch, torchvision, timm, Hydra and the framework
before it reads its command line, and the tests start about a hundred commands. Here a server process
(``python tests/preloaded.py``, started on first use) imports them once, before any torch operation runs (so
no thread pool exists to be copied half-way), and forks for each command: the child is its own process, with
the command line, working directory, environment, ``sys.path`` and standard streams a fresh ``python`` would
have. It runs the script or module as ``__main__``, waits for its threads, runs its exit handlers and exits
with the interpreter's exit code (1 and the traceback for an uncaught exception; -N when signal N ends it).

What a fresh interpreter does differently cannot be tested through this: which modules a command imports
(tests/test_packaging.py and tests/test_data.py start real interpreters for that), and settings read when a
module is imported.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# imported once by the server: what every command of the framework imports anyway
PRELOAD = ("torch", "torchvision", "timm", "hydra", "engine.runner", "engine.command_line", "analysis")

WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC

_server: subprocess.Popen | None = None
_replies = b""  # what the server has written and no one has read yet
_started_pids: list[int] = []  # the commands started, in the order they were asked for
_exit_codes: dict[int, int] = {}  # the commands that ended, by pid


class Command:
    """``python *args`` (a script's path, or ``-m module``) started in a fork of the server, with what a test
    asks of a ``subprocess.Popen``: ``pid``, ``poll``, ``wait``, ``send_signal``, ``kill``, ``returncode``, and
    its standard output and error once it has ended."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
        self.args = [sys.executable, *args]
        self.returncode: int | None = None
        self._streams = tempfile.TemporaryDirectory()
        self._out, self._err = Path(self._streams.name, "stdout"), Path(self._streams.name, "stderr")
        request = {
            "args": list(args),
            "env": {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            "cwd": str(cwd),
            "out": str(self._out),
            "err": str(self._err),
        }
        server = _started()
        server.stdin.write(json.dumps(request).encode() + b"\n")
        server.stdin.flush()
        while not _started_pids:
            _read_replies(None)
        self.pid = _started_pids.pop(0)

    def poll(self) -> int | None:
        return self._ended(0)

    def wait(self, timeout: float | None = None) -> int:
        if self._ended(timeout) is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def output(self) -> tuple[str, str]:
        return tuple(path.read_text(errors="replace") if path.is_file() else "" for path in (self._out, self._err))

    def _ended(self, timeout: float | None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None and self.pid not in _exit_codes:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not _read_replies(left):
                return None
        if self.returncode is None:
            self.returncode = _exit_codes.pop(self.pid)
        return self.returncode


def run(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    """``python *args`` to its end: the outcome ``subprocess.run(..., capture_output=True, text=True)`` reports."""
    command = Command(*args, env=env, cwd=cwd)
    try:
        command.wait(timeout)
    except subprocess.TimeoutExpired:
        command.kill()
        command.wait()
        raise subprocess.TimeoutExpired(command.args, timeout, *command.output()) from None
    return subprocess.CompletedProcess(command.args, command.returncode, *command.output())


def _started() -> subprocess.Popen:
    global _server, _replies
    if _server is None or _server.poll() is not None:
        _server = subprocess.Popen([sys.executable, __file__], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        _replies = b""
        atexit.register(_server.stdin.close)  # the server ends when its requests do
    return _server


def _read_replies(timeout: float | None) -> bool:
    """Read what the server said within ``timeout`` seconds (None: wait for it); False if it said nothing."""
    global _replies
    fd = _server.stdout.fileno()
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return False
    chunk = os.read(fd, 65536)
    if not chunk:
        raise RuntimeError("the preloaded interpreter's server ended; its error is above")
    *lines, _replies = (_replies + chunk).split(b"\n")
    for line in map(json.loads, lines):
        if "started" in line:
            _started_pids.append(line["started"])
        else:
            _exit_codes[line["ended"]] = line["exit"]
    return True


def serve() -> None:
    """The server: import PRELOAD, then fork once per request line and say when each child starts and ends."""
    sys.path[0] = str(ROOT)
    for module in PRELOAD:
        __import__(module)
    requests, pending, running = sys.stdin.fileno(), b"", set()
    while requests is not None or running:
        if requests is not None and select.select([requests], [], [], 0.05)[0]:
            chunk = os.read(requests, 65536)
            requests = requests if chunk else None  # the tests ended: finish the commands running, then exit
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                pid = os.fork()
                if pid == 0:
                    _as_main(**json.loads(line))
                running.add(pid)
                _reply({"started": pid})
        elif requests is None:
            time.sleep(0.05)
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            running.discard(pid)
            _reply({"ended": pid, "exit": os.waitstatus_to_exitcode(status)})


def _reply(message: dict[str, int]) -> None:
    os.write(1, json.dumps(message).encode() + b"\n")


def _as_main(args: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """In the forked child: become ``python *args`` and exit as it would."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    if "OMP_NUM_THREADS" in env:  # read by torch when its thread pool starts, which it has not in the server
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, out, WRITE), (2, err, WRITE)):
        opened = os.open(path, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    code = _main(args)
    for thread in threading.enumerate():  # the interpreter waits for non-daemon threads before it exits
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _main(args: list[str]) -> int:
    module = args[1] if args[0] == "-m" else None
    script = None if module else str(Path(args[0]).resolve())
    sys.argv = [script or module, *args[2 if module else 1 :]]
    sys.path[0] = os.getcwd() if module else str(Path(script).parent)
    try:
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        return _exit_code(stop.code)
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def _exit_code(code: Any) -> int:
    """What the interpreter makes of ``sys.exit(code)``."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    serve()
