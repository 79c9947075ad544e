"""Features of a mixin combination: one per mixin and one per pair of mixins.

Interaction features decide the result (a linear model over single mixins cannot express a
forbidden pair). These are module-level functions, not lambdas, so a model holding them pickles.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations

PAIR_SEP = "&"


def canonical(mixins: Iterable[str]) -> tuple[str, ...]:
    """Sorted, de-duplicated: {A,B} and [B,A,A] are one combination."""
    return tuple(sorted(set(mixins)))


def pair_key(a: str, b: str) -> str:
    return f"{a}{PAIR_SEP}{b}" if a < b else f"{b}{PAIR_SEP}{a}"


def featurize(combo: tuple[str, ...]) -> dict[str, float]:
    """`combo` must be canonical (sorted, unique)."""
    x = dict.fromkeys(combo, 1.0)
    for a, b in combinations(combo, 2):
        x[a + PAIR_SEP + b] = 1.0
    return x
