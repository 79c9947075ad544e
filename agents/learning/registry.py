"""What every worker predicts from: the newest verified snapshot per node type, and the
current pattern-feedback states. Fed record by record from the replicated changelogs."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from agents.learning import feedback, snapshot
from agents.learning.features import canonical
from agents.learning.hierarchy import HierarchicalModel
from agents.learning.model import MixinModel, Prediction

log = logging.getLogger(__name__)


SHARED = "*"  # the key of the one model every node type shares (agents/learning/hierarchy.py)
Model = MixinModel | HierarchicalModel


class ModelRegistry:
    """Snapshots by key: `SHARED` holds the hierarchical model every node type is predicted
    from; a node type's own key holds a per-type model (snapshots written before the shared
    model, used for a node type the shared one has not seen)."""

    def __init__(self, key: bytes):
        self.key = key
        self.models: dict[str, Model] = {}
        self.refused = 0
        self.last_refusal: str | None = None

    def apply(self, key: bytes | None, blob: bytes | None) -> bool:
        """One changelog record. A record that fails verification is refused (and reported);
        the model in use stays as it was."""
        name = (key or b"").decode("utf-8", "replace")
        if blob is None:  # tombstone: the model was deleted
            self.models.pop(name, None)
            return True
        try:
            header, model = snapshot.loads(blob, self.key)
            expected = HierarchicalModel if name == SHARED else MixinModel
            if not isinstance(model, expected) or header.node_type != name:
                raise snapshot.SnapshotRejected("snapshot holds something other than this key's model")
        except snapshot.SnapshotRejected as exc:
            self.refused += 1
            self.last_refusal = f"{name}: {exc}"
            log.error("model snapshot refused", extra={"metadata": {"node_type": name,
                                                                    "reason": str(exc)}})
            return False
        current = self.models.get(name)
        if current is None or (header.version, header.updates) >= (current.version, current.updates):
            self.models[name] = model  # one assignment: readers see old or new, never half
        return True

    @property
    def shared(self) -> HierarchicalModel | None:
        model = self.models.get(SHARED)
        return model if isinstance(model, HierarchicalModel) else None

    def predict(self, node_type: str, mixins: list[str]) -> Prediction:
        shared = self.shared
        if shared is not None and (node_type in shared.type_index or node_type not in self.models):
            return shared.predict(node_type, mixins)
        model = self.models.get(node_type)
        if isinstance(model, MixinModel):
            return model.predict(mixins)
        combo = list(canonical(mixins))
        return Prediction(node_type=node_type, mixins=combo, score=0.5, confidence=0.0, evidence=0,
                          conflicts=[], unseen=combo, risky=False, model_version=0, updates=0)

    def versions(self) -> dict[str, tuple[int, float]]:
        """Per node type: (model version in use, progressive accuracy), for the gauges."""
        out = {t: (m.version, m.progressive.accuracy) for t, m in self.models.items()
               if isinstance(m, MixinModel)}
        shared = self.shared
        if shared is not None:
            out.update({t: (shared.version, p.accuracy) for t, p in shared.by_type.items()})
        return out

    def status(self) -> dict[str, Any]:
        """Per node type: the model it is predicted from (the shared one once it has seen the
        type: its version, and that type's results and accuracy)."""
        models = {t: m.status() for t, m in sorted(self.models.items()) if isinstance(m, MixinModel)}
        shared = self.shared
        if shared is not None:
            for t in shared.node_types:
                models[t] = shared.type_status(t)
        return {"models": dict(sorted(models.items())),
                "shared": shared.status() if shared is not None else None,
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
