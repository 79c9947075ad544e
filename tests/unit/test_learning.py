"""Pure learning logic: snapshots, the mixin model, conflicts, pattern feedback posteriors."""

from __future__ import annotations

import pickle
import struct
import zlib

import pytest

from agents.learning import feedback, snapshot
from agents.learning.features import canonical
from agents.learning.model import MixinModel
from agents.learning.registry import ModelRegistry, PatternRegistry
from bench.mixin_stream import MixinStream

KEY = b"k" * 32


def _trained(n: int = 12_000, drift_at: int | None = None) -> tuple[dict[str, MixinModel], MixinStream]:
    stream = MixinStream(n=n, drift_at=drift_at, seed=3)
    models: dict[str, MixinModel] = {}
    for node_type, mixins, label, _ in stream:
        models.setdefault(node_type, MixinModel(node_type)).learn_one(mixins, label)
    return models, stream


@pytest.fixture(scope="module")
def trained():
    return _trained()[0]


# ------------------------------------------------------------------------- snapshots


def _blob(model: MixinModel, key: bytes = KEY) -> bytes:
    head = snapshot.SnapshotHeader(model.node_type, model.version, model.updates, 0.0)
    return snapshot.dumps(model, head, key)


def test_snapshot_round_trip_is_compact_and_predicts_the_same(trained):
    model = trained["effect"]
    blob = _blob(model)
    head, back = snapshot.loads(blob, KEY)
    assert (head.node_type, head.updates) == ("effect", model.updates)
    assert len(blob) < 64_000  # far below the broker's 1 MiB message limit
    for combo in (["MixinRetry", "MixinTimeout"], ["MixinCaching", "MixinTransaction"]):
        assert back.predict_proba(combo) == model.predict_proba(combo)


@pytest.mark.parametrize("tamper", ["payload", "header", "key", "truncate", "magic", "pickle", None])
def test_tampered_snapshot_is_refused_before_unpickling(trained, tamper, monkeypatch):
    unpickled: list[bytes] = []
    real_loads = pickle.loads

    def spy(data: bytes, *args, **kwargs):
        unpickled.append(data)
        return real_loads(data, *args, **kwargs)  # our own blob: the control case

    monkeypatch.setattr(snapshot.pickle, "loads", spy)
    blob = bytearray(_blob(trained["compute"]))
    if tamper == "payload":
        blob[-10] ^= 0xFF
    elif tamper == "header":
        blob = bytearray(bytes(blob).replace(b'"version":1', b'"version":9', 1))
    elif tamper == "truncate":
        blob = blob[:20]
    elif tamper == "magic":
        blob[0:5] = b"XXXXX"
    elif tamper == "pickle":  # a forged snapshot whose payload, well formed, would run code
        head, _, _ = snapshot._split(bytes(blob))
        evil = zlib.compress(pickle.dumps(__import__("os").system))
        blob = bytearray(snapshot.MAGIC + struct.pack(">I", len(head)) + head + b"\0" * 32 + evil)
        assert snapshot._split(bytes(blob))[2] == evil  # it reaches the tag check whole
    key = b"other-key-000000" if tamper == "key" else KEY
    if tamper is None:  # the control: an untouched blob is unpickled (the spy sees it)
        snapshot.loads(bytes(blob), key)
        assert len(unpickled) == 1
        return
    with pytest.raises(snapshot.SnapshotRejected):
        snapshot.loads(bytes(blob), key)
    assert unpickled == []


def test_registry_refuses_tampered_record_and_keeps_the_model(trained):
    reg = ModelRegistry(KEY)
    assert reg.apply(b"reducer", _blob(trained["reducer"]))
    before = reg.predict("reducer", ["MixinRetry"]).score
    forged = bytearray(_blob(trained["reducer"]))
    forged[-5] ^= 1
    assert not reg.apply(b"reducer", bytes(forged))
    assert reg.refused == 1 and "tag" in reg.last_refusal
    assert reg.predict("reducer", ["MixinRetry"]).score == before
    # A model filed under another node type's key is refused too.
    assert not reg.apply(b"effect", _blob(trained["reducer"]))


def test_registry_never_goes_back_to_an_older_snapshot(trained):
    model = trained["orchestrator"]
    reg = ModelRegistry(KEY)
    newer = _blob(model)
    old = MixinModel("orchestrator")
    old.learn_one(["MixinRetry"], True)
    reg.apply(b"orchestrator", newer)
    reg.apply(b"orchestrator", _blob(old))  # compaction may deliver records in any order at start
    assert reg.models["orchestrator"].updates == model.updates


