"""Per-node-type mixin compatibility model, learned one result at a time.

The learner is logistic regression by SGD over single mixins and mixin pairs (see linear.py:
river's LogisticRegression, computed the same way without its generic overhead) with a
learning rate of 0.2 (river's default 0.01 is far too slow for this stream; 0.2 beat
0.1, 0.3, AdaGrad, Adam and RMSProp on the benchmark stream). Around it:

- evidence: how often each feature was seen, so a prediction's confidence says how much data
  stands behind that combination, not only how far the probability is from 0.5;
- drift: ADWIN watches the champion's 0/1 error; when it fires *and* the error went up (ADWIN
  also fires when error falls, e.g. during warm-up), a challenger starts: a copy of the champion
  that learns with a boosted rate, so rules that still hold are kept while changed ones are
  re-learnt quickly. Both learn every event; predictions come from whichever has the lower
  recent error, and the challenger replaces the champion once it has been better for long
  enough (or is dropped when it never is);
- conflicts: pairs the model says fail together although each mixin can succeed without the
  other, found by probing the model in each mixin's best context (see `find_conflicts`);
- bounded size: at most `max_mixins` distinct names are learnt (outside systems may send any
  name); later unknown names are reported as unseen and carry no weight.

Features are numbered: the i-th mixin learnt is feature i, the pair of mixins i < j is feature
`max_mixins + i * max_mixins + j`; weights and observation counts are flat arrays over them.
"""

from __future__ import annotations

import math
import uuid
from array import array
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
from river import drift

from agents.learning.features import PAIR_SEP, canonical, feature_numbers, number_mixins, pair_number
from agents.learning.linear import Logistic, sigmoid
from agents.stats import RecentIds

# How many result ids a model remembers to learn a re-sent result once (8 bytes each).
LEARNT_IDS = 4096
P_MIN = 1e-6




@dataclass
class Conflict:
    pair: tuple[str, str]
    p_pair: float
    p_a: float
    p_b: float
    pair_weight: float
    observations: int
    context: tuple[str, ...] = ()
    posterior: float | None = None  # P(the pair fails beyond its members), from the evidence

    def as_dict(self) -> dict[str, Any]:
        out = {"pair": list(self.pair), "p_pair": round(self.p_pair, 4), "p_a": round(self.p_a, 4),
               "p_b": round(self.p_b, 4), "pair_weight": round(self.pair_weight, 4),
               "observations": self.observations, "context": list(self.context)}
        if self.posterior is not None:
            out["posterior"] = round(self.posterior, 4)
        return out


@dataclass
class Prediction:
    node_type: str
    mixins: list[str]
    score: float
    confidence: float
    evidence: int
    conflicts: list[dict[str, Any]]
    unseen: list[str]
    risky: bool
    model_version: int
    updates: int

    def compatibility(self) -> dict[str, Any]:
        """The fields of schemas.events.Compatibility."""
        out = self.as_dict()
        del out["node_type"], out["mixins"]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"node_type": self.node_type, "mixins": self.mixins, "score": round(self.score, 4),
                "confidence": round(self.confidence, 4), "evidence": self.evidence,
                "conflicts": self.conflicts, "unseen_mixins": self.unseen, "risky": self.risky,
                "model_version": self.model_version, "updates": self.updates}


@dataclass
class Progressive:
    """Test-then-train score: each event is predicted before the model learns from it."""
    n: int = 0
    correct: int = 0
    log_loss_sum: float = 0.0

    def update(self, p: float, y: bool) -> None:
        self.n += 1
        self.correct += (p >= 0.5) == y
        q = min(max(p if y else 1 - p, P_MIN), 1.0)
        self.log_loss_sum -= math.log(q)

    def update_many(self, p: np.ndarray, y: np.ndarray) -> None:
        """`update` for each (probability, label) of two arrays, in order."""
        self.n += len(p)
        self.correct += int(np.count_nonzero((p >= 0.5) == y))
        q = np.clip(np.where(y, p, 1 - p), P_MIN, 1.0)
        self.log_loss_sum -= float(np.log(q).sum())

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def log_loss(self) -> float:
        return self.log_loss_sum / self.n if self.n else 0.0


