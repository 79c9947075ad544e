"""The naive way to learn mixin compatibility, with the library: one river
`LogisticRegression` per node type over single mixins and mixin pairs, plain SGD, no drift
handling, conflicts by probing pairs. What the shared hierarchical model
(agents/learning/hierarchy.py) is measured against in bench/learning.py; nothing serves it."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import combinations

from river import linear_model, optim

from agents.learning.features import canonical, pair_key


@dataclass(frozen=True)
class ProbedConflict:
    pair: tuple[str, str]


def _features(mixins: list[str]) -> dict[str, float]:
    combo = canonical(mixins)
    x = dict.fromkeys(combo, 1.0)
    x.update((pair_key(a, b), 1.0) for a, b in combinations(combo, 2))
    return x


class PairsLogistic:
    """Per node type: river's logistic regression on mixins and pairs, SGD at `lr`."""

    def __init__(self, lr: float) -> None:
        self.models: dict[str, linear_model.LogisticRegression] = defaultdict(
            lambda: linear_model.LogisticRegression(optimizer=optim.SGD(lr), intercept_lr=lr))
        self.pairs: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
        self.mixins: dict[str, set[str]] = defaultdict(set)

    def learn_one(self, node_type: str, mixins: list[str], label: bool) -> float:
        """Test then train: the probability before learning the result."""
        model, x = self.models[node_type], _features(mixins)
        p = model.predict_proba_one(x)[True]
        model.learn_one(x, label)
        combo = canonical(mixins)
        self.mixins[node_type].update(combo)
        self.pairs[node_type].update(combinations(combo, 2))
        return p

    def predict_proba(self, node_type: str, mixins: list[str]) -> float:
        return self.models[node_type].predict_proba_one(_features(mixins))[True]

    def predict(self, node_type: str, mixins: list[str]) -> float:
        return self.predict_proba(node_type, mixins)

    def find_conflicts(self, node_type: str) -> list[ProbedConflict]:
        """Pairs seen at least three times that the model says fail while each member alone
        succeeds (the probe the per-type models used before the shared model)."""
        seen = self.pairs[node_type]
        return [ProbedConflict((a, b)) for a, b in combinations(sorted(self.mixins[node_type]), 2)
                if seen[(a, b)] >= 3 and self.predict_proba(node_type, [a, b]) < 0.5
                and self.predict_proba(node_type, [a]) > 0.5 and self.predict_proba(node_type, [b]) > 0.5]
