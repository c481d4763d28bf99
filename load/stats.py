"""The one percentile rule (nearest rank: always a latency that was measured), and the medians over
rounds (robust to the one a noisy machine spoiled) and ratios every comparison reports."""
from __future__ import annotations

import statistics


def percentile(sorted_values, p: float):
    """Nearest-rank percentile (p in 0..100) of an already sorted sequence; None if empty."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil without floats
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


def median(values):
    """Median of the values that are not None; None if there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(a, b, digits: int = 3):
    """b / a, rounded; None when either is missing or a is 0."""
    return round(b / a, digits) if a and b is not None else None
