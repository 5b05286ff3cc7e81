"""Export a trained run as a self-contained model: torch.export (pt2), ONNX, TorchScript or a state_dict.

    python -m scripts.export RUN_OR_CKPT --format pt2|onnx|torchscript|state_dict [--no-fold] [--dynamic-batch]
                             [--out DIR] [--weights best|last|ema] [--tolerance 1e-4]

The files go to --out, by default outputs/export/<data>/<model>-<conv>/<run folder>/<format>/ (never into the
run folder, whose record belongs to the run). GMConv layers are folded into plain convolutions by default
(models.conv_types.fold_convs: the same outputs, a plain network; DCLS folds into its dense kernels, a
deformable network cannot be folded); --no-fold keeps them (pt2, onnx and torchscript
record their arithmetic, so the file still needs nothing of this project). Beside the model file, model.json
says how to prepare an image (size, resize, crop, mean, std), the class names, where the model came from
(run, checkpoint, config hash) and its σ.

The export checks itself before it keeps anything: the exported file, loaded back as its user would load it
(torch.export.load, onnxruntime, torch.jit.load, a plain architecture with the state_dict), and the run's own
model get the same batch of validation images; beyond --tolerance (largest absolute logit difference) nothing
is written and the exit status is 1. Exit status 2: bad input (one line). ONNX needs the export extra:
pip install -e ".[export]".
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from analysis import TrainedRun, load_run
from analysis.trained_run import WEIGHTS, build_untrained, validation_images
from engine.errors import BadInput, ConfigError
from gmconv import DynamicGMConv2d, sigma_stats
from models.conv_types import fold_convs, folded_config

ROOT = Path(__file__).resolve().parents[1]

ONNX_INLINE_BYTES = 1_800_000_000  # weights an ONNX file holds itself (protobuf's limit is 2 GiB for the whole file)
FORMATS = {"pt2": "model.pt2", "onnx": "model.onnx", "torchscript": "model.torchscript.pt", "state_dict": "model.pth"}


class ExportFailed(RuntimeError):
    """The exported model does not compute what the run's model computes."""


def exportable(run: TrainedRun, fold: bool) -> nn.Module:
    model = copy.deepcopy(run.model).eval()
    if not fold:
        return model
    dynamic = [name for name, m in model.named_modules() if isinstance(m, DynamicGMConv2d)]
    if dynamic:
        raise ConfigError(
            f"{run.label} predicts σ per image ({dynamic[0]}, ...): it cannot be folded into plain "
            "convolutions; export it with --no-fold"
        )
    return fold_convs(model)


def write_model(model: nn.Module, example: torch.Tensor, fmt: str, path: Path, dynamic_batch: bool) -> None:
    batch = torch.export.Dim("batch") if dynamic_batch else None
    if fmt == "pt2":
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},) if batch else None)
        torch.export.save(program, str(path))
    elif fmt == "onnx":
        try:
            import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
        except ImportError as err:
            raise ConfigError('--format onnx needs the export extra: pip install -e ".[export]"') from err
        # one self-contained file below protobuf's 2 GB limit; above it the weights go to model.onnx.data beside it
        external = sum(p.numel() * p.element_size() for p in model.parameters()) > ONNX_INLINE_BYTES
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter reports each of its stages
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=["images"],
                output_names=["logits"],
                dynamo=True,
                dynamic_shapes=({0: batch},) if batch else None,
                verbose=False,
                external_data=external,
            )
    elif fmt == "torchscript":
        torch.jit.trace(model, example).save(str(path))
    else:
        torch.save(model.state_dict(), path)


def load_back(fmt: str, path: Path, run: TrainedRun, fold: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported file as its user loads it."""
    if fmt == "pt2":
        return torch.export.load(str(path)).module()
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    if fmt == "torchscript":
        return torch.jit.load(str(path))
    plain = copy.deepcopy(run.config)
    if fold:  # the folded state_dict is a plain network's: build it with plain convolutions
        for key, value in folded_config(plain.conv).items():
            plain.conv[key] = value
    model = build_untrained(plain, run.ckpt["data_info"]) if fold else copy.deepcopy(run.model)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


def metadata(run: TrainedRun, fmt: str, file: str, fold: bool, dynamic_batch: bool, difference: float) -> dict:
    config_text = json.dumps(run.ckpt["config"], sort_keys=True, default=str)
    sigma = sigma_stats(run.model)
    return {
        "format": fmt,
        "file": file,
        "folded": fold,
        "dynamic_batch": dynamic_batch,
        "input": run.preprocessing.describe(),
        "classes": run.classes,
        "model": run.config.model.name,
        "conv": run.config.conv.name,
        "data": run.config.data.name,
        "run": str(run.path),
        "checkpoint": str(run.checkpoint),
        "weights": run.weights,
        "epoch": run.ckpt.get("epoch"),
        "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
        "sigma": {name: {k: stats[k] for k in ("mean", "min", "max")} for name, stats in sigma.items()},
        "max_abs_difference": difference,
        "torch": torch.__version__,
    }


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def export(args: argparse.Namespace) -> Path:
    run = load_run(args.run, weights=args.weights)
    model = exportable(run, args.fold)
    images, described = validation_images(run, 4)
    with torch.no_grad():
        expected = run.model(images)
    source = run.path if run.path.is_dir() else run.checkpoint.parent.parent  # <run>/checkpoints/<file>
    out = args.out or (
        ROOT / "outputs" / "export" / run.config.data.name / f"{run.config.model.name}-"
        f"{run.config.conv.name}" / source.name / args.format
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))  # renamed into place
    staging.chmod(0o777 & ~current_umask())  # mkdtemp's folder is private; the export is a folder like any other
    try:
        path = staging / FORMATS[args.format]
        write_model(model, images[:2] if args.dynamic_batch else images, args.format, path, args.dynamic_batch)
        with torch.no_grad():
            got = load_back(args.format, path, run, args.fold)(images)
        difference = (got.float() - expected.float()).abs().max().item()
        print(f"{args.format}: largest |logit difference| to the run's model on {described}: {difference:.3g}")
        if not difference <= args.tolerance:
            raise ExportFailed(
                f"the exported model's logits differ from the run's by {difference:.3g} > "
                f"--tolerance {args.tolerance:g}; nothing written"
            )
        info = metadata(run, args.format, FORMATS[args.format], args.fold, args.dynamic_batch, difference)
        info["files"] = sorted(p.name for p in staging.iterdir())  # the model's files: model.onnx.data too, if needed
        (staging / "model.json").write_text(json.dumps(info, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"exported {run.label} ({run.checkpoint}) to {out / FORMATS[args.format]}; model.json beside it")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder (its best.pt, else last.pt) or a checkpoint file")
    parser.add_argument("--format", required=True, choices=list(FORMATS))
    parser.add_argument(
        "--fold",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fold GMConv's masks into plain convolutions (default) or keep the layers",
    )
    parser.add_argument("--dynamic-batch", action="store_true", help="any batch size (pt2, onnx)")
    parser.add_argument(
        "--out", type=Path, help="the folder to write (default: outputs/export/<data>/<model>-<conv>/<run>/<format>)"
    )
    parser.add_argument("--weights", default="best", choices=WEIGHTS, help="which weights of the run")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest absolute logit difference allowed")
    args = parser.parse_args(argv)
    try:
        export(args)
    except BadInput as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ExportFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
