"""A run, from a composed config to results.json: ``train`` or, with ``eval_only``, ``evaluate_checkpoint``.

run ─ validate (engine/config.py)
    ├ train:               plan the resume (engine/resume.py)      refused: the folder is left as it was
    │                      build: data (data/) → model + GMConv (models/factory.py) → optimizer, schedule
    │                      commit: train.log, history.json, metrics.csv + TensorBoard agree with the checkpoint
    │                      Fit (engine/fit.py): epochs of train / evaluate / record / checkpoint
    │                      → results.json
    └ evaluate_checkpoint (engine/evaluation.py)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from data import build_loaders
from data.text import first_line

from . import checkpoint
from .checkpoint import TrainState, unwrap
from .config import batches_in, settings_without_effect, validate
from .distributed import (
    barrier,
    cleanup,
    configure_determinism,
    init_distributed,
    quiet_non_main_logging,
    seed_everything,
    select_device,
)
from .ema import build_ema
from .evaluation import evaluate_checkpoint
from .fit import Fit
from .history import COMPLETED, STOPPED, History
from .loop import format_duration
from .metrics import EpochTotals
from .mlflow_run import MlflowRun
from .objective import Objective, build_objective
from .optim import build_optimizer, build_scheduler, scaled_lr
from .precision import apply_precision
from .preemption import Preempted
from .recipes import recipe_line
from .resume import Resume, plan_resume
from .run_folder import FIRST_SESSION_NOTE, RunFolder
from .run_log import commit_run_log
from .setup import Context, build_described_model, loader_options, peak_gpu_memory, prepare_model
from .tracking import Tracker
from .wandb_run import WandbRun

log = logging.getLogger(__name__)


@dataclass
class Session:
    """What one training command built: loaders, the state to train, and the facts results.json reports."""

    train_loader: Any
    val_loader: Any
    state: TrainState
    objective: Objective
    description: dict[str, Any]
    data_info: dict[str, Any]
    batches_per_epoch: int
    global_batch: int


def run(
    cfg: DictConfig,
    run_dir: Path,
    *,
    overrides: list[str] | None = None,
    hydra_config: DictConfig | None = None,
    recipe_changes: list[str] | None = None,
) -> dict[str, Any]:
    """Train (or, with ``eval_only``, evaluate) as ``cfg`` says, in ``run_dir``; returns results.json's content.

    Raises ``BadInput`` (engine/errors.py) for bad settings, data or checkpoints (before anything is written to
    ``run_dir``), and ``Preempted`` when a signal stopped training with its checkpoint saved.
    """
    ignored = validate(cfg, sweep_job=hydra_config is not None and hydra_config.mode == RunMode.MULTIRUN)
    dist_info = init_distributed()
    quiet_non_main_logging(dist_info)
    try:
        ctx = Context(
            dist_info,
            select_device(cfg.trainer.device, dist_info),
            RunFolder(run_dir),
            list(overrides or []),
            hydra_config,
            recipe_changes,
            ignored,
        )
        log.info(apply_precision(cfg, ctx.device).line())
        with ctx.folder.hold() if dist_info.is_main else contextlib.nullcontext():
            return evaluate_checkpoint(cfg, ctx) if cfg.eval_only else train(cfg, ctx)
    finally:
        cleanup()


def train(cfg: DictConfig, ctx: Context) -> dict[str, Any]:
    clock_start = time.perf_counter()
    announce_plan(cfg, ctx)
    seed_everything(cfg.seed, ctx.dist.rank)
    configure_determinism(cfg.trainer.deterministic)
    folder = ctx.folder
    resume = plan_resume(cfg, folder)
    if resume is not None and resume.continuing and resume.complete(cfg) and folder.results.is_file():
        log.info(
            "%s is already complete (%d/%d epochs, best top-1 %.2f%% at epoch %d); nothing to do. "
            "To train longer, resume with trainer.epochs=<more>",
            folder.path,
            resume.ckpt["epoch"],
            cfg.trainer.epochs,
            resume.ckpt["best_top1"],
            resume.ckpt["best_epoch"],
        )
        return folder.read_results()
    if resume is None or not resume.continuing:
        folder.check_free(restart=cfg.resume == "auto")
    barrier(ctx.dist)  # every rank has checked the folder before rank 0 records this run in it

    session = build_session(cfg, ctx, resume)
    tracker = Tracker(
        folder.path,
        ctx.dist.is_main,
        with_ema=cfg.trainer.ema_decay is not None,
        tensorboard=cfg.logger.tensorboard is not None,
        trackers=tuple(
            tracker(folder.path, cfg, tracker_description(cfg, ctx, session), sweep_dir(ctx))
            for tracker, wanted in ((MlflowRun, cfg.logger.mlflow), (WandbRun, cfg.logger.wandb))
            if wanted is not None
        ),
    )
    history = History(folder.path, ctx.dist.is_main, clock_start=clock_start)
    commit(cfg, ctx, session.state, resume, tracker, history)
    fit = Fit(
        session.state,
        cfg,
        (session.train_loader, session.val_loader),
        folder=folder,
        dist=ctx.dist,
        device=ctx.device,
        objective=session.objective,
        data_info=session.data_info,
        tracker=tracker,
        history=history,
        batches_per_epoch=session.batches_per_epoch,
    )
    status = "FAILED"  # for the trackers that record one (MLflow)
    try:
        outcome = fit.run(save_first=resume is not None and (bool(resume.changes) or not resume.continuing))
        status = "FINISHED"
    except Preempted:
        history.end(STOPPED)
        status = "KILLED"
        raise
    except BaseException as err:
        history.end(_failure(err))
        raise
    finally:
        tracker.close(status)
    history.end(COMPLETED, results=outcome)
    return finish(cfg, ctx, session, history, outcome)


def tracker_description(cfg: DictConfig, ctx: Context, session: Session) -> dict[str, Any]:
    """What MLflow's tags and W&B's notes say of the run: results.json's description, the recipe, what was changed."""
    changes = {"changed_from_recipe": "; ".join(ctx.recipe_changes)} if ctx.recipe_changes else {}
    return {**session.description, "recipe": recipe_line(cfg).removeprefix("recipe: "), **changes}


