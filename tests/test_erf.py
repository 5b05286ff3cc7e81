"""gmconv.erf against closed-form answers, the model left untouched, and scripts/erf.py end to end."""

from __future__ import annotations

import copy
import json
import math
import statistics
import subprocess
from pathlib import Path

import preloaded
import pytest
import torch
from PIL import Image
from torch import nn

from analysis import erf_report
from gmconv import DynamicGMConv2d, GMConv2d, erf_map, erf_stats
from gmconv.erf import GAUSSIAN_MASS, gaussian_fit, spatial_layers
from helpers import failed_with, ok, run_in_process
from models.cifar_resnet import CifarResNet

TINY_RUN = [
    "trainer.epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "data.batch_size=16",
    "trainer.progress=false",
]
STAT_KEYS = {
    "centroid_y",
    "centroid_x",
    "sigma_y",
    "sigma_x",
    "area_ratio@0.2",
    "area_ratio@0.3",
    "area_ratio@0.5",
    "area_ratio@0.99",
    "gauss_r2",
    "gauss_mass_1sigma",
    "gauss_mass_2sigma",
    "gauss_sigma_major",
    "gauss_sigma_minor",
}


def _script_run(*args: str) -> subprocess.CompletedProcess:
    """``python -m scripts.erf *args`` with one thread: tiny tensors, and a 2-core CPU shared with other jobs."""
    return preloaded.run(
        "-m",
        "scripts.erf",
        *args,
        env={"OMP_NUM_THREADS": "1"},
    )


