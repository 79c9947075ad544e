"""Small helpers shared by the demo summary, the benchmarks, the client and the models."""

from __future__ import annotations

import statistics
from collections import OrderedDict
from collections.abc import Hashable, Sequence


def percentile(values: list[float], q: int, empty: float = 0.0) -> float:
    """The q-th percentile (1–99, inclusive method); `empty` when there is no value."""
    if not values:
        return empty
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


class RecentIds:
    """The last `size` ids seen, oldest forgotten first: a duplicate comes soon after its
    original (a producer that crashed before its commit sends the same output again)."""

    def __init__(self, size: int = 100_000):
        self.size = size
        self._ids: OrderedDict[Hashable, None] = OrderedDict()

    def seen(self, value_id: Hashable) -> bool:
        """True when `value_id` is among the last `size` ids; otherwise remember it."""
        if value_id in self._ids:
            return True
        self._ids[value_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return False

    def seen_many(self, value_ids: Sequence[Hashable | None]) -> list[bool]:
        """`seen` for each id in order (None: no id, never seen)."""
        seen = self.seen
        return [False if v is None else seen(v) for v in value_ids]

    def __len__(self) -> int:
        return len(self._ids)

    def __getstate__(self) -> dict:
        return {"size": self.size, "ids": list(self._ids)}

    def __setstate__(self, state: dict) -> None:
        self.size = state["size"]
        self._ids = OrderedDict.fromkeys(state["ids"])
