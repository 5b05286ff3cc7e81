"""scripts/summarize.py on real run folders (a sweep, a single run, unfinished and evaluation-only runs),
its pure functions (analysis/summary.py) on hand-written results for the edge cases, and bad input.

Expected numbers are recomputed here from the runs' own results.json, never copied from the script.
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

import preloaded
import pytest
from omegaconf import OmegaConf

from analysis.summary import (
    CompletedRun,
    experiment_settings,
    format_delta,
    group_runs,
    markdown,
    settings_of,
    table_rows,
)
from analysis.trained_run import TrainedRun, conditions, distinct_labels, find_run_folders
from engine.config import TrainConfig
from helpers import compose_train, failed_with, ok, run_in_process

TINY = [
    "trainer.epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "data.batch_size=16",
    "trainer.progress=false",
]
SCRIPT = ["-m", "scripts.summarize"]
STANDARD, GMCONV, GMCONV_SIGMA10 = (
    "conv=standard",
    "conv=gmconv optim.sigma_lr_scale=1",
    "conv=gmconv optim.sigma_lr_scale=10",
)


def summarize_cli(*args: str) -> subprocess.CompletedProcess:
    return preloaded.run(*SCRIPT, *args, timeout=120)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Any]:
    """Five tiny real training runs, laid out as a multirun sweep and a single run, one evaluation-only run,
    and three unfinished folders made from copies of a finished one."""
    root = tmp_path_factory.mktemp("summarize")
    sweep, single = root / "multirun" / "2025-01-01_00-00-00", root / "digits" / "resnet20-gmconv"
    jobs = {
        (STANDARD, 0): ("conv=standard", "seed=0"),
        (STANDARD, 1): ("conv=standard", "seed=1"),
        (GMCONV, 0): ("conv=gmconv", "seed=0"),
        (GMCONV, 1): ("conv=gmconv", "seed=1"),
    }
    folders = {key: sweep / f"{i}_{','.join(overrides)}" for i, (key, overrides) in enumerate(jobs.items())}
    folders[GMCONV_SIGMA10, 0] = single / "2025-01-01_01-00-00"
    jobs[GMCONV_SIGMA10, 0] = ("conv=gmconv", "optim.sigma_lr_scale=10", "seed=0")
    for key, folder in folders.items():
        run_in_process(folder, *TINY, *jobs[key])
    run_in_process(single / "eval", *TINY, "conv=standard", "eval_only=true", f"ckpt='{folders[STANDARD, 0]}'")

    unfinished = {
        "no_results": single / "2025-01-01_02-00-00",
        "config_only": single / "2025-01-01_03-00-00",
        "corrupt": single / "2025-01-01_04-00-00",
    }
    for folder in unfinished.values():
        shutil.copytree(folders[GMCONV, 1], folder)
    (unfinished["no_results"] / "results.json").unlink()
    (unfinished["config_only"] / "results.json").unlink()
    shutil.rmtree(unfinished["config_only"] / "checkpoints")
    (unfinished["corrupt"] / "results.json").write_text('{"status": "compl')
    results = {key: json.loads((folder / "results.json").read_text()) for key, folder in folders.items()}
    return {"root": root, "sweep": sweep, "single": single, "results": results, "unfinished": unfinished}


def expected_group(results: dict, label: str) -> dict[str, list[float]]:
    members = [r for (group, _), r in sorted(results.items()) if group == label]
    keys = ("top1", "top5", "params", "flops", "images_per_s", "wall_time_s")
    return {key: [r[key] for r in members] for key in keys}


@pytest.mark.slow
def test_real_runs_grouped_by_setting_with_paired_delta_and_unfinished_runs_listed(runs, tmp_path):
    out = tmp_path / "report" / "summary.md"
    proc = ok(summarize_cli(str(runs["sweep"]), str(runs["single"]), "--out", str(out)))
    assert out.read_text() == proc.stdout
    with out.with_suffix(".csv").open(newline="") as f:
        rows = {row["group"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == sorted([STANDARD, GMCONV, GMCONV_SIGMA10])

    results = runs["results"]
    for label in (STANDARD, GMCONV):
        values, row = expected_group(results, label), rows[label]
        assert int(row["n"]) == 2  # the unfinished copies of a gmconv run are not averaged in
        for key in ("top1", "top5"):
            assert float(row[f"{key}_mean"]) == pytest.approx(statistics.mean(values[key]))
            assert float(row[f"{key}_std"]) == pytest.approx(statistics.stdev(values[key]))
        assert float(row["params_m"]) == pytest.approx(values["params"][0] / 1e6)
        assert float(row["gflops"]) == pytest.approx(values["flops"][0] / 1e9)
        assert float(row["images_per_s"]) == pytest.approx(statistics.mean(values["images_per_s"]))
        assert float(row["wall_time_s"]) == pytest.approx(statistics.mean(values["wall_time_s"]))
    assert float(rows[GMCONV]["params_m"]) > float(rows[STANDARD]["params_m"])  # σ per channel

    differences = [results[GMCONV, s]["top1"] - results[STANDARD, s]["top1"] for s in (0, 1)]
    assert rows[GMCONV]["baseline"] == STANDARD and int(rows[GMCONV]["delta_pairs"]) == 2
    assert float(rows[GMCONV]["delta_top1_mean"]) == pytest.approx(statistics.mean(differences))
    assert float(rows[GMCONV]["delta_top1_std"]) == pytest.approx(statistics.stdev(differences))
    # σ's learning rate exists only for GMConv: the baseline is the standard group equal in all else
    sigma10 = rows[GMCONV_SIGMA10]
    assert (sigma10["n"], sigma10["top1_std"], sigma10["baseline"], sigma10["delta_pairs"]) == ("1", "", STANDARD, "1")
    assert float(sigma10["delta_top1_mean"]) == pytest.approx(
        results[GMCONV_SIGMA10, 0]["top1"] - results[STANDARD, 0]["top1"]
    )
    assert rows[STANDARD]["baseline"] == rows[STANDARD]["delta_top1_mean"] == ""

    # these runs stop each epoch after a few batches: every group is marked as short (†), with the reason
    table = {line.split(" | ")[0].strip("| †"): line for line in proc.stdout.splitlines() if line.startswith("| conv=")}
    assert all(line.split(" | ")[0].endswith("†") for line in table.values())
    assert "† Short runs, not results: " in proc.stdout and "trainer.limit_train_batches=" in proc.stdout
    assert table[GMCONV].endswith(
        f"| {statistics.mean(differences):+.2f} ± {statistics.stdev(differences):.2f} (2 pairs) |"
    )
    assert table[STANDARD].endswith("| — |") and "± — " in table[GMCONV_SIGMA10]
    unfinished = runs["unfinished"]
    for folder, what in (
        (unfinished["no_results"], "no results.json; last checkpoint at epoch 1/1"),
        (unfinished["config_only"], "no results.json; no checkpoint"),
        (unfinished["corrupt"], "unreadable results.json"),
    ):
        assert f"- `{folder}`: {what}" in proc.stdout
    assert "1 evaluation-only run (eval_only=true) left out." in proc.stdout


def fake(conv_name: str, seed: int, top1: float, overrides: list[str] = (), **sections: dict[str, Any]) -> CompletedRun:
    """A completed run's results as the runner writes them, with only the settings a test varies."""
    conv_type = "standard" if conv_name == "standard" else "gmconv"
    config = {
        "model": {"name": "resnet20"},
        "conv": {"name": conv_name, "type": conv_type, "sigma_init": 2.0},
        "optim": {"lr": 0.1, "sigma_lr_scale": 1.0},
        "data": {"name": "digits", "num_workers": 0},
        "seed": seed,
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    results = {
        "status": "completed",
        "top1": top1,
        "top5": top1 + 10,
        "params": 1e6,
        "flops": 2e9,
        "images_per_s": 100.0,
        "wall_time_s": 60.0,
        "seed": seed,
        "config": config,
        "overrides": list(overrides),
    }
    return CompletedRun(Path(f"{conv_name}/{seed}/{top1}"), results, settings_of(results))


def rows_by_label(runs: list[CompletedRun]) -> dict[str, Any]:
    return {row.group.label: row for row in table_rows(group_runs(runs))}


def test_delta_pairs_only_common_seeds_and_a_single_run_has_no_std():
    rows = rows_by_label(
        [
            fake("standard", 0, 50.0),
            fake("standard", 1, 60.0),
            fake("standard", 2, 70.0),
            fake("gmconv", 1, 61.0),
            fake("gmconv", 2, 74.0),
            fake("gmconv", 3, 99.0),
            fake("gmconv_fixed", 7, 80.0),
        ]
    )
    gm = rows["conv=gmconv"]
    assert (gm.delta.mean, gm.delta.std, gm.delta.n) == (2.5, pytest.approx(statistics.stdev([1.0, 4.0])), 2)
    assert format_delta(gm) == "+2.50 ± 2.12 (2 pairs)"
    fixed = rows["conv=gmconv_fixed"]
    assert (fixed.top1.mean, fixed.top1.std, fixed.top1.n) == (80.0, None, 1)
    assert fixed.baseline is rows["conv=standard"].group and format_delta(fixed) == "— (no common seed)"
    assert "| conv=gmconv_fixed | 1 | 80.00 ± — | 90.00 ± — |" in markdown(list(rows.values()), [], 0)
    assert format_delta(rows["conv=standard"]) == "—"


def test_no_standard_group_means_no_delta_and_bookkeeping_does_not_split_groups():
    rows = rows_by_label(
        [
            fake("gmconv", 0, 50.0),
            fake("gmconv", 1, 52.0, data={"num_workers": 8}),
            fake("gmconv", 0, 55.0, optim={"lr": 0.05}),
        ]
    )
    assert sorted(rows) == ["optim.lr=0.05", "optim.lr=0.1"]  # conv and data are common: not in the label
    assert rows["optim.lr=0.1"].top1.n == 2
    assert all(row.baseline is None and format_delta(row) == "—" for row in rows.values())


def test_a_setting_the_conv_name_does_not_imply_is_labelled_and_splits_groups():
    runs = [fake("standard", 0, 50.0), fake("gmconv", 0, 52.0), fake("gmconv", 0, 53.0, conv={"sigma_init": 3.0})]
    rows = rows_by_label(runs)
    assert sorted(rows) == ["conv=gmconv conv.sigma_init=2", "conv=gmconv conv.sigma_init=3", "conv=standard"]
    assert rows["conv=gmconv conv.sigma_init=3"].delta.mean == 3.0  # baseline ignores every conv setting
    assert sorted(rows_by_label(runs[:2])) == ["conv=gmconv", "conv=standard"]  # conv.type follows conv.name


@pytest.mark.slow
@pytest.mark.parametrize("name, error", [("missing", "error: no such folder"), ("", "error: no run folder")])
def test_an_empty_or_missing_folder_fails_in_one_line(tmp_path, name, error):
    out = failed_with(summarize_cli(str(tmp_path / name)), error)
    assert len(out.strip().splitlines()) == 1, out


def test_analysis_labels_name_the_settings_that_tell_runs_apart():
    """Figures of several runs of one model/conv/seed label each with what differs between them."""

    def run(**optim):
        config = OmegaConf.merge(OmegaConf.structured(TrainConfig), {"conv": {"name": "gmconv"}, "optim": optim})
        return TrainedRun(Path("."), config, Path("."), {}, None)

    assert distinct_labels([run(sigma_lr_scale=1.0), run(sigma_lr_scale=100.0), run(lr=0.5)]) == [
        "resnet20-gmconv seed 0 (optim.lr=0.1, optim.sigma_lr_scale=1.0)",
        "resnet20-gmconv seed 0 (optim.lr=0.1, optim.sigma_lr_scale=100.0)",
        "resnet20-gmconv seed 0 (optim.lr=0.5, optim.sigma_lr_scale=1.0)",
    ]


def test_analysis_conditions_group_seeds_and_are_labelled_by_what_differs():
    """erf.py and sigma_report.py average over the seeds of a condition: runs equal but for seed and bookkeeping."""

    def run(seed: int, root: str = "data", **optim):
        config = OmegaConf.merge(
            OmegaConf.structured(TrainConfig),
            {"conv": {"name": "gmconv", "type": "gmconv"}, "seed": seed, "data": {"root": root}, "optim": optim},
        )
        return TrainedRun(Path("."), config, Path("."), {}, None)

    runs = [run(1), run(0, sigma_lr_scale=100.0), run(0, root="elsewhere"), run(2, sigma_lr_scale=100.0)]
    assert [(c.label, c.members) for c in conditions(runs)] == [
        ("resnet20-gmconv (optim.sigma_lr_scale=1.0)", (2, 0)),  # by seed; data.root is bookkeeping
        ("resnet20-gmconv (optim.sigma_lr_scale=100.0)", (1, 3)),
    ]
    assert [c.label for c in conditions(runs[:1])] == ["resnet20-gmconv"]


def test_a_sweeps_run_folders_come_in_job_order(tmp_path):
    for job in ("10_seed=10", "2_seed=2", "1_seed=1"):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "config.yaml").touch()
    assert [p.name for p in find_run_folders([tmp_path])] == ["1_seed=1", "2_seed=2", "10_seed=10"]


