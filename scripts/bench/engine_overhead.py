"""The engine's training throughput against a bare PyTorch loop, in one process, same model and batch.

    python -m scripts.bench.engine_overhead model=resnet18 model.small_input=false conv=standard data=digits

Arguments are train.py's overrides. The engine epoch is ``engine.loop.train_one_epoch`` fed by the
configured DataLoader (sampler, transforms, augmentation, metrics, schedule: what ``train.py`` runs);
the bare loop trains a second copy of the model on the same number of batches already stacked in
memory (forward, cross-entropy, backward, SGD step, nothing else). The two alternate for
``--rounds`` rounds after one warm-up round each; the table reports medians and the ratio, so the
engine's cost is read against a baseline measured under the same machine load.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from data import build_loaders, set_epoch
from engine.checkpoint import TrainState
from engine.config import batches_in, compose_config, validate
from engine.distributed import DistInfo, select_device
from engine.loop import Progress, train_one_epoch
from engine.objective import Objective, build_objective
from engine.optim import build_optimizer, build_scheduler
from models import build_model


def engine_epoch(state: TrainState, loader, cfg, device: torch.device, epoch: int, objective: Objective) -> float:
    set_epoch(loader, epoch)
    return train_one_epoch(state, loader, cfg.trainer, device, epoch=epoch, progress=Progress.off, objective=objective)[
        "images_per_s"
    ]


def bare_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list, device: torch.device) -> float:
    model.train()
    start = time.perf_counter()
    for images, targets in batches:
        loss = F.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return sum(len(t) for _, t in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds of each loop, after one warm-up round")
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. model=resnet18 data=digits")
    args = parser.parse_args()

    cfg = compose_config(*args.overrides, "trainer.progress=false")
    validate(cfg)
    device = select_device(cfg.trainer.device, DistInfo())
    torch.manual_seed(cfg.seed)
    loader, _, info = build_loaders(cfg.data, seed=cfg.seed, pin_memory=device.type == "cuda", device=device)
    steps = batches_in(cfg.trainer.limit_train_batches, len(loader))

    def fresh_model() -> torch.nn.Module:
        return build_model(cfg.model, cfg.conv, num_classes=info.num_classes, image_size=info.image_size).to(device)

    model = fresh_model()
    optimizer = build_optimizer(model, cfg.optim, cfg.optim.lr)
    state = TrainState(
        model=model, optimizer=optimizer, scheduler=build_scheduler(optimizer, cfg.sched, args.rounds + 1, steps)
    )
    objective = build_objective(cfg.data, cfg.trainer, info.num_classes)
    bare_model = fresh_model()
    bare_optimizer = torch.optim.SGD(
        bare_model.parameters(), lr=cfg.optim.lr, momentum=0.9, weight_decay=cfg.optim.weight_decay
    )
    set_epoch(loader, 0)
    batches = [(images.to(device), targets.to(device)) for images, targets in list(loader)[:steps]]

    speeds: dict[str, list[float]] = {"engine": [], "bare loop": []}
    for round_ in range(args.rounds + 1):
        state.batches_done = 0
        engine = engine_epoch(state, loader, cfg, device, round_, objective)
        bare = bare_epoch(bare_model, bare_optimizer, batches, device)
        if round_ > 0:
            speeds["engine"].append(engine)
            speeds["bare loop"].append(bare)
        print(
            f"round {round_}{' (warm-up)' if round_ == 0 else ''}: engine {engine:.1f} img/s, "
            f"bare loop {bare:.1f} img/s",
            flush=True,
        )

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    engine, bare = statistics.median(speeds["engine"]), statistics.median(speeds["bare loop"])
    print(
        f"\n{' '.join(args.overrides)}; {steps} batches of {cfg.data.batch_size}; torch {torch.__version__}; {name}\n"
    )
    print("| loop | images/s (median) | ratio to the bare loop |")
    print("|---|---|---|")
    print(f"| engine (train_one_epoch + DataLoader) | {engine:.1f} | {engine / bare:.3f} |")
    print(f"| bare loop (batches in memory) | {bare:.1f} | 1.000 |")


if __name__ == "__main__":
    main()
