"""Input the framework refuses: what the user gave (a setting, the command line, data, a checkpoint, a run
folder) cannot be used. train.py, predict.py and the scripts print the message alone, in one line, and exit 2;
any other exception is a bug and is reported with its traceback (exit 1). engine/faults.py holds the other
one-line kind: failures while a run was going (exit 1).

Each type also subclasses the built-in error it used to be, so ``except ValueError`` and
``except FileNotFoundError`` go on catching it. This module imports nothing of the project: data/, models/
and analysis/ raise these types too.
"""

from __future__ import annotations


class BadInput(Exception):
    """The user's input cannot be used; the message names the problem and the fix."""


class ConfigError(BadInput, ValueError):
    """A setting (a config key, an override, a tool's option) is invalid, unknown or conflicts with another."""


class DataError(BadInput, ValueError):
    """The data's files exist but cannot be used: unreadable, malformed, or not the data a run was trained on."""


class CheckpointError(BadInput, ValueError):
    """A checkpoint or weights file cannot be read or does not fit the model or the command."""


class RunFolderError(BadInput, ValueError):
    """The run folder cannot be used: it holds another run, another process writes it, or it cannot be made."""


class MissingFile(BadInput, FileNotFoundError):
    """A file or folder the input names does not exist: a checkpoint, the data, pretrained weights."""


class IgnoredSetting(ConfigError):
    """A valid setting that the job's other options do not read (momentum with AdamW, σ's learning rate with the
    standard conv). A single run refuses it: the command does not describe the run. A job of a sweep, which
    crosses options that read different settings, runs with ``key`` back at its ``default`` and records why."""

    def __init__(self, message: str, key: str, default: object) -> None:
        super().__init__(message)
        self.key, self.default = key, default
