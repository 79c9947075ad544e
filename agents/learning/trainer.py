"""Replay's training: fresh mixin models learnt from results in order, with the models in use
scored on the same results (prediction only) beside them. Pure: no Kafka, so it is tested
without a broker; streams/learning/replay.py feeds it the decoded records.

Tried and dropped: the trainer in a spawned process of its own (the replay decoding on one
core while models learn on the other) was no faster on a 2-core machine that also runs the
broker: 0.105-0.135x a bare consumer against 0.119-0.121x in one process.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from agents.learning.hierarchy import HierarchicalModel
from agents.learning.model import MixinModel, Progressive
from agents.learning.registry import SHARED, Model

# node type, mixins, success, the result id's first 64 bits (None: no id)
Result = tuple[str, list[str], bool, int | None]


@dataclass
class NodeReport:
    """One node type's share of a replay: the model in use and the new one, scored on it."""
    node_type: str
    events: int = 0
    old: Progressive = field(default_factory=Progressive)  # the model in use, prediction only
    new: Progressive = field(default_factory=Progressive)  # the new model, test-then-train
    old_version: int = 0
    new_version: int | None = None


class Trainer:
    """A fresh shared model learnt from results in order; the models in use (the shared one,
    or a node type's own for a type it has not seen) scored on the same results beside it."""

    def __init__(self, old_models: dict[str, Model]) -> None:
        self.old = old_models
        self.model = HierarchicalModel()
        shared = old_models.get(SHARED)
        self.old_shared = shared if isinstance(shared, HierarchicalModel) else None
        self.old_version = self.old_shared.version if self.old_shared is not None else 0
        self.nodes: dict[str, NodeReport] = {}
        self.duplicates = 0  # results sent twice (same id), learnt once

    def _node(self, node_type: str) -> NodeReport:
        node = self.nodes[node_type] = NodeReport(node_type)
        serving = self._serving(node_type)
        node.old_version = serving.version if serving is not None else 0
        return node

    def _serving(self, node_type: str) -> Model | None:
        shared = self.old_shared
        if shared is not None and (node_type in shared.type_index or node_type not in self.old):
            return shared
        return self.old.get(node_type)

    def learn(self, results: Iterable[Result]) -> None:
        """Learn results in the order given."""
        nodes, model = self.nodes, self.model
        learn, seen = model.learn_one, model.seen_id
        for node_type, mixins, success, id_prefix in results:
            if id_prefix is not None and seen(id_prefix):
                self.duplicates += 1  # the same result sent twice (its producer crashed)
                continue
            node = nodes.get(node_type) or self._node(node_type)
            node.events += 1
            serving = self._serving(node_type)
            if isinstance(serving, HierarchicalModel):
                node.old.update(serving.predict_proba(node_type, mixins), success)
            elif isinstance(serving, MixinModel):
                node.old.update(serving.predict_proba(mixins), success)
            node.new.update(learn(node_type, mixins, success), success)
