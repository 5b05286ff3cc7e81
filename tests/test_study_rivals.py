"""The rivals study's pipeline (scripts/study/rivals.py): a row per finished run with its ERF's shape, resumable,
and the tables built from the record alone."""

from __future__ import annotations

import csv
import threading

import pytest

from analysis import rivals_record as record_file
from analysis import rivals_report as report
from analysis import rivals_study as rivals
from analysis.power import seeds_needed
from scripts.bench import train_step

TINY = ["trainer.epochs=1", "data.train_size=64", "data.val_size=32", "data.batch_size=32"]


def finished(
    arm: str, seed: int, top1: float = 95.0, data: str = "digits_cluttered", size: int | str = "", **fields
) -> dict:
    """A record's row for a finished run; the columns a test does not read hold 0.5."""
    return {
        **dict.fromkeys(record_file.COLUMNS, "0.5"),
        **{"data": data, "digit_size": size, "arm": arm, "seed": seed, "top1": top1, "params": 1000},
        **{"flops": 2000000, "amp": "bf16", "channels_last": True, "sigma_mean": "", **fields},
    }


@pytest.mark.slow
def test_a_study_records_each_run_once_with_its_erfs_shape(tmp_path, capsys):
    record = tmp_path / "runs.csv"
    arguments = [
        "run",
        "--seeds",
        "1",
        "--arms",
        "standard",
        "dilated",
        "--out",
        str(tmp_path / "runs"),
        "--record",
        str(record),
        "--overrides",
        *TINY,
    ]
    rivals.main(arguments)
    rows = list(csv.DictReader(record.open()))
    assert [(r["arm"], r["seed"]) for r in rows] == [("standard", "0"), ("dilated", "0")]
    assert all(r["amp"] in ("bf16", "none") and 0 <= float(r["trained_gauss_r2"]) <= 1 for r in rows)
    assert all(float(r["init_gauss_mass_1sigma"]) > 0 and r["sigma_mean"] == "" for r in rows)
    rivals.main(arguments)  # everything is recorded: nothing runs again
    assert "2 of 2 runs already in" in capsys.readouterr().out
    assert len(list(csv.DictReader(record.open()))) == 2


@pytest.mark.slow
def test_a_run_that_diverges_is_kept_apart_and_the_study_goes_on(tmp_path, capsys):
    record = tmp_path / "runs.csv"
    record_file.write_record(record, [finished("standard", 0)])
    arguments = ["run", "--seeds", "1", "--arms", "standard", "dilated", "--out", str(tmp_path / "runs")]
    arguments += ["--record", str(record), "--overrides", *TINY, "optim.lr=1e12", "sched.warmup_epochs=0"]
    rivals.main(arguments)  # standard seed 0 is in the record; the dilated run diverges
    diverged = record_file.read_record(record_file.diverged_record(record))
    assert [(r["arm"], r["seed"]) for r in diverged] == [("dilated", "0")]
    assert diverged[0]["error"].startswith("training diverged") and len(record_file.read_record(record)) == 1
    rivals.main(arguments)  # a diverged run is an outcome of its arm, not a missing run: it is not trained again
    assert "2 of 2 runs already in" in capsys.readouterr().out
    rivals.main(["report", "--record", str(record), "--tables", str(tmp_path / "tables.md")])
    assert "left out of the table: dilated seed 0 (" in (tmp_path / "tables.md").read_text()


@pytest.mark.slow
def test_a_failure_other_than_divergence_stops_the_study_in_one_line(tmp_path):
    arguments = ["run", "--seeds", "1", "--arms", "standard", "--out", str(tmp_path / "runs")]
    arguments += ["--record", str(tmp_path / "runs.csv"), "--overrides", "trainer.epochs=0"]
    with pytest.raises(SystemExit, match=r"stopped \(exit 2\): .*the study stops here"):
        rivals.main(arguments)


def test_the_report_pairs_each_arm_with_the_standard_convolution_by_seed(tmp_path):
    record, tables = tmp_path / "runs.csv", tmp_path / "tables.md"
    record_file.write_record(
        record,
        [
            finished("standard", 0, 90.0),
            finished("dilated", 0, 91.0),
            finished("standard", 1, 88.0),
            finished("dilated", 1, 88.5),
            finished("dilated", 2, 99.0),
        ],
    )
    rivals.main(["report", "--record", str(record), "--tables", str(tables)])
    dilated = next(line for line in tables.read_text().splitlines() if line.startswith("| dilated"))
    assert "| 3 |" in dilated and "+0.75 [" in dilated  # three seeds; Δ over the two shared with standard
    assert (tmp_path / "delta_digits_cluttered.png").stat().st_size > 0  # the same Δ, drawn


