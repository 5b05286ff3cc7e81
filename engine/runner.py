"""A whole run: config → data → model → optimizer → epochs of training and evaluation → results."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from data import build_loaders, set_epoch
from models import build_model, count_flops, count_parameters

from . import checkpoint
from .config import validate
from .distributed import DistInfo, barrier, cleanup, init_distributed
from .io import save_json
from .loop import current_lr, evaluate, show_progress, train_one_epoch
from .optim import build_optimizer, build_scheduler, scaled_lr
from .preemption import StopRequest
from .setup import configure_determinism, seed_everything, select_device
from .state import TrainState, unwrap, without_ddp
from .tracking import Tracker

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train (or, with ``eval_only``, evaluate) as ``cfg`` says; returns what results.json holds."""
    validate(cfg)
    dist_info = init_distributed()
    try:
        return _run(cfg, run_dir, dist_info, select_device(cfg.trainer.device, dist_info))
    finally:
        cleanup()


def _run(cfg: DictConfig, run_dir: Path, dist_info: DistInfo, device: torch.device) -> dict[str, Any]:
    seed_everything(cfg.seed)
    configure_determinism(cfg.trainer.deterministic)
    train_loader, val_loader, info = build_loaders(
        cfg.data, seed=cfg.seed, rank=dist_info.rank, world_size=dist_info.world_size,
        pin_memory=cfg.data.pin_memory and device.type == "cuda",
    )
    model, _ = build_model(cfg.model, cfg.conv, num_classes=info.num_classes, image_size=info.image_size,
                           in_chans=info.in_chans)
    description = {"model": cfg.model.name, "conv": cfg.conv.name, "data": cfg.data.name, "seed": cfg.seed,
                   "params": count_parameters(model), "flops": count_flops(model, info.image_size, info.in_chans),
                   "git_commit": _git_commit()}
    log.info("%s (%s): %.2fM parameters, %.3f GFLOPs per image", cfg.model.name, cfg.conv.name,
             description["params"] / 1e6, description["flops"] / 1e9)
    model = _prepare_model(model, cfg.trainer, device, dist_info)
    progress = show_progress(cfg.trainer.progress) and dist_info.is_main

    if cfg.eval_only:
        ckpt = checkpoint.load_checkpoint(cfg.ckpt)
        checkpoint.load_model_weights(model, ckpt, cfg.ckpt)
        val = evaluate(without_ddp(model), val_loader, cfg.trainer, device, progress=progress)
        log.info("eval %s: loss %.4f  top1 %.2f%%  top5 %.2f%%  (%d samples)", cfg.ckpt, val["loss"],
                 val["top1"], val["top5"], val["samples"])
        results = {**description, "checkpoint": str(cfg.ckpt), "top1": val["top1"], "top5": val["top5"],
                   "loss": val["loss"], "eval_samples": val["samples"], "status": "evaluated"}
        if dist_info.is_main:
            save_json(results, run_dir / "results.json")
        return results

    global_batch = cfg.data.batch_size * dist_info.world_size
    lr = scaled_lr(cfg.optim, global_batch)
    log.info("global batch %d (%d per process × %d process%s), lr %.4g", global_batch, cfg.data.batch_size,
             dist_info.world_size, "es" if dist_info.world_size > 1 else "", lr)
    steps_per_epoch = min(len(train_loader), cfg.trainer.limit_train_batches or len(train_loader))
    optimizer = build_optimizer(unwrap(model), cfg.optim, lr)
    state = TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.sched, cfg.trainer.epochs, steps_per_epoch),
        scaler=torch.amp.GradScaler(device.type) if cfg.trainer.amp == "fp16" else None,
    )
    resume_from = checkpoint.resolve_resume(cfg.resume, run_dir)
    if resume_from is not None:
        checkpoint.restore(state, checkpoint.load_checkpoint(resume_from), resume_from)
        log.info("resumed from %s at epoch %d, step %d", resume_from, state.epoch, state.step)
    results = fit(state, cfg, train_loader, val_loader, run_dir, dist_info, device, progress,
                  resumed=resume_from is not None)
    if results is None:
        return {}
    results = {**description, **results, "world_size": dist_info.world_size, "global_batch": global_batch}
    if dist_info.is_main:
        save_json(results, run_dir / "results.json")
    barrier(dist_info)
    return results


