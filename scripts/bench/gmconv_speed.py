"""Speed of standard vs GMConv vs folded networks, measured in one process with interleaved repetitions.

What is timed (per repetition, one call each, in a rotating order A B C ... / B C ... A / ...):

* ``train standard`` / ``train gmconv``: one training step in train mode on a fixed batch:
  forward, cross-entropy loss, backward, SGD (momentum 0.9) step, zero_grad.
  ``gmconv`` is ``convert_to_gmconv(model)`` with the default options (σ per channel, softplus).
* ``infer standard`` / ``infer gmconv`` / ``infer folded``: one inference forward in eval mode
  under ``torch.inference_mode()``. ``folded`` is ``fold_gmconv`` of the GMConv model, i.e. what you
  deploy: it should run at the standard network's speed. ``reused`` is the unfolded GMConv network inside
  one ``gmconv.reuse_masked_weights`` block held over all repetitions, as ``evaluate`` holds it over a
  validation pass: each masked weight is built once.

Operations per training step (forward, loss, backward, optimizer), counted once, untimed, in two ways:
``ATen ops``, every operation dispatched, and ``kernel ops``, the same without views and the operations
that only read metadata (``promote_types``, sizes): on a GPU each kernel op is at least one kernel launch,
which is what GMConv's cost is made of at small batch sizes, so the count shows where the difference
comes from even on a CPU. "added per layer" is (GMConv − standard) kernel ops / converted layers,
per-step constants included. Off CUDA they are counted on copies on the ``meta`` device, where every
operation takes its accelerator path (GMConv sums σ's gradient with one batched dot product there and
with a product and a sum on a CPU, which is faster there: one more operation per layer). The optimizer
is torch's SGD with its default implementation (a loop over parameters off CUDA, ``foreach`` on CUDA;
``--foreach`` forces the latter), so a σ tensor costs its own update ops in the loop and shares a launch
with the other parameters under ``foreach``.
On CUDA the peak memory of a training step is measured too. ``--profile STEPS`` profiles that many
training steps of each network and lists the operations on which GMConv spends more time.

All variants start from the same weights. Medians over ``--reps`` repetitions after ``--warmup``
untimed ones are printed with ratios to the standard network (and, below, the ratios of each
variant's fastest repetition). On a shared CPU, interleaving
spreads background load evenly over the variants; the spread (IQR/median) shows how noisy a run was.

    python -m scripts.bench.gmconv_speed --device cpu --threads 2 --reps 5
    python -m scripts.bench.gmconv_speed --models resnet20 resnet56 --batch-size 128 --image-size 32 --count-only

``--models`` takes torchvision names and this project's CIFAR ResNets (``resnet20`` ... ``resnet110``,
10 classes); ``--gmconv KEY=VALUE`` passes options to ``convert_to_gmconv`` (e.g.
``sigma_granularity=kernel``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from gmconv import GMConv2d, convert_to_gmconv, fold_gmconv, reuse_masked_weights
from models.registry import create_backbone, registered_models


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# operations that read metadata and launch nothing
_NO_KERNEL = {"aten.promote_types", "aten.sym_size", "aten.sym_stride", "aten.sym_numel", "aten.is_same_size"}


class CountOps(TorchDispatchMode):
    """Counts the ATen operations dispatched while active (autograd's backward included): all of them, and
    those that run a kernel (not a view, not a metadata query, not a profiler marker)."""

    def __init__(self) -> None:
        super().__init__()
        self.aten = 0
        self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.aten += 1
        name = str(func.overloadpacket)
        if not (func.is_view or name in _NO_KERNEL or name.startswith("profiler.")):
            self.kernels += 1
        return func(*args, **(kwargs or {}))


def ops_per_call(step: Callable[[], None]) -> tuple[int, int]:
    """(ATen ops, kernel ops) of one call of ``step``."""
    with CountOps() as counter:
        step()
    return counter.aten, counter.kernels


def peak_memory_mib(step: Callable[[], None], device: torch.device) -> float:
    """Peak CUDA memory allocated during one call (NaN on a CPU, where it is not tracked)."""
    if device.type != "cuda":
        return float("nan")
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def self_times_ms(step: Callable[[], None], calls: int, device: torch.device) -> dict[str, float]:
    """Self time of each operation, ms per call of ``step`` (kernel time on CUDA), from the profiler."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            step()
        sync(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return {event.key: getattr(event, attr) / calls / 1000 for event in prof.key_averages()}


def print_added_time(name: str, standard: dict[str, float], gm: dict[str, float], top: int = 8) -> None:
    """The operations on which a GMConv training step spends more time than a standard one."""
    added = sorted(((gm.get(k, 0.0) - standard.get(k, 0.0), k) for k in standard.keys() | gm.keys()), reverse=True)
    total = sum(gm.values()) - sum(standard.values())
    print(f"{name}: self time a GMConv training step adds, ms per step (profiled; total {total:+.2f}):")
    for ms, key in added[:top]:
        print(f"  {ms:+8.2f}  {key}")


def build(name: str, device: torch.device) -> tuple[nn.Module, int]:
    """A randomly initialised backbone and its class count: a project CIFAR ResNet or a torchvision model."""
    if name in registered_models():
        return create_backbone("local", name, num_classes=10).to(device), 10
    return getattr(torchvision.models, name)(weights=None).to(device), 1000


def gmconv_options(pairs: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings as ``convert_to_gmconv`` keywords, values read as YAML would (numbers, booleans)."""
    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--gmconv {pair!r}: write KEY=VALUE, e.g. sigma_granularity=kernel")
        lowered = value.lower()
        if lowered in ("true", "false"):
            options[key] = lowered == "true"
        else:
            try:
                options[key] = float(value) if "." in value or "e" in lowered else int(value)
            except ValueError:
                options[key] = value
    return options


def train_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, amp: str = "none"
) -> Callable[[], None]:
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)  # the loss in fp32, as engine/loop.py computes it
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def infer_step(model: nn.Module, x: torch.Tensor, amp: str = "none") -> Callable[[], None]:
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()

    def step() -> None:
        with torch.inference_mode(), autocast:
            model(x)

    return step


def bench_model(
    name: str, args: argparse.Namespace, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    torch.manual_seed(0)
    standard, classes = build(name, device)
    gm = convert_to_gmconv(copy.deepcopy(standard), **gmconv_options(args.gmconv))
    n_gm = sum(isinstance(m, GMConv2d) for m in gm.modules())
    folded = fold_gmconv(copy.deepcopy(gm)).eval()
    reused = copy.deepcopy(gm).eval()
    standard_eval = copy.deepcopy(standard).eval()
    gm_eval = copy.deepcopy(gm).eval()
    standard.train()
    gm.train()

    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    if args.channels_last:  # what trainer.channels_last does: the networks' weights and the input in NHWC
        x = x.to(memory_format=torch.channels_last)
        for net in (standard, gm, folded, reused, standard_eval, gm_eval):
            net.to(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (args.batch_size,), device=device)
    sgd = dict(lr=1e-3, momentum=0.9, foreach=True if args.foreach else None)
    steps = {
        "train standard": train_step(standard, torch.optim.SGD(standard.parameters(), **sgd), x, y, args.amp),
        "train gmconv": train_step(gm, torch.optim.SGD(gm.parameters(), **sgd), x, y, args.amp),
        "infer standard": infer_step(standard_eval, x, args.amp),
        "infer gmconv": infer_step(gm_eval, x, args.amp),
        "infer folded": infer_step(folded, x, args.amp),
        "infer reused": infer_step(reused, x, args.amp),
    }
    names = list(steps)
    print(f"{name}: {n_gm} GMConv2d layers; warming up ...", flush=True)
    for _ in range(args.warmup):
        for key in names:
            steps[key]()
    sync(device)
    extras: dict[str, list[float]] = {"layers": [float(n_gm)]}
    # autocast has no meta device: under --amp the counts are taken on the device itself
    count_on = device if device.type == "cuda" or args.amp != "none" else torch.device("meta")
    xc, yc = x.to(count_on), y.to(count_on)
    for key, model in (("train standard", standard), ("train gmconv", gm)):
        copied = copy.deepcopy(model).to(count_on)
        count_step = train_step(copied, torch.optim.SGD(copied.parameters(), **sgd), xc, yc, args.amp)
        count_step()  # the first step creates the optimizer's state
        aten, kernels = ops_per_call(count_step)
        extras[f"ops {key}"], extras[f"kernels {key}"] = [float(aten)], [float(kernels)]
    extras.update({f"MiB {key}": [peak_memory_mib(steps[key], device)] for key in ("train standard", "train gmconv")})
    if args.profile:
        print_added_time(
            name, *(self_times_ms(steps[key], args.profile, device) for key in ("train standard", "train gmconv"))
        )
    times: dict[str, list[float]] = {key: [] for key in names}
    if args.count_only:
        return times, extras
    with reuse_masked_weights(reused):  # held over every repetition, as evaluate() holds it over a pass
        for rep in range(args.reps):
            order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate: no variant always first
            for key in order:
                sync(device)
                start = time.perf_counter()
                steps[key]()
                sync(device)
                times[key].append(time.perf_counter() - start)
    return times, extras


def spread(values: list[float]) -> float:
    """Interquartile range relative to the median (0 with fewer than 4 values)."""
    if len(values) < 4:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4)
    return (q3 - q1) / statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["resnet18", "resnet50", "alexnet"],
        help="torchvision model names (weights=None) or CIFAR ResNets (resnet20 ... resnet110)",
    )
    parser.add_argument(
        "--gmconv",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="convert_to_gmconv options, e.g. sigma_granularity=kernel sigma_parametrization=exp",
    )
    parser.add_argument(
        "--foreach", action="store_true", help="the optimizer's foreach implementation (CUDA's default) also on a CPU"
    )
    parser.add_argument("--count-only", action="store_true", help="count operations per step; time nothing")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions per variant first")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU); default: torch's")
    parser.add_argument("--amp", choices=["none", "bf16"], default="none", help="bf16 autocast for every variant")
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="channels_last weights and inputs (NHWC), as trainer.channels_last=true trains",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="also profile this many training steps of each network and print the operations "
        "GMConv adds time to (0: off)",
    )
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        hw = torch.cuda.get_device_name(device)
    else:
        hw = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads"
    load = f", load avg {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    optimizer = "foreach" if args.foreach or device.type == "cuda" else "for-loop"
    print(
        f"torch {torch.__version__} on {device.type} ({hw}){load}; batch {args.batch_size}, "
        f"{args.image_size}px, amp {args.amp}, channels_last {args.channels_last}, "
        f"{args.reps} reps after {args.warmup} warmup, interleaved; "
        f"SGD {optimizer}; GMConv options {gmconv_options(args.gmconv) or 'default'}"
    )

    rows, best_rows, extra_rows = [], [], []
    for name in args.models:
        times, extras = bench_model(name, args, device)
        extra_rows.append((name, {key: v[0] for key, v in extras.items()}))
        if args.count_only:
            continue
        med = {key: statistics.median(v) * 1000 for key, v in times.items()}
        noise = max(spread(v) for v in times.values())
        rows.append((name, med, noise))
        best_rows.append((name, {key: min(v) * 1000 for key, v in times.items()}))

    if rows:
        print_times(rows, best_rows)
    print_counts(extra_rows)
    if hasattr(os, "getloadavg"):
        print(f"\nload avg at the end: {os.getloadavg()[0]:.2f} (other jobs on the machine add noise)")


def print_times(rows: list, best_rows: list) -> None:
    header = (
        f"{'model':<10} {'train std ms':>12} {'train gm ms':>12} {'gm/std':>7} | {'infer std ms':>12} "
        f"{'infer gm ms':>12} {'gm/std':>7} {'folded ms':>10} {'fold/std':>8} {'reused ms':>10} {'reuse/std':>9} "
        f"| {'max IQR':>7}"
    )
    print()
    print(header)
    print("-" * len(header))
    for name, med, noise in rows:
        print(
            f"{name:<10} {med['train standard']:>12.1f} {med['train gmconv']:>12.1f} "
            f"{med['train gmconv'] / med['train standard']:>7.3f} | {med['infer standard']:>12.1f} "
            f"{med['infer gmconv']:>12.1f} {med['infer gmconv'] / med['infer standard']:>7.3f} "
            f"{med['infer folded']:>10.1f} {med['infer folded'] / med['infer standard']:>8.3f} "
            f"{med['infer reused']:>10.1f} {med['infer reused'] / med['infer standard']:>9.3f} | {noise:>6.1%}"
        )
    print("\nratios of the fastest repetition of each variant (background load only ever adds time):")
    for name, best in best_rows:
        print(
            f"{name:<10} train gm/std {best['train gmconv'] / best['train standard']:.3f}   "
            f"infer gm/std {best['infer gmconv'] / best['infer standard']:.3f}   "
            f"infer folded/std {best['infer folded'] / best['infer standard']:.3f}   "
            f"infer reused/std {best['infer reused'] / best['infer standard']:.3f}"
        )


def print_counts(extra_rows: list) -> None:
    print("\none training step: operations dispatched (kernel ops ≈ kernel launches on a GPU) and peak CUDA memory:")
    for name, extra in extra_rows:
        std, gm = extra["kernels train standard"], extra["kernels train gmconv"]
        print(
            f"{name:<10} kernel ops std {std:.0f}  gm {gm:.0f}  gm/std {gm / std:.3f}  "
            f"added per layer {(gm - std) / extra['layers']:.1f} ({extra['layers']:.0f} layers)   "
            f"ATen ops std {extra['ops train standard']:.0f}  gm {extra['ops train gmconv']:.0f}   "
            f"MiB std {extra['MiB train standard']:.0f}  gm {extra['MiB train gmconv']:.0f}  "
            f"gm/std {extra['MiB train gmconv'] / extra['MiB train standard']:.3f}"
        )


if __name__ == "__main__":
    main()
