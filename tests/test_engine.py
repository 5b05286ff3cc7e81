"""Engine pieces in-process: weight-decay groups, lr scaling, schedules, RNG capture, metrics."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from engine.checkpoint import TrainState, capture_rng, restore, restore_rng
from engine.config import OptimConfig, SchedConfig
from engine.ema import build_ema
from engine.errors import CheckpointError
from engine.loop import Progress, train_one_epoch
from engine.metrics import topk_correct
from engine.nonfinite import NonFiniteGuard
from engine.objective import build_objective
from engine.optim import build_optimizer, build_scheduler, param_groups, scaled_lr
from gmconv import DynamicGMConv2d, GMConv2d


def test_no_weight_decay_on_sigma_biases_and_norms_and_sigma_in_its_own_group():
    model = nn.Sequential(
        GMConv2d(3, 8, 3, sigma_granularity="kernel"),
        nn.BatchNorm2d(8),
        DynamicGMConv2d(8, 8, 3),
        nn.Flatten(),
        nn.LazyLinear(2),
    )
    model(torch.randn(2, 3, 6, 6))
    decayed, plain, sigma = param_groups(model, 0.1, sigma_lr_scale=30.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decayed["params"]} == {"0.weight", "2.weight", "4.weight"}
    assert {names[id(p)] for p in plain["params"]} == {"0.bias", "1.weight", "1.bias", "2.bias", "4.bias"}
    assert {"0.sigma_raw", "2.sigma_predictor.0.weight", "2.sigma_predictor.2.bias"} <= {
        names[id(p)] for p in sigma["params"]
    }
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == sigma["weight_decay"] == 0.0
    assert sigma["lr_scale"] == 30.0
    assert len(param_groups(nn.Conv2d(3, 8, 3), 0.1)) == 2  # no σ, no σ group


def test_sigma_learns_at_the_scaled_rate_through_the_schedule():
    model = nn.Sequential(GMConv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 5, 5))
    optimizer = build_optimizer(model, OmegaConf.structured(OptimConfig(lr=0.1, sigma_lr_scale=10.0)), 0.1)
    scheduler = build_scheduler(
        optimizer,
        OmegaConf.structured(SchedConfig(name="cosine", warmup_epochs=0)),
        epochs=1,
        optimizer_steps_per_epoch=4,
    )
    scheduler.step_update(num_updates=2)
    lrs = [group["lr"] for group in optimizer.param_groups]
    assert lrs[2] == pytest.approx(10 * lrs[0]) and lrs[0] == pytest.approx(0.05)


def test_linear_lr_scaling_and_optimizer_choice():
    cfg = OmegaConf.structured(OptimConfig(lr=0.1, lr_scaling="linear", nesterov=True))
    assert scaled_lr(cfg, 512) == pytest.approx(0.2)
    assert scaled_lr(OmegaConf.structured(OptimConfig(lr=0.1)), 512) == pytest.approx(0.1)
    optimizer = build_optimizer(nn.Linear(2, 2), cfg, 0.2)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"] is True
    with pytest.raises(ValueError, match="optim.name=nosuchopt"):
        build_optimizer(nn.Linear(2, 2), OmegaConf.structured(OptimConfig(name="nosuchopt")), 0.1)


@pytest.mark.parametrize("name", ["cosine", "multistep", "none"])
def test_schedules_warm_up_per_step(name):
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    cfg = OmegaConf.structured(SchedConfig(name=name, warmup_epochs=1, warmup_lr=0.0, milestones=[2]))
    scheduler = build_scheduler(optimizer, cfg, epochs=4, optimizer_steps_per_epoch=10)
    lrs = []
    for step in range(1, 41):
        scheduler.step_update(num_updates=step)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[:9] == pytest.approx([0.1 * (i + 1) for i in range(9)])  # linear warmup towards lr over 10 steps
    after_warmup = {"cosine": 0.5 * (1 + math.cos(math.pi * 10 / 40)), "multistep": 1.0, "none": 1.0}[name]
    assert lrs[9] == pytest.approx(after_warmup)  # warmup is part of the schedule's length (timm)
    final = {"cosine": 0.0, "multistep": 0.1, "none": 1.0}[name]
    assert lrs[-1] == pytest.approx(final, abs=0.01)


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    state = capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    torch.save({"rng": state}, tmp_path / "rng.pt")
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_topk_counts_cap_k_at_the_number_of_classes():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    targets = torch.tensor([1, 2, 0])
    top1, top5 = topk_correct(logits, targets, (1, 5))
    assert top1.item() == 1 and top5.item() == 3


def test_restored_optimizer_keeps_its_buffers_but_takes_the_configured_hyperparameters():
    """A resumed run's momentum continues; a changed lr or weight decay applies (with unchanged settings
    the restored groups equal the saved ones exactly)."""

    def state_for(lr: float) -> TrainState:
        model = nn.Linear(2, 2)
        optimizer = build_optimizer(model, OmegaConf.structured(OptimConfig(lr=lr)), lr)
        scheduler = build_scheduler(
            optimizer,
            OmegaConf.structured(SchedConfig(name="none", warmup_epochs=0)),
            epochs=2,
            optimizer_steps_per_epoch=3,
        )
        return TrainState(model=model, optimizer=optimizer, scheduler=scheduler)

    trained = state_for(0.1)
    trained.model(torch.randn(4, 2)).sum().backward()
    trained.optimizer.step()
    trained.step = 1
    saved = trained.state_dict()
    for lr in (0.1, 0.5):
        resumed = state_for(lr)
        resumed.load_progress(saved)
        assert {g["lr"] for g in resumed.optimizer.param_groups} == {lr}
        momentum = resumed.optimizer.state_dict()["state"][0]["momentum_buffer"]
        torch.testing.assert_close(momentum, saved["optimizer"]["state"][0]["momentum_buffer"])
        assert resumed.step == 1


def test_an_optimizer_state_with_other_parameter_groups_is_refused_as_bad_input():
    """torch's ValueError for a saved optimizer whose groups differ (a setting such as optim.layer_decay changed on
    resume) is the user's input meeting the checkpoint: a CheckpointError naming the file and the way out."""
    model = nn.Linear(2, 2)
    two_groups = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias]}], lr=0.1)
    one_group = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = build_scheduler(
        one_group,
        OmegaConf.structured(SchedConfig(name="none", warmup_epochs=0)),
        epochs=2,
        optimizer_steps_per_epoch=3,
    )
    saved = {"model": model.state_dict(), "optimizer": two_groups.state_dict()}
    with pytest.raises(CheckpointError, match=r"run/last.pt holds an optimizer state that does not fit.*layer_decay"):
        restore(TrainState(model=model, optimizer=one_group, scheduler=scheduler), saved, "run/last.pt")