@dataclass
class DriftConfig:
    enabled: bool = True
    adwin_delta: float = 0.002
    boost_lr: float = 0.5          # the challenger's learning rate
    fast_alpha: float = 0.02       # EWMA of recent error, compared between the two learners
    slow_alpha: float = 0.002      # long-run error: "did the error go up?"
    lead_after: int = 30           # challenger may answer once it has learnt this many events
    promote_after: int = 100       # ... and replaces the champion if still better after these
    give_up_after: int = 3000


@dataclass
class MixinModel:
    node_type: str
    lr: float = 0.2
    max_mixins: int = 128
    confidence_k: float = 10.0     # evidence at which support reaches 1/2
    drift_cfg: DriftConfig = field(default_factory=DriftConfig)

    def __post_init__(self) -> None:
        k = self.max_mixins
        self.n_features = k + k * k
        self.champion = Logistic(self.n_features, self.lr)
        self.challenger: Logistic | None = None
        self.names: list[str] = []        # mixin names by feature number, in the order learnt
        self.index: dict[str, int] = {}   # ... and back
        self.counts = [0] * self.n_features  # results learnt that held each feature
        self.updates = 0
        self.version = 1
        self.progressive = Progressive()
        self.adwin = drift.ADWIN(delta=self.drift_cfg.adwin_delta)
        self.err_champ_fast = 0.5
        self.err_champ_slow = 0.5
        self.err_chall_fast = 0.5
        self.chall_n = 0
        self.chall_better_for = 0
        self.drifts: list[int] = []
        self.promotions: list[int] = []
        self.conflicts: list[Conflict] = []
        # Highest offset learnt per source topic-partition, set by the stream that feeds the
        # model: a snapshot says exactly which results it holds, so a replay skips them.
        self.applied: dict[str, int] = {}
        # The last results learnt, by id: a result rendered again after its producer crashed
        # (same id, another record) is learnt once. 64-bit id prefixes keep snapshots small.
        self.learnt = RecentIds(LEARNT_IDS)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "counts": array("q", self.counts)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Snapshots from before numbered features (counts by name, river learners) carry over."""
        if isinstance(state.get("counts"), dict):
            state = _from_named(state)
        state["counts"] = list(state["counts"])
        self.__dict__.update(state)

    def seen_result(self, result_id: uuid.UUID) -> bool:
        """True when this result (by id) is among the last LEARNT_IDS learnt; else remember it."""
        return self.seen_id(result_id.int >> 64)

    def seen_id(self, id_prefix: int) -> bool:
        """`seen_result` by the id's first 64 bits (what the model keeps)."""
        if not hasattr(self, "learnt"):  # a snapshot from before ids were kept
            self.learnt = RecentIds(LEARNT_IDS)
        return self.learnt.seen(id_prefix)

    # -------------------------------------------------------------- features

    @property
    def n_mixins(self) -> int:
        return len(self.names)

    @property
    def mixins(self) -> list[str]:
        return sorted(self.names)

    def features(self, ids: list[int]) -> list[int]:
        """Features of a combination given as sorted, distinct mixin numbers."""
        return feature_numbers(ids, self.max_mixins)

    def pair_feature(self, a: str, b: str) -> int | None:
        return pair_number(self.index, self.max_mixins, a, b)

    def observations(self, a: str, b: str | None = None) -> int:
        """Results learnt that held mixin `a` (and `b`, when given)."""
        f = self.index.get(a) if b is None else self.pair_feature(a, b)
        return 0 if f is None else self.counts[f]

    def pair_weight(self, a: str, b: str) -> float:
        f = self.pair_feature(a, b)
        return 0.0 if f is None else self._active().weights[f]

    def _known(self, combo: tuple[str, ...]) -> tuple[tuple[str, ...], list[str]]:
        known = tuple(m for m in combo if m in self.index)
        unseen = [m for m in combo if m not in self.index]
        return known, unseen

    def _ids(self, known: tuple[str, ...] | list[str]) -> list[int]:
        index = self.index
        return sorted(index[m] for m in known)

    def _learnt_ids(self, mixins: list[str] | tuple[str, ...]) -> list[int]:
        """Sorted numbers of the combination's mixins, numbering new ones; names beyond
        `max_mixins` are dropped (in name order, like `canonical`)."""
        return number_mixins(self.index, self.names, mixins, self.max_mixins)

    # -------------------------------------------------------------- learning

    def _challenger_leads(self) -> bool:
        return (self.challenger is not None and self.chall_n >= self.drift_cfg.lead_after
                and self.err_chall_fast < self.err_champ_fast)

    def _active(self) -> Logistic:
        return self.challenger if self._challenger_leads() else self.champion  # type: ignore[return-value]

    def learn_one(self, mixins: list[str] | tuple[str, ...], success: bool) -> float:
        """Learn one result; returns the probability predicted before learning (progressive)."""
        x = self.features(self._learnt_ids(mixins))
        y = bool(success)
        champion, challenger = self.champion, self.challenger
        z_champ = champion.logit(x)
        p_champ = sigmoid(z_champ)
        if challenger is None:
            p_active, z_chall = p_champ, None
        else:
            z_chall = challenger.logit(x)
            p_active = sigmoid(z_chall) if self._challenger_leads() else p_champ
        self.progressive.update(p_active, y)

        self._watch_drift((p_champ >= 0.5) != y)
        challenger = self.challenger  # may have just started: a copy of the champion
        if challenger is not None:
            if z_chall is None:
                z_chall = z_champ
            challenger.learn(x, y, z_chall)
            champion.learn(x, y, z_champ)
            self._race((sigmoid(z_chall) >= 0.5) != y, (p_champ >= 0.5) != y)
        else:
            champion.learn(x, y, z_champ)
        counts = self.counts
        for i in x:
            counts[i] += 1
        self.updates += 1
        return p_active

    def _watch_drift(self, err: bool) -> None:
        cfg = self.drift_cfg
        e = float(err)
        self.err_champ_fast += cfg.fast_alpha * (e - self.err_champ_fast)
        self.err_champ_slow += cfg.slow_alpha * (e - self.err_champ_slow)
        if not cfg.enabled:
            return
        self.adwin.update(e)
        if self.adwin.drift_detected and self.err_champ_fast > self.err_champ_slow:
            self.drifts.append(self.updates)
            if self.challenger is None:
                self.challenger = self.champion.copy(lr=cfg.boost_lr)
                self.err_chall_fast = self.err_champ_fast
                self.chall_n = 0
                self.chall_better_for = 0

    def _race(self, err_chall: bool, err_champ: bool) -> None:
        cfg = self.drift_cfg
        self.err_chall_fast += cfg.fast_alpha * (float(err_chall) - self.err_chall_fast)
        self.chall_n += 1
        self.chall_better_for = self.chall_better_for + 1 if self.err_chall_fast < self.err_champ_fast else 0
        if self.chall_better_for >= cfg.promote_after:
            # The challenger wins: it becomes the champion, back at the normal learning rate.
            assert self.challenger is not None
            self.champion = self.challenger
            self.champion.lr = self.champion.intercept_lr = self.lr
            self.err_champ_fast = self.err_champ_slow = self.err_chall_fast
            self.challenger = None
            self.promotions.append(self.updates)
        elif self.chall_n >= cfg.give_up_after and self.chall_better_for == 0:
            self.challenger = None

    # -------------------------------------------------------------- prediction

    def predict_proba(self, mixins: list[str] | tuple[str, ...]) -> float:
        index = self.index
        ids = sorted({index[m] for m in mixins if m in index})
        return self._active().proba(self.features(ids))

    def _p(self, known: tuple[str, ...]) -> float:
        return self._active().proba(self.features(self._ids(known)))

    def evidence(self, known: tuple[str, ...]) -> int:
        """Least-seen feature of the combination: the evidence behind its weakest part."""
        counts = self.counts
        return min((counts[f] for f in self.features(self._ids(known))), default=0)

    def predict(self, mixins: list[str] | tuple[str, ...]) -> Prediction:
        combo = canonical(mixins)
        known, unseen = self._known(combo)
        p = self._p(known)
        n = 0 if unseen else self.evidence(known)
        support = n / (n + self.confidence_k)
        certainty = abs(2 * p - 1)
        confidence = support * (0.5 + 0.5 * certainty)
        members = set(combo)
        found = [c.as_dict() for c in self.conflicts if c.pair[0] in members and c.pair[1] in members]
        return Prediction(
            node_type=self.node_type, mixins=list(combo), score=p, confidence=confidence,
            evidence=n, conflicts=found, unseen=unseen, risky=p < 0.5 or bool(found),
            model_version=self.version, updates=self.updates)

    # -------------------------------------------------------------- conflicts

    def find_conflicts(self, min_observations: int = 3, threshold: float = 0.5,
                       min_weight: float = 1.0) -> list[Conflict]:
        """Pairs that fail together although each mixin succeeds without the other.

        Probing with {a}, {b}, {a,b} alone misses pairs whose members need a companion (a mixin
        that fails alone looks 'bad' and hides its conflicts), so each mixin is probed in its
        best context: alone or with the one companion that makes it most likely to succeed.
        """
        names = self.mixins
        best: dict[str, tuple[float, tuple[str, ...]]] = {}
        for a in names:
            alone = self._p((a,))
            if alone > threshold:
                best[a] = (alone, ())
                continue
            best[a] = max(((self._p(canonical((a, c))), (c,)) for c in names if c != a),
                          key=lambda t: t[0], default=(alone, ()))
        weights = self._active().weights
        found = []
        for a, b in combinations(names, 2):
            f = self.pair_feature(a, b)
            observations = self.counts[f]  # type: ignore[index]
            if observations < min_observations:
                continue
            (p_a, ctx_a), (p_b, ctx_b) = best[a], best[b]
            if p_a <= threshold or p_b <= threshold:
                continue
            weight = weights[f]  # type: ignore[index]
            if weight > -min_weight:  # the pair itself must carry the failure
                continue
            # Each mixin in the context where it succeeds: none when it succeeds alone.
            ctx = tuple(c for c in dict.fromkeys(ctx_a + ctx_b) if c not in (a, b))
            p_ab = self._p(canonical((a, b) + ctx))
            if p_ab < threshold:
                found.append(Conflict((a, b), p_ab, p_a, p_b, weight,
                                      observations, ctx))
        self.conflicts = found
        return found

    def status(self) -> dict[str, Any]:
        return {"node_type": self.node_type, "model_version": self.version, "updates": self.updates,
                "mixins": len(self.mixins), "progressive_accuracy": round(self.progressive.accuracy, 4),
                "progressive_log_loss": round(self.progressive.log_loss, 4),
                "drifts": len(self.drifts), "challenger": self.challenger is not None,
                "conflicts": len(self.conflicts)}