def _conv(kernel: torch.Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(1, 1, kernel.shape[-1], padding=kernel.shape[-1] // 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(kernel.view_as(conv.weight))
    return conv


class Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def test_one_convolution_sees_its_kernel_unflipped_at_the_centre(one_thread):
    kernel = torch.arange(-4.0, 5.0).view(3, 3)  # asymmetric, signed: a flipped or signed map would fail
    erf = erf_map(_conv(kernel), torch.randn(3, 1, 8, 8))
    expected = torch.zeros(8, 8, dtype=torch.float64)
    expected[3:6, 3:6] = kernel.abs() / kernel.abs().sum()  # centre (8 // 2, 8 // 2) = (4, 4)
    assert erf.dtype == torch.float64 and erf.shape == (8, 8)
    torch.testing.assert_close(erf, expected)


def test_two_convolutions_give_the_triangle_and_its_closed_form_stats(one_thread):
    model = nn.Sequential(_conv(torch.ones(3, 3)), _conv(torch.ones(3, 3)))
    erf = erf_map(model, torch.randn(2, 1, 9, 9))
    triangle = torch.tensor([1.0, 2, 3, 2, 1], dtype=torch.float64)
    expected = torch.zeros(9, 9, dtype=torch.float64)
    expected[2:7, 2:7] = torch.outer(triangle, triangle) / 81
    torch.testing.assert_close(erf, expected)
    stats = erf_stats(erf)
    assert set(stats) == STAT_KEYS
    assert stats["centroid_y"] == pytest.approx(4) and stats["centroid_x"] == pytest.approx(4)
    assert stats["sigma_y"] == pytest.approx(math.sqrt(12 / 9)) and stats["sigma_x"] == pytest.approx(math.sqrt(12 / 9))
    # sorted values ×81: 9, 6,6,6,6, 4,4,4,4, 3,3,3,3, 2 (×8), 1 (×4)
    assert stats["area_ratio@0.2"] == pytest.approx(3 / 81)  # 9+6+6 = 21 ≥ 16.2
    assert stats["area_ratio@0.5"] == pytest.approx(7 / 81)  # 9+24+8 = 41 ≥ 40.5


def test_images_add_their_absolute_maps_not_a_gradient_of_their_sum(one_thread):
    # d(sum of 3×3 of x²)/dx = 2x: +2 everywhere for image 1, ±2 in a checkerboard for image 2. Summed
    # absolute maps are uniform over the 3×3; the summed gradients would cancel on half of it.
    model = nn.Sequential(Square(), _conv(torch.ones(3, 3)))
    checkerboard = (torch.arange(7).view(7, 1) + torch.arange(7)) % 2 * 2.0 - 1
    erf = erf_map(model, torch.stack([torch.ones(7, 7), checkerboard]).unsqueeze(1), batch_size=2)
    expected = torch.zeros(7, 7, dtype=torch.float64)
    expected[2:5, 2:5] = 1 / 9
    torch.testing.assert_close(erf, expected)


def test_stats_of_hand_made_maps():
    spike = torch.full((10, 10), 0.5 / 99, dtype=torch.float64)
    spike[2, 7] = 0.5
    stats = erf_stats(spike * 5, thresholds=(0.2, 0.5, 0.99, 1.0))  # not normalised: renormalised
    assert stats["area_ratio@0.2"] == stats["area_ratio@0.5"] == pytest.approx(1 / 100)
    assert stats["area_ratio@0.99"] == pytest.approx(99 / 100)  # 0.5 + 98 × 0.5/99 ≥ 0.99 > 0.5 + 97 × 0.5/99
    assert stats["area_ratio@1"] == pytest.approx(1.0)
    box = torch.zeros(6, 8)
    box[1:4, 0:5] = 1.0  # rows 1-3, columns 0-4: uniform marginals
    stats = erf_stats(box)
    assert (stats["centroid_y"], stats["centroid_x"]) == pytest.approx((2, 2))
    assert (stats["sigma_y"], stats["sigma_x"]) == pytest.approx((math.sqrt(2 / 3), math.sqrt(2)))
    assert stats["area_ratio@0.2"] == pytest.approx(3 / 48)  # 3 of 15 equal pixels hold 0.2
    for bad, match in [(-box, "non-negative"), (box[None], r"\(H, W\)"), (torch.zeros(3, 3), "positive sum")]:
        with pytest.raises(ValueError, match=match):
            erf_stats(bad)
    with pytest.raises(ValueError, match="threshold 0 must be in"):
        erf_stats(box, thresholds=(0,))


def test_the_model_and_inputs_are_left_exactly_as_they_were(one_thread):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        GMConv2d(4, 4, 3, padding=1),
        DynamicGMConv2d(4, 4, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    model.train()
    model[1].eval()  # mixed modes
    model[0].bias.requires_grad_(False)  # a frozen parameter
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    state = copy.deepcopy(model.state_dict())  # BatchNorm statistics too: a train-mode pass would move them
    inputs = torch.randn(3, 3, 9, 9)
    original = inputs.clone()
    with torch.no_grad():  # works inside no_grad too
        erf = erf_map(model, inputs)
    assert erf.sum().item() == pytest.approx(1) and (erf >= 0).all()
    with pytest.raises(ValueError, match="not a module"):
        erf_map(model, inputs, layer="nope")  # and after a failure
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    assert all(not m._forward_hooks for m in model.modules())
    assert model[4].last_sigma is None
    assert torch.equal(inputs, original) and not inputs.requires_grad and inputs.grad is None


def test_a_cifar_resnet_is_measured_at_its_last_stage(one_thread):
    torch.manual_seed(0)
    model, images = CifarResNet(20).eval(), torch.randn(3, 3, 32, 32)
    layers = spatial_layers(model, images)
    assert list(layers)[-1] == "layer3" and layers["layer3"] == (1, 64, 8, 8)
    assert "fc" not in layers
    erf = erf_map(model, images)
    torch.testing.assert_close(erf, erf_map(model, images, layer="layer3", batch_size=1))  # images independent
    stats = erf_stats(erf)
    assert abs(stats["centroid_y"] - 16) < 3 and abs(stats["centroid_x"] - 16) < 3
    assert not torch.equal(erf, erf_map(model, images, layer="layer1"))
    with pytest.raises(ValueError, match=r"'nope' is not a module of CifarResNet.*'layer3'"):
        erf_map(model, images, layer="nope")
    with pytest.raises(ValueError, match=r"'fc' does not output a spatial.*'layer3'"):
        erf_map(model, images, layer="fc")
    with pytest.raises(ValueError, match="no module with a spatial"):
        erf_map(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.randn(1, 3, 2, 2))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A folder of three tiny trained runs on digits, as a sweep holds them: GMConv with seeds 0 and 1 (one
    condition) and standard with seed 0 (a few seconds each, on one thread)."""
    root = tmp_path_factory.mktemp("erf_sweep")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, overrides in [("0", ["seed=0"]), ("1", ["seed=1"]), ("2", ["conv=standard"])]:
            run_in_process(root / name, *overrides, *TINY_RUN)
    finally:
        torch.set_num_threads(threads)
    return root


def _stats_over(values: list[float]) -> dict:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
    }


@pytest.mark.slow
def test_a_sweep_gives_one_condition_per_setting_with_its_seeds_stats_and_each_runs(sweep, tmp_path):
    out = tmp_path / "erf"
    proc = ok(_script_run(str(sweep), "--images", "4", "--out", str(out)))
    summary = json.loads((out / "erf.json").read_text())
    assert set(summary) == {"images_per_run", "layer_option", "log_scale", "num_conditions", "conditions"}
    gm, standard = summary["conditions"]
    assert summary["num_conditions"] == 2
    assert (gm["label"], standard["label"]) == ("resnet20-gmconv", "resnet20-standard")
    assert (gm["n"], gm["seeds"], standard["n"], standard["seeds"]) == (2, [0, 1], 1, [0])
    for condition in (gm, standard):
        assert set(condition) == {"label", "n", "seeds", "layer", "images", "stats", "init_stats", "runs"}
        assert condition["layer"] == "layer3" and condition["images"] == "4 validation images of digits"
        for kind in ("stats", "init_stats"):
            assert set(condition[kind]) == STAT_KEYS
            for key, value in condition[kind].items():  # mean ± sample std over the runs' own stats
                assert value == pytest.approx(_stats_over([run[kind][key] for run in condition["runs"]]))
    assert all(value["n"] == 2 and value["std"] is not None for value in gm["stats"].values())
    assert gm["stats"]["sigma_x"]["std"] > 0 and gm["init_stats"]["sigma_x"]["std"] > 0  # two seeds: two networks
    assert [run["run"] for run in gm["runs"]] == [str(sweep / "0"), str(sweep / "1")]
    assert [run["run"] for run in standard["runs"]] == [str(sweep / "2")]
    assert standard["stats"]["sigma_x"]["std"] is None and standard["stats"]["sigma_x"]["n"] == 1
    with Image.open(out / "erf.png") as png:
        assert png.width <= 1200 and png.height <= 900
    table = proc.stdout[proc.stdout.index("condition") :]
    assert "resnet20-gmconv at init " in table and "area_ratio@0.99" in table
    sigma_x = gm["stats"]["sigma_x"]
    assert f"{sigma_x['mean']:.2f} ± {sigma_x['std']:.2f}" in table


@pytest.mark.slow
def test_the_figure_is_init_above_trained_per_condition_in_pixels_with_one_colour_bar(sweep, one_thread):
    script = erf_report
    measured = script.collect([str(sweep / "0"), str(sweep / "1")], 2, None)
    (condition,) = measured
    assert [r.run.config.seed for r in condition.runs] == [0, 1]
    for kind in script.KINDS:  # the mean of maps that each sum to 1: every seed weighs the same
        mean = condition.mean_map(kind)
        torch.testing.assert_close(mean, (condition.runs[0].maps[kind] + condition.runs[1].maps[kind]) / 2)
        assert mean.sum().item() == pytest.approx(1)
    assert not torch.equal(condition.runs[0].maps["init"], condition.runs[1].maps["init"])  # each seed's init
    for log in (False, True):
        count = script.COLUMNS + 1  # a second block of two rows
        figure = script.erf_figure(measured * count, log=log)
        panels = [ax for ax in figure.axes if ax.images and ax.get_label() != "<colorbar>"]
        bars = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
        assert len(panels) == 2 * count and len(bars) == 1
        assert {ax.images[0].norm.vmax for ax in panels} == {panels[0].images[0].norm.vmax}  # one scale
        titles = [ax.get_title() for ax in panels]
        assert titles[0].startswith("resnet20-gmconv\nlayer3, at init, mean of 2 seeds\nσx ")
        assert titles[script.COLUMNS].startswith("trained, mean of 2 seeds\nσx ")  # below the first row
        assert all(" px" in title for title in titles)
        assert panels[0].get_ylabel() == "y (input px, 0 = top)"
        assert panels[script.COLUMNS].get_xlabel() == "x (input px, 0 = left)"
        assert all(len(ax.get_xticks()) > 1 for ax in panels)  # pixel ticks, not bare images


@pytest.mark.slow
def test_a_single_checkpoint_file_is_one_condition_written_beside_it(sweep, one_thread):
    script = erf_report
    checkpoint = next((sweep / "2" / "checkpoints").glob("*.pt"))
    assert script.main([str(checkpoint), "--images", "2"]) == 0
    summary = json.loads((checkpoint.parent / "erf" / "erf.json").read_text())
    (condition,) = summary["conditions"]
    assert (condition["label"], condition["n"], condition["seeds"]) == ("resnet20-standard", 1, [0])
    assert condition["runs"][0]["checkpoint"] == str(checkpoint)
    assert (checkpoint.parent / "erf" / "erf.png").is_file()


@pytest.mark.slow
def test_script_refuses_bad_input_in_one_line(sweep, tmp_path, capsys, one_thread):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    proc = _script_run(str(empty))
    assert proc.returncode == 2
    assert len(failed_with(proc, "holds no checkpoint").strip().splitlines()) == 1
    script = erf_report
    capsys.readouterr()
    assert script.main([str(sweep / "0"), "--layer", "layer9", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "'layer9' is not a module" in error and "'layer3'" in error
    assert script.main([str(sweep / "0"), "--images", "0"]) == 2
    assert "--images=0 must be at least 1" in capsys.readouterr().err
    unfinished = tmp_path / "sweep" / "0" / ".hydra"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").touch()
    assert script.main([str(tmp_path / "sweep")]) == 2  # its one run skipped: nothing left
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no run with a checkpoint in" in error
    assert "(1 run folder(s) without one)" in error


def _grid(size: int = 41) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.meshgrid(
        torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij"
    )


def test_a_gaussian_map_fits_a_gaussian_and_a_square_or_a_ring_does_not():
    y, x = _grid()
    # a rotated, elongated Gaussian: σ 5 and 2.5 px along axes at 30°
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    u, v = c * (y - 20) + s * (x - 21), -s * (y - 20) + c * (x - 21)
    fit = gaussian_fit(torch.exp(-0.5 * ((u / 5) ** 2 + (v / 2.5) ** 2)))
    assert fit["gauss_r2"] > 0.999
    assert fit["gauss_sigma_major"] == pytest.approx(5, rel=0.02) and fit["gauss_sigma_minor"] == pytest.approx(
        2.5, rel=0.04
    )
    assert fit["gauss_mass_1sigma"] == pytest.approx(GAUSSIAN_MASS[1], abs=0.03)
    assert fit["gauss_mass_2sigma"] == pytest.approx(GAUSSIAN_MASS[2], abs=0.02)
    square = gaussian_fit((((y - 20).abs() <= 6) & ((x - 20).abs() <= 6)).double())
    assert square["gauss_r2"] < 0.8 and square["gauss_mass_1sigma"] < 0.3  # flatter than a Gaussian
    radius = ((y - 20) ** 2 + (x - 20) ** 2).sqrt()
    ring = gaussian_fit(((radius > 8) & (radius < 10)).double())
    assert ring["gauss_r2"] < 0.1 and ring["gauss_mass_1sigma"] == 0
    peaked = gaussian_fit(torch.exp(-((y - 20).abs() + (x - 20).abs()) / 2))  # Laplace: heavier tails
    assert peaked["gauss_r2"] < 0.9 and peaked["gauss_mass_1sigma"] > GAUSSIAN_MASS[1] + 0.05