def test_the_seeds_a_1_point_difference_needs_come_from_each_arms_own_spread(tmp_path):
    record, tables = tmp_path / "runs.csv", tmp_path / "tables.md"
    standard = [finished("standard", seed, 90.0) for seed in range(3)]
    close = [finished("gmconv", seed, 90.0 + delta) for seed, delta in enumerate((1.0, 2.0, 3.0))]  # spread 1
    # spread 45, as an arm with a diverged run: 15,000-odd seeds, which the report must still give
    noisy = [finished("dilated", seed, 90.0 + delta) for seed, delta in enumerate((-45.0, 0.0, 45.0))]
    record_file.write_record(record, standard + close + noisy)
    rivals.main(["report", "--record", str(record), "--tables", str(tables)])
    text = tables.read_text()
    assert f"gmconv {seeds_needed(1.0, 1.0)} (3 in, spread 1.00); dilated {seeds_needed(45.0, 1.0)} (3 in" in text
    # GMConv against each other arm, paired by seed: 1, 2, 3 against standard; 46, 2, -42 against dilated
    assert "| standard | 3 | +2.00 [" in text and "| dilated | 3 | +2.00 [" in text
    assert "](delta_digits_cluttered.png)" in tables.read_text()


def test_the_report_gives_the_erf_per_digit_size_and_the_quiet_step_times(tmp_path):
    record, tables, steps = tmp_path / "runs.csv", tmp_path / "out" / "tables.md", tmp_path / "steps.csv"
    record_file.write_record(
        record,
        [
            finished("standard", 0, data="digits_scaled", size=8, trained_gauss_sigma_major=5.0),
            finished("standard", 1, data="digits_scaled", size=8, trained_gauss_sigma_major=6.0),
            finished("standard", 0, data="digits_scaled", size=24, trained_gauss_sigma_major=7.0),
            finished("dilated", 0, data="digits_scaled", size=8, trained_gauss_sigma_major=9.0),
        ],
    )
    train_step.write_csv(
        steps,
        [
            ["resnet20", "128×32px", "bf16", "standard", "150", "1.00", "3%"],
            ["resnet20", "128×32px", "bf16", "dilated", "165", "1.10", "3%"],
            ["resnet20", "128×32px", "fp32", "dilated", "999", "9.99", "3%"],
        ],
    )
    study = tmp_path / "STUDY.md"
    study.write_text(f"intro\n{report.BEGIN}\nold\n{report.END}\nrest\n")
    rivals.main(
        ["report", "--record", str(record), "--tables", str(tables), "--step-times", str(steps), "--study", str(study)]
    )
    lines = tables.read_text().splitlines()
    standard = [line for line in lines if line.startswith("| standard")]
    assert "| 150 (×1.00) |" in standard[0]  # the task table takes the benchmark's time of its precision
    assert "| 5.5 ± 0.7 | 7.0 |" in standard[-1] and standard[-1].endswith("| 2, 1 |")  # σ at 8 and 24 px, seeds
    assert any(line.startswith("| dilated") and "| 9.0 | — |" in line for line in lines)  # no 24 px run: a dash
    assert (tables.parent / "erf_by_size.png").stat().st_size > 0
    assert "](erf_by_size.png)" in tables.read_text() and "](out/erf_by_size.png)" in study.read_text()
    assert study.read_text().startswith("intro\n") and study.read_text().endswith(f"{report.END}\nrest\n")


def test_compare_pairs_the_precisions_by_seed(tmp_path):
    fp32, bf16 = tmp_path / "fp32.csv", tmp_path / "bf16.csv"
    record_file.write_record(
        fp32,
        [
            finished("gmconv", 0, 90.0, data="digits", amp="none", sigma_mean=2.0),
            finished("gmconv", 1, 91.0, data="digits", amp="none", sigma_mean=2.0),
            finished("gmconv", 2, 92.0, data="digits", amp="none", sigma_mean=2.0),
        ],
    )
    record_file.write_record(
        bf16,
        [
            finished("gmconv", 0, 91.0, data="digits", amp="bf16", sigma_mean=2.0),
            finished("gmconv", 1, 91.5, data="digits", amp="bf16", sigma_mean=2.0),
            finished("gmconv", 3, 50.0, data="digits", amp="bf16", sigma_mean=2.0),
        ],
    )
    rivals.main(["compare", str(fp32), str(bf16), "--out", str(tmp_path / "comparison.md")])
    line = next(line for line in (tmp_path / "comparison.md").read_text().splitlines() if line.startswith("| digits"))
    assert "+0.75 [" in line and "| 2 |" in line  # seeds 0 and 1 only: Δ 1.0 and 0.5


def test_runners_sharing_a_record_keep_each_others_rows(tmp_path):
    """Two runners (two tasks) append to one record at once: every row of both is kept, once."""
    record = tmp_path / "runs.csv"

    def runner(arm: str) -> None:
        for seed in range(25):
            record_file.add_row(record, {"data": "digits_cluttered", "arm": arm, "seed": seed})

    threads = [threading.Thread(target=runner, args=(arm,)) for arm in ("standard", "gmconv")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows = record_file.read_record(record)
    assert sorted((r["arm"], int(r["seed"])) for r in rows) == sorted(
        (arm, seed) for arm in ("standard", "gmconv") for seed in range(25)
    )