def test_short_runs_are_marked_even_where_every_run_is_short():
    """A table of runs cut short (limit_*_batches, or fewer epochs than their experiment's or data's recipe) hides the
    settings they share, so it would look like results without the mark."""
    limited = [
        fake(conv, seed, 90.0 + seed, trainer={"limit_train_batches": 3, "limit_val_batches": None, "epochs": 10})
        for conv in ("standard", "gmconv")
        for seed in (0, 1)
    ]
    text = markdown(table_rows(group_runs(limited)), [], 0)
    assert "| conv=gmconv† |" in text and "| conv=standard† |" in text
    assert "† Short runs, not results: conv=gmconv: trainer.limit_train_batches=3;" in text
    cut = [
        fake(
            "gmconv",
            0,
            90.0,
            ["experiment=cifar10_resnet20", "trainer.epochs=2"],
            trainer={"limit_train_batches": None, "limit_val_batches": None, "epochs": 2},
        )
    ]
    assert "trainer.epochs=2 of experiment=cifar10_resnet20's 164" in markdown(table_rows(group_runs(cut)), [], 0)
    full = [
        fake(
            "gmconv",
            0,
            90.0,
            ["experiment=cifar10_resnet20"],
            trainer={"limit_train_batches": None, "limit_val_batches": None, "epochs": 164},
        )
    ]
    assert "†" not in markdown(table_rows(group_runs(full)), [], 0)
    # without an experiment, the data's recipe plans the epochs: the digits' 10
    short = [
        fake(
            "gmconv",
            0,
            90.0,
            ["trainer.epochs=1"],
            trainer={"limit_train_batches": None, "limit_val_batches": None, "epochs": 1},
        )
    ]
    assert "trainer.epochs=1 of data=digits model=resnet20's 10" in markdown(table_rows(group_runs(short)), [], 0)
    whole = [fake("gmconv", 0, 90.0, trainer={"limit_train_batches": None, "limit_val_batches": None, "epochs": 10})]
    assert "†" not in markdown(table_rows(group_runs(whole)), [], 0)


