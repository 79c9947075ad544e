"""Results as replay hands them to its trainer: decoded from a fetch, in columns. Kept apart
from the trainer, which compiles its loops (numba), so that reading them costs no compiler."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# node type, mixins, success, the result id's first 64 bits (None: no id)
Result = tuple[str, list[str], bool, int | None]


@dataclass
class Results:
    """Results in columns, in order (what replay decodes from a fetch)."""
    node_types: Sequence[str]
    mixins: Sequence[list[str]]
    successes: Sequence[bool]
    ids: Sequence[int | None]  # each id's first 64 bits; None: a result without an id

    @classmethod
    def of(cls, results: Sequence[Result]) -> Results:
        return cls(*zip(*results, strict=True)) if results else cls((), (), (), ())

    def __len__(self) -> int:
        return len(self.node_types)
