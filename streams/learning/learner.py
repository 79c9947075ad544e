"""The mixin learner's state and batch logic, without Faust: the live shared model (every node
type learns into it) when a worker holds its partition, its signed snapshots in a table,
installs from replay.

The table, the conflicts sink and the clock are given to it, so its contract is tested in
milliseconds (tests/unit/test_learner.py): a batch's models are snapshotted into the table
before `commit` returns and the batch may be acked (their conflicts follow within the sink's
interval); a result a
snapshot already holds (by source offset) or already learnt (by id) is skipped; a snapshot
that fails verification is refused and learning goes on from the newest verified model.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, MutableMapping

import orjson
from prometheus_client import Counter, Gauge, Histogram

from agents.learning import snapshot
from agents.learning.hierarchy import HierarchicalModel
from agents.learning.minibatch import MiniBatch
from agents.learning.registry import SHARED, ModelRegistry
from schemas.events import GenerationResult
from streams.runtime.processing import Applied
from streams.runtime.sink import RowSink

log = logging.getLogger(__name__)

# Fewer results are learnt one by one: the compiled loop's set-up (the model's lists to arrays
# and back) costs ~17 ms, what learn_one takes for ~1,000 results.
MINIBATCH_FROM = 1000
RECENT_EVENTS = 20_000  # kept so an installed (replayed) model can catch up

MODEL_UPDATES = Counter("omnistream_model_updates_total", "Results learnt", ["node_type"])
MODEL_SNAPSHOTS = Counter("omnistream_model_snapshots_total", "Model snapshots written", ["node_type"])
SNAPSHOTS_REFUSED = Counter("omnistream_model_snapshots_refused_total",
                            "Model snapshots refused (bad authentication tag or format)", ["where"])
SNAPSHOT_BYTES = Gauge("omnistream_model_snapshot_bytes", "Size of the last snapshot", ["node_type"])
LEARN_SECONDS = Histogram("omnistream_model_learn_seconds",
                          "Time to learn one result (a batch's time over its results)",
                          buckets=(1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2))


class Learner:
    """The live model of the partition this worker holds: the shared model every node type
    learns into (`SHARED`; all results are keyed to it, so one partition, one owner).

    The model carries `applied` (highest offset learnt per source partition); a batch learns
    the results it has not applied, then the model is snapshotted into the table (in its
    partition) before the batch is acked."""

    def __init__(self, table: MutableMapping[bytes, bytes] | None = None, key: bytes | None = None,
                 replica: ModelRegistry | None = None, conflict_sink: RowSink | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.table: MutableMapping[bytes, bytes] = table if table is not None else {}
        self.key = key or b""
        self.replica = replica
        self.live: dict[str, HierarchicalModel] = {}
        self.base: dict[str, tuple[int, int]] = {}     # (version, updates) of the last snapshot
        self.recent: dict[str, deque] = defaultdict(lambda: deque(maxlen=RECENT_EVENTS))
        self.conflicts_written: dict[str, bytes] = {}  # node type → its conflicts last written
        self.refused: dict[str, bytes] = {}  # start of a stored record that failed verification
        self.skipped = 0  # results a replay brought again, already in the model
        self.conflict_sink = conflict_sink
        self.clock = clock

    def reset(self) -> None:
        """After a rebalance: reload from the table what the partitions now held hold."""
        self.live.clear()
        self.base.clear()

    def model_for(self, key: str = SHARED) -> HierarchicalModel:
        blob = self.table.get(key.encode())
        live = self.live.get(key)
        if blob is None:
            if live is None:
                live = self.live[key] = HierarchicalModel()
                self.base[key] = (live.version, 0)
            return live
        if live is not None and self.refused.get(key) == blob[:256]:
            return live  # the record we already refused is still the latest
        try:
            head = snapshot.read_header(blob)
            if live is not None and self.base.get(key) == (head.version, head.updates):
                return live
            _, model = snapshot.loads(blob, self.key)
            if not isinstance(model, HierarchicalModel):
                raise snapshot.SnapshotRejected("the record holds another kind of model")
        except snapshot.SnapshotRejected as exc:
            # Someone wrote into the changelog. Go on from the newest verified model this worker
            # knows (the replica refused the same record), else from a fresh one.
            SNAPSHOTS_REFUSED.labels("learner").inc()
            if live is not None:
                model = live
            elif self.replica is not None and key in self.replica.models:
                model = copy.deepcopy(self.replica.models[key])
            else:
                model = HierarchicalModel()
            log.error("stored model snapshot refused", extra={"metadata": {
                "node_type": key, "reason": str(exc), "continuing_from_updates": model.updates}})
            self.live[key] = model
            self.base[key] = (model.version, model.updates)
            self.refused[key] = blob[:256]
            return model
        if not hasattr(model, "applied"):  # a snapshot from before offsets were stored
            model.applied = {}
        self.live[key] = model
        self.base[key] = (model.version, model.updates)
        return model

    def learn(self, result: GenerationResult, where: str, offset: int) -> bool:
        """Learn one result unless the model already holds it; True when learnt."""
        return self.learn_many([(result, where, offset)]) == 1

    def learn_many(self, results: list[tuple[GenerationResult, str, int]]) -> int:
        """Learn a batch's results (each with its source and offset, in source order) as
        `learn` would one by one — the same gates, the same model afterwards — in one compiled
        loop (agents/learning/minibatch.py). Returns how many were learnt."""
        model = self.model_for(SHARED)
        fresh: list[GenerationResult] = []
        for result, where, offset in results:
            if Applied.seen(model.applied, where, offset):
                self.skipped += 1
                continue
            Applied.mark(model.applied, where, offset)
            if model.seen_result(result.id):  # the same result sent again (its producer crashed)
                self.skipped += 1
                continue
            fresh.append(result)
            self.recent[SHARED].append((where, offset, result.node_type, tuple(result.mixins),
                                        result.success))
        if not fresh:
            return 0
        started = time.perf_counter()
        if len(fresh) < MINIBATCH_FROM:
            for r in fresh:
                model.learn_one(r.node_type, r.mixins, r.success)
        else:  # the same model as learn_one one by one (tests/unit/test_minibatch.py)
            batch = MiniBatch(model)
            batch.learn([(r.node_type, r.mixins, r.success) for r in fresh])
            batch.close()
        LEARN_SECONDS.observe((time.perf_counter() - started) / len(fresh))
        per_type: dict[str, int] = {}
        for r in fresh:
            per_type[r.node_type] = per_type.get(r.node_type, 0) + 1
        for node_type, n in per_type.items():
            MODEL_UPDATES.labels(node_type).inc(n)
        return len(fresh)

    def save(self, changed: dict[str, int], put: Callable[[int, bytes, bytes], None],
             held: Callable[[int], bool]) -> None:
        """End of a batch: snapshot each changed model (key → its table partition) that this
        worker still holds; the batch is acked after its snapshots; a failure raises (no ack).
        The conflicts are not waited for: they are derived from the model (the sink replaces a
        node type's conflicts), written within the sink's interval, and after a crash the next
        snapshot writes them again (`conflicts_written` starts empty)."""
        for key, partition in changed.items():
            if held(partition):
                self.snapshot(key, partition, functools.partial(put, partition))

    def snapshot(self, key: str, partition: int,
                 put: Callable[[bytes, bytes], None] | None = None) -> bytes | None:
        """The live model, signed, written to its table key (in `partition`); each node type's
        conflicts to the sink when they changed."""
        model = self.live.get(key)
        if model is None:
            return None
        found = model.find_all_conflicts()
        head = snapshot.SnapshotHeader(key, model.version, model.updates, self.clock())
        blob = snapshot.dumps(model, head, self.key)
        (put or (lambda k, v: self.table.__setitem__(k, v)))(key.encode(), blob)
        self.base[key] = (model.version, model.updates)
        MODEL_SNAPSHOTS.labels(key).inc()
        SNAPSHOT_BYTES.labels(key).set(len(blob))
        for node_type, conflicts in sorted(found.items()):
            rows = orjson.dumps([c.as_dict() for c in conflicts])
            if self.conflict_sink is not None and self.conflicts_written.get(node_type) != rows:
                self.conflicts_written[node_type] = rows
                self.conflict_sink.add_nowait((node_type, rows.decode()))
        return blob

    def install(self, key: str, blob: bytes, trained_through: dict[int, int]) -> HierarchicalModel:
        """Swap in a model trained elsewhere (replay): verify it, let it learn what arrived after
        the replay stopped reading, give it the next version number. The caller snapshots it.
        Only an install of the version in use is taken (its signed header names it)."""
        head, model = snapshot.loads(blob, self.key)
        if not isinstance(model, HierarchicalModel) or key != SHARED or head.node_type != key:
            raise snapshot.SnapshotRejected("install message holds another model than the shared one")
        current = self.model_for(key)
        if head.replaces != current.version:
            # A re-sent install (or one trained before another was installed) would roll the
            # model back to what it was trained from: going back is an explicit new replay.
            raise snapshot.SnapshotRejected(
                f"install {snapshot.digest(blob)} replaces model version {head.replaces}, but version "
                f"{current.version} is in use: a repeated or outdated install is refused")
        caught_up = 0
        for where, off, node_type, mixins, success in self.recent[key]:
            part = int(where.rsplit(":", 1)[1])
            if off >= trained_through.get(part, 0):
                model.learn_one(node_type, mixins, success)
                caught_up += 1
        model.version = current.version + 1  # versions only go up, whatever the sender wrote
        model.applied = dict(current.applied)  # it now holds everything the current one did
        self.live[key] = model
        log.info("model swapped in", extra={"metadata": {
            "node_type": key, "model_version": model.version, "replaced": current.version,
            "install": snapshot.digest(blob), "updates": model.updates,
            "caught_up": caught_up}})
        return model
