"""A run, from a composed config to results.json: ``train`` or, with ``eval_only``, ``evaluate_checkpoint``.

    run ─ validate (engine/config.py)
        ├ train:               data (data/) → model + GMConv (models/factory.py) → optimizer and schedule
        │                      → fit: epochs of train_one_epoch / evaluate (engine/loop.py), checkpoints,
        │                        TensorBoard + metrics.csv → results.json
        └ evaluate_checkpoint: data → model ← checkpoint → evaluate → results.json
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from data import ReplacedImages, build_loaders, set_epoch
from models import build_model, count_flops, count_parameters

from . import checkpoint
from .checkpoint import BEST, LAST, TrainState, unwrap, without_ddp
from .config import BestOf, resume_changes, validate
from .faults import StorageError
from .loop import Progress, current_lr, evaluate, format_duration, train_one_epoch
from .nonfinite import SKIPPED, NonFiniteGuard
from .optim import build_optimizer, build_scheduler, scaled_lr
from .preemption import Preempted, StopRequest
from .process import (DistInfo, barrier, cleanup, configure_determinism, gather_to_main, init_distributed,
                      seed_everything, select_device)
from .recipe import Objective, build_ema, build_objective
from .run_folder import RunFolder
from .tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class Context:
    """Where and how this process runs, and how it was launched (for the run folder's record)."""

    dist: DistInfo
    device: torch.device
    folder: RunFolder
    overrides: list[str]
    hydra_config: Optional[DictConfig] = None


def run(cfg: DictConfig, run_dir: Path, *, overrides: list[str] | None = None,
        hydra_config: DictConfig | None = None) -> dict[str, Any]:
    """Train (or, with ``eval_only``, evaluate) as ``cfg`` says, in ``run_dir``; returns results.json's content.

    Raises ValueError / FileNotFoundError for bad settings or data (before anything is written to
    ``run_dir``), and ``Preempted`` when a signal stopped training with its checkpoint saved.
    """
    validate(cfg)
    dist_info = init_distributed()
    try:
        ctx = Context(dist_info, select_device(cfg.trainer.device, dist_info), RunFolder(run_dir),
                      list(overrides or []), hydra_config)
        with ctx.folder.hold() if dist_info.is_main else contextlib.nullcontext():
            return evaluate_checkpoint(cfg, ctx) if cfg.eval_only else train(cfg, ctx)
    finally:
        cleanup()


def train(cfg: DictConfig, ctx: Context) -> dict[str, Any]:
    started = time.perf_counter()
    seed_everything(cfg.seed, ctx.dist.rank)
    configure_determinism(cfg.trainer.deterministic)
    folder = ctx.folder
    resume_from = _resume_checkpoint(cfg.resume, folder)
    ckpt = checkpoint.load_checkpoint(resume_from) if resume_from else None
    continuing = ckpt is not None and folder.owns(resume_from)
    changes = resume_changes(ckpt.get("config", {}), cfg) if ckpt is not None else []
    if ckpt is not None and ckpt["epoch"] > cfg.trainer.epochs:
        raise ValueError(f"trainer.epochs={cfg.trainer.epochs} is less than the {ckpt['epoch']} epochs {resume_from} "
                         "has already trained; pass a larger trainer.epochs or evaluate it with eval_only=true")
    if continuing and _complete(ckpt, cfg) and folder.results.is_file():
        log.info("%s is already complete (%d/%d epochs, best top-1 %.2f%% at epoch %d); nothing to do. "
                 "To train longer, resume with trainer.epochs=<more>", folder.path, ckpt["epoch"], cfg.trainer.epochs,
                 ckpt["best_top1"], ckpt["best_epoch"])
        return folder.read_results()
    if not continuing:
        folder.check_free(restart=cfg.resume == "auto")
    barrier(ctx.dist)  # every rank has checked the folder before rank 0 records this run in it

    train_loader, val_loader, model, description, data_info = _build(cfg, ctx)
    model = _prepare_model(model, cfg.trainer, ctx.device, ctx.dist)
    global_batch = cfg.data.batch_size * ctx.dist.world_size
    accumulate = cfg.trainer.accumulate_steps
    lr = scaled_lr(cfg.optim, global_batch * accumulate)
    log.info("global batch %d (%d per process × %d process%s)%s, lr %.4g", global_batch, cfg.data.batch_size,
             ctx.dist.world_size, "es" if ctx.dist.world_size > 1 else "",
             f"; {global_batch * accumulate} per optimizer step ({accumulate} batches accumulated)" if accumulate > 1
             else "", lr)
    if cfg.sched.warmup_epochs:
        log.info("lr warms up linearly from %g to %.4g over %g epoch(s) (sched.warmup_epochs)", cfg.sched.warmup_lr, lr,
                 cfg.sched.warmup_epochs)
    steps_per_epoch = min(len(train_loader), cfg.trainer.limit_train_batches or len(train_loader))  # batches
    optimizer = build_optimizer(unwrap(model), cfg.optim, lr)
    state = TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.sched, cfg.trainer.epochs, -(-steps_per_epoch // accumulate)),
        scaler=torch.amp.GradScaler(ctx.device.type) if cfg.trainer.amp == "fp16" else None,
        ema=build_ema(unwrap(model), cfg.trainer),  # after DDP has given every rank rank 0's weights
    )
    if ckpt is not None:
        if not checkpoint.restore(state, ckpt, resume_from, ctx.dist.rank):
            log.warning("%s holds no random state for rank %d (it was written by fewer processes): this rank's "
                        "augmentation draws start afresh from seed + rank", resume_from, ctx.dist.rank)
        log.info("resumed from %s %s", resume_from, _position(state, cfg.trainer.epochs, steps_per_epoch))
        for change in changes:
            log.info("resume: applying a changed setting: %s", change)
    if ctx.dist.is_main and not continuing:
        folder.write_config(cfg, ctx.hydra_config, ctx.overrides)

    objective = build_objective(cfg.data, cfg.trainer, data_info["num_classes"])
    outcome = fit(state, cfg, train_loader, val_loader, ctx, steps_per_epoch, data_info, objective,
                  resumed=ckpt is not None)
    results = {**description, **outcome, "world_size": ctx.dist.world_size, "global_batch": global_batch,
               "accumulate_steps": accumulate,
               "wall_time_s": time.perf_counter() - started, **_peak_gpu_memory(ctx.device),
               "overrides": ctx.overrides, "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)}
    if ctx.dist.is_main:
        folder.write_results(results)
        log.info("run complete: best top-1 %.2f%% at epoch %d%s; final top-1 %.2f%%, top-5 %.2f%%; %s wall time\n"
                 "  run folder: %s\n  results:    %s", results["best_top1"], results["best_epoch"],
                 " (EMA weights)" if results["best_of"] == "ema" else "", results["top1"],
                 results["top5"], format_duration(results["wall_time_s"]), folder.path, folder.results)
    barrier(ctx.dist)
    return results


def evaluate_checkpoint(cfg: DictConfig, ctx: Context) -> dict[str, Any]:
    """The ``eval_only`` program: a checkpoint (or a run folder's best.pt, else last.pt) on the val split."""
    path = checkpoint.find_checkpoint(cfg.ckpt, (BEST, LAST))
    ckpt = checkpoint.load_checkpoint(path)
    ctx.folder.check_free()
    barrier(ctx.dist)
    _, val_loader, model, description, _ = _build(cfg, ctx)
    model = _prepare_model(model, cfg.trainer, ctx.device, ctx.dist)
    checkpoint.load_model_weights(model, ckpt, path)
    val = evaluate(without_ddp(model), val_loader, cfg.trainer, ctx.device, progress=_progress(cfg, ctx))
    log.info("eval %s: loss %.4f  top1 %.2f%%  top5 %.2f%%  (%d images)", path, val["loss"], val["top1"],
             val["top5"], val["samples"])
    results = {**description, "checkpoint": str(path), "top1": val["top1"], "top5": val["top5"], "loss": val["loss"],
               "eval_samples": val["samples"], "status": "evaluated", "overrides": ctx.overrides}
    if ctx.dist.is_main:
        ctx.folder.write_config(cfg, ctx.hydra_config, ctx.overrides)
        ctx.folder.write_results(results)
    barrier(ctx.dist)
    return results


def fit(
    state: TrainState,
    cfg: DictConfig,
    train_loader: Any,
    val_loader: Any,
    ctx: Context,
    steps_per_epoch: int,
    data_info: dict[str, Any],
    objective: Objective,
    *,
    resumed: bool,
) -> dict[str, Any]:
    """The epoch loop: train, evaluate (the EMA too), log, checkpoint. Raises ``Preempted`` when a signal stopped it.

    ``best.pt`` keeps the weights that ``trainer.best_of`` names at that one's best val top-1.
    """
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    folder, epochs = ctx.folder, cfg.trainer.epochs
    tracker = Tracker(folder.path, ctx.dist.is_main, resumed_at=(state.step, state.epoch) if resumed else None)
    stop = StopRequest(ctx.dist, ctx.device)
    guard = NonFiniteGuard(cfg.trainer.nonfinite, cfg.trainer.nonfinite_limit, cfg.trainer.log_every_steps,
                           state.counters, distributed=ctx.dist.enabled, kept=lambda: _kept(folder, ctx.dist))
    replaced = ReplacedImages(state.counters, train_loader, val_loader, enabled=cfg.data.skip_bad_images)
    eval_model = without_ddp(state.model)
    progress = _progress(cfg, ctx)

    def save(path: Path, ema_weights: bool = False) -> None:
        guard.check(state.model)  # a checkpoint never holds non-finite weights
        replaced.record()
        rng = gather_to_main(checkpoint.capture_rng(), ctx.dist)  # every rank, at the same point
        if ctx.dist.is_main:
            try:
                checkpoint.save_checkpoint(path, state, config, data_info, rng, ema_weights=ema_weights)
            except StorageError as err:
                raise StorageError(f"{err}; then {_kept(folder, ctx.dist)}") from err

    def on_step(state: TrainState) -> bool:
        if state.step % cfg.trainer.log_every_steps == 0:
            tracker.scalars({"train/lr_step": current_lr(state)}, state.step)
        every = cfg.trainer.checkpoint_every_steps
        if every and state.step % every == 0:
            save(folder.last)
        # A signal at an epoch's last step lets the epoch finish: it is evaluated and saved, then training stops.
        return stop.should_stop(state.step) and state.batches_done < steps_per_epoch

    def preempted() -> Preempted:
        log.warning("stopped by a signal in epoch %d/%d after batch %d/%d (step %d); checkpoint saved. "
                    "Continue with: %s", state.epoch + 1, epochs, state.batches_done, steps_per_epoch, state.step,
                    _resume_command(folder.path, ctx.dist))
        barrier(ctx.dist)
        return Preempted(f"stopped by a signal at step {state.step}")

    val: dict[str, float] = {}
    ema_val: dict[str, float] = {}
    best_of_ema = BestOf(cfg.trainer.best_of) is BestOf.ema
    images_per_s = 0.0
    try:
        for epoch in range(state.epoch, epochs):
            set_epoch(train_loader, epoch, start_batch=state.batches_done)
            train = train_one_epoch(state, train_loader, cfg.trainer, ctx.device, epoch=epoch, progress=progress,
                                    objective=objective, on_step=on_step, guard=guard)
            state.train_time_s += train["seconds"]
            guard.check(state.model)
            if train["stopped"]:
                save(folder.last)
                raise preempted()
            state.epoch, state.batches_done = epoch + 1, 0
            images_per_s = train["images_per_s"]
            row = {"epoch": state.epoch, "step": state.step, "lr": train["lr"], "train_loss": train["loss"],
                   "train_top1": train["top1"]}
            summary = f"epoch {state.epoch}/{epochs}  train loss {train['loss']:.4f} top1 {train['top1']:.2f}%"
            if state.epoch % cfg.trainer.eval_every == 0 or state.epoch == epochs:
                val = evaluate(eval_model, val_loader, cfg.trainer, ctx.device, progress=progress)
                row.update({"val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"]})
                summary += (f"  val loss {val['loss']:.4f} top1 {val['top1']:.2f}% top5 {val['top5']:.2f}% "
                            f"({val['samples']} images)")
                if state.ema is not None:
                    ema_val = evaluate(state.ema.module, val_loader, cfg.trainer, ctx.device, progress=progress)
                    row.update({"val_ema_loss": ema_val["loss"], "val_ema_top1": ema_val["top1"],
                                "val_ema_top5": ema_val["top5"]})
                    summary += f"  EMA top1 {ema_val['top1']:.2f}% top5 {ema_val['top5']:.2f}%"
                kept = ema_val if best_of_ema else val
                if kept["top1"] > state.best_top1:
                    state.best_top1, state.best_epoch = kept["top1"], state.epoch
                    save(folder.best, ema_weights=best_of_ema)
            row.update({"images_per_s": train["images_per_s"], "epoch_time_s": train["seconds"]})
            summary += replaced.epoch_summary() + _skipped_summary(state.counters)
            log.info("%s  lr %.4g  %.0f img/s  %.1fs", summary, train["lr"], train["images_per_s"], train["seconds"])
            tracker.epoch(row)
            tracker.sigma(unwrap(state.model), state.step)
            if cfg.trainer.log_masks:
                tracker.masks(unwrap(state.model), state.step)
            save(folder.last)
            if stop.should_stop(state.step, sync=True) and state.epoch < epochs:
                raise preempted()
        if not val:  # resumed a run whose last epoch was saved but whose results were not written
            val = evaluate(eval_model, val_loader, cfg.trainer, ctx.device, progress=progress)
            if state.ema is not None:
                ema_val = evaluate(state.ema.module, val_loader, cfg.trainer, ctx.device, progress=progress)
        tracker.hparams(_hparams(cfg), {"hparam/top1": val["top1"], "hparam/top5": val["top5"]})
        return {
            "epochs": epochs,
            "top1": val["top1"],
            "top5": val["top5"],
            "loss": val["loss"],
            **({"ema_top1": ema_val["top1"], "ema_top5": ema_val["top5"], "ema_loss": ema_val["loss"]}
               if ema_val else {}),
            "best_of": BestOf(cfg.trainer.best_of).value,
            "best_top1": state.best_top1,
            "best_epoch": state.best_epoch,
            "eval_samples": val["samples"],
            "train_time_s": state.train_time_s,
            "images_per_s": images_per_s,
            "bad_images_replaced": replaced.totals(),
            SKIPPED: state.counters.get(SKIPPED, 0),
            "status": "completed",
        }
    finally:
        stop.close()
        tracker.close()


def _build(cfg: DictConfig, ctx: Context) -> tuple[Any, Any, nn.Module, dict[str, Any], dict[str, Any]]:
    """Data loaders and model for this process, the run's description for results.json, and the data
    facts the model was built for (stored in checkpoints)."""
    if cfg.trainer.amp == "fp16" and ctx.device.type == "cpu":
        log.warning("trainer.amp=fp16 on the CPU is emulated and many times slower than fp32; "
                    "use trainer.amp=bf16 or none on the CPU")
    train_loader, val_loader, info = build_loaders(
        cfg.data, seed=cfg.seed, rank=ctx.dist.rank, world_size=ctx.dist.world_size,
        pin_memory=cfg.data.pin_memory and ctx.device.type == "cuda", device=ctx.device,
    )
    model = build_model(cfg.model, cfg.conv, num_classes=info.num_classes, image_size=info.image_size)
    description = {"model": cfg.model.name, "conv": cfg.conv.name, "data": cfg.data.name, "seed": cfg.seed,
                   "params": count_parameters(model), "flops": count_flops(model, info.test_image_size),
                   "git_commit": _git_commit()}
    log.info("%s (%s): %.2fM parameters, %.3f GFLOPs per %d px image", cfg.model.name, cfg.conv.name,
             description["params"] / 1e6, description["flops"] / 1e9, info.test_image_size)
    return train_loader, val_loader, model, description, dataclasses.asdict(info)


def _resume_checkpoint(resume: str | None, folder: RunFolder) -> Path | None:
    """``resume``'s checkpoint: None (a fresh run), this folder's last.pt for ``auto`` (if any), or a path."""
    if not resume:
        return None
    if resume == "auto":
        return folder.last if folder.last.is_file() else None
    return checkpoint.find_checkpoint(resume, (LAST,))


def _kept(folder: RunFolder, dist: DistInfo) -> str:
    """What a failed run leaves and how to go on, for its one-line message."""
    if not folder.last.is_file():
        return "no checkpoint was saved yet: start the run again"
    return (f"{folder.last} holds the last state saved before it; continue from there with: "
            f"{_resume_command(folder.path, dist)}")


def _skipped_summary(counters: dict[str, int]) -> str:
    return f"  non-finite steps skipped: {counters[SKIPPED]}" if counters.get(SKIPPED) else ""


def _complete(ckpt: dict[str, Any], cfg: DictConfig) -> bool:
    return ckpt["epoch"] >= cfg.trainer.epochs and not ckpt["batches_done"]


def _position(state: TrainState, epochs: int, steps_per_epoch: int) -> str:
    if state.batches_done:
        return (f"in epoch {state.epoch + 1}/{epochs} after batch {state.batches_done}/{steps_per_epoch} "
                f"(step {state.step})")
    return f"after epoch {state.epoch}/{epochs} (step {state.step})"


def _resume_command(run_dir: Path, dist: DistInfo) -> str:
    resume = f"resume={shlex.quote(str(run_dir))}"
    return f"the same torchrun command with {resume}" if dist.enabled else f"python train.py {resume}"


def _peak_gpu_memory(device: torch.device) -> dict[str, float]:
    """This process's peak GPU memory held by tensors, for results.json (nothing on a CPU)."""
    if device.type != "cuda":
        return {}
    return {"peak_gpu_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20}


def _progress(cfg: DictConfig, ctx: Context) -> Progress:
    return Progress.choose(cfg.trainer.progress, ctx.dist.is_main)


def _prepare_model(model: nn.Module, cfg: DictConfig, device: torch.device, dist_info: DistInfo) -> nn.Module:
    """Device and memory format, then SyncBatchNorm, torch.compile and DDP as configured.

    DDP wraps the compiled module, so evaluation can use the compiled model without DDP
    (``without_ddp``) and never enters a collective on the uneven validation shards.
    """
    model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    if dist_info.enabled and cfg.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.compile:
        model = torch.compile(model, mode=cfg.compile_mode.value)
    if dist_info.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def _hparams(cfg: DictConfig) -> dict[str, Any]:
    return {"model": cfg.model.name, "conv": cfg.conv.name, "data": cfg.data.name, "optimizer": cfg.optim.name,
            "lr": cfg.optim.lr, "lr_scaling": str(cfg.optim.lr_scaling.value), "epochs": cfg.trainer.epochs,
            "batch_size": cfg.data.batch_size, "seed": cfg.seed}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