def fit(
    state: TrainState,
    cfg: DictConfig,
    train_loader: Any,
    val_loader: Any,
    run_dir: Path,
    dist_info: DistInfo,
    device: torch.device,
    progress: bool,
    *,
    resumed: bool,
) -> dict[str, Any] | None:
    """The epoch loop: train, evaluate, log, checkpoint. None when a preemption signal stopped it."""
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    tracker = Tracker(run_dir / "tb", dist_info.is_main, purge_step=state.step if resumed else None)
    stop = StopRequest(dist_info, device)
    eval_model = without_ddp(state.model)

    def save(name: str) -> None:
        if dist_info.is_main:
            checkpoint.save_checkpoint(run_dir / "checkpoints" / name, state, config)

    def on_step(state: TrainState) -> bool:
        if state.step % cfg.trainer.log_every_steps == 0:
            tracker.scalars({"train/lr_step": current_lr(state)}, state.step)
        every = cfg.trainer.checkpoint_every_steps
        if every and state.step % every == 0:
            save(checkpoint.LAST)
        return stop.should_stop(state.step)

    val: dict[str, float] = {}
    images_per_s = 0.0
    try:
        for epoch in range(state.epoch, cfg.trainer.epochs):
            set_epoch(train_loader, epoch, start_batch=state.batches_done)
            train = train_one_epoch(state, train_loader, cfg.trainer, device, epoch=epoch, progress=progress,
                                    on_step=on_step)
            state.train_time_s += train["seconds"]
            if train["stopped"]:
                save(checkpoint.LAST)
                log.warning("stopped by a signal at epoch %d, step %d; checkpoint saved. Continue with: "
                            "python train.py resume=%s", epoch + 1, state.step, run_dir)
                barrier(dist_info)
                return None
            state.epoch, state.batches_done = epoch + 1, 0
            images_per_s = train["images_per_s"]
            scalars = {"train/loss": train["loss"], "train/top1": train["top1"], "lr": current_lr(state),
                       "perf/images_per_s": train["images_per_s"], "perf/epoch_time_s": train["seconds"],
                       "epoch": state.epoch}
            summary = (f"epoch {state.epoch}/{cfg.trainer.epochs}  train loss {train['loss']:.4f} "
                       f"top1 {train['top1']:.2f}%")
            if state.epoch % cfg.trainer.eval_every == 0 or state.epoch == cfg.trainer.epochs:
                val = evaluate(eval_model, val_loader, cfg.trainer, device, progress=progress)
                scalars.update({"val/loss": val["loss"], "val/top1": val["top1"], "val/top5": val["top5"]})
                summary += (f"  val loss {val['loss']:.4f} top1 {val['top1']:.2f}% top5 {val['top5']:.2f}% "
                            f"({val['samples']} images)")
                if val["top1"] > state.best_top1:
                    state.best_top1, state.best_epoch = val["top1"], state.epoch
                    save(checkpoint.BEST)
            log.info("%s  lr %.4g  %.0f img/s  %.1fs", summary, current_lr(state), train["images_per_s"],
                     train["seconds"])
            tracker.scalars(scalars, state.step)
            tracker.sigma(unwrap(state.model), state.step)
            save(checkpoint.LAST)
        if not val:  # resumed a run that had already finished: measure it again
            val = evaluate(eval_model, val_loader, cfg.trainer, device, progress=progress)
        tracker.hparams(_hparams(cfg), {"hparam/top1": val["top1"], "hparam/top5": val["top5"]})
        return {
            "epochs": cfg.trainer.epochs,
            "top1": val["top1"],
            "top5": val["top5"],
            "loss": val["loss"],
            "best_top1": state.best_top1,
            "best_epoch": state.best_epoch,
            "eval_samples": val["samples"],
            "train_time_s": state.train_time_s,
            "images_per_s": images_per_s,
            "status": "completed",
        }
    finally:
        stop.close()
        tracker.close()


def _prepare_model(model: nn.Module, cfg: DictConfig, device: torch.device, dist_info: DistInfo) -> nn.Module:
    """Device and memory format, then SyncBatchNorm, torch.compile and DDP as configured.

    DDP wraps the compiled module, so evaluation can use the compiled model without DDP
    (``without_ddp``) and never enters a collective on the uneven validation shards.
    """
    model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    if dist_info.enabled and cfg.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.compile:
        model = torch.compile(model)
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