# ------------------------------------------------------------------------- model


def test_features_are_order_free_and_hold_pairs():
    assert canonical(["MixinB", "MixinA", "MixinA"]) == ("MixinA", "MixinB")
    model = MixinModel("effect", max_mixins=8)
    model.learn_one(["MixinC", "MixinA", "MixinB", "MixinA"], True)
    assert model.names == ["MixinA", "MixinB", "MixinC"]
    # singles 0..2, then the pairs (0,1) (0,2) (1,2) at 8 + i*8 + j
    assert model.features(model._learnt_ids(["MixinB", "MixinC", "MixinA"])) == [0, 1, 2, 9, 10, 18]
    assert [model.observations(m) for m in "MixinA MixinB MixinC MixinD".split()] == [1, 1, 1, 0]
    assert model.observations("MixinC", "MixinA") == 1 and model.observations("MixinA", "MixinA") == 0


def test_model_learns_rules_well_above_chance(trained):
    for node_type, model in trained.items():
        assert model.progressive.accuracy > 0.85, (node_type, model.status())
    effect = trained["effect"]
    # Forbidden pair (rule in the stream) vs. a required companion satisfied.
    assert effect.predict_proba(["MixinCaching", "MixinTransaction"]) < 0.5
    assert effect.predict_proba(["MixinRetry", "MixinTimeout"]) > 0.5
    assert effect.predict_proba(["MixinRetry"]) < effect.predict_proba(["MixinRetry", "MixinTimeout"])


def test_conflicts_are_real_forbidden_pairs(trained):
    stream = MixinStream(n=1, drift_at=None, seed=3)
    found = truth_hits = 0
    for node_type, model in trained.items():
        rules = stream.before[node_type]
        truth = {p for p in rules.conflict_pairs() if not p & rules.banned}
        pairs = {frozenset(c.pair) for c in model.find_conflicts()}
        found += len(pairs)
        truth_hits += len(pairs & truth)
        for c in model.conflicts:
            assert c.p_pair < 0.5 < min(c.p_a, c.p_b) and c.observations >= 3
    assert found and truth_hits / found >= 0.9  # precision
    assert truth_hits >= 0.6 * sum(len({p for p in stream.before[t].conflict_pairs()
                                        if not p & stream.before[t].banned}) for t in trained)


def test_prediction_confidence_grows_with_evidence_and_unseen_names_are_reported(trained):
    fresh = MixinModel("effect")
    for _ in range(3):
        fresh.learn_one(["MixinRetry", "MixinTimeout"], True)
    little = fresh.predict(["MixinRetry", "MixinTimeout"])
    much = trained["effect"].predict(["MixinRetry", "MixinTimeout"])
    assert little.evidence == 3 and much.evidence > 100
    assert little.confidence < much.confidence <= 1
    unseen = trained["effect"].predict(["MixinRetry", "MixinQuantumEntangler"])
    assert unseen.unseen == ["MixinQuantumEntangler"] and unseen.confidence == 0.0
    risky = trained["effect"].predict(["MixinCaching", "MixinTransaction", "MixinLogging"])
    assert risky.risky and any(c["pair"] == ["MixinCaching", "MixinTransaction"] for c in risky.conflicts)


def test_model_size_is_bounded_against_floods_of_new_names():
    model = MixinModel("compute", max_mixins=10)
    for i in range(200):
        model.learn_one([f"MixinGen{i}", "MixinRetry"], i % 2 == 0)
    assert len(model.mixins) == 10
    assert len(pickle.dumps(model)) < 50_000


def test_drift_is_detected_soon_after_it_and_a_challenger_races():
    stream = MixinStream(n=50_000, drift_at=25_000, seed=7)
    model = MixinModel("effect")
    drift_at = None
    for i, (node_type, mixins, label, _) in enumerate(stream):
        if node_type == "effect":
            if i >= 25_000 and drift_at is None:
                drift_at = model.updates
            model.learn_one(mixins, label)
    after = [d for d in model.drifts if d >= drift_at]
    assert after and after[0] - drift_at < 1000, (model.drifts, drift_at)
    assert model.promotions and model.promotions[0] > after[0]


# ------------------------------------------------------------------------- pattern feedback

