"""One session's epochs: train, evaluate, record, checkpoint, and stop cleanly on a signal.

    for each epoch left:  train_one_epoch (engine/loop.py)    a signal mid-epoch: save last.pt, stop
                          evaluate when due, the EMA too       best.pt when the kept weights improve
                          the epoch's record                   log line, TensorBoard, metrics.csv
                          last.pt, history.json                a signal: stop after this epoch
    then: a last record without validation (fewer epochs asked on resume) is evaluated now

An epoch's record (engine/epoch_record.py) is written to the curves before the checkpoint that holds
it, so a kill between the two leaves at most one epoch more in the curves than in last.pt, which the
resumed run removes; checkpoints keep every record, so nothing written is ever lost.
"""

from __future__ import annotations

import functools
import logging
import shlex
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from data import ReplacedImages, set_epoch

from . import epoch_record
from .checkpoint import TrainState, capture_process_state, save_checkpoint, unwrap, without_ddp
from .config import BestOf
from .distributed import DistInfo, barrier, gather_to_main
from .faults import StorageError
from .history import History
from .loop import Progress, current_lr, evaluate, train_one_epoch
from .nonfinite import SKIPPED, NonFiniteGuard
from .objective import Objective
from .preemption import Preempted, StopRequest
from .run_folder import RunFolder
from .tracking import Tracker

log = logging.getLogger(__name__)


