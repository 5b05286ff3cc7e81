"""Training throughput of train.py itself, standard vs GMConv, launched the way users launch it (torchrun).

    python -m scripts.bench.torchrun_throughput --nproc 1 --model resnet50 --image-size 224 --batch-size 128 \
        --steps 100 --amp bf16

Each conv type trains ``--steps`` steps on synthetic data (data=fake) in two epochs; the throughput is
the second epoch's, after warm-up (cudnn autotuning, allocator growth). The conv types alternate
over ``--repeats`` rounds and the table reports medians and the ratio to ``standard``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def train_once(args: argparse.Namespace, conv: str, run_dir: Path) -> dict:
    per_epoch = max(1, args.steps // 2)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.nproc}",
        "train.py",
        f"model={args.model}",
        f"conv={conv}",
        "data=fake",
        f"data.image_size={args.image_size}",
        f"data.batch_size={args.batch_size}",
        f"data.num_classes={args.num_classes}",
        f"data.train_size={per_epoch * args.batch_size * args.nproc}",
        f"data.val_size={args.batch_size}",
        f"data.num_workers={args.workers}",
        "trainer.epochs=2",
        f"trainer.amp={args.amp}",
        f"trainer.channels_last={str(args.channels_last).lower()}",
        "trainer.progress=false",
        f"trainer.device={args.device}",
        "trainer.limit_val_batches=1",
        f"hydra.run.dir={run_dir}",
    ]
    log = run_dir.with_suffix(".log")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak resident memory, unlike getrusage
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{conv} failed:\n{log.read_text()[-4000:]}")
    results = json.loads((run_dir / "results.json").read_text())
    # ru_maxrss is in KiB on Linux: the launcher's largest process (one rank with --nproc 1)
    return {**results, "peak_rss_mib": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--convs", default="standard,gmconv")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128, help="per process")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--amp", default="bf16", choices=["none", "bf16", "fp16"])
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    convs = args.convs.split(",")
    speeds: dict[str, list[float]] = {conv: [] for conv in convs}
    memory: dict[str, list[float]] = {conv: [] for conv in convs}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats):
            for conv in convs:
                result = train_once(args, conv, Path(tmp) / f"{conv}-{round_}")
                speeds[conv].append(result["images_per_s"])
                memory[conv].append(result.get("peak_gpu_memory_mib") or result["peak_rss_mib"])
                print(f"round {round_ + 1} {conv}: {result['images_per_s']:.1f} img/s", flush=True)

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "CPU"
    baseline = statistics.median(speeds[convs[0]])
    print(
        f"\n{args.model}, {args.image_size} px, batch {args.batch_size} × {args.nproc} process(es), amp {args.amp}, "
        f"channels_last {args.channels_last}, {args.steps} steps, torch {torch.__version__}, {device}\n"
    )
    where = "GPU memory allocated" if device != "CPU" else "resident memory (RSS) of the launcher's largest process"
    base_memory = statistics.median(memory[convs[0]])
    print(f"| conv | images/s (median) | ratio to {convs[0]} | peak MiB ({where}) | ratio |")
    print("|---|---|---|---|---|")
    for conv in convs:
        median, peak = statistics.median(speeds[conv]), statistics.median(memory[conv])
        print(f"| {conv} | {median:.1f} | {median / baseline:.3f} | {peak:.0f} | {peak / base_memory:.3f} |")


if __name__ == "__main__":
    main()
