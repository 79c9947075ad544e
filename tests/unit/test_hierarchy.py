"""The hierarchical mixin model: shared rules learnt from every node type, per-type rules
kept apart, conflicts from evidence that ages, compact snapshots (no Kafka)."""

from __future__ import annotations

import pickle
import random

import pytest

from agents.learning.hierarchy import HierarchicalModel, HierarchyConfig
from schemas.events import Compatibility

TYPES = ("effect", "compute", "reducer", "orchestrator")
MIXINS = [f"Mixin{c}" for c in "ABCDEFGHIJ"]


def _stream(n: int, seed: int = 3, forbidden=frozenset({"MixinA", "MixinB"}),
            banned_for=("compute", "MixinJ")):
    rng = random.Random(seed)
    for _ in range(n):
        t = rng.choice(TYPES)
        combo = sorted(set(rng.sample(MIXINS, rng.randint(1, 4))))
        ok = not forbidden <= set(combo) and not (t == banned_for[0] and banned_for[1] in combo)
        yield t, combo, ok if rng.random() > 0.02 else not ok


def _trained(n: int = 8000, **kw) -> HierarchicalModel:
    model = HierarchicalModel(**kw)
    for t, combo, ok in _stream(n):
        model.learn_one(t, combo, ok)
    return model


def test_a_rule_of_every_type_is_shared_and_a_rule_of_one_type_stays_there():
    model = _trained()
    for t in TYPES:
        assert model.predict_proba(t, ["MixinA", "MixinB"]) < 0.2
        assert model.predict_proba(t, ["MixinA", "MixinC"]) > 0.8
    assert model.predict_proba("compute", ["MixinJ"]) < 0.2
    assert all(model.predict_proba(t, ["MixinJ"]) > 0.8 for t in TYPES if t != "compute")
    # The shared weight carries the common conflict; the deviations stay small.
    f = model.pair_feature("MixinA", "MixinB")
    assert f is not None and model.weights[f] < -1.0
    assert all(abs(model.weights[model.block * (1 + model.type_index[t]) + f]) < abs(model.weights[f])
               for t in TYPES)


def test_conflicts_need_evidence_and_the_model_and_carry_their_posterior():
    model = _trained()
    for t in TYPES:
        found = model.find_conflicts(t)
        assert [c.pair for c in found] == [("MixinA", "MixinB")], (t, found)
        assert found[0].posterior is not None and found[0].posterior >= 0.95
        assert found[0].observations >= 3 and found[0].as_dict()["posterior"] >= 0.95
    prediction = model.predict("effect", ["MixinB", "MixinA"])
    assert prediction.conflicts[0]["pair"] == ["MixinA", "MixinB"]
    # what codegen-render puts on the generated node (a field the schema lacked failed every
    # node whose combination holds a known conflict: CI, a worker that had learnt one)
    compatibility = Compatibility(**prediction.compatibility())
    assert compatibility.risky
    assert compatibility.conflicts[0].posterior == prediction.conflicts[0]["posterior"]


def test_a_conflict_that_stops_holding_is_withdrawn():
    """The rules change: A+B is fine from now on, C+D conflicts. Evidence ages (half-life 2000
    results here), so A+B is withdrawn and C+D reported within a few thousand results."""
    model = _trained(cfg=HierarchyConfig(half_life=2000))
    assert all(("MixinA", "MixinB") in [c.pair for c in model.find_conflicts(t)] for t in TYPES)
    for t, combo, ok in _stream(8000, seed=4, forbidden=frozenset({"MixinC", "MixinD"})):
        model.learn_one(t, combo, ok)
    for t in TYPES:
        pairs = [c.pair for c in model.find_conflicts(t)]
        assert ("MixinA", "MixinB") not in pairs and ("MixinC", "MixinD") in pairs, (t, pairs)
    assert model.drifts  # the change was noticed


def test_snapshot_is_sparse_and_predicts_the_same():
    model = _trained(4000)
    blob = pickle.dumps(model)
    assert len(blob) < 200_000  # of ~66,000 features only the ones seen are stored
    again = pickle.loads(blob)
    for t in TYPES:
        for combo in (["MixinA"], ["MixinA", "MixinB"], ["MixinC", "MixinJ", "MixinE"]):
            assert again.predict_proba(t, combo) == model.predict_proba(t, combo)
    assert again.posteriors("effect") == model.posteriors("effect")
    # and it goes on learning exactly as the original does
    for t, combo, ok in _stream(500, seed=9):
        assert again.learn_one(t, combo, ok) == model.learn_one(t, combo, ok)


