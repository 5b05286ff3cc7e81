"""Folder names of a sweep's jobs: the job number and the settings the sweep varies, ``3_conv=gmconv,seed=1``.

Hydra's default names a job after all of its overrides, so a path (``data.root=/datasets``) becomes
nested folders and every setting the jobs share lengthens every name. The swept settings are the ones
given as a sweep on the command line (``conv=standard,gmconv``, ``seed=range(3)``): ``ClaimRunFolder``
reads them when the sweep starts, on the machine that launches it, and hands them to the jobs through
the environment (local jobs and SLURM jobs inherit it). Settings that locate files or steer the process
(``data.root``, ``ckpt``, ``resume``, ``model.pretrained``, ``hydra.*``) never name a folder.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

SWEPT_ENV = "GMCONV_SWEPT_SETTINGS"
NEVER_NAMED = ("data.root", "ckpt", "resume", "model.pretrained", "hydra.")


def announce_swept_settings(task_overrides: Iterable[str], searched: Iterable[str] = ()) -> None:
    """At the start of a sweep: which settings its overrides sweep, and those a search sweeper draws
    (``hydra.sweeper.params``), for ``job_folder_name`` in every job."""
    parsed = OverridesParser.create().parse_overrides(list(task_overrides))
    os.environ[SWEPT_ENV] = ",".join([*(o.key_or_group for o in parsed if o.is_sweep_override()), *searched])


def job_folder_name(number: Any, task_overrides: Iterable[str]) -> str:
    """A job's folder (the ``hydra.sweep.subdir`` resolver): ``<number>_<key=value,...>`` of the swept
    settings (all settings but the never-named ones when the sweep's are unknown), ``/`` made ``_``."""
    swept = os.environ.get(SWEPT_ENV)
    keys = set(swept.split(",")) if swept else None
    named = []
    texts = [str(text) for text in task_overrides]
    for text, override in zip(texts, OverridesParser.create().parse_overrides(texts)):
        key = override.key_or_group
        if key.startswith(NEVER_NAMED) or (keys is not None and key not in keys) or "=" not in text:
            continue
        value = text.split("=", 1)[1]  # as typed: Hydra's own rendering escapes characters such as ':'
        named.append(f"{key}={value}".replace("/", "_").replace("\\", "_"))
    return "_".join([str(number), ",".join(sorted(named))]) if named else str(number)


def made_folder(path: str) -> str:
    """``path``, made if missing: for a file that a sweeper opens in the sweep's folder before any job has made it
    (Optuna's SQLite study, configs/hparams_search/)."""
    os.makedirs(path, exist_ok=True)
    return path


# Registered on import, so that every process that resolves a job's folder has it: train.py, and a
# SLURM job started by hydra-submitit-launcher, which imports this package but never runs train.py's main.
OmegaConf.register_new_resolver("job_folder_name", job_folder_name, replace=True)
OmegaConf.register_new_resolver("made_folder", made_folder, replace=True)
