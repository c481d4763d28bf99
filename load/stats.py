"""The one percentile rule (nearest rank: always a latency that was measured), the medians over rounds
(robust to the one a noisy machine spoiled) and ratios every comparison reports, and bad outcomes counted."""
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


MAX_EXAMPLES = 5


class Counts:
    """Bad outcomes counted by kind, with the first few examples (``width`` characters each) to show."""

    def __init__(self, width: int = 200):
        self.kinds: dict = {}
        self.examples: list = []
        self.width = width

    @property
    def total(self) -> int:
        return sum(self.kinds.values())

    def add(self, kind: str, detail) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            text = detail[:self.width]
            self.examples.append(f"{kind}: {text.decode('utf-8', 'replace') if isinstance(text, bytes) else text}")

    def merge(self, other: Counts) -> None:
        """Add another process's counts (its examples while there is room)."""
        for kind, count in other.kinds.items():
            self.kinds[kind] = self.kinds.get(kind, 0) + count
        self.examples += other.examples[:MAX_EXAMPLES - len(self.examples)]
