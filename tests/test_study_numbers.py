"""scripts/study/canvas_numbers.py: the σ-by-stage and ERF tables docs/STUDY.md quotes, from the reports' JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis import canvas_numbers

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def numbers():
    return canvas_numbers


def run_report(path: str, seed: int, layers: dict[str, tuple[int, float]]) -> dict:
    """A run of a sigma_report.json: per layer (count, mean σ); the network's numbers from them."""
    count = sum(c for c, _ in layers.values())
    network = sum(c * m for c, m in layers.values()) / count
    return {
        "run": path,
        "seed": seed,
        "network": {"mean": network, "mean_abs_delta": abs(network - 2)},
        "layers": {name: {"count": c, "mean": m} for name, (c, m) in layers.items()},
    }


def test_stage_sigma_weighs_every_sigma_value_once(numbers) -> None:
    run = run_report(
        "r",
        0,
        {
            "conv1": (16, 1.0),
            "layer1.0.conv1": (16, 2.0),
            "layer1.0.conv2": (48, 4.0),
            "layer2.0.conv1": (32, 3.0),
            "layer3.2.conv2": (64, 5.0),
        },
    )
    stages = numbers.stage_sigma(run)
    assert stages["stem"] == 1.0 and stages["layer1"] == pytest.approx((16 * 2 + 48 * 4) / 64)
    assert stages["layer2"] == 3.0 and stages["layer3"] == 5.0


def test_sigma_table_gives_mean_and_std_over_each_conditions_seeds(numbers, tmp_path: Path) -> None:
    def layers(stem: float) -> dict[str, tuple[int, float]]:
        return {
            "conv1": (16, stem),
            "layer1.0.conv1": (16, 2.0),
            "layer2.0.conv1": (32, 2.0),
            "layer3.0.conv1": (64, 2.0),
        }

    runs = [run_report("a0", 0, layers(1.0)), run_report("a1", 1, layers(3.0)), run_report("b0", 0, layers(2.5))]
    conditions = [
        {"label": "size 8", "n": 2, "runs": ["a0", "a1"], "layers": {"conv1": {"sigma_init": 2.0}}},
        {"label": "size 24", "n": 1, "runs": ["b0"], "layers": {"conv1": {"sigma_init": 2.0}}},
    ]
    report = tmp_path / "sigma_report.json"
    report.write_text(json.dumps({"runs": runs, "conditions": conditions}))
    rows = numbers.sigma_table(report).splitlines()[2:]
    assert rows[0].startswith("| size 8 | 2 | 2 | 2.000 ± 1.414 | 2.000 ± 0.000 |")
    assert rows[1].startswith("| size 24 | 1 | 2 | 2.500 ± — |")


def test_erf_table_has_a_row_at_init_and_trained_per_condition(numbers, tmp_path: Path) -> None:
    def stats(value: float) -> dict:
        return {
            key: {"mean": value, "std": 0.5, "n": 3}
            for key in ("sigma_x", "sigma_y", "area_ratio@0.5", "area_ratio@0.99")
        }

    report = tmp_path / "erf.json"
    report.write_text(
        json.dumps({"conditions": [{"label": "gmconv", "n": 3, "init_stats": stats(7.0), "stats": stats(5.0)}]})
    )
    rows = numbers.erf_table(report).splitlines()[2:]
    assert rows == [
        "| gmconv at init | 3 | 7.00 ± 0.50 | 7.00 ± 0.50 | 7.000 ± 0.500 | 7.000 ± 0.500 |",
        "| gmconv trained | 3 | 5.00 ± 0.50 | 5.00 ± 0.50 | 5.000 ± 0.500 | 5.000 ± 0.500 |",
    ]
