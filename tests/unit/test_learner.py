"""The mixin learner's contract, without Kafka: a dict for the table, a list for the sink."""

from __future__ import annotations

import uuid

import pytest

from agents.learning import snapshot
from agents.learning.hierarchy import HierarchicalModel
from agents.learning.registry import SHARED, ModelRegistry
from bench.mixin_stream import MixinStream
from schemas.events import GenerationResult
from streams.learning.learner import Learner

KEY = b"k" * 32
WHERE = "codegen.results:0"


class ListSink:
    def __init__(self, fail: bool = False) -> None:
        self.rows: list[tuple] = []
        self.flushed: list[tuple] = []
        self.fail = fail

    def add_nowait(self, row: tuple, source: object = None) -> None:
        self.rows.append(row)

    async def flush(self) -> int:
        if self.fail:
            raise ConnectionError("database away")
        self.flushed += self.rows
        n, self.rows = len(self.rows), []
        return n


def _results(n: int, seed: int = 1) -> list[GenerationResult]:
    return [GenerationResult(node_type="effect", mixins=m, success=label)
            for nt, m, label, _ in MixinStream(n=n * 8, drift_at=None, seed=seed) if nt == "effect"][:n]


def _learn(learner: Learner, results: list[GenerationResult], start: int = 0) -> dict[str, int]:
    changed = {}
    for i, r in enumerate(results, start):
        if learner.learn(r, WHERE, i):
            changed[SHARED] = 0  # every node type learns into the shared model
    return changed


async def test_a_batch_is_in_the_table_before_commit_returns_and_its_conflicts_go_to_the_sink():
    table: dict[bytes, bytes] = {}
    puts: list[tuple[int, bytes]] = []
    sink = ListSink()
    learner = Learner(table, KEY, conflict_sink=sink, clock=lambda: 1234.0)
    changed = _learn(learner, _results(400))
    assert changed == {SHARED: 0} and table == {}  # nothing written while learning

    def put(partition: int, key: bytes, value: bytes) -> None:
        puts.append((partition, key))
        table[key] = value

    learner.save(changed, put=put, held=lambda p: True)
    assert puts == [(0, b"*")]
    head, model = snapshot.loads(table[b"*"], KEY)
    assert head.updates == model.updates == 400 and head.created_at == 1234.0
    assert model.applied == {WHERE: 399}  # the snapshot says which offsets it holds
    # conflicts per node type, handed to the sink (which writes them within its interval)
    assert sink.rows and sink.rows[0][0] == "effect" and not sink.flushed


async def test_conflicts_lost_in_a_crash_are_written_again_by_the_next_snapshot():
    table: dict[bytes, bytes] = {}
    lost = ListSink(fail=True)  # the database was away: the worker died before they were written
    first = Learner(table, KEY, conflict_sink=lost)
    changed = _learn(first, _results(200))
    first.save(changed, put=lambda p, k, v: table.__setitem__(k, v), held=lambda p: True)
    assert lost.rows and table  # the snapshot is in; the conflicts never reached the database
    sink = ListSink()
    again = Learner(table, KEY, conflict_sink=sink)  # restarted from the table
    changed = _learn(again, _results(220)[200:], start=200)
    again.save(changed, put=lambda p, k, v: table.__setitem__(k, v), held=lambda p: True)
    assert {row[0] for row in sink.rows} == {row[0] for row in lost.rows}


async def test_partitions_no_longer_held_are_not_written():
    table: dict[bytes, bytes] = {}
    learner = Learner(table, KEY)
    changed = _learn(learner, _results(50))
    learner.save(changed, put=lambda p, k, v: table.__setitem__(k, v), held=lambda p: False)
    assert table == {}


