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

from agents.learning.model import MixinModel, Progressive

# node type, mixins, success, the result id's first 64 bits (None: no id)
Result = tuple[str, list[str], bool, int | None]


@dataclass
class NodeReport:
    node_type: str
    new: MixinModel
    events: int = 0
    old: Progressive = field(default_factory=Progressive)  # the model in use, scored
    old_version: int = 0
    new_version: int | None = None


class Trainer:
    def __init__(self, old_models: dict[str, MixinModel]) -> None:
        self.old = old_models
        self.nodes: dict[str, NodeReport] = {}
        self.duplicates = 0  # results sent twice (same id), learnt once

    def _node(self, node_type: str) -> NodeReport:
        node = self.nodes[node_type] = NodeReport(node_type, MixinModel(node_type))
        current = self.old.get(node_type)
        node.old_version = current.version if current else 0
        return node

    def learn(self, results: Iterable[Result]) -> None:
        """Learn results in the order given (per node type, which is all that matters)."""
        nodes = self.nodes
        todo: dict[str, list[tuple[list[str], bool]]] = {}
        for node_type, mixins, success, id_prefix in results:
            node = nodes.get(node_type) or self._node(node_type)
            if id_prefix is not None and node.new.seen_id(id_prefix):
                self.duplicates += 1  # the same result sent twice (its producer crashed)
                continue
            todo.setdefault(node_type, []).append((mixins, success))
        for node_type, batch in todo.items():
            node = nodes[node_type]
            node.events += len(batch)
            learn = node.new.learn_one
            current = self.old.get(node_type)
            if current is None:
                for mixins, success in batch:
                    learn(mixins, success)
            else:
                score, scored = current.predict_proba, node.old.update
                for mixins, success in batch:
                    scored(score(mixins), success)
                    learn(mixins, success)
