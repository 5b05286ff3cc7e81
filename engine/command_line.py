"""The command line before Hydra composes it: ``resume=`` and ``eval_only=true ckpt=`` take their
settings from the checkpoint, so nobody retypes a run's model, conv or data.

Every checkpoint stores its resolved config. Its values go in front of the user's own overrides,
which therefore still win (``data.root=/elsewhere``); a group the user selects explicitly
(``data=cifar10``) is taken from the command line whole. A resume of a run folder also pins Hydra's
run folder to that folder, so the run continues where it lives. Hydra's flags (``--cfg job``) go
first, so a resume or an evaluation can be previewed. The run records what the user typed
(``CommandLine.typed``), not the settings inserted here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser

from data.text import first_line

from .checkpoint import BEST, LAST, find_checkpoint, load_checkpoint
from .config import compose_config, unknown_key, validate
from .errors import BadInput, ConfigError

GROUPS = ("model", "conv", "data", "optim", "sched", "logger")
RESUMED_SETTINGS = (*GROUPS, "trainer", "recipe", "seed")  # a resumed run continues with all of these
EVALUATED_SETTINGS = ("model", "conv", "data")  # an evaluation needs only these
EVAL_RUN_DIR = "outputs/eval/${data.name}/${model.name}-${conv.name}/${run_time:%Y-%m-%d_%H-%M-%S}"


class CommandLine(NamedTuple):
    argv: list[str]  # for Hydra
    typed: Optional[list[str]]  # the overrides the user typed, where settings were inserted (else None)


def expand_command_line(argv: list[str]) -> CommandLine:
    """``argv`` with the checkpoint's settings inserted before the user's overrides, where one applies."""
    program, args = argv[0], argv[1:]
    if "-m" in args or "--multirun" in args:
        return CommandLine(argv, None)
    flags, overrides = _split_flags(args)
    given = _parse(overrides)
    resume, ckpt, eval_only = given.get("resume"), given.get("ckpt"), given.get("eval_only") in (True, "true")
    typed = [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]
    if eval_only and ckpt:
        path = find_checkpoint(ckpt, (BEST, LAST))
        extra = [] if "hydra.run.dir" in given else [f"hydra.run.dir={EVAL_RUN_DIR}"]
        return CommandLine(
            [program, *flags, *saved_settings(path, EVALUATED_SETTINGS, given), *overrides, *extra], typed
        )
    if resume and resume != "auto" and not eval_only:
        path = find_checkpoint(resume, (LAST,))
        run_dir = run_folder_of(path)
        pinned = [] if run_dir is None or "hydra.run.dir" in given else [f"hydra.run.dir={quote(str(run_dir))}"]
        return CommandLine(
            [program, *flags, *saved_settings(path, RESUMED_SETTINGS, given), *overrides, *pinned], typed
        )
    return CommandLine(argv, None)


def _split_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra's flags with their values, in order; the overrides): an override has a ``=`` or deletes a
    key (``~key``); a flag starts with ``-`` and may be followed by its value (``--cfg job``)."""
    flags, overrides = [], []
    for arg in args:
        is_override = not arg.startswith("-") and ("=" in arg or arg.startswith("~"))
        (overrides if is_override else flags).append(arg)
    return flags, overrides


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
        if section == "logger":  # a list of options: the ones chosen, then their settings
            chosen = {name: settings for name, settings in config[section].items() if settings is not None}
            overrides.append(f"logger=[{','.join(chosen)}]")
            overrides += [f"logger.{n}.{k}={as_override(v)}" for n, kv in chosen.items() for k, v in kv.items()]
            continue
        values = config[section] if isinstance(config[section], dict) else {"": config[section]}
        for key, value in values.items():
            dotted = f"{section}.{key}" if key else section
            if dotted not in given:
                overrides.append(f"{'++' if isinstance(value, dict) else ''}{dotted}={as_override(value)}")
    return overrides


