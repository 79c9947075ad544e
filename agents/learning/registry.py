"""What every worker predicts from: the newest verified snapshot per node type, and the
current pattern-feedback states. Fed record by record from the replicated changelogs."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from agents.learning import feedback, snapshot
from agents.learning.features import canonical
from agents.learning.model import MixinModel, Prediction

log = logging.getLogger(__name__)


class ModelRegistry:
    def __init__(self, key: bytes):
        self.key = key
        self.models: dict[str, MixinModel] = {}
        self.refused = 0
        self.last_refusal: str | None = None

    def apply(self, key: bytes | None, blob: bytes | None) -> bool:
        """One changelog record. A record that fails verification is refused (and reported);
        the model in use stays as it was."""
        node_type = (key or b"").decode("utf-8", "replace")
        if blob is None:  # tombstone: the model was deleted
            self.models.pop(node_type, None)
            return True
        try:
            header, model = snapshot.loads(blob, self.key)
            if not isinstance(model, MixinModel) or header.node_type != node_type:
                raise snapshot.SnapshotRejected("snapshot holds something other than this node type's model")
        except snapshot.SnapshotRejected as exc:
            self.refused += 1
            self.last_refusal = f"{node_type}: {exc}"
            log.error("model snapshot refused", extra={"metadata": {"node_type": node_type,
                                                                    "reason": str(exc)}})
            return False
        current = self.models.get(node_type)
        if current is None or (header.version, header.updates) >= (current.version, current.updates):
            self.models[node_type] = model  # one assignment: readers see old or new, never half
        return True

    def predict(self, node_type: str, mixins: list[str]) -> Prediction:
        model = self.models.get(node_type)
        if model is None:
            combo = list(canonical(mixins))
            return Prediction(node_type=node_type, mixins=combo, score=0.5, confidence=0.0, evidence=0,
                              conflicts=[], unseen=combo, risky=False, model_version=0, updates=0)
        return model.predict(mixins)

    def status(self) -> dict[str, Any]:
        return {"models": {t: m.status() for t, m in sorted(self.models.items())},
                "snapshots_refused": self.refused, "last_refusal": self.last_refusal}


class PatternRegistry:
    def __init__(self, policy: feedback.FeedbackPolicy | None = None):
        self.policy = policy or feedback.FeedbackPolicy()
        self.states: dict[str, feedback.FeedbackState] = {}
        self.suppressed: frozenset[str] = frozenset()

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        name = orjson.loads(key) if key else None
        if not isinstance(name, str):
            return
        if value is None:
            self.states.pop(name, None)
        else:
            state = feedback.FeedbackState.load(orjson.loads(value))
            if state is not None:
                self.states[name] = state
        self.suppressed = frozenset(n for n, s in self.states.items() if s.suppressed)

    def summaries(self) -> list[dict[str, Any]]:
        return [feedback.summary(s, self.policy) for _, s in sorted(self.states.items())]
