"""How many seeds a paired comparison needs, and what a finished one can resolve.

A study compares two conv types run with the same seeds; the per-seed differences in top-1 are the data, and
their spread over seeds decides how large a difference a given number of seeds can tell from noise. These
are the standard paired t-test calculations (two-sided, exact power from the noncentral t distribution), so a
study can state its power instead of implying it. SciPy comes with scikit-learn, a dependency of the project.
"""

from __future__ import annotations

import math

from scipy import stats

ALPHA, POWER = 0.05, 0.8  # the conventional 5 % false-positive rate and 80 % power


def paired_power(std_delta: float, seeds: int, effect: float, alpha: float = ALPHA) -> float:
    """The probability that a two-sided paired t-test at ``alpha`` over ``seeds`` pairs finds a true mean
    difference ``effect`` when the per-seed differences have standard deviation ``std_delta``."""
    if seeds < 2:
        raise ValueError(f"seeds={seeds}: a paired t-test needs at least 2 pairs")
    df = seeds - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    shift = effect / (std_delta / math.sqrt(seeds))
    # the far tail (a significant difference of the wrong sign) is vanishingly small for large shifts, where
    # SciPy's noncentral t can return nan for it
    wrong_sign = float(stats.nct.cdf(-critical, df, shift))
    return float(stats.nct.sf(critical, df, shift)) + (0.0 if math.isnan(wrong_sign) else wrong_sign)


def seeds_needed(std_delta: float, effect: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """The fewest seeds at which the paired test reaches ``power`` for a true difference ``effect``. Power grows
    with the seeds, so doubling finds a count that suffices and bisection the fewest: an arm whose runs diverge
    (a spread of tens of points) gets its answer, in the tens of thousands, as quickly as any other."""
    if effect <= 0:
        raise ValueError(f"effect={effect}: the difference to detect must be positive")
    if std_delta == 0:
        return 2

    def enough(seeds: int) -> bool:
        return paired_power(std_delta, seeds, effect, alpha) >= power

    too_few, sufficient = 1, 2
    while not enough(sufficient):
        too_few, sufficient = sufficient, sufficient * 2
    while sufficient - too_few > 1:
        middle = (too_few + sufficient) // 2
        if enough(middle):
            sufficient = middle
        else:
            too_few = middle
    return sufficient


def detectable_difference(std_delta: float, seeds: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference that ``seeds`` pairs detect with probability ``power`` (bisection on
    ``paired_power``, which grows with the difference)."""
    low, high = 0.0, max(std_delta, 1e-12)
    while paired_power(std_delta, seeds, high, alpha) < power:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if paired_power(std_delta, seeds, middle, alpha) < power else (low, middle)
    return high


def confidence_interval(mean: float, std: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """The t interval of a mean of ``n`` values with sample standard deviation ``std``."""
    half = stats.t.ppf((1 + level) / 2, n - 1) * std / math.sqrt(n)
    return float(mean - half), float(mean + half)
