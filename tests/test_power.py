"""The power calculation behind a study's seed count (analysis/power.py)."""

from __future__ import annotations

import random

import pytest

from analysis.power import confidence_interval, detectable_difference, paired_power, seeds_needed


@pytest.mark.parametrize("effect_size, seeds", [(0.5, 34), (0.8, 15), (1.0, 10), (2.0, 5)])
def test_seeds_needed_match_the_published_paired_t_test_tables(effect_size: float, seeds: int) -> None:
    """Cohen's d → pairs for 80 % power at α = 0.05, two-sided (the values G*Power gives)."""
    assert seeds_needed(std_delta=1.0, effect=effect_size) == seeds


def test_power_grows_with_seeds_and_difference_and_the_inverses_agree() -> None:
    rng = random.Random(0)
    for _ in range(200):
        spread, seeds = rng.uniform(0.1, 3.0), rng.randint(2, 40)
        difference = detectable_difference(spread, seeds)
        assert paired_power(spread, seeds, difference) == pytest.approx(0.8, abs=1e-6)
        assert paired_power(spread, seeds + 1, difference) > paired_power(spread, seeds, difference)
        needed = seeds_needed(spread, difference)
        assert needed <= seeds and paired_power(spread, needed, difference) >= 0.8
        assert needed == 2 or paired_power(spread, needed - 1, difference) < 0.8


@pytest.mark.parametrize("spread", [5.0, 44.4, 300.0])
def test_any_spread_gets_its_seed_count_however_large(spread: float) -> None:
    """An arm whose runs diverge spreads by tens of points; its count is the fewest that reach the power, near
    the normal approximation ((z_0.975 + z_0.8) · spread / difference)²."""
    needed = seeds_needed(spread, 1.0)
    assert paired_power(spread, needed, 1.0) >= 0.8 > paired_power(spread, needed - 1, 1.0)
    assert needed == pytest.approx((1.959964 + 0.841621) ** 2 * spread**2, rel=0.05)


def test_a_difference_to_detect_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        seeds_needed(1.0, 0.0)


def test_confidence_interval_is_the_t_interval() -> None:
    low, high = confidence_interval(mean=1.0, std=2.0, n=5)
    assert (low + high) / 2 == pytest.approx(1.0)
    assert (high - low) / 2 == pytest.approx(2.776445 * 2.0 / 5**0.5, rel=1e-6)  # t(0.975, 4) = 2.7764


def test_one_seed_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 pairs"):
        paired_power(1.0, 1, 1.0)
