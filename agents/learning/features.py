"""Names of mixin combinations: one feature per mixin and one per pair of mixins.

Interaction features decide the result (a linear model over single mixins cannot express a
forbidden pair). The model numbers its features (see model.py); these helpers are for the
names people read ("MixinA&MixinB") and for combinations given in any order.
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


# Numbered features of the hierarchical model (and its compiled kernels): mixin number i is
# feature i; the pair of numbers i < j is feature `k + i * k + j` (k: capacity).

def feature_numbers(ids: list[int], k: int) -> list[int]:
    """Features of a combination given as sorted, distinct mixin numbers."""
    return ids + [k + a * k + b for a, b in combinations(ids, 2)]


def pair_number(index: dict[str, int], k: int, a: str, b: str) -> int | None:
    """The pair feature of two named mixins; None when either is unknown (or they are one)."""
    i, j = index.get(a), index.get(b)
    if i is None or j is None or i == j:
        return None
    return k + min(i, j) * k + max(i, j)


def number_mixins(index: dict[str, int], names: list[str], mixins: Iterable[str], k: int) -> list[int]:
    """Sorted numbers of the combination's mixins, numbering new names (in name order) while
    fewer than `k` are known; names beyond that are dropped."""
    try:
        return sorted({index[m] for m in mixins})
    except KeyError:
        pass
    for m in sorted(set(mixins)):
        if m not in index and len(names) < k:
            index[m] = len(names)
            names.append(m)
    return sorted({index[m] for m in mixins if m in index})