class Fit:
    """The epoch loop of one training session; ``run()`` returns results.json's training numbers and
    raises ``Preempted`` when a signal stopped it (with last.pt saved)."""

    def __init__(
        self,
        state: TrainState,
        cfg: DictConfig,
        loaders: tuple[Any, Any],
        *,
        folder: RunFolder,
        dist: DistInfo,
        device: torch.device,
        objective: Objective,
        data_info: dict[str, Any],
        tracker: Tracker,
        history: History,
        batches_per_epoch: int,
    ) -> None:
        self.state, self.cfg, self.trainer = state, cfg, cfg.trainer
        self.train_loader, self.val_loader = loaders
        self.folder, self.dist, self.device = folder, dist, device
        self.objective, self.data_info, self.tracker, self.history = objective, data_info, tracker, history
        self.batches_per_epoch, self.epochs = batches_per_epoch, cfg.trainer.epochs
        self.config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        self.best_of_ema = BestOf(cfg.trainer.best_of) is BestOf.ema
        self.progress = Progress.choose(cfg.trainer.progress, dist.is_main)
        self.eval_model = without_ddp(state.model)
        self.replaced = ReplacedImages(
            state.counters, self.train_loader, self.val_loader, enabled=cfg.data.skip_bad_images
        )
        self.guard = NonFiniteGuard(
            cfg.trainer.nonfinite,
            cfg.trainer.nonfinite_limit,
            cfg.trainer.log_every_steps,
            state.counters,
            distributed=dist.enabled,
            kept=functools.partial(kept_message, folder, dist),
        )
        self.stop = StopRequest(dist, device)

    def run(self, *, save_first: bool = False) -> dict[str, Any]:
        """``save_first``: last.pt is saved before training, so that what this session changed (a resume
        with more epochs, another lr) holds even if it is killed before its first checkpoint."""
        try:
            if save_first:
                self.save(self.folder.last)
            for epoch in range(self.state.epoch, self.epochs):
                self.train_epoch(epoch)
            self.validate_last_record()
            last = self.state.records[-1]
            self.tracker.hparams(
                _hparams(self.cfg),
                {"hparam/top1": last["val_top1"], "hparam/top5": last["val_top5"]},
                step=self.state.step,
            )
            return self.outcome()
        finally:
            self.stop.close()

    def train_epoch(self, epoch: int) -> None:
        state = self.state
        set_epoch(self.train_loader, epoch, start_batch=state.batches_done)
        trained = train_one_epoch(
            state,
            self.train_loader,
            self.trainer,
            self.device,
            epoch=epoch,
            progress=self.progress,
            objective=self.objective,
            on_step=self.on_step,
            guard=self.guard,
        )
        self.guard.check(state.model)
        if trained["stopped"]:
            self.save(self.folder.last)
            raise self.preempted()
        state.epoch, state.batches_done = epoch + 1, 0
        state.train_time_s += trained["seconds"]
        row = epoch_record.record(
            state.epoch,
            state.step,
            train_loss=trained["loss"],
            train_top1=trained["top1"],
            lr=trained["lr"],
            images_per_s=trained["images_per_s"],
            epoch_time_s=trained["seconds"],
        )
        if state.epoch % self.trainer.eval_every == 0 or state.epoch == self.epochs:
            row.update(self.validate())
        state.records.append(row)
        self.keep_if_best(row)
        self.report(row)
        self.save(self.folder.last)
        if self.stop.should_stop(state.step, sync=True) and state.epoch < self.epochs:
            raise self.preempted()

    def on_step(self, state: TrainState) -> bool:
        """After every optimizer step: the step-level lr curve, last.pt every checkpoint_every_steps, and
        whether a signal asks to stop here. At an epoch's last step the epoch finishes first: it is saved
        with its record, so a checkpoint taken inside an epoch is always strictly inside it (its step is
        never the step of an epoch's record, which a resume could then not tell apart)."""
        if state.step % self.trainer.log_every_steps == 0:
            self.tracker.scalars({"train/lr_step": current_lr(state)}, state.step)
        inside = state.batches_done < self.batches_per_epoch
        every = self.trainer.checkpoint_every_steps
        if every and state.step % every == 0 and inside:
            self.save(self.folder.last)
        return self.stop.should_stop(state.step) and inside

    def validate(self) -> dict[str, epoch_record.Value]:
        """The trained weights on the validation set, and their EMA if the run keeps one: record columns."""
        val = evaluate(self.eval_model, self.val_loader, self.trainer, self.device, progress=self.progress)
        ema = self.state.ema
        ema_val = (
            evaluate(ema.module, self.val_loader, self.trainer, self.device, progress=self.progress)
            if ema is not None
            else None
        )
        return epoch_record.validation_values(val, ema_val)

    def keep_if_best(self, row: dict[str, Any]) -> None:
        """best.pt: the weights ``trainer.best_of`` names, whenever their val top-1 beats the best so far."""
        top1 = row.get("val_ema_top1" if self.best_of_ema else "val_top1")
        if top1 is not None and top1 > self.state.best_top1:
            self.state.best_top1, self.state.best_epoch = top1, row["epoch"]
            self.save(self.folder.best, ema_weights=self.best_of_ema)

    def report(self, row: dict[str, Any]) -> None:
        """The epoch's log line, curves and σ, all read from its record."""
        log.info(
            "%s%s%s",
            epoch_record.log_line(row, self.epochs),
            self.replaced.epoch_summary(),
            _skipped_summary(self.state.counters),
        )
        self.tracker.epoch(row, self.state.records)
        model = unwrap(self.state.model)
        self.tracker.sigma(model, row["step"])
        if self.trainer.log_masks:
            self.tracker.masks(model, row["step"])

    def validate_last_record(self) -> None:
        """A run whose last epoch was not evaluated (trainer.epochs lowered on resume to where it stands,
        or a checkpoint of an older version) is evaluated now, into that epoch's record."""
        records = self.state.records
        if records and epoch_record.has_validation(records[-1]) and records[-1]["epoch"] == self.state.epoch:
            return
        if not records or records[-1]["epoch"] != self.state.epoch:
            records.append(epoch_record.record(self.state.epoch, self.state.step))
        values = self.validate()
        records[-1].update(values)
        self.keep_if_best(records[-1])
        log.info("%s (evaluated at the end)", epoch_record.log_line(records[-1], self.epochs))
        self.tracker.scalars(epoch_record.scalars(values), records[-1]["step"])
        self.tracker.write_csv(records)
        self.save(self.folder.last)

    def save(self, path: Path, ema_weights: bool = False) -> None:
        """A checkpoint of the state now (every rank takes part); after last.pt, history.json follows it."""
        self.guard.check(self.state.model)  # a checkpoint never holds non-finite weights
        self.replaced.record()
        per_rank = gather_to_main(capture_process_state(self.state), self.dist)  # every rank, at the same point
        if not self.dist.is_main:
            return
        self.tracker.flush()  # the curves of what this checkpoint holds survive a kill
        try:
            save_checkpoint(path, self.state, self.config, self.data_info, per_rank, ema_weights=ema_weights)
        except StorageError as err:
            raise StorageError(f"{err}; then {kept_message(self.folder, self.dist)}") from err
        if path == self.folder.last:
            self.history.update(epoch=self.state.epoch, batches_done=self.state.batches_done, step=self.state.step)

    def preempted(self) -> Preempted:
        state = self.state
        log.warning(
            "stopped by a signal in epoch %d/%d after batch %d/%d (step %d); checkpoint saved. Continue with: %s",
            state.epoch + 1,
            self.epochs,
            state.batches_done,
            self.batches_per_epoch,
            state.step,
            resume_command(self.folder.path, self.dist),
        )
        barrier(self.dist)
        return Preempted(f"stopped by a signal at step {state.step}")

    def outcome(self) -> dict[str, Any]:
        """results.json's training numbers, from the last epoch's record and the run's state."""
        last, state = self.state.records[-1], self.state
        ema = (
            {f"ema_{key}": last[column] for key, column in epoch_record.EMA_VALIDATION.items()}
            if last.get(epoch_record.EMA_VALIDATION["top1"]) is not None
            else {}
        )
        validation = {key: last[column] for key, column in epoch_record.VALIDATION.items() if key != "samples"}
        return {
            "epochs": self.epochs,
            **validation,
            **ema,
            "best_of": BestOf(self.trainer.best_of).value,
            "best_top1": state.best_top1,
            "best_epoch": state.best_epoch,
            "eval_samples": int(last["val_images"]),
            "train_time_s": state.train_time_s,
            "images_per_s": last.get("images_per_s"),
            "bad_images_replaced": self.replaced.totals(),
            SKIPPED: state.counters.get(SKIPPED, 0),
            "status": "completed",
        }


