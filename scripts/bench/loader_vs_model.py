"""Which one limits a run: the data loader or the model? Each one's images/s, measured alone.

    python -m scripts.bench.loader_vs_model data=imagenet data.root=/datasets/imagenet model=resnet50 --workers 4,8,16

Arguments are train.py's overrides. For each worker count the training DataLoader is iterated on its
own (decode, augmentation, collation, and the copy to the device), after its first batches have
warmed the workers up; the model trains on one synthetic batch of the same shape, repeated, with
nothing else (forward, cross-entropy, backward, SGD step). Whichever is slower limits the run: more
``data.num_workers`` (or faster storage, smaller images) helps only when the loader is the slower one.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time

import torch

from data import build_loaders, set_epoch
from engine.config import compose_config, validate
from engine.distributed import DistInfo, select_device
from models import build_model
from scripts.bench.engine_overhead import bare_epoch


def loader_speed(loader, device: torch.device, batches: int, warmup: int) -> float:
    """Images/s of the loader alone, batches moved to the device as training moves them."""
    set_epoch(loader, 0)
    iterator = iter(loader)
    for images, _ in itertools.islice(iterator, warmup):
        images.to(device, non_blocking=True)
    start, seen = time.perf_counter(), 0
    for images, targets in itertools.islice(iterator, batches):
        images.to(device, non_blocking=True)
        targets.to(device, non_blocking=True)
        seen += len(targets)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return seen / (time.perf_counter() - start)


def model_speed(
    model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, batches: int, rounds: int
) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    bare_epoch(model, optimizer, [batch] * 2, device)  # warm-up: allocator, cudnn autotuning
    return statistics.median(bare_epoch(model, optimizer, [batch] * batches, device) for _ in range(rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--workers", default=None, help="comma-separated data.num_workers values (default: the config's)"
    )
    parser.add_argument("--batches", type=int, default=50, help="measured batches per loader and per model round")
    parser.add_argument("--warmup", type=int, default=5, help="loader batches discarded while the workers start")
    parser.add_argument("--rounds", type=int, default=3, help="model rounds (median)")
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. data=imagefolder data.root=DIR")
    args = parser.parse_args()

    cfg = compose_config(*args.overrides)
    validate(cfg)
    device = select_device(cfg.trainer.device, DistInfo())
    workers = [int(w) for w in args.workers.split(",")] if args.workers else [cfg.data.num_workers]

    rows = []
    for count in workers:
        cfg.data.num_workers = count
        loader, _, info = build_loaders(cfg.data, seed=cfg.seed, pin_memory=device.type == "cuda", device=device)
        batches = min(args.batches, len(loader) - args.warmup)
        if batches < 1:
            sys.exit(
                f"the training set has {len(loader)} batches, fewer than --warmup {args.warmup} + 1: "
                "lower --warmup or data.batch_size"
            )
        rows.append((f"loader, {count} workers", loader_speed(loader, device, batches, args.warmup)))
        print(f"{rows[-1][0]}: {rows[-1][1]:.1f} img/s", flush=True)

    images, targets = next(iter(loader))
    model = build_model(cfg.model, cfg.conv, num_classes=info.num_classes, image_size=info.image_size).to(device)
    model_rate = model_speed(model, (images.to(device), targets.to(device)), device, args.batches, args.rounds)
    print(f"model: {model_rate:.1f} img/s", flush=True)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{' '.join(args.overrides)}; batch {cfg.data.batch_size}; torch {torch.__version__}; {name}\n")
    print("| what | images/s | ratio to the model |")
    print("|---|---|---|")
    for label, rate in rows:
        print(f"| {label} | {rate:.1f} | {rate / model_rate:.2f} |")
    print(f"| model ({cfg.model.name}, {cfg.conv.name}), synthetic batch | {model_rate:.1f} | 1.00 |")
    best_label, best = max(rows, key=lambda row: row[1])
    verdict = (
        "the loader limits this run: add workers, use faster storage or a cheaper decode"
        if best < model_rate
        else "the model limits this run: the loader keeps up"
    )
    print(f"\nfastest loader ({best_label}) ÷ model = {best / model_rate:.2f}: {verdict}")


if __name__ == "__main__":
    main()
