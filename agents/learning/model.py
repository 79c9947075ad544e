"""What the mixin model answers with, and how it is scored: a prediction, a conflict pair, a
test-then-train score. The model itself is agents/learning/hierarchy.py (one model every node
type shares); these types are its vocabulary, kept apart so the kernels and the minibatch
learner use them without importing the model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# How many result ids a model remembers to learn a re-sent result once (8 bytes each).
LEARNT_IDS = 4096
P_MIN = 1e-6


@dataclass
class Conflict:
    pair: tuple[str, str]
    p_pair: float
    p_a: float
    p_b: float
    pair_weight: float
    observations: int
    context: tuple[str, ...] = ()
    posterior: float | None = None  # P(the pair fails beyond its members), from the evidence

    def as_dict(self) -> dict[str, Any]:
        out = {"pair": list(self.pair), "p_pair": round(self.p_pair, 4), "p_a": round(self.p_a, 4),
               "p_b": round(self.p_b, 4), "pair_weight": round(self.pair_weight, 4),
               "observations": self.observations, "context": list(self.context)}
        if self.posterior is not None:
            out["posterior"] = round(self.posterior, 4)
        return out


@dataclass
class Prediction:
    node_type: str
    mixins: list[str]
    score: float
    confidence: float
    evidence: int
    conflicts: list[dict[str, Any]]
    unseen: list[str]
    risky: bool
    model_version: int
    updates: int

    def compatibility(self) -> dict[str, Any]:
        """The fields of schemas.events.Compatibility."""
        out = self.as_dict()
        del out["node_type"], out["mixins"]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"node_type": self.node_type, "mixins": self.mixins, "score": round(self.score, 4),
                "confidence": round(self.confidence, 4), "evidence": self.evidence,
                "conflicts": self.conflicts, "unseen_mixins": self.unseen, "risky": self.risky,
                "model_version": self.model_version, "updates": self.updates}


@dataclass
class Progressive:
    """Test-then-train score: each event is predicted before the model learns from it."""
    n: int = 0
    correct: int = 0
    log_loss_sum: float = 0.0

    def update(self, p: float, y: bool) -> None:
        self.n += 1
        self.correct += (p >= 0.5) == y
        q = min(max(p if y else 1 - p, P_MIN), 1.0)
        self.log_loss_sum -= math.log(q)

    def update_many(self, p: np.ndarray, y: np.ndarray) -> None:
        """`update` for each (probability, label) of two arrays, in order."""
        self.n += len(p)
        self.correct += int(np.count_nonzero((p >= 0.5) == y))
        q = np.clip(np.where(y, p, 1 - p), P_MIN, 1.0)
        self.log_loss_sum -= float(np.log(q).sum())

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def log_loss(self) -> float:
        return self.log_loss_sum / self.n if self.n else 0.0
