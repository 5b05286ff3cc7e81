"""Training-step time of every conv type against the standard convolution, per precision, in one process.

    python -m scripts.bench.train_step                       # ResNet-20 b128 32 px, every conv type, fp32 and bf16
    python -m scripts.bench.train_step --models resnet18 resnet50 --convs standard gmconv --compile
    python -m scripts.bench.train_step --precisions bf16 --csv docs/study/rivals/step_times.csv  # the rivals study's

One step is what engine/loop.py does: forward under the precision's autocast (bf16 with channels_last, as
``trainer.amp=auto`` chooses on a device with bf16 units; fp32 contiguous), cross-entropy on fp32 logits,
backward, SGD with momentum, zero_grad. The networks are built as train.py builds them (``conv=<name>``
through configs/conv/), from the same seed. Repetitions are interleaved (A B C, B C A, ...) so background
load spreads over the variants; the table gives medians and each variant's ratio to the standard network of
the same precision (and compile setting), with the largest IQR/median as the noise of the run.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from analysis.summary import text_table
from engine.checkpoint import atomic_write
from engine.config import compose_config
from models import build_model

# (batch, image side) per model: a CIFAR ResNet at CIFAR's size, ImageNet ResNets at half ImageNet's side
SHAPES = {
    "resnet20": (128, 32),
    "resnet56": (128, 32),
    "resnet110": (128, 32),
    "resnet18": (32, 112),
    "resnet50": (16, 112),
}
HEADERS = ["model", "batch", "precision", "conv", "ms/step", "× standard", "max IQR"]
CSV_COLUMNS = ["model", "batch", "precision", "conv", "ms_per_step", "x_standard", "max_iqr"]
PRECISIONS = {"fp32": (None, torch.contiguous_format), "bf16": (torch.bfloat16, torch.channels_last)}


def network(model: str, conv: str, image_size: int) -> nn.Module:
    cfg = compose_config(f"model={model}", f"conv={conv}", "data=fake", f"data.image_size={image_size}")
    torch.manual_seed(0)
    return build_model(cfg.model, cfg.conv, num_classes=10, image_size=image_size)


def train_step(
    model: nn.Module, batch: int, size: int, precision: str, compile: bool, device: torch.device
) -> Callable[[], None]:
    dtype, memory_format = PRECISIONS[precision]
    model = model.to(device, memory_format=memory_format).train()
    forward = torch.compile(model) if compile else model
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,), device=device)
    sgd = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            logits = forward(x).float()
        F.cross_entropy(logits, y).backward()
        sgd.step()
        sgd.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def interleaved(steps: dict[str, Callable[[], None]], reps: int, warmup: int) -> dict[str, list[float]]:
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def spread(values: list[float]) -> float:
    if len(values) < 4:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4)
    return (q3 - q1) / statistics.median(values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20"], choices=sorted(SHAPES))
    parser.add_argument(
        "--convs",
        nargs="+",
        default=["standard", "gmconv", "gmconv_fixed", "deformable", "dcls", "dilated", "large_kernel"],
    )
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=sorted(PRECISIONS))
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd networks")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads; default: torch's")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table here (the rivals study reads it)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    convs = ["standard", *(c for c in args.convs if c != "standard")]
    print(
        f"torch {torch.__version__} on {args.device}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"{args.reps} reps "
        f"after {args.warmup} warm-up, interleaved"
    )
    rows = []
    for model in args.models:
        batch, size = SHAPES[model]
        for precision in args.precisions:
            for compiled in (False, True) if args.compile else (False,):
                steps = {
                    conv: train_step(
                        network(model, conv, size), batch, size, precision, compiled, torch.device(args.device)
                    )
                    for conv in convs
                }
                times = interleaved(steps, args.reps, args.warmup)
                base = statistics.median(times["standard"])
                noise = max(spread(v) for v in times.values())
                for conv in convs:
                    median = statistics.median(times[conv])
                    rows.append(
                        [
                            model,
                            f"{batch}×{size}px",
                            precision + (" compiled" if compiled else ""),
                            conv,
                            f"{median * 1000:.0f}",
                            f"{median / base:.2f}",
                            f"{noise:.0%}",
                        ]
                    )
                print(
                    text_table(HEADERS, rows[-len(convs) :]),
                    flush=True,
                )
    print("\n" + text_table(HEADERS, rows))
    if args.csv:
        write_csv(args.csv, rows)
        print(f"wrote {args.csv}")


def write_csv(path: Path, rows: list[list[str]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            writer.writerows(rows)

    atomic_write(path, write)


if __name__ == "__main__":
    main()
