"""Pure learning logic: snapshots and the registry, the shared mixin model on the bench's world
(conflicts, drift, bounds), pattern feedback posteriors."""

from __future__ import annotations

import pickle
import struct
import zlib

import pytest

from agents.learning import feedback, snapshot
from agents.learning.features import canonical
from agents.learning.hierarchy import HierarchicalModel
from agents.learning.registry import SHARED, ModelRegistry, PatternRegistry
from bench.mixin_stream import MixinStream

KEY = b"k" * 32


def _trained(n: int = 12_000, seed: int = 3) -> HierarchicalModel:
    model = HierarchicalModel()
    for node_type, mixins, label, _ in MixinStream(n=n, drift_at=None, seed=seed):
        model.learn_one(node_type, mixins, label)
    return model


@pytest.fixture(scope="module")
def trained():
    return _trained()


# ------------------------------------------------------------------------- snapshots


def _blob(model: HierarchicalModel, key: bytes = KEY, name: str = SHARED) -> bytes:
    head = snapshot.SnapshotHeader(name, model.version, model.updates, 0.0)
    return snapshot.dumps(model, head, key)


def test_snapshot_round_trip_is_compact_and_predicts_the_same(trained):
    blob = _blob(trained)
    head, back = snapshot.loads(blob, KEY)
    assert (head.node_type, head.updates) == (SHARED, trained.updates)
    assert len(blob) < 256_000  # far below the broker's 1 MiB message limit
    for combo in (["MixinRetry", "MixinTimeout"], ["MixinCaching", "MixinTransaction"]):
        assert back.predict_proba("effect", combo) == trained.predict_proba("effect", combo)


@pytest.mark.parametrize("tamper", ["payload", "header", "key", "truncate", "magic", "pickle", None])
def test_tampered_snapshot_is_refused_before_unpickling(trained, tamper, monkeypatch):
    unpickled: list[bytes] = []
    real_loads = pickle.loads

    def spy(data: bytes, *args, **kwargs):
        unpickled.append(data)
        return real_loads(data, *args, **kwargs)  # our own blob: the control case

    monkeypatch.setattr(snapshot.pickle, "loads", spy)
    blob = bytearray(_blob(trained))
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
    assert reg.apply(SHARED.encode(), _blob(trained))
    before = reg.predict("reducer", ["MixinRetry"]).score
    forged = bytearray(_blob(trained))
    forged[-5] ^= 1
    assert not reg.apply(SHARED.encode(), bytes(forged))
    assert reg.refused == 1 and "tag" in reg.last_refusal
    assert reg.predict("reducer", ["MixinRetry"]).score == before
    # A snapshot whose signed header names another key is refused too.
    assert not reg.apply(SHARED.encode(), _blob(trained, name="reducer"))


def test_a_per_type_snapshot_of_an_earlier_release_is_not_loaded_and_said_once(trained, monkeypatch):
    from agents.learning import registry

    said: list[str] = []
    monkeypatch.setattr(registry.log, "warning", lambda message, **kw: said.append(message))
    reg = ModelRegistry(KEY)
    reg.apply(SHARED.encode(), _blob(trained))
    before = reg.predict("effect", ["MixinRetry", "MixinTimeout"]).score
    for _ in range(3):  # a restore reads every record of the changelog
        assert reg.apply(b"effect", b"OMSM1 whatever the old release wrote")
    assert reg.ignored == {"effect"} and reg.refused == 0 and list(reg.models) == [SHARED]
    assert said == [registry.REBUILD] and "omnistream replay" in said[0]
    assert reg.predict("effect", ["MixinRetry", "MixinTimeout"]).score == before


def test_registry_never_goes_back_to_an_older_snapshot(trained):
    reg = ModelRegistry(KEY)
    old = HierarchicalModel()
    old.learn_one("orchestrator", ["MixinRetry"], True)
    reg.apply(SHARED.encode(), _blob(trained))
    reg.apply(SHARED.encode(), _blob(old))  # compaction may deliver records in any order at start
    assert reg.models[SHARED].updates == trained.updates
    assert ModelRegistry(KEY).predict("effect", ["MixinB", "MixinA"]).as_dict() == {
        "node_type": "effect", "mixins": ["MixinA", "MixinB"], "score": 0.5, "confidence": 0.0,
        "evidence": 0, "conflicts": [], "unseen_mixins": ["MixinA", "MixinB"], "risky": False,
        "model_version": 0, "updates": 0}  # before any snapshot: neutral


# ------------------------------------------------------------------------- model


def test_features_are_order_free_and_hold_pairs():
    assert canonical(["MixinB", "MixinA", "MixinA"]) == ("MixinA", "MixinB")
    model = HierarchicalModel(max_mixins=8)
    model.learn_one("effect", ["MixinC", "MixinA", "MixinB", "MixinA"], True)
    assert model.names == ["MixinA", "MixinB", "MixinC"]
    # the pair (i, j), i < j, is feature k + i*k + j of the shared block, whatever the order asked
    assert model.pair_feature("MixinC", "MixinA") == model.pair_feature("MixinA", "MixinC") == 8 + 2
    assert model.pair_feature("MixinA", "MixinD") is None
    assert model.predict("effect", ["MixinA", "MixinC"]).evidence == 1


def test_model_learns_the_bench_world_well_above_chance(trained):
    for node_type, score in trained.by_type.items():
        assert score.accuracy > 0.9, (node_type, trained.type_status(node_type))
    # Forbidden pair (a rule of the stream) vs. a required companion satisfied.
    assert trained.predict_proba("effect", ["MixinCaching", "MixinTransaction"]) < 0.5
    assert trained.predict_proba("effect", ["MixinRetry", "MixinTimeout"]) > 0.5
    assert trained.predict_proba("effect", ["MixinRetry"]) < trained.predict_proba(
        "effect", ["MixinRetry", "MixinTimeout"])


