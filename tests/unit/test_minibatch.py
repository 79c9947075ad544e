"""Many results at once (replay's path) learn the same shared model as one at a time, drifts
included; a frozen model scores rows another model numbered as it serves them (no Kafka)."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest

from agents.learning.hierarchy import HierarchicalModel
from agents.learning.minibatch import FrozenScorer, MiniBatch, number_rows
from bench.mixin_stream import MixinStream

STATE = ("weights", "avg", "stamp", "counts", "succ", "fail", "free_succ", "free_fail", "intercepts",
         "avg_intercepts")


def _examples(n: int, **kw) -> list[tuple[str, list[str], bool]]:
    return [(t, m, label) for t, m, label, _ in MixinStream(n=n, **kw)]


def _same(a: HierarchicalModel, b: HierarchicalModel) -> None:
    for name in STATE:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-12, atol=1e-12, err_msg=name)
    for name in ("updates", "since", "drifts", "names", "node_types"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.weight == pytest.approx(b.weight, rel=1e-12)
    assert (a.err_fast, a.err_slow) == pytest.approx((b.err_fast, b.err_slow), rel=1e-12)
    assert (a.progressive.n, a.progressive.correct) == (b.progressive.n, b.progressive.correct)
    assert a.progressive.log_loss == pytest.approx(b.progressive.log_loss, rel=1e-9)
    assert {t: (s.n, s.correct) for t, s in a.by_type.items()} == \
        {t: (s.n, s.correct) for t, s in b.by_type.items()}


FLIPS = (5000, 10_000, 15_000)


@pytest.fixture(scope="module")
def one_at_a_time() -> tuple[list, list[float], HierarchicalModel]:
    examples = _examples(20_000, drift_at=None, flips=FLIPS)
    one = HierarchicalModel()
    return examples, [one.learn_one(*e) for e in examples], one


@pytest.mark.parametrize("split", ["every 7", "fetches of 2000", "one call", "at each drift"])
def test_learn_many_is_learn_one_result_after_result_through_several_drifts(split, one_at_a_time):
    # The rules change back and forth three times; a drift is found inside a call (the batch
    # learns again from the drift's row, weights halved there) or at a call's first row.
    examples, served, one = one_at_a_time
    assert len(one.drifts) == 3  # the test is about drifts
    step = {"every 7": 7, "fetches of 2000": 2000, "one call": len(examples), "at each drift": None}[split]
    cuts = list(range(0, len(examples), step)) if step else [0, *one.drifts]
    many = HierarchicalModel()
    batch = MiniBatch(many)
    ends = [*cuts[1:], len(examples)]
    got = np.concatenate([batch.learn(examples[a:b])[1] for a, b in zip(cuts, ends, strict=True)])
    batch.close()
    np.testing.assert_allclose(got, served, rtol=1e-12, atol=1e-12)
    _same(many, one)


def test_a_batched_model_goes_on_learning_one_at_a_time_and_snapshots_alike():
    examples = _examples(6000)
    one, many = HierarchicalModel(), HierarchicalModel()
    for e in examples[:4000]:
        one.learn_one(*e)
    batch = MiniBatch(many)
    batch.learn(examples[:4000])
    batch.close()
    for e in examples[4000:]:
        assert many.learn_one(*e) == pytest.approx(one.learn_one(*e), rel=1e-12)
    _same(pickle.loads(pickle.dumps(many)), one)


def test_node_types_and_mixins_beyond_the_models_room_and_repeated_names_learn_alike():
    rng = random.Random(2)
    examples = [(t, m + [rng.choice(m)], label) for t, m, label in _examples(3000)]  # a name twice
    one = HierarchicalModel(max_node_types=2, max_mixins=12)
    many = HierarchicalModel(max_node_types=2, max_mixins=12)
    for e in examples:
        one.learn_one(*e)
    batch = MiniBatch(many)
    for i in range(0, len(examples), 500):
        batch.learn(examples[i:i + 500])
    batch.close()
    assert len(many.node_types) == 2 and len(many.by_type) == 4 and len(many.names) == 12
    assert len({m for _, combo, _ in examples for m in combo}) > 12
    _same(many, one)


def test_a_frozen_model_scores_rows_numbered_by_another_as_it_serves_them():
    old = HierarchicalModel()
    for t, m, label in _examples(5000):
        if t != "compute":
            old.learn_one(t, m, label)
    rng = random.Random(5)
    # Another model numbers the mixins in another order, and meets names and a node type
    # the old one never saw.
    names = sorted(old.names) + ["MixinNever", "MixinOther"]
    rng.shuffle(names)
    examples = [(rng.choice(("effect", "compute", "reducer")), rng.choices(names, k=rng.randint(1, 6)), True)
                for _ in range(500)]  # with repeats
    new = HierarchicalModel()
    rows = number_rows(new, *zip(*examples, strict=True))
    assert new.names != old.names
    got = FrozenScorer(old).predict_many(new, rows)
    assert got == pytest.approx([old.predict_proba(t, m) for t, m, _ in examples], rel=1e-12)
