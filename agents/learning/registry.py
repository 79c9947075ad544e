"""What every worker predicts from: the newest verified snapshot of the shared model, and the
current pattern-feedback states. Fed record by record from the replicated changelogs."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from agents.learning import feedback, snapshot
from agents.learning.features import canonical
from agents.learning.hierarchy import HierarchicalModel
from agents.learning.model import Prediction

log = logging.getLogger(__name__)


SHARED = "*"  # the key of the one model every node type shares (agents/learning/hierarchy.py)
REBUILD = ("a per-node-type model snapshot from a release before the shared model: not loaded; "
           "`omnistream replay` rebuilds the shared model from codegen.results")


class ModelRegistry:
    """The snapshot under `SHARED`: the hierarchical model every node type is predicted from.
    Any other key is a per-node-type snapshot of an earlier release (ignored, said once)."""

    def __init__(self, key: bytes):
        self.key = key
        self.models: dict[str, HierarchicalModel] = {}
        self.refused = 0
        self.last_refusal: str | None = None
        self.ignored: set[str] = set()  # keys of earlier releases' snapshots, said once each

    def apply(self, key: bytes | None, blob: bytes | None) -> bool:
        """One changelog record. A record that fails verification is refused (and reported);
        the model in use stays as it was."""
        name = (key or b"").decode("utf-8", "replace")
        if blob is None:  # tombstone: the model was deleted
            self.models.pop(name, None)
            return True
        if name != SHARED:
            if name not in self.ignored:
                self.ignored.add(name)
                log.warning(REBUILD, extra={"metadata": {"node_type": name}})
            return True
        try:
            header, model = snapshot.loads(blob, self.key)
            if not isinstance(model, HierarchicalModel) or header.node_type != name:
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
        return self.models.get(SHARED)

    def predict(self, node_type: str, mixins: list[str]) -> Prediction:
        """The shared model's prediction; before any snapshot, a neutral one (score 0.5, no
        confidence, every mixin unseen)."""
        shared = self.shared
        if shared is not None:
            return shared.predict(node_type, mixins)
        combo = list(canonical(mixins))
        return Prediction(node_type=node_type, mixins=combo, score=0.5, confidence=0.0, evidence=0,
                          conflicts=[], unseen=combo, risky=False, model_version=0, updates=0)

    def versions(self) -> dict[str, tuple[int, float]]:
        """Per node type: (model version in use, progressive accuracy), for the gauges."""
        shared = self.shared
        return {} if shared is None else {t: (shared.version, p.accuracy) for t, p in shared.by_type.items()}

    def status(self) -> dict[str, Any]:
        """Per node type: the shared model's version, and that type's results and accuracy."""
        shared = self.shared
        models = {} if shared is None else {t: shared.type_status(t) for t in shared.node_types}
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