def sweep_dir(ctx: Context) -> Path | None:
    """The folder of the sweep this job belongs to (None for a single run)."""
    hydra = ctx.hydra_config
    return Path(hydra.sweep.dir) if hydra is not None and hydra.mode == RunMode.MULTIRUN else None


def finish(
    cfg: DictConfig, ctx: Context, session: Session, history: History, outcome: dict[str, Any]
) -> dict[str, Any]:
    """results.json of the completed run, and the summary in the log."""
    folder = ctx.folder
    results = {
        **session.description,
        **outcome,
        "world_size": ctx.dist.world_size,
        "global_batch": session.global_batch,
        "accumulate_steps": cfg.trainer.accumulate_steps,
        "wall_time_s": history.wall_time_s(),
        **peak_gpu_memory(ctx.device),
        "overrides": history.sessions[0]["overrides"],
        "sessions": history.sessions,
        **({"recipe_changes": ctx.recipe_changes} if ctx.recipe_changes is not None else {}),
        "settings_without_effect": [*ctx.ignored_settings, *settings_without_effect(cfg)],
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
    }
    if ctx.dist.is_main:
        folder.write_results(results)
        log.info(
            "run complete: best top-1 %.2f%% at epoch %d%s; final top-1 %.2f%%, top-5 %.2f%%; %s wall time%s\n"
            "  run folder: %s\n  results:    %s",
            results["best_top1"],
            results["best_epoch"],
            " (EMA weights)" if results["best_of"] == "ema" else "",
            results["top1"],
            results["top5"],
            format_duration(results["wall_time_s"]),
            f" over {len(history.sessions)} sessions" if len(history.sessions) > 1 else "",
            folder.path,
            folder.results,
        )
    barrier(ctx.dist)
    return results


def announce_plan(cfg: DictConfig, ctx: Context) -> None:
    """The recipe the run follows, what the command line changed of it, and settings that cannot take effect."""
    log.info(recipe_line(cfg))
    if ctx.recipe_changes:
        log.info("changed from the recipe: %s", "; ".join(ctx.recipe_changes))
    for warning in [*ctx.ignored_settings, *settings_without_effect(cfg)]:
        log.warning(warning)