def test_unknown_node_type_and_mixins_are_scored_by_what_is_shared():
    model = _trained(4000)
    p = model.predict("a-new-type", ["MixinA", "MixinB", "MixinZ"])
    assert p.unseen == ["MixinZ"] and p.evidence == 0 and p.score < 0.5


def test_a_pair_met_almost_only_beside_a_conflict_is_no_conflict_where_it_is_free():
    # A with B fails. C is added to nine in ten combinations holding A and B, and to three in
    # a hundred others: (A, C) and (B, C) fail together nearly every time they are seen, but
    # where nothing else fails (C without A or without B) they succeed.
    rng = random.Random(4)
    model = HierarchicalModel()
    for _ in range(6000):
        combo = set(rng.sample(["MixinD", "MixinE", "MixinF", "MixinG", "MixinH"], 2))
        combo |= {m for m in ("MixinA", "MixinB") if rng.random() < 0.5}
        if rng.random() < (0.9 if {"MixinA", "MixinB"} <= combo else 0.03):
            combo.add("MixinC")
        model.learn_one("effect", sorted(combo), not {"MixinA", "MixinB"} <= combo)
    credible = {pair for pair, (p, _) in model.posteriors("effect").items() if p >= model.cfg.credibility}
    assert {("MixinA", "MixinC"), ("MixinB", "MixinC")} <= credible  # the counts alone accuse C
    assert [c.pair for c in model.find_conflicts("effect")] == [("MixinA", "MixinB")]
    t, f = model.type_index["effect"], model.pair_feature("MixinA", "MixinC")
    assert f is not None and model.works_where_free(t, f)
    model.works_where_free = lambda t, f: False  # without the free evidence, C is accused
    assert {c.pair for c in model.find_conflicts("effect")} > {("MixinA", "MixinB")}


def _pair_beside_a_ban(cfg: HierarchyConfig, seed: int) -> tuple[HierarchicalModel, list[tuple[str, str]]]:
    """A with B fails for effect, not for compute; Z, banned everywhere, is in 85 % of effect
    results, so A and B fail for effect most of the time without each other too; 5 % noise."""
    rng = random.Random(seed)
    model = HierarchicalModel(cfg=cfg)
    for _ in range(1200):
        node_type = rng.choice(["effect", "compute"])
        combo = {rng.choice(["MixinC", "MixinD", "MixinE", "MixinF"])}
        combo |= {m for m in ("MixinA", "MixinB") if rng.random() < 0.5}
        if node_type == "effect" and rng.random() < 0.85:
            combo.add("MixinZ")
        ok = "MixinZ" not in combo and not (node_type == "effect" and {"MixinA", "MixinB"} <= combo)
        model.learn_one(node_type, sorted(combo), ok if rng.random() > 0.05 else not ok)
    return model, [c.pair for c in model.find_conflicts("effect")]


def test_a_pair_whose_members_mostly_fail_for_another_reason_is_judged_where_it_is_free():
    # Against its members' low rates (half of about 0.15) the pair's few successes, pulled up
    # by the prior from compute where it works, are not credibly lower; where it is free
    # (without Z) it fails nearly every time.
    pair = ("MixinA", "MixinB")
    model, found = _pair_beside_a_ban(HierarchyConfig(), 3)
    counts_only, found_by_counts = _pair_beside_a_ban(HierarchyConfig(free_bar=0.0), 3)
    assert counts_only.posteriors("effect")[pair][0] < 0.8 <= model.posteriors("effect")[pair][0]
    assert found == [pair] and found_by_counts == []
    # The free posterior is P(rate < 1/2) under a uniform prior: 8 free failures, no success.
    x = model.block * (1 + model.type_index["effect"]) + model.pair_feature(*pair)
    model.free_succ[x], model.free_fail[x] = 0.0, 8 * model.weight
    assert model.posteriors("effect")[pair][0] == pytest.approx(1 - 0.5 ** 9)
    model.free_succ[x] = model.free_fail[x] = 0.0  # none: the counts' posterior
    assert model.posteriors("effect")[pair][0] == counts_only.posteriors("effect")[pair][0]
