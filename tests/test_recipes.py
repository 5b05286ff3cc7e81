"""Training-recipe pieces of the engine (issue #9): EMA, Mixup/CutMix, loss, gradient accumulation,
timm parameter groups and layer decay, schedules, regularisation, per-rank seeds."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf
from torch import nn

from data import DataConfig
from engine.checkpoint import TrainState
from engine.config import OptimConfig, SchedConfig, TrainerConfig, validate
from engine.distributed import seed_everything
from engine.ema import build_ema
from engine.loop import Progress, train_one_epoch
from engine.objective import Objective, build_objective
from engine.optim import build_optimizer, build_scheduler, param_groups, scaled_lr
from gmconv import GMConv2d, convert_to_gmconv
from helpers import compose_train, load, run_in_process
from models.config import ConvConfig, ModelConfig
from models.factory import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _net() -> nn.Module:
    """No BatchNorm: a batch's gradient is then the mean of its samples' gradients, exactly."""
    torch.manual_seed(0)
    return nn.Sequential(GMConv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def _state(model: nn.Module, steps_per_epoch: int, trainer: TrainerConfig, sched: str = "cosine") -> TrainState:
    optim_cfg = OmegaConf.structured(OptimConfig(lr=0.05, weight_decay=1e-3, sigma_lr_scale=1.0))
    optimizer = build_optimizer(model, optim_cfg, optim_cfg.lr)
    scheduler = build_scheduler(
        optimizer,
        OmegaConf.structured(SchedConfig(name=sched, warmup_epochs=0.5)),
        epochs=2,
        optimizer_steps_per_epoch=steps_per_epoch,
    )
    return TrainState(model=model, optimizer=optimizer, scheduler=scheduler, ema=build_ema(model, trainer))


def _batches(count: int, size: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 6, 6, generator=g), torch.randint(0, 5, (size,), generator=g)) for _ in range(count)]


def _epoch(
    state: TrainState, loader: list, trainer: TrainerConfig, objective: Objective | None = None, on_step=None
) -> dict:
    cfg = OmegaConf.structured(trainer)
    return train_one_epoch(
        state,
        loader,
        cfg,
        torch.device("cpu"),
        epoch=0,
        progress=Progress.off,
        objective=objective or Objective(nn.CrossEntropyLoss()),
        on_step=on_step,
    )


def test_accumulated_batches_take_the_steps_of_one_larger_batch():
    """10 batches of 4 accumulated 4 at a time (groups of 4, 4, 2) = batches of 16, 16, 8: weights, step
    count and the per-step schedule agree (momentum, weight decay, σ group and warmup included)."""
    small = _batches(10, 4)
    large = [tuple(torch.cat(parts) for parts in zip(*small[i : i + 4])) for i in (0, 4, 8)]
    runs = {}
    for name, loader, k in (("accumulated", small, 4), ("large", large, 1)):
        trainer = TrainerConfig(accumulate_steps=k, epochs=2)
        state = _state(_net(), steps_per_epoch=3, trainer=trainer)
        lrs = []
        _epoch(state, loader, trainer, on_step=lambda s: lrs.append(s.optimizer.param_groups[0]["lr"]) and False)
        runs[name] = (state, lrs)
    (acc, acc_lrs), (big, big_lrs) = runs["accumulated"], runs["large"]
    assert acc.step == big.step == 3 and acc.batches_done == 10
    assert acc_lrs == pytest.approx(big_lrs)
    for (name, p), q in zip(acc.model.named_parameters(), big.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(acc.model[3].weight, _net()[3].weight)  # it did train


def test_an_epoch_stopped_after_an_accumulated_step_continues_with_the_same_groups():
    """5 batches in groups of 2, 2, 1: stopped after the first step and continued with the remaining
    batches (as a mid-epoch resume does), the weights are those of the uninterrupted epoch."""
    batches = _batches(5, 4)
    trainer = TrainerConfig(accumulate_steps=2, epochs=2, ema_decay=0.5)
    whole = _state(_net(), steps_per_epoch=3, trainer=trainer)
    _epoch(whole, batches, trainer)
    parts = _state(_net(), steps_per_epoch=3, trainer=trainer)
    assert _epoch(parts, batches, trainer, on_step=lambda s: True)["stopped"] and parts.batches_done == 2
    _epoch(parts, batches[2:], trainer)
    assert parts.step == whole.step == 3 and parts.batches_done == 5
    for a, b in zip(
        [*parts.model.parameters(), *parts.ema.parameters()], [*whole.model.parameters(), *whole.ema.parameters()]
    ):
        assert torch.equal(a, b)


def test_ema_weights_follow_the_closed_form_update():
    decay = 0.8
    trainer = TrainerConfig(ema_decay=decay)
    model = _net()
    state = _state(model, steps_per_epoch=4, trainer=trainer)
    seen = []
    _epoch(
        state,
        _batches(4, 4),
        trainer,
        on_step=lambda s: seen.append({k: v.clone() for k, v in s.model.state_dict().items()}) and False,
    )
    expected = seen[0]  # timm: the first update copies the weights, then ema = d·ema + (1-d)·weights
    for weights in seen[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in weights}
    for key, value in state.ema.module.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.allclose(state.ema.module[3].weight, model[3].weight)  # an average, not the weights


@pytest.mark.parametrize("mixup_alpha, cutmix_alpha", [(0.4, 0.0), (0.0, 1.0)])
def test_mixed_targets_sum_to_one_and_match_the_share_of_each_image(mixup_alpha, cutmix_alpha):
    np.random.seed(0)  # Mixup draws λ from NumPy's global RNG (here 0.61 for mixup)
    data = OmegaConf.structured(DataConfig(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha))
    objective = build_objective(data, OmegaConf.structured(TrainerConfig()), num_classes=8)
    n = 8
    images = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 3, 16, 16).clone()
    labels = torch.arange(n)  # image i is all i and has label i; timm mixes image i with image n-1-i
    mixed, targets = objective.mix(images.clone(), labels)  # timm mixes in place
    assert targets.shape == (n, 8)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(n))
    share = targets[torch.arange(n), labels]  # λ of each image's own label
    assert 0 < share[0] < 1 and torch.allclose(targets[torch.arange(n), labels.flip(0)], 1 - share)
    if cutmix_alpha:  # the fraction of pixels that still belong to image i
        measured = (mixed == images).float().mean(dim=(1, 2, 3))
    else:  # pixel = λ·i + (1-λ)·(n-1-i)
        i = torch.arange(n, dtype=torch.float32)
        measured = (mixed[:, 0, 0, 0] - (n - 1 - i)) / (2 * i - (n - 1))
    torch.testing.assert_close(measured, share, rtol=0, atol=1e-5)
    assert torch.equal(objective.dominant_labels(targets), torch.where(share >= 0.5, labels, labels.flip(0)))


def test_loss_choice_follows_timm_train_py():
    trainer = OmegaConf.structured(TrainerConfig(loss="bce", label_smoothing=0.1, bce_target_threshold=0.2))
    plain, mixing = OmegaConf.structured(DataConfig()), OmegaConf.structured(DataConfig(cutmix_alpha=1.0))
    bce = build_objective(plain, trainer, 10).criterion
    assert type(bce).__name__ == "BinaryCrossEntropy" and bce.smoothing == 0.1 and bce.target_threshold == 0.2
    mixed = build_objective(mixing, trainer, 10)
    assert mixed.criterion.smoothing == 0.0 and mixed.mixup.label_smoothing == 0.1  # smoothed once, by Mixup
    ce = build_objective(mixing, OmegaConf.structured(TrainerConfig()), 10).criterion
    assert type(ce).__name__ == "SoftTargetCrossEntropy"


class _WithTokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.proj = GMConv2d(3, 8, 3)
        self.head = nn.Linear(8, 2)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


def test_no_weight_decay_names_get_none_and_sigma_keeps_its_own_group():
    model = _WithTokens()
    groups = param_groups(model, 0.05, sigma_lr_scale=10.0)
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {names[id(p)]: g for g in groups for p in g["params"]}
    assert by_name["pos_embed"]["weight_decay"] == 0.0 and by_name["head.weight"]["weight_decay"] == 0.05
    assert by_name["proj.weight"]["weight_decay"] == 0.05 and by_name["head.bias"]["weight_decay"] == 0.0
    sigma = by_name["proj.sigma_raw"]
    assert sigma["params"] == [model.proj.sigma_raw] and sigma["weight_decay"] == 0.0 and sigma["lr_scale"] == 10.0


def test_layer_decay_scales_each_layer_group_and_leaves_sigma_alone():
    model = convert_to_gmconv(timm.create_model("test_resnet", num_classes=3))
    optim_cfg = OmegaConf.structured(
        OptimConfig(name="adamw", lr=1.0, weight_decay=0.05, layer_decay=0.5, sigma_lr_scale=3.0)
    )
    optimizer = build_optimizer(model, optim_cfg, 1.0)
    build_scheduler(
        optimizer,
        OmegaConf.structured(SchedConfig(name="none", warmup_epochs=0)),
        epochs=1,
        optimizer_steps_per_epoch=1,
    )
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    layers = sorted({g["lr"] for g in optimizer.param_groups if g.get("lr_scale") != 3.0})
    depth = len(layers)
    assert depth > 2 and layers == pytest.approx([0.5**i for i in reversed(range(depth))])  # 1, 1/2, 1/4, ...
    assert lr_of[id(named["fc.weight"])] == 1.0 and lr_of[id(named["conv1.0.weight"])] == pytest.approx(
        0.5 ** (depth - 1)
    )
    sigmas = [p for n, p in named.items() if n.endswith("sigma_raw")]
    assert sigmas and all(lr_of[id(p)] == 3.0 for p in sigmas)
    assert all(g["weight_decay"] == 0.0 for g in optimizer.param_groups if g.get("lr_scale") == 3.0)
    with pytest.raises(ValueError, match="group_matcher"):
        build_optimizer(nn.Linear(2, 2), optim_cfg, 1.0)


def test_sqrt_lr_scaling_and_the_step_and_poly_schedules():
    assert scaled_lr(OmegaConf.structured(OptimConfig(lr=0.1, lr_scaling="sqrt")), 1024) == pytest.approx(0.2)
    for name, expected in (("step", [1.0, 0.5, 0.25]), ("poly", [1.0, 4 / 9, 1 / 9])):
        optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
        shape = {"gamma": 0.5, "decay_epochs": 1} if name == "step" else {"power": 2}
        cfg = SchedConfig(name=name, warmup_epochs=0, **shape)
        scheduler = build_scheduler(optimizer, OmegaConf.structured(cfg), epochs=3, optimizer_steps_per_epoch=2)
        lrs = []
        for step in (0, 2, 4):
            scheduler.step_update(num_updates=step)
            lrs.append(optimizer.param_groups[0]["lr"])
        assert lrs == pytest.approx(expected)


def test_drop_path_reaches_a_timm_backbone_and_is_refused_where_there_is_none():
    def build(**settings):
        return build_model(
            OmegaConf.structured(ModelConfig(**settings)),
            OmegaConf.structured(ConvConfig()),
            num_classes=3,
            image_size=32,
        )

    model = build(name="test_vit", source="timm", drop_path_rate=0.1, drop_rate=0.2)
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.1) and model.head_drop.p == 0.2
    with pytest.raises(ValueError, match=r"model.drop_path_rate=0.1 is not supported by resnet18"):
        build(name="resnet18", source="torchvision", drop_path_rate=0.1)
    with pytest.raises(ValueError, match=r"model.drop_rate=0.3 is not supported by the local model resnet20"):
        build(name="resnet20", drop_rate=0.3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.ema_decay=1.5"], "trainer.ema_decay=1.5 is invalid"),
        (["trainer.ema_warmup=true"], "trainer.ema_warmup=true has no effect"),
        (["trainer.best_of=ema"], "trainer.best_of=ema needs an EMA"),
        (["trainer.accumulate_steps=0"], "trainer.accumulate_steps=0 is invalid"),
        (["trainer.bce_target_threshold=0.2"], "trainer.bce_target_threshold=0.2 is used by trainer.loss=bce only"),
        (["trainer.loss=bce", "trainer.bce_target_threshold=1.5"], "trainer.bce_target_threshold=1.5 is invalid"),
        (["data.mixup_alpha=-1"], "data.mixup_alpha=-1.0 is invalid"),
        (["data.cutmix_alpha=1", "data.mix_prob=2"], "data.mix_prob=2.0 is invalid"),
        (["data.mix_switch_prob=0.3"], "data.mix_switch_prob=0.3 has no effect"),
        (["data.cutmix_alpha=1", "data.batch_size=31"], "data.batch_size=31 is odd"),
        (["optim.layer_decay=0.7"], "optim.layer_decay=0.7 needs a timm model"),
        (["model=timm", "optim.layer_decay=0"], "optim.layer_decay=0.0 is invalid"),
        (["sched=cosine", "sched.decay_epochs=3"], "sched.decay_epochs=3.0 is used by sched=step only"),
        (["sched.name=step"], "sched.decay_epochs=None is invalid"),
        (["sched.name=poly", "sched.power=0"], "sched.power=0.0 is invalid"),
    ],
)
def test_bad_recipe_settings_stop_at_start_up_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate(compose_train(*overrides))


def test_a_whole_recipe_passes_the_start_up_check():
    validate(
        compose_train(
            "model=timm",
            "optim=adamw",
            "optim.layer_decay=0.7",
            "optim.lr_scaling=sqrt",
            "sched=step",
            "trainer.ema_decay=0.999",
            "trainer.ema_warmup=true",
            "trainer.best_of=ema",
            "data.mixup_alpha=0.1",
            "data.cutmix_alpha=1",
            "data.mix_switch_prob=0.3",
            "trainer.loss=bce",
            "trainer.bce_target_threshold=0.2",
            "trainer.accumulate_steps=4",
            "model.drop_path_rate=0.05",
        )
    )
    validate(compose_train("sched=poly", "sched.power=2", "sched.min_lr=1e-5"))


def test_each_rank_draws_its_own_numbers_reproducibly():
    def draws(rank: int) -> tuple:
        seed_everything(7, rank)
        return random.random(), float(np.random.rand()), torch.rand(1).item()

    assert draws(0) == draws(0) and draws(1) == draws(1)
    assert all(a != b for a, b in zip(draws(0), draws(1)))


@pytest.mark.slow
def test_a_resumed_run_with_ema_mixup_and_accumulation_is_bit_exact(tmp_path):
    args = [
        "trainer.epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "data.batch_size=16",
        "trainer.progress=false",
        "trainer.device=cpu",
        "trainer.ema_decay=0.9",
        "trainer.best_of=ema",
        "data.mixup_alpha=0.2",
        "data.cutmix_alpha=1.0",
        "trainer.accumulate_steps=2",
        "sched=none",
    ]  # a constant lr: the 1-epoch run's schedule is then the 2-epoch run's first half
    full = run_in_process(tmp_path / "full", *args)
    run_in_process(tmp_path / "part", *args[1:], "trainer.epochs=1")
    resumed = run_in_process(tmp_path / "part", *args, f"resume={tmp_path / 'part'}")
    a, b = load(tmp_path / "full/checkpoints/last.pt"), load(tmp_path / "part/checkpoints/last.pt")
    assert a["step"] == b["step"] == 2 * 2  # 3 batches: groups of 2 and 1 per epoch
    for entry in ("model", "ema"):
        for key in a[entry]:
            assert torch.equal(a[entry][key], b[entry][key]), f"{entry}.{key}"
    assert resumed["ema_top1"] == full["ema_top1"] and resumed["best_of"] == "ema"
    best = load(tmp_path / "full/checkpoints/best.pt")
    assert best["weights"] == "ema" and all(torch.equal(best["model"][k], best["ema"][k]) for k in best["ema"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment, data",
    [
        ("imagenet_resnet50_rsb_a3", "imagefolder_root"),
        ("imagenet_resnet50_tv", "imagefolder_root"),
        ("cifar10_resnet56_modern", "cifar10_root"),
    ],
)
def test_recipe_experiments_train_a_few_steps_on_their_data_format(experiment, data, request, tmp_path):
    """Each recipe as written (optimizer, loss, mixing, policy, EMA, train/test sizes), on tiny files of its
    data's real format; only the sizes, the length and the CPU-unfriendly settings are scaled down."""
    root = request.getfixturevalue(data)
    imagenet = data == "imagefolder_root"
    sizes = ["data=imagefolder", "data.image_size=32", "data.test_image_size=40"] if imagenet else []
    if experiment == "imagenet_resnet50_tv":
        sizes.append("data.val_resize=44")  # the recipe's 232 for 224, scaled to the 40 px test crop
    results = run_in_process(
        tmp_path / "run",
        f"experiment={experiment}",
        *sizes,
        f"data.root={root}",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.amp=none",
        "trainer.channels_last=false",
        "trainer.progress=false",
        "sched.warmup_epochs=0",
    )
    assert results["status"] == "completed" and load(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 2
    assert math.isfinite(results["loss"]) and 0 <= results["top1"] <= 100
    config = results["config"]
    assert config["data"]["mixup_alpha"] > 0 or config["trainer"]["ema_decay"] is not None
