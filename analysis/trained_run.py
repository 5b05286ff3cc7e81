"""A trained run read back to use or study it: its config, its network with the checkpoint's weights, its
class names, its validation preprocessing and its numbers, without retyping any setting.

    from analysis import load_run            # from the checkout (a notebook started there, or sys.path)
    run = load_run("outputs/digits/resnet20-gmconv/2026-11-30_10-00-00")     # best.pt; weights="last"|"ema"
    logits = run.model(run.transform(image)[None])   # image: a decoded uint8 tensor or a PIL image
    run.classes[logits.argmax()], run.metrics["top1"]

    runs, notes = load_runs(["outputs/multirun/2026-11-30_10-00-00"])   # a sweep: every run folder in it
    for condition in conditions(runs): ...   # runs that differ only in their seed, as summarize.py groups them

predict.py, scripts/export.py, scripts/erf.py and scripts/sigma_report.py build on it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from data.loaders import build_val_loader
from engine.checkpoint import BEST, LAST, find_checkpoint, load_checkpoint, load_model_weights
from engine.config import TrainConfig, flatten
from engine.errors import BadInput, CheckpointError, ConfigError, MissingFile
from models import build_model

from .preprocess import Preprocessing, Preprocessor, preprocessing_of
from .summary import experiment_settings, natural_key

WEIGHTS = ("best", "last", "ema")


@dataclass
class TrainedRun:
    path: Path
    config: DictConfig
    checkpoint: Path
    ckpt: dict[str, Any]
    model: nn.Module  # in eval mode, on the CPU, with the checkpoint's weights (GMConv layers and their σ)
    weights: str = "best"  # which: best.pt's, last.pt's, or last.pt's moving average (ema)

    @property
    def name(self) -> str:
        """Model and convolution, ``resnet20-gmconv``: what a condition of several seeds is called first."""
        return f"{self.config.model.name}-{self.config.conv.name}"

    @property
    def label(self) -> str:
        return f"{self.name} seed {self.config.seed}"

    @property
    def classes(self) -> list[str]:
        return [str(name) for name in self.ckpt["data_info"]["classes"]]

    @property
    def preprocessing(self) -> Preprocessing:
        return preprocessing_of(self.config, self.ckpt["data_info"])

    @functools.cached_property
    def transform(self) -> Preprocessor:
        """A decoded image → the model's input, as the run prepared its validation images."""
        return Preprocessor(self.config, self.preprocessing)

    @property
    def metrics(self) -> dict[str, Any]:
        """results.json where the run completed (top1, top5, best_top1, ...), else the last epoch's record."""
        results = self.path / "results.json"
        if self.path.is_dir() and results.is_file():
            return json.loads(results.read_text())
        return dict(self.ckpt.get("records", [{}])[-1] if self.ckpt.get("records") else {})


def load_run(run_dir: str | Path, prefer: tuple[str, ...] = (BEST, LAST), *, weights: str | None = None) -> TrainedRun:
    """The run in ``run_dir`` (its best.pt, else last.pt; or a checkpoint file), rebuilt from the checkpoint
    alone. ``weights``: "best" (best.pt, else last.pt), "last", or "ema" (last.pt's moving average)."""
    if weights is not None and weights not in WEIGHTS:
        raise ConfigError(f"weights={weights!r} is not one of {', '.join(WEIGHTS)}")
    if weights is not None:
        prefer = (BEST, LAST) if weights == "best" else (LAST,)
    path = find_checkpoint(run_dir, prefer)
    ckpt = load_checkpoint(path)
    if "data_info" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path} predates analysis support (no data_info); retrain it with this version")
    if weights == "ema":
        if ckpt.get("ema") is None:
            raise CheckpointError(
                f"{path} holds no moving average (the run was trained without trainer.ema_decay); "
                "use weights=best or last"
            )
        ckpt = {**ckpt, "model": ckpt["ema"]}
    config = OmegaConf.merge(OmegaConf.structured(TrainConfig), ckpt["config"])
    model = build_untrained(config, ckpt["data_info"])
    load_model_weights(model, ckpt, path)
    loaded = "ema" if weights == "ema" else "best" if path.name == BEST else "last"
    return TrainedRun(Path(run_dir), config, path, ckpt, model.eval(), loaded)


def distinct_labels(runs: list[TrainedRun]) -> list[str]:
    """Each run's label, followed where labels repeat by the settings that tell those runs apart
    (``resnet20-gmconv seed 0 (optim.sigma_lr_scale=100)``), and by its position if none does."""
    return _tell_apart([run.label for run in runs], [flatten(_resolved(run)) for run in runs])


