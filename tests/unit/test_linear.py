"""The hand-written logistic regression computes what river's LogisticRegression does, and
models pickled with river's learners and named counts load into numbered features."""

from __future__ import annotations

import pickle
from itertools import combinations

import pytest
from river import linear_model, optim

from agents.learning.features import PAIR_SEP, canonical, pair_key
from agents.learning.linear import Logistic, log_loss_gradient, sigmoid
from agents.learning.model import MixinModel, Progressive
from bench.mixin_stream import MixinStream


def _river(lr: float) -> linear_model.LogisticRegression:
    return linear_model.LogisticRegression(optimizer=optim.SGD(lr), intercept_lr=lr)


def _named(combo: tuple[str, ...]) -> dict[str, float]:
    x = dict.fromkeys(combo, 1.0)
    x.update((a + PAIR_SEP + b, 1.0) for a, b in combinations(combo, 2))
    return x


def test_same_weights_and_predictions_as_river_on_a_drifting_stream():
    numbers: dict[str, int] = {}
    ours, theirs = Logistic(1000, 0.2), _river(0.2)
    for i, (_, mixins, label, _) in enumerate(MixinStream(n=6000)):
        named = _named(canonical(mixins))
        x = [numbers.setdefault(k, len(numbers)) for k in named]
        assert ours.proba(x) == pytest.approx(theirs.predict_proba_one(named)[True], abs=1e-12), i
        ours.learn(x, label, ours.logit(x))
        theirs.learn_one(named, label)
    assert ours.intercept == pytest.approx(theirs.intercept, abs=1e-9)
    assert len(theirs.weights) == len(numbers)
    for k, w in theirs.weights.items():
        assert ours.weights[numbers[k]] == pytest.approx(w, abs=1e-9), k


def test_learn_without_a_logit_equals_learn_with_it():
    a, b = Logistic(3, 0.3), Logistic(3, 0.3)
    for x, y in [([0, 1], True), ([0], False), ([1, 2], True)] * 20:
        a.learn(x, y)
        b.learn(x, y, b.logit(x))
    assert a.weights == b.weights and a.intercept == b.intercept and a.weights[2] != 0.0


def test_tails_match_the_log_loss_limits():
    assert sigmoid(-31) == 0.0 and sigmoid(31) == 1.0 and sigmoid(0) == 0.5
    assert log_loss_gradient(True, 50.0) == pytest.approx(0.0, abs=1e-20)
    assert log_loss_gradient(True, -50.0) == -1.0 and log_loss_gradient(False, 50.0) == 1.0
    assert log_loss_gradient(True, 0.0) == -0.5


def test_copy_is_independent_and_takes_a_new_rate():
    a = Logistic(2, 0.2, weights=[1.0, 0.0], intercept=0.5)
    b = a.copy(lr=0.5)
    b.learn([0], False)
    assert list(a.weights) == [1.0, 0.0] and a.intercept == 0.5
    assert (b.lr, b.intercept_lr) == (0.5, 0.5) and b.weights[0] < 1.0
    with pytest.raises(ValueError, match="3 weights for 2 features"):
        Logistic(2, weights=[0.0, 0.0, 0.0])


def test_a_snapshot_from_before_numbered_features_loads_with_its_weights_and_counts():
    """Models pickled with river learners and counts keyed "A" / "A&B" keep what they learnt."""
    river_champion, counts = _river(0.2), {}
    for _, mixins, label, _ in MixinStream(n=800):
        named = _named(canonical(mixins))
        river_champion.learn_one(named, label)
        for k in named:
            counts[k] = counts.get(k, 0) + 1
    legacy = MixinModel("effect")
    state = legacy.__dict__.copy()
    for key in ("names", "index", "n_features"):
        del state[key]
    state.update(counts=counts, n_mixins=sum(PAIR_SEP not in k for k in counts),
                 champion=river_champion, challenger=_river(0.5))
    loaded = MixinModel.__new__(MixinModel)
    loaded.__setstate__(pickle.loads(pickle.dumps(state)))  # what unpickling the old model does

    assert isinstance(loaded.champion, Logistic)
    assert (loaded.challenger.lr, loaded.challenger.intercept_lr) == (0.5, 0.5)
    assert loaded.mixins == sorted(k for k in counts if PAIR_SEP not in k)
    for a, b in combinations(loaded.mixins, 2):
        assert loaded.observations(a, b) == counts.get(pair_key(a, b), 0)
        weight = loaded.champion.weights[loaded.pair_feature(a, b)]
        assert weight == river_champion.weights.get(pair_key(a, b), 0.0)
    loaded.challenger = None  # predictions from the champion, as river would give them
    combo = ("MixinCaching", "MixinRetry")
    assert loaded.predict_proba(combo) == pytest.approx(
        river_champion.predict_proba_one(_named(combo))[True], abs=1e-12)
    loaded.learn_one(list(combo), True)  # and it goes on learning
    assert loaded.observations(*combo) == counts.get(pair_key(*combo), 0) + 1


def test_trainer_learns_in_order_scores_the_model_in_use_and_learns_a_resent_result_once():
    from agents.learning.hierarchy import HierarchicalModel
    from agents.learning.registry import SHARED
    from agents.learning.results import Results
    from agents.learning.trainer import Trainer

    stream = [(nt, list(m), label) for nt, m, label, _ in MixinStream(n=3000)]
    old = HierarchicalModel()
    for nt, mixins, label in stream[:1000]:
        if nt != "compute":
            old.learn_one(nt, mixins, label)
    legacy = MixinModel("compute")  # a node type only a per-type snapshot knows
    trainer = Trainer({SHARED: old, "compute": legacy})
    results = [(nt, m, label, i) for i, (nt, m, label) in enumerate(stream)]
    trainer.learn(Results.of(results[:1500]))
    trainer.learn(Results.of(results[1400:]))  # 100 results sent again (same ids): learnt once
    assert trainer.duplicates == 100

    expected = HierarchicalModel()
    for nt, mixins, label in stream:
        expected.learn_one(nt, mixins, label)
    model = trainer.finish()
    assert model.updates == expected.updates == 3000
    assert model.weights == pytest.approx(expected.weights, abs=1e-12)  # same order, same model
    for nt, node in trainer.nodes.items():
        assert node.events == expected.by_type[nt].n == node.new.n
        assert node.new.correct == expected.by_type[nt].correct
        # the model in use, scored on every result as it serves them (prediction only)
        in_use = legacy.predict_proba if nt == "compute" else lambda m, nt=nt: old.predict_proba(nt, m)
        served = Progressive()
        for t, mixins, label in stream:
            if t == nt:
                served.update(in_use(mixins), label)
        assert (nt, node.old.n, node.old.correct) == (nt, served.n, served.correct)
        assert node.old.n == node.events
        assert node.old.log_loss == pytest.approx(served.log_loss, rel=1e-9)
    assert trainer.nodes["effect"].old_version == old.version and trainer.old_version == old.version
    assert trainer.nodes["compute"].old_version == legacy.version
