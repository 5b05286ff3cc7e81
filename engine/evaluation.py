"""The ``eval_only`` program: a trained run's checkpoint on a validation split, in a folder of its own.

Labels are class indices, so evaluating on data whose classes differ from the ones the checkpoint was
trained on (another set, or the same names in another order) would score every shifted label as an
error without a word: the data's class names are compared with the checkpoint's first. Only the
validation split is read; a folder dataset needs no train/.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from data import build_val_loader

from .checkpoint import BEST, LAST, find_checkpoint, load_checkpoint, load_model_weights, without_ddp
from .distributed import barrier
from .errors import DataError
from .loop import Progress, evaluate
from .run_log import commit_run_log
from .setup import Context, build_described_model, loader_options, prepare_model

log = logging.getLogger(__name__)


def evaluate_checkpoint(cfg: DictConfig, ctx: Context) -> dict[str, Any]:
    """A checkpoint (or a run folder's best.pt, else last.pt) on the validation split; results.json's content."""
    path = find_checkpoint(cfg.ckpt, (BEST, LAST))
    ckpt = load_checkpoint(path)
    ctx.folder.check_free()
    barrier(ctx.dist)
    val_loader, info = build_val_loader(cfg.data, **loader_options(cfg, ctx))
    check_classes(info.classes, (ckpt.get("data_info") or {}).get("classes"), path)
    model, description = build_described_model(cfg, info, ctx.device)
    model = prepare_model(model, cfg.trainer, ctx.device, ctx.dist)
    load_model_weights(model, ckpt, path)
    commit_run_log()
    val = evaluate(
        without_ddp(model),
        val_loader,
        cfg.trainer,
        ctx.device,
        progress=Progress.choose(cfg.trainer.progress, ctx.dist.is_main),
    )
    log.info(
        "eval %s: loss %.4f  top1 %.2f%%  top5 %.2f%%  (%d images)",
        path,
        val["loss"],
        val["top1"],
        val["top5"],
        val["samples"],
    )
    results = {
        **description,
        "checkpoint": str(path),
        "top1": val["top1"],
        "top5": val["top5"],
        "loss": val["loss"],
        "eval_samples": val["samples"],
        "status": "evaluated",
        "overrides": ctx.overrides,
    }
    if ctx.dist.is_main:
        ctx.folder.write_config(cfg, ctx.hydra_config, ctx.overrides)
        ctx.folder.write_results(results)
    barrier(ctx.dist)
    return results


def check_classes(data: list[str], trained: Optional[list[str]], checkpoint: Path) -> None:
    """Refuse, in one line listing the differences, data whose class names or order differ from the
    checkpoint's (``trained``; None for checkpoints of older versions, which cannot be checked)."""
    if trained is None:
        log.warning(
            "%s holds no class names (an older checkpoint): cannot check that the data has the classes it "
            "was trained on, in the same order",
            checkpoint,
        )
        return
    trained = [str(name) for name in trained]
    if data == trained:
        return
    fix = "evaluate on the data the run was trained on (data=, data.root=)"
    if len(data) != len(trained):
        raise DataError(
            f"the data has {len(data)} classes and {checkpoint} was trained on {len(trained)}: it is "
            f"other data than the run's ({_differences(data, trained)}); {fix}"
        )
    if set(data) == set(trained):
        label = next(i for i, (a, b) in enumerate(zip(data, trained)) if a != b)
        raise DataError(
            f"the data has the classes {checkpoint} was trained on, in another order (label {label} is "
            f"{data[label]!r} in the data and {trained[label]!r} in the checkpoint), so every label "
            f"would be shifted; {fix}"
        )
    raise DataError(
        f"the data's classes differ from the ones {checkpoint} was trained on ({_differences(data, trained)}); {fix}"
    )


def _differences(data: list[str], trained: list[str], limit: int = 5) -> str:
    only_data, only_trained = sorted(set(data) - set(trained)), sorted(set(trained) - set(data))
    return (
        f"only in the data: {', '.join(only_data[:limit]) or 'none'}; "
        f"only in the checkpoint: {', '.join(only_trained[:limit]) or 'none'}"
    )
