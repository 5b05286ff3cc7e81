"""gmconv.erf against closed-form answers, the model left untouched, and scripts/erf.py end to end."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from gmconv import DynamicGMConv2d, GMConv2d, erf_map, erf_stats
from gmconv.erf import spatial_layers
from helpers import ROOT, failed_with, ok, run_in_process
from models.cifar_resnet import CifarResNet

TINY_RUN = ["trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "data.batch_size=16",
            "trainer.progress=false"]
STAT_KEYS = {"centroid_y", "centroid_x", "sigma_y", "sigma_x",
             "area_ratio@0.2", "area_ratio@0.3", "area_ratio@0.5", "area_ratio@0.99"}


def _script():
    """scripts/erf.py as a module, to call its functions in-process."""
    spec = importlib.util.spec_from_file_location("erf_script", ROOT / "scripts" / "erf.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def _script_run(*args: str) -> subprocess.CompletedProcess:
    """``python scripts/erf.py *args`` with one thread: tiny tensors, and a 2-core CPU shared with other jobs."""
    return subprocess.run([sys.executable, "scripts/erf.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


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
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), GMConv2d(4, 4, 3, padding=1),
                          DynamicGMConv2d(4, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
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
def runs(tmp_path_factory) -> list[Path]:
    """Two tiny trained runs on digits, GMConv and standard (a few seconds each, on one thread)."""
    root = tmp_path_factory.mktemp("erf_runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for conv in ("gmconv", "standard"):
            run_in_process(root / conv, f"conv={conv}", *TINY_RUN)
    finally:
        torch.set_num_threads(threads)
    return [root / "gmconv", root / "standard"]


def test_script_writes_the_figure_json_and_table(runs, tmp_path):
    out = tmp_path / "erf"
    proc = ok(_script_run(*map(str, runs), "--images", "4", "--out", str(out)))
    summary = json.loads((out / "erf.json").read_text())
    labels = ["resnet20-gmconv seed 0", "resnet20-gmconv at init (seed 0)",
              "resnet20-standard seed 0", "resnet20-standard at init (seed 0)"]
    assert [p["label"] for p in summary["panels"]] == labels and summary["num_panels"] == 4
    assert [p["kind"] for p in summary["panels"]] == ["trained", "init", "trained", "init"]
    for panel in summary["panels"]:
        assert set(panel["stats"]) == STAT_KEYS and panel["layer"] == "layer3"
        assert panel["images"] == "4 validation images of digits"
    with Image.open(out / "erf.png") as png:
        assert png.width <= 1600 and png.height <= 600
    assert "4 validation images of digits" in proc.stdout
    assert all(label in proc.stdout for label in labels) and "area_ratio@0.99" in proc.stdout


def test_one_figure_panel_per_map_and_one_init_per_architecture(runs, tmp_path, one_thread):
    script = _script()
    assert script.main([str(runs[0]), str(runs[0]), "--images", "2", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "erf.json").read_text())
    assert [p["kind"] for p in summary["panels"]] == ["trained", "init", "trained"]  # the same architecture twice
    assert [p["label"] for p in summary["panels"]] == [
        "resnet20-gmconv seed 0 #1", "resnet20-gmconv at init (seed 0)", "resnet20-gmconv seed 0 #2"]
    maps = [torch.rand(8, 8, dtype=torch.float64) for _ in range(5)]
    maps[0][0, 0] = 0.0  # the log scale copes with zeros
    panels = [script.Panel(f"run {i}", "trained", "", "", "layer3", "", erf) for i, erf in enumerate(maps)]
    for log in (False, True):
        figure = script.erf_figure(panels, log=log)
        assert sum(bool(ax.images) for ax in figure.axes) == 5


def test_script_refuses_bad_input_in_one_line(runs, tmp_path, capsys, one_thread):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    proc = _script_run(str(empty))
    assert proc.returncode == 2
    assert len(failed_with(proc, "holds no checkpoint").strip().splitlines()) == 1
    script = _script()
    capsys.readouterr()
    assert script.main([str(runs[0]), "--layer", "layer9", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "'layer9' is not a module" in error and "'layer3'" in error
    assert script.main([str(runs[0]), "--images", "0"]) == 2
    assert "--images=0 must be at least 1" in capsys.readouterr().err
