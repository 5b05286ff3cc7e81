"""scripts/sigma_report.py on real tiny runs: the files it writes, its numbers, and how it refuses bad input."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.checkpoint import BEST, LAST
from analysis.trained_run import load_run
from gmconv import GMConv2d
from helpers import ROOT, run_in_process

TINY = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "data.batch_size=16", "trainer.progress=false"]
EPOCHS = 2
LAYERS = 19  # CIFAR ResNet-20: the stem and 18 block convolutions are 3×3 GMConv2d layers


def _load_script():
    spec = importlib.util.spec_from_file_location("sigma_report", ROOT / "scripts" / "sigma_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


sigma_report = _load_script()


@pytest.fixture(scope="module")
def gm_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("gm") / "run"
    run_in_process(run_dir, f"trainer.epochs={EPOCHS}", *TINY)
    return run_dir


@pytest.fixture(scope="module")
def standard_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("standard") / "run"
    run_in_process(run_dir, "conv=standard", "trainer.epochs=1", "trainer.limit_train_batches=1",
                   "trainer.limit_val_batches=1", "data.batch_size=16", "trainer.progress=false")
    return run_dir


def test_report_of_a_trained_run_holds_the_checkpoints_sigma_and_one_trajectory_point_per_epoch(gm_run):
    proc = subprocess.run([sys.executable, "scripts/sigma_report.py", str(gm_run), "--channels", "3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = gm_run / "sigma_report"  # the documented default
    report = json.loads((out / "sigma_report.json").read_text())
    run = report["runs"][0]
    assert {"sigma_by_depth.png", run["figures"]["masks"], run["figures"]["trajectory"]} <= {
        p.name for p in out.glob("*.png")}
    assert run["checkpoint"].endswith(LAST) and run["epoch"] == EPOCHS
    assert list(run["layers"])[:2] == ["conv1", "layer1.0.conv1"] and len(run["layers"]) == LAYERS
    stats = run["layers"]["layer1.0.conv1"]
    assert set(stats) >= {"depth", "count", "mean", "std", "min", "q1", "median", "q3", "max", "sigma_init",
                          "mean_abs_delta", "max_abs_delta"}

    layer = dict(load_run(gm_run, prefer=(LAST, BEST)).model.named_modules())["layer1.0.conv1"]
    moved = (layer.sigma.double() - layer.sigma_init).abs()
    assert moved.max() > 0  # σ did learn, so the comparison below tests something
    assert stats["mean_abs_delta"] == pytest.approx(moved.mean().item(), rel=1e-9)
    assert stats["max_abs_delta"] == pytest.approx(moved.max().item(), rel=1e-9)
    assert (stats["count"], stats["sigma_init"]) == (16, 2.0)
    assert stats["min"] <= stats["q1"] <= stats["median"] <= stats["q3"] <= stats["max"]
    assert run["network"]["count"] == sum(s["count"] for s in run["layers"].values())
    assert run["network"]["max_abs_delta"] == max(s["max_abs_delta"] for s in run["layers"].values())

    trajectory = run["trajectories"]["layer1.0.conv1"]
    assert [(p["epoch"], p["step"]) for p in trajectory] == [(1, 2), (2, 4)]
    assert trajectory[-1]["mean"] == pytest.approx(stats["mean"], abs=1e-6)  # TensorBoard's last point = last.pt
    assert run["label"] in proc.stdout and f"{run['network']['mean_abs_delta']:.4f}" in proc.stdout


def test_figures_have_a_panel_per_layer_and_a_box_per_layer_and_run(gm_run):
    run = sigma_report.read_run(gm_run, LAST)
    assert len(sigma_report.figure_trajectories(run).axes) == LAYERS
    masks = sigma_report.figure_masks(run, 3)
    assert len(masks.axes) == LAYERS * 3
    ranked = sorted(run.layers[0].sigma.tolist())  # 16 channels: ranks 0, 8 (7.5 rounded to even) and 15
    assert [ax.get_title() for ax in masks.axes[:3]] == [f"σ={ranked[i]:.3f}" for i in (0, 8, 15)]
    (depth,) = sigma_report.figure_by_depth([run, run]).axes
    assert len(depth.patches) == 2 * LAYERS


def test_masks_are_the_layers_own_at_evenly_ranked_sigma():
    from gmconv.stats import masks_by_sigma

    layer = GMConv2d(3, 5, 3)
    with torch.no_grad():
        layer.sigma_raw.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0]))
    masks, sigma = masks_by_sigma(layer, 3)
    order = layer.sigma.argsort()
    assert torch.equal(sigma, layer.sigma[order[[0, 2, 4]]])
    torch.testing.assert_close(masks, layer.mask()[order[[0, 2, 4]], 0])
    assert len(masks_by_sigma(layer, 9)[0]) == 5


def _one_line_error(capsys, argv: list[str]) -> str:
    assert sigma_report.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_a_folder_without_checkpoint_fails_with_one_line(tmp_path, capsys):
    err = _one_line_error(capsys, [str(tmp_path)])
    assert f"{tmp_path} holds no checkpoint" in err


def test_a_standard_run_among_good_ones_fails_naming_it_and_writes_nothing(gm_run, standard_run, tmp_path, capsys):
    err = _one_line_error(capsys, [str(gm_run), str(standard_run), "--out", str(tmp_path / "report")])
    assert f"{standard_run} was trained with conv=standard: no σ to report" in err
    assert not (tmp_path / "report").exists()


def test_channels_must_be_positive(gm_run, capsys):
    assert "--channels=0 is invalid" in _one_line_error(capsys, [str(gm_run), "--channels", "0"])