def test_tracker_writes_one_mask_image_per_gmconv_layer_and_none_for_a_standard_model(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from engine.tracking import Tracker

    gm = nn.Sequential(
        GMConv2d(3, 8, 3),
        nn.ReLU(),
        GMConv2d(8, 4, 5, sigma_granularity="kernel"),
        DynamicGMConv2d(4, 4, 3),
        nn.Conv2d(4, 4, 1),
    )
    with torch.no_grad():
        gm[0].sigma_raw.copy_(torch.linspace(-2.0, 2.0, 8))  # 8 different widths
    for name, model in (("gm", gm), ("standard", nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)))):
        tracker = Tracker(tmp_path / name, enabled=True)
        tracker.start(records=[])
        tracker.masks(model, step=3)
        tracker.close()
    images = EventAccumulator(str(tmp_path / "gm" / "tb")).Reload()
    assert images.Tags()["images"] == ["sigma_mask/0", "sigma_mask/2"]  # not the dynamic or the plain conv
    first = images.Images("sigma_mask/0")
    assert [event.step for event in first] == [3]
    assert (first[0].width, first[0].height) == (3 * 24 + 2, 24)  # 3 masks of 3×3 upscaled ×8, 1-px gaps
    assert EventAccumulator(str(tmp_path / "standard" / "tb")).Reload().Tags()["images"] == []


@pytest.mark.parametrize("conv", ["standard", "gmconv_dynamic"])
def test_mask_images_are_refused_where_no_layer_has_a_mask(conv):
    from engine.config import validate
    from helpers import compose_train

    validate(compose_train("trainer.log_masks=true"))
    with pytest.raises(ValueError, match=f"trainer.log_masks=true has no effect: conv={conv}"):
        validate(compose_train("trainer.log_masks=true", f"conv={conv}"))


class _HostReads(TorchDispatchMode):
    """Counts the operations that make a CPU wait for a CUDA device: a tensor built from host values
    (``torch.tensor(...)``, a blocking copy to the device) and a scalar read (``.item()``)."""

    SYNCING = {"aten.lift_fresh.default", "aten._local_scalar_dense.default"}

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += str(func) in self.SYNCING
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("progress", [Progress.off, Progress.lines])
def test_a_training_step_never_waits_for_the_device(progress, monkeypatch):
    """The host reads and host-built tensors of an epoch must not grow with its steps: on CUDA each one
    in a step would stall the CPU until the GPU caught up. The step here has everything a recipe adds:
    cutmix/mixup, label smoothing, gradient accumulation, clipping, a warmup schedule, an EMA and the
    divergence guard. (Progress lines read the sums on every
    step here, through ``MetricSums.running``, which on CUDA never waits: see ``_AsyncReadout``.)"""
    tolist_calls = []
    original_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: tolist_calls.append(1) or original_tolist(t))
    trainer = OmegaConf.create(
        {
            "epochs": 1,
            "limit_train_batches": None,
            "channels_last": False,
            "amp": "none",
            "label_smoothing": 0.1,
            "grad_clip": 1.0,
            "log_every_steps": 1,
            "accumulate_steps": 2,
            "loss": "ce",
            "bce_target_threshold": None,
            "ema_decay": 0.9,
            "ema_warmup": False,
        }
    )
    mixing = OmegaConf.create({"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "mix_prob": 1.0, "mix_switch_prob": 0.5})

    def host_reads(steps: int) -> int:
        torch.manual_seed(0)
        model = nn.Sequential(GMConv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
        optimizer = build_optimizer(model, OmegaConf.structured(OptimConfig()), 0.1)
        scheduler = build_scheduler(
            optimizer, OmegaConf.structured(SchedConfig(warmup_epochs=0.5)), epochs=1, optimizer_steps_per_epoch=steps
        )
        state = TrainState(model=model, optimizer=optimizer, scheduler=scheduler, ema=build_ema(model, trainer))
        # the divergence guard reads its window every check_every steps (a sync by design), never per step
        guard = NonFiniteGuard("stop", 50, check_every=100, counters={}, distributed=False, kept=str)
        batches = [(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))) for _ in range(steps)]
        tolist_calls.clear()
        with _HostReads() as reads:
            result = train_one_epoch(
                state,
                batches,
                trainer,
                torch.device("cpu"),
                epoch=0,
                progress=progress,
                objective=build_objective(mixing, trainer, num_classes=10),
                guard=guard,
            )
        assert math.isfinite(result["loss"])
        syncs_on_cuda = len(tolist_calls) if progress is Progress.off else 0
        return reads.count + syncs_on_cuda

    assert host_reads(2) == host_reads(6)