@pytest.mark.parametrize("seed", [13, 17])
def test_conflicts_are_the_worlds_pairs_that_fail_together(seed):
    """On worlds the conflict settings were not chosen on (bench/worlds.py, seeds 13+), up to
    the first drift: the pairs found are pairs that fail together although each member
    succeeds without the other, and those seen often enough are found."""
    from collections import Counter
    from itertools import combinations

    from bench import worlds

    world = worlds.make_world(seed, 40_000)
    model, seen = HierarchicalModel(), {t: Counter() for t in worlds.NODE_TYPES}
    for i, (node_type, mixins, label, _) in enumerate(world):
        if i == world.drifts[0]:
            break
        model.learn_one(node_type, mixins, label)
        seen[node_type].update(frozenset(c) for c in combinations(mixins, 2))
    found = truth_hits = truth_all = 0
    for node_type in worlds.NODE_TYPES:
        every = world.phases[0][node_type].observable_conflicts()
        truth = {p for p in every if seen[node_type][p] >= worlds.OFTEN}
        pairs = {frozenset(c.pair) for c in model.find_conflicts(node_type)}
        assert pairs <= every, (node_type, pairs - every)  # precision: each is a real conflict
        found += len(pairs)
        truth_hits += len(pairs & truth)
        truth_all += len(truth)
        for c in model.conflicts[node_type]:
            assert c.posterior is not None and c.posterior >= model.cfg.credibility and c.observations >= 3
    assert found and truth_hits >= 0.85 * truth_all  # recall on the pairs seen often enough


def test_a_confounded_pair_is_told_by_its_free_sightings():
    """bench/worlds.py counts a false conflict met almost only beside a real cause apart: its
    free sightings are the results where dropping either member leaves a combination that
    succeeds."""
    from bench.worlds import WorldRules, free_sightings

    rules = WorldRules(forbidden={frozenset({"MixinCaching", "MixinAuth"})},
                       requires={"MixinCaching": "MixinHealthCheck"})
    combos = [frozenset(c) for c in (
        {"MixinCaching", "MixinHealthCheck", "MixinAuth"},   # the real cause is there
        {"MixinCaching", "MixinHealthCheck", "MixinAuth", "MixinRetry"},
        {"MixinHealthCheck", "MixinAuth"},                   # free
        {"MixinHealthCheck", "MixinAuth", "MixinRetry"},     # free
        {"MixinCaching", "MixinAuth"})]                      # Caching without its need as well
    assert free_sightings(rules, frozenset({"MixinHealthCheck", "MixinAuth"}), combos) == 2
    # the real conflict: its first two sightings are free of anything else, the last is not
    assert free_sightings(rules, frozenset({"MixinCaching", "MixinAuth"}), combos) == 2
    assert not rules.ok(combos[0]) and rules.ok(combos[2])


def test_prediction_confidence_grows_with_evidence_and_unseen_names_are_reported(trained):
    fresh = HierarchicalModel()
    for _ in range(3):
        fresh.learn_one("effect", ["MixinRetry", "MixinTimeout"], True)
    little = fresh.predict("effect", ["MixinRetry", "MixinTimeout"])
    much = trained.predict("effect", ["MixinRetry", "MixinTimeout"])
    assert little.evidence == 3 and much.evidence > 100
    assert little.confidence < much.confidence <= 1
    unseen = trained.predict("effect", ["MixinRetry", "MixinQuantumEntangler"])
    assert unseen.unseen == ["MixinQuantumEntangler"] and unseen.confidence == 0.0
    trained.find_all_conflicts()  # what a snapshot does: predictions then name the conflicts
    risky = trained.predict("effect", ["MixinCaching", "MixinTransaction", "MixinLogging"])
    assert risky.risky and any(c["pair"] == ["MixinCaching", "MixinTransaction"] for c in risky.conflicts)


def test_model_size_is_bounded_against_floods_of_new_names():
    model = HierarchicalModel(max_mixins=10)
    for i in range(200):
        model.learn_one("compute", [f"MixinGen{i}", "MixinRetry"], i % 2 == 0)
    for i in range(40):
        model.learn_one(f"type-{i}", ["MixinRetry"], True)
    assert len(model.mixins) == 10 and len(model.node_types) == model.max_node_types
    assert len(pickle.dumps(model)) < 50_000


def test_drift_is_detected_soon_after_it():
    stream = MixinStream(n=50_000, drift_at=25_000, seed=7)
    model = HierarchicalModel()
    for node_type, mixins, label, _ in stream:
        model.learn_one(node_type, mixins, label)
    after = [d for d in model.drifts if d >= 25_000]
    assert after and after[0] - 25_000 < 1000, model.drifts
    assert not [d for d in model.drifts if 5_000 < d < 25_000]  # no false alarm on the settled stream


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

    model = HierarchicalModel()
    ids = [uuid.uuid4() for _ in range(50)]
    learnt = 0
    for rid in ids + ids[:10]:
        if not model.seen_result(rid):
            model.learn_one("effect", ["MixinRetry", "MixinCaching"], True)
            learnt += 1
    assert learnt == 50 and model.updates == 50
    head = snapshot.SnapshotHeader(SHARED, model.version, model.updates, 0.0)
    _, restored = snapshot.loads(snapshot.dumps(model, head, b"k" * 32), b"k" * 32)
    assert all(restored.seen_result(rid) for rid in ids)
    assert not restored.seen_result(uuid.uuid4())
    for _ in range(LEARNT_IDS + 5):  # bounded: the oldest ids are forgotten first
        restored.seen_result(uuid.uuid4())
    assert len(restored.learnt) == LEARNT_IDS and not restored.seen_result(ids[0])