def build_session(cfg: DictConfig, ctx: Context, resume: Optional[Resume]) -> Session:
    """Loaders, model, optimizer, schedule, EMA, and the checkpoint's state when resuming. Writes nothing:
    a checkpoint whose weights do not fit is refused here with the folder untouched."""
    train_loader, val_loader, info = build_loaders(cfg.data, **loader_options(cfg, ctx))
    model, description = build_described_model(cfg, info, ctx.device)
    model = prepare_model(model, cfg.trainer, ctx.device, ctx.dist)
    global_batch = cfg.data.batch_size * ctx.dist.world_size
    accumulate = cfg.trainer.accumulate_steps
    lr = scaled_lr(cfg.optim, global_batch * accumulate)
    log.info(
        "global batch %d (%d per process × %d process%s)%s, lr %.4g",
        global_batch,
        cfg.data.batch_size,
        ctx.dist.world_size,
        "es" if ctx.dist.world_size > 1 else "",
        f"; {global_batch * accumulate} per optimizer step ({accumulate} batches accumulated)"
        if accumulate > 1
        else "",
        lr,
    )
    if cfg.sched.warmup_epochs:
        log.info(
            "lr warms up linearly from %g to %.4g over %g epoch(s) (sched.warmup_epochs)",
            cfg.sched.warmup_lr,
            lr,
            cfg.sched.warmup_epochs,
        )
    batches_per_epoch = batches_in(cfg.trainer.limit_train_batches, len(train_loader))
    optimizer = build_optimizer(unwrap(model), cfg.optim, lr)
    state = TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.sched, cfg.trainer.epochs, -(-batches_per_epoch // accumulate)),
        scaler=torch.amp.GradScaler(ctx.device.type) if cfg.trainer.amp == "fp16" else None,
        ema=build_ema(unwrap(model), cfg.trainer),  # after DDP has given every rank rank 0's weights
        epoch_totals=EpochTotals(ctx.device),
    )
    if resume is not None:
        if not checkpoint.restore(state, resume.ckpt, resume.path, ctx.dist.rank):
            log.warning(
                "%s holds no random state for rank %d (it was written by fewer processes): this rank's "
                "augmentation draws start afresh from seed + rank",
                resume.path,
                ctx.dist.rank,
            )
        log.info("resumed from %s %s", resume.path, _position(state, cfg.trainer.epochs, batches_per_epoch))
        for change in resume.changes:
            log.info("resume: applying a changed setting: %s", change)
    objective = build_objective(cfg.data, cfg.trainer, info.num_classes)
    return Session(
        train_loader,
        val_loader,
        state,
        objective,
        description,
        dataclasses.asdict(info),
        batches_per_epoch,
        global_batch,
    )


def commit(
    cfg: DictConfig, ctx: Context, state: TrainState, resume: Optional[Resume], tracker: Tracker, history: History
) -> None:
    """Every check has passed: the command now writes the run's record. train.log gets this session's
    lines; a new run writes .hydra/; an extended run's results.json goes, since the run is no longer
    complete (it returns, updated, when the run completes again; the numbers it held stay in metrics.csv
    and in history.json's completed session); the session joins history.json; metrics.csv and
    TensorBoard are made to agree with the checkpoint this session continues from."""
    commit_run_log()
    folder = ctx.folder
    if ctx.dist.is_main:
        folder.remove_partial_writes()
    continuing = resume is not None and resume.continuing
    if ctx.dist.is_main and not continuing:
        folder.write_config(cfg, ctx.hydra_config, ctx.overrides, header=FIRST_SESSION_NOTE)
    history.begin(
        overrides=ctx.overrides,
        resumed_from=resume.position() if resume else None,
        changes=resume.changes if resume else [],
        continuing=continuing or cfg.resume == "auto",
    )
    if ctx.dist.is_main and continuing and not resume.complete(cfg) and folder.results.is_file():
        folder.results.unlink()
        log.info(
            "the run was complete at epoch %d and is extended to %d epochs: results.json is written again "
            "when it completes",
            resume.ckpt["epoch"],
            cfg.trainer.epochs,
        )
    tracker.start(state.records, resumed_step=state.step if resume else None)


def _failure(err: BaseException) -> str:
    """How a failed session ended, for history.json: the error's type and first line."""
    return f"failed: {type(err).__name__}" + (f": {first_line(err)}" if str(err).strip() else "")


def _position(state: TrainState, epochs: int, batches_per_epoch: int) -> str:
    if state.batches_done:
        return (
            f"in epoch {state.epoch + 1}/{epochs} after batch {state.batches_done}/{batches_per_epoch} "
            f"(step {state.step})"
        )
    return f"after epoch {state.epoch}/{epochs} (step {state.step})"