def as_override(value: Any) -> str:
    """A plain config value in Hydra's override grammar (strings quoted, so any path survives)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(as_override(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{as_override(v)}" for k, v in value.items()) + "}"
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


def check_composes(argv: list[str]) -> None:
    """Compose the config as Hydra will, and turn its errors (an unknown option, a value of the wrong
    type, a misspelt key, bad override syntax) into one ConfigError line naming the override and the fix,
    instead of Hydra's multi-line report. Help, info and sweeps are left to Hydra."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    flags, overrides = _split_flags(argv[1:])
    if any(flag in HYDRA_OWN_FLAGS for flag in flags):
        return
    try:
        compose_config(*overrides, hydra=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(composition_error(err)) from None


def check_sweep_jobs(argv: list[str]) -> None:
    """A ``-m`` sweep of Hydra's basic sweeper: compose and check every job before the first one trains, and
    refuse the sweep with one line per job that would be refused (a setting a job's options ignore is not
    such a job: it runs without it, runner.py). Another sweeper (``hydra/sweeper=...``, ``hparams_search=``)
    chooses its jobs as it goes, and its jobs are checked when they start."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    flags, overrides = _split_flags(argv[1:])
    if not set(SWEEP_FLAGS) & set(flags) or set(INFO_FLAGS) & set(flags):
        return
    if any(o.lstrip("+").startswith(SEARCHES) for o in overrides):
        return
    try:  # the basic sweeper's own expansion: the jobs checked are the jobs it will launch, in its order
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(composition_error(err)) from None
    jobs = [job for batch in batches for job in batch]
    refused = []
    for number, job in enumerate(jobs):
        label = " ".join(o for o in job if not o.startswith("hydra."))
        try:
            validate(compose_config(*job), sweep_job=True)
        except BadInput as err:
            refused.append(f"job {number} ({label}): {err}")
        except (HydraException, OmegaConfBaseException) as err:
            refused.append(f"job {number} ({label}): {composition_error(err)}")
    if refused:
        raise ConfigError(
            f"{len(refused)} of the sweep's {len(jobs)} jobs would be refused, so none was started:\n  "
            + "\n  ".join(refused)
        )


def check_search(argv: list[str]) -> None:
    """A search (``hparams_search=``, another ``hydra/sweeper=``) draws its trials as it goes, but they differ only
    in the searched parameters: a setting refused in the search's own config, other than a searched one, would
    fail every trial. Refuse such a search before its first trial, in one line."""
    flags, typed = _split_flags(argv[1:])
    if set(INFO_FLAGS) & set(flags) or not any(o.lstrip("+").startswith(SEARCHES) for o in typed):
        return
    parsed = OverridesParser.create().parse_overrides(typed)
    fixed = [o for o in parsed if not o.is_sweep_override()]  # the same in every trial
    params = compose_config(*(o.input_line for o in fixed), hydra=True).hydra.sweeper.get("params") or {}
    searched = {*params, *(o.key_or_group for o in parsed if o.is_sweep_override())} - {o.key_or_group for o in fixed}
    try:
        validate(compose_config(*(o.input_line for o in fixed)), sweep_job=True)
    except BadInput as err:
        if not any(key in str(err) for key in searched):
            raise ConfigError(f"every trial of the search would be refused, so none was started: {err}") from None


# flags whose output is Hydra's own (or a sweep, whose jobs report their own errors)
INFO_FLAGS = ("-h", "--help", "--hydra-help", "--version", "-i", "--info", "-sc", "--shell-completion")
SWEEP_FLAGS = ("-m", "--multirun")
SEARCHES = ("hydra/sweeper=", "hparams_search=")  # overrides that hand the jobs to a sweeper that draws them
HYDRA_OWN_FLAGS = (*INFO_FLAGS, *SWEEP_FLAGS)


# Hydra plugins behind an extra of pyproject.toml: group -> option -> (plugin, extra)
PLUGIN_EXTRAS = {
    "sweeper": {"optuna": ("Optuna's sweeper (hparams_search=)", "search")},
    "launcher": {"slurm": ("the SLURM launcher", "slurm"), "submitit_slurm": ("the SLURM launcher", "slurm")},
}


def composition_error(err: Exception) -> str:
    """One line for an error Hydra raised while composing."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause = err.__cause__
    if isinstance(err, MissingConfigException) and err.options is not None and err.missing_cfg_file:
        group, _, option = str(err.missing_cfg_file).rpartition("/")
        if group.endswith(tuple(PLUGIN_EXTRAS)) and option in PLUGIN_EXTRAS[group.rpartition("/")[2]]:
            plugin, extra = PLUGIN_EXTRAS[group.rpartition("/")[2]][option]
            return f'{group}={option} needs {plugin}: pip install -e ".[{extra}]"'
        return f"{group}={option} is not an option of {group}; choose one of {', '.join(err.options)}"
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and getattr(cause, "full_key", None):
        return unknown_key(cause.full_key)
    if isinstance(err, OverrideParseException):
        return (
            f"cannot read the command line: {first_line(err)} (Hydra's override grammar: "
            "https://hydra.cc/docs/advanced/override_grammar/basic/)"
        )
    merging = re.match(r"Error merging override (\S+)", str(err))
    if merging and cause is not None:
        return f"{merging.group(1)} is invalid: {first_line(cause)}"
    return "; ".join(first_line(e) for e in (err, cause) if e is not None)
