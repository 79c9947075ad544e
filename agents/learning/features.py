"""Names of mixin combinations: one feature per mixin and one per pair of mixins.

Interaction features decide the result (a linear model over single mixins cannot express a
forbidden pair). The model numbers its features (see model.py); these helpers are for the
names people read ("MixinA&MixinB") and for combinations given in any order.
"""

from __future__ import annotations

from collections.abc import Iterable

PAIR_SEP = "&"


def canonical(mixins: Iterable[str]) -> tuple[str, ...]:
    """Sorted, de-duplicated: {A,B} and [B,A,A] are one combination."""
    return tuple(sorted(set(mixins)))


def pair_key(a: str, b: str) -> str:
    return f"{a}{PAIR_SEP}{b}" if a < b else f"{b}{PAIR_SEP}{a}"
