"""Train or evaluate a classifier with or without GMConv.

    python train.py                                  # CIFAR ResNet-20 + GMConv on the bundled digits
    python train.py model=resnet50 conv=gmconv data=cifar10 data.root=/datasets
    python train.py -m conv=standard,gmconv seed=0,1,2
    python train.py resume=outputs/digits/resnet20-gmconv/<run>   # continue that run in its folder
    python train.py eval_only=true ckpt=outputs/digits/resnet20-gmconv/<run>

Config: configs/train.yaml and engine/config.py; the run itself: engine/runner.py.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from engine.command_line import check_composes, check_search, check_sweep_jobs, expand_command_line
from engine.config import register_configs
from engine.distributed import agree_on_run_time, init_distributed
from engine.errors import BadInput
from engine.faults import RunFailed
from engine.preemption import Preempted
from engine.recipes import changes_from_recipe, recipe_of
from engine.run_folder import RunFolder
from engine.run_log import commit_run_log
from engine.runner import run

log = logging.getLogger("train")
register_configs()
failed_jobs: list[str] = []  # a sweep's jobs that failed, reported when the sweep ends
typed_overrides: list[str] | None = None  # a resume's or evaluation's own overrides, before the checkpoint's


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    try:
        overrides = typed_overrides if typed_overrides is not None else list(hydra_config.overrides.task)
        results = run(
            cfg,
            run_dir,
            overrides=overrides,
            hydra_config=hydra_config,
            recipe_changes=_recipe_changes(cfg, hydra_config),
        )
    except Preempted:
        return None  # a clean stop: the checkpoint is saved and the log says how to continue
    except KeyboardInterrupt:  # a second Ctrl-C (engine/preemption.py), or one before training started
        last = RunFolder(run_dir).last
        kept = f"{last} is kept; continue with: python train.py resume={run_dir}" if last.is_file() else "nothing saved"
        log.error("error: interrupted: stopped at once, without saving; %s", kept)
        RunFolder(run_dir).remove_if_unused()
        sys.exit(130)
    except Exception as err:
        bad_input = isinstance(err, BadInput)
        if not bad_input:  # it ran, or a bug stopped it: train.log gets why (a refused command leaves the log alone)
            commit_run_log()
        message = report_failure(err)
        RunFolder(run_dir).remove_if_unused()
        if hydra_config.mode != RunMode.MULTIRUN:
            sys.exit(2 if bad_input else 1)
        failed_jobs.append(f"job {hydra_config.job.num} ({' '.join(hydra_config.overrides.task)}): {message}")
        return None  # the sweep goes on with its next job
    return results.get(cfg.optimized_metric)  # for a sweeper that optimises it (hparams_search=)


def report_failure(err: Exception) -> str:
    """Log why the run stopped; returns the one-line message. Refused input (engine/errors.py) and a run's
    known failures (engine/faults.py) say all in one line. Anything else is a bug: its traceback goes to the
    console and to train.log, since where it was raised is what fixing it needs."""
    if isinstance(err, (BadInput, RunFailed)):
        log.debug("details", exc_info=True)
        message = str(err)
    else:
        log.exception("the run failed: an internal error, not a problem with the input (the traceback says where)")
        message = f"{type(err).__name__}: {err}"
    log.error("error: %s", message)
    return message


def _recipe_changes(cfg: DictConfig, hydra_config: DictConfig) -> list[str] | None:
    """What this new training run changes of its data's and model's recipe (None for a resume, which keeps
    its first session's, or an evaluation)."""
    if cfg.resume or cfg.eval_only:
        return None
    recipe = recipe_of(OmegaConf.to_container(hydra_config.runtime.choices))
    return None if recipe is None else changes_from_recipe(cfg, recipe)


def report_sweep() -> None:
    """A sweep's exit status is the number of jobs that failed (0: all ran)."""
    if failed_jobs:
        print(f"{len(failed_jobs)} job(s) of the sweep failed:", *failed_jobs, sep="\n  ", file=sys.stderr)
        sys.exit(min(len(failed_jobs), 100))


if __name__ == "__main__":
    try:
        command = expand_command_line(sys.argv)
        check_composes(command.argv)
        check_sweep_jobs(command.argv)
        check_search(command.argv)
    except BadInput as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv, typed_overrides = command.argv, command.typed
    start = agree_on_run_time(init_distributed())  # under torchrun every rank picks rank 0's run folder
    OmegaConf.register_new_resolver("run_time", start.strftime)
    main()
    report_sweep()