def _from_named(state: dict[str, Any]) -> dict[str, Any]:
    """A model pickled when counts were keyed by name ("A", "A&B") and the learners were river
    LogisticRegressions (weights keyed the same way), in today's numbered layout."""
    k = state.get("max_mixins", 128)
    named_counts: dict[str, int] = state.pop("counts")
    state.pop("n_mixins", None)
    names = sorted(m for m in named_counts if PAIR_SEP not in m)[:k]
    index = {m: i for i, m in enumerate(names)}

    def number(key: str) -> int | None:
        if PAIR_SEP not in key:
            return index.get(key)
        a, b = key.split(PAIR_SEP, 1)
        i, j = index.get(a), index.get(b)
        return None if i is None or j is None else k + min(i, j) * k + max(i, j)

    counts = [0] * (k + k * k)
    for key, n in named_counts.items():
        if (f := number(key)) is not None:
            counts[f] = n

    def learner(old: Any) -> Logistic | None:
        if old is None:
            return None
        out = Logistic(k + k * k, float(old.optimizer.learning_rate), float(old.intercept_lr.get(0)),
                       intercept=float(old.intercept))
        for key, w in old.weights.items():
            if (f := number(key)) is not None:
                out.weights[f] = w
        return out

    state.update(names=names, index=index, counts=counts, n_features=k + k * k,
                 champion=learner(state.get("champion")), challenger=learner(state.get("challenger")))
    return state