async def test_after_a_crash_the_replayed_results_are_skipped_and_the_rest_learnt_once():
    table: dict[bytes, bytes] = {}
    results = _results(300)
    first = Learner(table, KEY)
    _learn(first, results[:200])
    first.save({SHARED: 0}, put=lambda p, k, v: table.__setitem__(k, v), held=lambda p: True)
    _learn(first, results[200:250])  # learnt, never snapshotted: the worker dies here

    restarted = Learner(table, KEY)  # the table is all that survives
    changed = _learn(restarted, results)  # the source replays from the committed offset
    assert restarted.skipped == 200 and changed == {SHARED: 0}
    assert restarted.model_for(SHARED).updates == 300

    again = GenerationResult.model_validate({**results[5].model_dump(), "id": results[5].id})
    assert not restarted.learn(again, "codegen.results:1", 10)  # same id from another record
    assert restarted.skipped == 201


def test_install_catches_up_on_what_the_replay_did_not_read_and_takes_the_next_version():
    learner = Learner({}, KEY)
    results = _results(300)
    _learn(learner, results)
    current = learner.model_for(SHARED)
    replayed = HierarchicalModel()
    for r in results[:250]:
        replayed.learn_one(r.node_type, r.mixins, r.success)
    blob = snapshot.dumps(replayed, snapshot.SnapshotHeader(SHARED, 7, replayed.updates, 0.0,
                                                            replaces=current.version), KEY)
    installed = learner.install(SHARED, blob, trained_through={0: 250})
    assert installed.updates == 300  # the 50 results past the replay's end, learnt on install
    assert installed.version == current.version + 1  # not the sender's 7
    assert installed.applied == current.applied and learner.live[SHARED] is installed

    # The same install sent again (or any naming a version no longer in use) would roll back.
    with pytest.raises(snapshot.SnapshotRejected, match="repeated or outdated"):
        learner.install(SHARED, blob, trained_through={0: 250})
    unnamed = snapshot.dumps(replayed, snapshot.SnapshotHeader(SHARED, 7, replayed.updates, 0.0), KEY)
    with pytest.raises(snapshot.SnapshotRejected, match="repeated or outdated"):
        learner.install(SHARED, unnamed, trained_through={})
    assert learner.live[SHARED] is installed

    with pytest.raises(snapshot.SnapshotRejected):
        learner.install("compute", blob, trained_through={})  # not the shared model's key
    other = snapshot.dumps({"weights": [0.0]}, snapshot.SnapshotHeader(SHARED, 9, 0, 0.0), KEY)
    with pytest.raises(snapshot.SnapshotRejected):
        learner.install(SHARED, other, trained_through={})  # signed, but not the shared model
    forged = snapshot.dumps(replayed, snapshot.SnapshotHeader(SHARED, 9, 1, 0.0), b"x" * 32)
    with pytest.raises(snapshot.SnapshotRejected):
        learner.install(SHARED, forged, trained_through={})


def test_a_forged_snapshot_in_the_table_is_refused_and_learning_goes_on_from_the_replica():
    replica = ModelRegistry(KEY)
    known = HierarchicalModel()
    for r in _results(100):
        known.learn_one(r.node_type, r.mixins, r.success)
    replica.models[SHARED] = known
    forged = snapshot.dumps(HierarchicalModel(), snapshot.SnapshotHeader(SHARED, 99, 0, 0.0), b"y" * 32)
    learner = Learner({b"*": forged}, KEY, replica=replica)
    model = learner.model_for(SHARED)
    assert model.updates == 100 and model is not known  # a copy of the newest verified model
    assert learner.refused[SHARED] == forged[:256]
    assert learner.model_for(SHARED) is model  # the same bad record is not verified again
    learner.learn(GenerationResult(node_type="effect", mixins=["MixinRetry"], success=True,
                                   id=uuid.uuid4()), WHERE, 0)
    assert model.updates == 101


def test_every_node_type_learns_into_the_one_shared_model():
    learner = Learner({}, KEY)
    for i, (nt, mixins, label, _) in enumerate(MixinStream(n=400, drift_at=None)):
        learner.learn(GenerationResult(node_type=nt, mixins=mixins, success=label), WHERE, i)
    assert list(learner.live) == [SHARED]
    shared = learner.model_for(SHARED)
    assert isinstance(shared, HierarchicalModel) and shared.updates == 400
    assert sorted(shared.node_types) == ["compute", "effect", "orchestrator", "reducer"]
