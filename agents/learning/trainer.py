"""Replay's training: a fresh shared model learnt from results in order, with the model in use
scored on the same results (prediction only) beside them. Pure: no Kafka, so it is tested
without a broker; streams/learning/replay.py feeds it the decoded records.

Where it runs: streams/learning/training.py runs decoding and this trainer in a process of
their own while replay reads the next fetch. (Splitting the other way, decoding in the reading
process and learning in another, was no faster when learning cost 16 µs a result: learning
alone was the bottleneck.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import compress

import numpy as np

from agents.learning.hierarchy import HierarchicalModel
from agents.learning.minibatch import FrozenScorer, MiniBatch, number_rows
from agents.learning.model import Progressive
from agents.learning.registry import SHARED
from agents.learning.results import Results


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
    """A fresh shared model learnt from results in order (compiled, many at a time:
    minibatch.py); the shared model in use scored on the same results beside it.
    `finish()` hands the new model over."""

    def __init__(self, old_models: dict[str, HierarchicalModel]) -> None:
        self.model = HierarchicalModel()
        self.batch = MiniBatch(self.model)
        self.old_shared = old_models.get(SHARED)
        self.old_scorer = FrozenScorer(self.old_shared) if self.old_shared is not None else None
        self.old_version = self.old_shared.version if self.old_shared is not None else 0
        self.nodes: dict[str, NodeReport] = {}
        self.duplicates = 0  # results sent twice (same id), learnt once

    def _node(self, node_type: str) -> NodeReport:
        self.nodes[node_type] = NodeReport(node_type, old_version=self.old_version)
        return self.nodes[node_type]

    def learn(self, results: Results) -> None:
        """Learn results in the order given."""
        if not len(results):
            return
        node_types, mixins, successes = results.node_types, results.mixins, results.successes
        seen = self.model.seen_ids(results.ids)
        if any(seen):  # the same result sent twice (its producer crashed): learnt once
            self.duplicates += sum(seen)
            fresh = [not s for s in seen]
            node_types = list(compress(node_types, fresh))
            mixins = list(compress(mixins, fresh))
            successes = list(compress(successes, fresh))
            if not node_types:
                return
        rows = number_rows(self.model, node_types, mixins, successes)
        new = self.batch.learn_many(rows)
        old = self.old_scorer.predict_many(self.model, rows) if self.old_scorer is not None else None
        for c, node_type in enumerate(rows.node_types):
            mine = rows.kind == c
            node = self.nodes.get(node_type) or self._node(node_type)
            node.events += int(np.count_nonzero(mine))
            node.new.update_many(new[mine], rows.y[mine])
            if old is not None:
                node.old.update_many(old[mine], rows.y[mine])

    def finish(self) -> HierarchicalModel:
        """The new model, with everything learnt written back into it."""
        return self.batch.close()