@dataclass(frozen=True)
class Condition:
    """Runs equal in every setting but the seed (and analysis/summary.py's BOOKKEEPING): one experimental
    condition, whose figures and numbers are means over its seeds rather than one panel per run."""

    label: str  # ``resnet20-gmconv``, with the settings that tell it from conditions of the same name
    members: tuple[int, ...]  # indices into the runs given, ordered by seed


def conditions(runs: list[TrainedRun]) -> list[Condition]:
    """The runs grouped as scripts/summarize.py groups them (analysis.summary.experiment_settings), in the
    order each condition first appears; labelled ``model-conv``, followed where that repeats by the settings
    that differ between the conditions sharing it (``resnet20-gmconv (optim.sigma_lr_scale=100)``)."""
    groups: dict[tuple[tuple[str, Any], ...], list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(tuple(sorted(experiment_settings(_resolved(run)).items())), []).append(i)
    labels = _tell_apart([runs[members[0]].name for members in groups.values()], [dict(key) for key in groups])
    return [
        Condition(label, tuple(sorted(members, key=lambda i: (runs[i].config.seed, i))))
        for label, members in zip(labels, groups.values())
    ]


def _resolved(run: TrainedRun) -> dict[str, Any]:
    return OmegaConf.to_container(run.config, resolve=True, enum_to_str=True)


def _tell_apart(labels: list[str], settings: list[dict[str, Any]]) -> list[str]:
    """Each label, followed where labels repeat by the (flattened) settings that differ among the ones sharing
    it, and by its position if none does."""
    result = []
    for i, (label, mine) in enumerate(zip(labels, settings)):
        twins = [other for other, other_label in zip(settings, labels) if other_label == label]
        if len(twins) > 1:
            differing = sorted(key for key in mine if any(other.get(key) != mine[key] for other in twins))
            label += f" ({', '.join(f'{key}={mine[key]}' for key in differing)})" if differing else f" #{i + 1}"
        result.append(label)
    return result


def build_untrained(config: DictConfig, data_info: dict[str, Any]) -> nn.Module:
    """The run's architecture at initialisation (its seed), without the pretrained file it may name."""
    config = config.copy()
    config.model.pretrained = None
    torch.manual_seed(config.seed)
    return build_model(
        config.model, config.conv, num_classes=data_info["num_classes"], image_size=data_info["image_size"]
    ).eval()


def validation_images(run: TrainedRun, count: int) -> tuple[torch.Tensor, str]:
    """The first ``count`` validation images of the run's own data, normalised as in training; where the
    data is unavailable here, ``count`` standard-normal images of the same size. The text says which."""
    try:
        val_loader, _ = build_val_loader(run.config.data, seed=run.config.seed)
    except BadInput as err:
        info = run.ckpt["data_info"]
        size = info.get("test_image_size", info["image_size"])  # checkpoints before data.test_image_size lack it
        generator = torch.Generator().manual_seed(0)
        return torch.randn(count, 3, size, size, generator=generator), f"random images ({err})"
    images = []
    for batch, _ in val_loader:
        images.append(batch)
        if sum(len(b) for b in images) >= count:
            break
    images = torch.cat(images)[:count]
    return images, f"{len(images)} validation images of {run.config.data.name}"


def find_run_folders(roots: list[str | Path]) -> list[Path]:
    """Every run folder (one holding .hydra/config.yaml, results.json or checkpoints/) under ``roots``, in a sweep's
    job order (2_... before 10_...): the order its command line listed the settings in."""
    found = set()
    for root in map(Path, roots):
        for marker in ("results.json", ".hydra/config.yaml", "checkpoints"):
            for hit in root.rglob(marker):
                found.add(hit.parent.parent if marker.startswith(".hydra") else hit.parent)
    return sorted(found, key=lambda folder: natural_key(str(folder)))


def load_runs(paths: list[str | Path], prefer: tuple[str, ...] = (BEST, LAST)) -> tuple[list[TrainedRun], list[str]]:
    """The runs at ``paths`` (run folders, checkpoint files, or folders of run folders such as a sweep, expanded
    with find_run_folders as scripts/summarize.py expands them) and a note for each run skipped. A run folder
    found inside a given folder that holds no checkpoint (it failed or has not finished an epoch) is skipped,
    so one failed job does not stop the study of a sweep; a path given itself must load, and so must one run at
    least (MissingFile, or another BadInput)."""
    runs, notes = [], []
    for path in map(Path, paths):
        for folder in find_run_folders([path]) or [path]:
            try:
                runs.append(load_run(folder, prefer))
            except MissingFile:
                if folder == path:
                    raise
                notes.append(f"skipped {folder}: no checkpoint (checkpoints/{' or '.join(prefer)})")
    if not runs:
        raise MissingFile(
            f"no run with a checkpoint in {', '.join(map(str, paths))} ({len(notes)} run folder(s) without one)"
        )
    return runs, notes
