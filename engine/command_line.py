"""The command line before Hydra composes it: ``resume=`` and ``eval_only=true ckpt=`` take their
settings from the checkpoint, so nobody retypes a run's model, conv or data.

Every checkpoint stores its resolved config. Its values go in front of the user's own overrides,
which therefore still win (``data.root=/elsewhere``); a group the user selects explicitly
(``data=cifar10``) is taken from the command line whole. A resume of a run folder also pins Hydra's
run folder to that folder, so the run continues where it lives.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser

from .checkpoint import BEST, LAST, find_checkpoint, load_checkpoint

GROUPS = ("model", "conv", "data", "optim", "sched")
RESUMED_SETTINGS = (*GROUPS, "trainer", "seed")  # a resumed run continues with all of these
EVALUATED_SETTINGS = ("model", "conv", "data")  # an evaluation needs only these
EVAL_RUN_DIR = "outputs/eval/${data.name}/${model.name}-${conv.name}/${run_time:%Y-%m-%d_%H-%M-%S}"


def expand_command_line(argv: list[str]) -> list[str]:
    """``argv`` with the checkpoint's settings inserted before the user's overrides, where one applies."""
    program, args = argv[0], argv[1:]
    if "-m" in args or "--multirun" in args:
        return argv
    given = _parse(args)
    resume, ckpt, eval_only = given.get("resume"), given.get("ckpt"), given.get("eval_only") in (True, "true")
    if eval_only and ckpt:
        path = find_checkpoint(ckpt, (BEST, LAST))
        extra = [] if "hydra.run.dir" in given else [f"hydra.run.dir={EVAL_RUN_DIR}"]
        return [program, *saved_settings(path, EVALUATED_SETTINGS, given), *args, *extra]
    if resume and resume != "auto" and not eval_only:
        path = find_checkpoint(resume, (LAST,))
        run_dir = run_folder_of(path)
        pinned = [] if run_dir is None or "hydra.run.dir" in given else [f"hydra.run.dir={quote(str(run_dir))}"]
        return [program, *saved_settings(path, RESUMED_SETTINGS, given), *args, *pinned]
    return argv


def run_folder_of(checkpoint: Path) -> Path | None:
    """The run folder holding ``checkpoint`` (``<run>/checkpoints/last.pt``), or None for a loose file."""
    run_dir = checkpoint.resolve().parent.parent
    is_run = checkpoint.resolve().parent.name == "checkpoints" and (run_dir / ".hydra").is_dir()
    return run_dir if is_run else None


def saved_settings(checkpoint: Path, sections: tuple[str, ...], given: dict[str, Any]) -> list[str]:
    """The checkpoint's config as overrides, minus the groups and keys the user sets explicitly."""
    config = load_checkpoint(checkpoint).get("config") or {}
    overrides = []
    for section in sections:
        if section not in config or section in given:
            continue
        values = config[section] if isinstance(config[section], dict) else {"": config[section]}
        for key, value in values.items():
            dotted = f"{section}.{key}" if key else section
            if dotted not in given:
                overrides.append(f"{'++' if isinstance(value, dict) else ''}{dotted}={format_value(value)}")
    return overrides


def format_value(value: Any) -> str:
    """A plain config value in Hydra's override grammar (strings quoted, so any path survives)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    return quote(str(value))


def quote(text: str) -> str:
    """Single-quoted for Hydra: backslashes before a quote (or the end) doubled, quotes escaped."""
    return "'" + re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text).replace("'", "\\'") + "'"


def _parse(args: list[str]) -> dict[str, Any]:
    """``{key or group: value}`` of the overrides, parsed as Hydra parses them (quotes removed)."""
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    except Exception:  # noqa: BLE001 - a malformed override: Hydra itself reports it, with its grammar
        return {}
    return {o.key_or_group: o.value() for o in overrides}


