"""scripts/sigma_report.py on real tiny runs: the files it writes, its numbers, and how it refuses bad input."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import preloaded
import pytest
import torch

from analysis import sigma_report
from analysis.trained_run import conditions, load_run
from engine.checkpoint import BEST, LAST
from gmconv import GMConv2d
from helpers import run_in_process

TINY = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "data.batch_size=16", "trainer.progress=false"]
EPOCHS = 2
LAYERS = 19  # CIFAR ResNet-20: the stem and 18 block convolutions are 3×3 GMConv2d layers


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A sweep folder as train.py -m writes one: GMConv with seeds 0 and 1 (one condition), a standard-conv run,
    and a job that failed before its first checkpoint (.hydra/config.yaml only)."""
    root = tmp_path_factory.mktemp("sweep")
    for name, seed in (("0", 0), ("1", 1)):
        run_in_process(root / name, f"seed={seed}", f"trainer.epochs={EPOCHS}", *TINY)
    run_in_process(
        root / "2",
        "conv=standard",
        "trainer.epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "data.batch_size=16",
        "trainer.progress=false",
    )
    (root / "3" / ".hydra").mkdir(parents=True)
    (root / "3" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    return root


@pytest.fixture(scope="module")
def gm_run(sweep) -> Path:
    return sweep / "0"


@pytest.fixture(scope="module")
def standard_run(sweep) -> Path:
    return sweep / "2"


@pytest.mark.slow
def test_report_of_a_trained_run_holds_the_checkpoints_sigma_and_one_trajectory_point_per_epoch(gm_run):
    proc = preloaded.run("-m", "scripts.sigma_report", str(gm_run), "--channels", "3", timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = gm_run / "sigma_report"  # the documented default
    report = json.loads((out / "sigma_report.json").read_text())
    run = report["runs"][0]
    assert {"sigma_by_depth.png", run["figures"]["masks"], run["figures"]["trajectory"]} <= {
        p.name for p in out.glob("*.png")
    }
    assert run["checkpoint"].endswith(LAST) and run["epoch"] == EPOCHS and run["seed"] == 0
    assert list(run["layers"])[:2] == ["conv1", "layer1.0.conv1"] and len(run["layers"]) == LAYERS
    stats = run["layers"]["layer1.0.conv1"]
    assert set(stats) >= {
        "depth",
        "count",
        "mean",
        "std",
        "min",
        "q1",
        "median",
        "q3",
        "max",
        "sigma_init",
        "mean_abs_delta",
        "max_abs_delta",
    }

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

    (condition,) = report["conditions"]  # one run: a condition of one, without a std
    assert (condition["label"], condition["n"], condition["seeds"]) == ("resnet20-gmconv", 1, [0])
    assert condition["network"]["sigma_mean"] == {"mean": run["network"]["mean"], "std": None, "n": 1}


@pytest.mark.slow
def test_a_sweep_folder_is_expanded_to_its_gmconv_runs_the_others_skipped_with_a_note(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert sigma_report.main([str(sweep), "--out", str(out)]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: ")]
    assert notes == [
        f"note: skipped {sweep / '3'}: no checkpoint (checkpoints/last.pt or best.pt)",
        f"note: skipped {sweep / '2'}: trained with conv=standard, no σ to report",
    ]
    report = json.loads((out / "sigma_report.json").read_text())
    assert [run["run"] for run in report["runs"]] == [str(sweep / "0"), str(sweep / "1")]
    (condition,) = report["conditions"]
    assert (condition["label"], condition["n"], condition["seeds"]) == ("resnet20-gmconv", 2, [0, 1])
    assert condition["runs"] == [str(sweep / "0"), str(sweep / "1")]
    means = [run["layers"]["conv1"]["mean"] for run in report["runs"]]
    conv1 = condition["layers"]["conv1"]
    assert (conv1["depth"], conv1["sigma_init"]) == (0, 2.0) and len(condition["layers"]) == LAYERS
    assert conv1["sigma_mean"] == pytest.approx(
        {"mean": statistics.mean(means), "std": statistics.stdev(means), "n": 2}
    )
    assert condition["network"]["max_abs_delta"]["n"] == 2
    assert {"sigma_by_depth.png", *(run["figures"]["masks"] for run in report["runs"])} <= {
        p.name for p in out.glob("*.png")
    }

    mixed = sigma_report.read_runs([sweep / "1", sweep], LAST)  # a run folder and a sweep: the run joins its condition
    assert [run.path for run in mixed] == [sweep / "1", sweep / "0", sweep / "1"]
    (condition,) = conditions([run.trained for run in mixed])
    assert condition.members == (1, 0, 2)  # by seed


@pytest.mark.slow
def test_figures_a_line_per_condition_and_a_compact_mask_grid_with_a_colour_bar(sweep):
    runs = sigma_report.read_runs([sweep / "0", sweep / "1"], LAST)
    assert len(sigma_report.figure_trajectories(runs[0]).axes) == LAYERS

    masks = sigma_report.figure_masks(runs[0], 3, 4)
    panels = [ax for ax in masks.axes if ax.get_label() != "<colorbar>"]
    (bar,) = [ax for ax in masks.axes if ax.get_label() == "<colorbar>"]
    assert len(panels) == 4 * 3 and bar.get_ylabel() == "mask value"
    assert all(ax.images[0].get_clim() == (0.0, 1.0) for ax in panels)
    assert [ax.get_ylabel() for ax in panels[::3]] == ["conv1", "layer1.2.conv2", "layer2.2.conv2", "layer3.2.conv2"]
    assert all(not ax.get_xticks().size and not ax.get_yticks().size for ax in panels)
    ranked = sorted(runs[0].layers[0].sigma.tolist())  # 16 channels: ranks 0, 8 (7.5 rounded to even) and 15
    assert [ax.texts[0].get_text() for ax in panels[:3]] == [f"σ={ranked[i]:.3f}" for i in (0, 8, 15)]
    assert len([ax for ax in sigma_report.figure_masks(runs[0], 2, 0).axes if ax.images]) == LAYERS * 2

    summaries = [sigma_report.report_numbers(run) for run in runs]
    numbers = [
        sigma_report.condition_numbers("both seeds", summaries),
        sigma_report.condition_numbers("seed 0", summaries[:1]),
    ]
    (depth,) = sigma_report.figure_by_depth(numbers).axes
    labels = [line.get_label() for line in depth.lines]
    assert labels == ["both seeds (n=2)", "seed 0 (n=1)", "sigma_init"]  # one line per condition, not per run
    assert len(depth.collections) == 1  # the ± std band of the condition with two seeds
    assert list(depth.lines[0].get_ydata()) == pytest.approx(
        [statistics.mean(s["layers"][name]["mean"] for s in summaries) for name in summaries[0]["layers"]]
    )


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


@pytest.mark.slow
def test_a_folder_without_checkpoint_fails_with_one_line(sweep, tmp_path, capsys):
    err = _one_line_error(capsys, [str(tmp_path)])
    assert f"{tmp_path} holds no checkpoint" in err
    err = _one_line_error(capsys, [str(sweep / "0"), str(sweep / "3")])  # named itself: not skipped
    assert f"{sweep / '3'} holds no checkpoint" in err


@pytest.mark.slow
def test_a_standard_run_among_good_ones_is_skipped_and_alone_fails_writing_nothing(
    gm_run, standard_run, tmp_path, capsys
):
    assert sigma_report.main([str(standard_run), str(gm_run), "--out", str(tmp_path / "report")]) == 0
    assert f"note: skipped {standard_run}: trained with conv=standard, no σ to report" in capsys.readouterr().out
    assert [run["run"] for run in json.loads((tmp_path / "report" / "sigma_report.json").read_text())["runs"]] == [
        str(gm_run)
    ]
    err = _one_line_error(capsys, [str(standard_run), "--out", str(tmp_path / "nothing")])
    assert f"no run with learned σ in {standard_run}" in err
    assert not (tmp_path / "nothing").exists()


@pytest.mark.slow
def test_channels_and_mask_layers_must_be_valid(gm_run, capsys):
    assert "--channels=0 is invalid" in _one_line_error(capsys, [str(gm_run), "--channels", "0"])
    assert "--mask-layers=-1 is invalid" in _one_line_error(capsys, [str(gm_run), "--mask-layers", "-1"])