def test_settings_a_conv_type_cannot_act_on_do_not_split_a_condition():
    """Runs made before and after such a default changed (the offsets' learning rate of a GMConv run, a dilation
    on a standard one) trained the same network the same way: one group, labelled without them."""
    runs = [
        fake("gmconv", 0, 90.0, optim={"offset_lr_scale": 1.0}, conv={"dilation": 2}),
        fake("gmconv", 1, 91.0, optim={"offset_lr_scale": 0.1}, conv={"dilation": 3}),
        fake("standard", 0, 89.0, optim={"offset_lr_scale": 1.0}),
        fake("standard", 1, 90.0),
    ]
    rows = rows_by_label(runs)
    assert set(rows) == {"conv=gmconv", "conv=standard"} and rows["conv=gmconv"].top1.n == 2
    assert rows["conv=gmconv"].delta.n == 2  # paired with the standard runs across the changed default
    deformable = fake("deformable", 0, 80.0, optim={"offset_lr_scale": 1.0}, conv={"type": "deformable"})
    other = fake("deformable", 1, 81.0, optim={"offset_lr_scale": 0.1}, conv={"type": "deformable"})
    assert len(group_runs([deformable, other])) == 2  # where it acts, it is a setting


def test_a_run_saved_before_a_setting_existed_groups_with_the_runs_that_leave_it_at_its_default():
    new = OmegaConf.to_container(compose_train("logger=[tensorboard,mlflow]"), resolve=True, enum_to_str=True)
    old = {key: value for key, value in new.items() if key not in ("logger", "optimized_metric")}
    old["data"] = {key: value for key, value in new["data"].items() if key not in ("decoder", "reduced_decode")}
    assert experiment_settings(old) == experiment_settings(new)
    changed = {**new, "data": {**new["data"], "reduced_decode": not new["data"]["reduced_decode"]}}
    assert experiment_settings(changed) != experiment_settings(old)