P = feedback.FeedbackPolicy()


def _feed(state, kind, n, source="s", weight=1.0, is_correct=None):
    for i in range(n):
        state = feedback.apply(state, kind, weight, is_correct, f"{source}{i % 10}", float(i), P)
    return state


def test_bad_pattern_is_suppressed_only_when_confident_and_comes_back():
    state = feedback.new_state("stub_operation")
    state = _feed(state, "false_positive", 3)
    assert not state.suppressed  # three votes are not enough to be sure
    assert feedback.summary(state, P)["p_below_floor"] < P.suppress_at
    state = _feed(state, "false_positive", 30)
    assert state.suppressed
    s = feedback.summary(state, P)
    assert s["interval"][0] < s["precision"] < s["interval"][1] < P.floor
    state = _feed(state, "true_positive", 200)
    assert not state.suppressed
    assert feedback.summary(state, P)["precision"] > 0.8


def test_false_negatives_feed_recall_not_precision():
    state = _feed(feedback.new_state("p"), "true_positive", 10)
    before = feedback.summary(state, P)
    state = _feed(state, "false_negative", 10)
    after = feedback.summary(state, P)
    assert after["precision"] == before["precision"]
    assert before["recall"] == 1.0 and after["recall"] == 0.5


def test_overrides_follow_their_verdict_and_weights_count():
    state = feedback.new_state("p")
    state = feedback.apply(state, "user_override", 1.0, False, "a", 0.0, P)
    state = feedback.apply(state, "user_override", 1.0, None, "a", 0.0, P)  # no verdict: ignored
    assert feedback.summary(state, P)["weight"]["false_positive"] == 1.0
    light = _feed(feedback.new_state("p"), "false_positive", 20, weight=0.1)
    heavy = _feed(feedback.new_state("p"), "false_positive", 20, weight=1.0)
    assert feedback.summary(light, P)["n_eff"] == pytest.approx(feedback.summary(heavy, P)["n_eff"])
    assert feedback.summary(light, P)["weight"]["false_positive"] < 2.1


def test_one_source_flood_cannot_flip_a_pattern():
    state = _feed(feedback.new_state("p"), "true_positive", 60, source="team")  # 10 sources
    state = _feed(state, "false_positive", 5000, source="bot")  # 10 bot sources...
    # ...each capped at source_cap weight: 10 × 20 FP against 60 TP moves precision, but a
    # single source cannot: the same flood from one source is worth at most its cap.
    one = _feed(feedback.new_state("p"), "true_positive", 60, source="team")
    for i in range(5000):
        one = feedback.apply(one, "false_positive", 1.0, None, "spammer", float(i), P)
    assert not one.suppressed
    assert feedback.summary(one, P)["weight"]["false_positive"] == pytest.approx(P.source_cap)


def test_pattern_registry_tracks_suppression():
    import orjson

    reg = PatternRegistry()
    state = _feed(feedback.new_state("print_call"), "false_positive", 40)
    reg.apply(orjson.dumps("print_call"), orjson.dumps(state.dump()))
    assert reg.suppressed == {"print_call"}
    assert reg.summaries()[0]["suppressed"] is True
    reg.apply(orjson.dumps("print_call"), None)
    assert reg.suppressed == frozenset()


def test_a_result_sent_twice_is_learnt_once_and_the_memory_survives_a_snapshot():
    """A producer that crashed before its commit sends the same result (same id) again as a new
    record: the model learns it once, also after being restored from its snapshot."""
    import uuid

    from agents.learning.model import LEARNT_IDS

    model = MixinModel("effect")
    ids = [uuid.uuid4() for _ in range(50)]
    learnt = 0
    for rid in ids + ids[:10]:
        if not model.seen_result(rid):
            model.learn_one(["MixinRetry", "MixinCaching"], True)
            learnt += 1
    assert learnt == 50 and model.updates == 50
    head = snapshot.SnapshotHeader("effect", model.version, model.updates, 0.0)
    _, restored = snapshot.loads(snapshot.dumps(model, head, b"k" * 32), b"k" * 32)
    assert all(restored.seen_result(rid) for rid in ids)
    assert not restored.seen_result(uuid.uuid4())
    for _ in range(LEARNT_IDS + 5):  # bounded: the oldest ids are forgotten first
        restored.seen_result(uuid.uuid4())
    assert len(restored.learnt) == LEARNT_IDS and not restored.seen_result(ids[0])
