"""Seeds derived from a run's seed and a position in it (epoch, rank, batch)."""

from __future__ import annotations

import numpy as np


def mixed_seed(*values: int) -> int:
    """A well-mixed 63-bit seed for a tuple of integers: nearby tuples give unrelated streams."""
    return int(np.random.SeedSequence(list(values)).generate_state(1, np.uint64)[0] >> np.uint64(1))
