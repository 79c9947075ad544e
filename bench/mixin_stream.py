"""A drifting synthetic stream of mixin-combination results with a known Bayes ceiling.

Rules (per node type, some shared): forbidden pairs, required companions (A without B fails),
banned single mixins. A result succeeds iff no rule is broken; then the label is flipped with
probability `noise`, so no model can beat 1 - noise (the Bayes ceiling). At `drift_at` the
rules change: some forbidden pairs swap, a requirement goes, a mixin gets banned.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from schemas.events import MIXIN_CATALOGUE

NODE_TYPES = ("effect", "compute", "reducer", "orchestrator")
M = sorted(MIXIN_CATALOGUE)


def _m(short: str) -> str:
    return "Mixin" + short


@dataclass
class Rules:
    forbidden: set[frozenset[str]] = field(default_factory=set)
    requires: dict[str, str] = field(default_factory=dict)
    banned: set[str] = field(default_factory=set)

    def ok(self, combo: frozenset[str]) -> bool:
        if combo & self.banned:
            return False
        if any(pair <= combo for pair in self.forbidden):
            return False
        return all(need in combo for mixin, need in self.requires.items() if mixin in combo)

    def conflict_pairs(self) -> set[frozenset[str]]:
        return set(self.forbidden)

    def never_succeed(self) -> set[str]:
        """Mixins no combination can make succeed: banned, or needing a banned one."""
        return set(self.banned) | {m for m, need in self.requires.items() if need in self.banned}

    def observable_conflicts(self) -> set[frozenset[str]]:
        """Conflict pairs a learner can see: both members succeed in some combination (a pair
        with a member that always fails is no different from that member alone)."""
        dead = self.never_succeed()
        return {p for p in self.forbidden if not p & dead}


def _pairs(*names: tuple[str, str]) -> set[frozenset[str]]:
    return {frozenset((_m(a), _m(b))) for a, b in names}


def rules_before() -> dict[str, Rules]:
    shared = _pairs(("Caching", "Transaction"), ("Streaming", "Batching"), ("Compression", "Encryption"),
                    ("RateLimit", "Scheduling"), ("Idempotency", "Notification"))
    requires = {_m("Retry"): _m("Timeout"), _m("CircuitBreaker"): _m("Metrics"),
                _m("Idempotency"): _m("Persistence")}
    return {
        "effect": Rules(shared | _pairs(("Auth", "Caching")), dict(requires), set()),
        "compute": Rules(shared | _pairs(("Tracing", "Serialization")), dict(requires),
                         {_m("EventBus"), _m("Persistence")}),
        "reducer": Rules(shared | _pairs(("Audit", "Streaming")), dict(requires), {_m("Notification")}),
        "orchestrator": Rules(shared | _pairs(("HealthCheck", "Config")), dict(requires), set()),
    }


def rules_after(before: dict[str, Rules]) -> dict[str, Rules]:
    """A dependency upgrade: three conflicts go away, four new ones appear, a requirement is
    dropped and another added, and one mixin breaks everywhere."""
    gone = _pairs(("Caching", "Transaction"), ("Streaming", "Batching"), ("RateLimit", "Scheduling"))
    new = _pairs(("Logging", "Encryption"), ("Validation", "Batching"), ("Metrics", "Tracing"),
                 ("Retry", "Idempotency"))
    after = {}
    for node_type, r in before.items():
        requires = {k: v for k, v in r.requires.items() if k != _m("CircuitBreaker")}
        requires[_m("Caching")] = _m("Serialization")
        after[node_type] = Rules((set(r.forbidden) - gone) | new, requires,
                                 set(r.banned) | {_m("Compression")})
    return after


@dataclass
class MixinStream:
    n: int = 50_000
    drift_at: int | None = 25_000
    noise: float = 0.03
    seed: int = 7
    max_mixins: int = 6
    flips: tuple[int, ...] = ()  # when given: the rules change at each of these, back and forth

    def __post_init__(self) -> None:
        self.before = rules_before()
        self.after = rules_after(self.before)
        rng = random.Random(self.seed)
        # Popularity is skewed (some mixins are everywhere, some rare), as in real PRDs.
        self.popularity = [1.0 / (1 + i) ** 0.6 for i in range(len(M))]
        rng.shuffle(self.popularity)

    def rules_at(self, i: int) -> dict[str, Rules]:
        if self.flips:  # back and forth: after an odd number of flips, the changed rules
            return self.after if sum(1 for f in self.flips if i >= f) % 2 else self.before
        return self.after if self.drift_at is not None and i >= self.drift_at else self.before

    def __iter__(self) -> Iterator[tuple[str, list[str], bool, bool]]:
        """(node_type, mixins, label, noiseless label)"""
        rng = random.Random(self.seed)
        for i in range(self.n):
            node_type = rng.choice(NODE_TYPES)
            k = rng.randint(1, self.max_mixins)
            combo: set[str] = set()
            while len(combo) < k:
                combo.add(rng.choices(M, weights=self.popularity)[0])
            rules = self.rules_at(i)[node_type]
            # Users usually add the companion a mixin needs: keep the stream from being all failures.
            for mixin, need in rules.requires.items():
                if mixin in combo and rng.random() < 0.7:
                    combo.add(need)
            truth = rules.ok(frozenset(combo))
            label = truth if rng.random() >= self.noise else not truth
            yield node_type, sorted(combo), label, truth
