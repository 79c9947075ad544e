"""Small statistics helpers shared by the demo summary and the benchmarks."""

from __future__ import annotations

import statistics


def percentile(values: list[float], q: int, empty: float = 0.0) -> float:
    """The q-th percentile (1–99, inclusive method); `empty` when there is no value."""
    if not values:
        return empty
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]