def kept_message(folder: RunFolder, dist: DistInfo) -> str:
    """What a failed run leaves and how to go on, for its one-line message. (A function of the folder, not
    a method: a Fit referenced from its own guard would outlive the run in a reference cycle, and with it
    the DataLoaders, whose worker processes a later garbage collection then fails to stop in time.)"""
    if not folder.last.is_file():
        return "no checkpoint was saved yet: start the run again"
    return (
        f"{folder.last} holds the last state saved before it; continue from there with: "
        f"{resume_command(folder.path, dist)}"
    )


def resume_command(run_dir: Path, dist: DistInfo) -> str:
    resume = f"resume={shlex.quote(str(run_dir))}"
    return f"the same torchrun command with {resume}" if dist.enabled else f"python train.py {resume}"


def _skipped_summary(counters: dict[str, int]) -> str:
    return f"  non-finite steps skipped: {counters[SKIPPED]}" if counters.get(SKIPPED) else ""


def _hparams(cfg: DictConfig) -> dict[str, Any]:
    return {
        "model": cfg.model.name,
        "conv": cfg.conv.name,
        "data": cfg.data.name,
        "optimizer": cfg.optim.name,
        "lr": cfg.optim.lr,
        "lr_scaling": str(cfg.optim.lr_scaling.value),
        "epochs": cfg.trainer.epochs,
        "batch_size": cfg.data.batch_size,
        "seed": cfg.seed,
    }
