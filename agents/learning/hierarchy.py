"""One mixin model for every node type: what holds everywhere is learnt from every result.

Per-node-type models each see a quarter of the stream, so a rule that holds for all node types
is learnt four times over, each time from a quarter of the data, and rare pairs are seen too
seldom by any of them. Here one logistic regression holds

- shared weights for each mixin and each pair, updated by every result, and
- per-node-type deviations of the same features, updated only by that type's results, at a
  lower learning rate (the stronger prior: a deviation grows only when the shared weight
  cannot explain that type),

and a result of type t is scored by `intercept + intercept_t + sum(shared) + sum(deviation_t)`.
A rule shared by all types lives in the shared weights; a rule of one type (a mixin banned for
compute only) in that type's deviations.

Learning rate: `lr × (1 + boost × exp(-(n - since) / boost_tau))`: high at the start and again
after a drift (ADWIN on the 0/1 error fires while the recent error is above the long-run one),
then settling to the base rate, whose small steps keep the weights from jittering with noisy
labels. A drift also halves every weight: measured on the bench's stream, that brings accuracy
back to 0.95 in 5,000 results instead of 7,000 (a challenger copy, as the per-type models of an
earlier release used, or a fresh learner were slower: old weights fight the new rules, a fresh
one re-learns all).

Predictions (and the progressive score) read an exponential average of the weights
(`avg_rate` 0.01 per result, kept lazily per feature), which cancels the jitter that noisy
labels give SGD steps: 0.9538 → 0.956 progressive accuracy on the bench's stream. Drift is
watched on the learner's own (unaveraged) error, and a drift restarts the average.

The served probability also reads the item rates of items.py: a combination holding a
banned mixin, a forbidden pair or a mixin without the one it needs is served at most that
item's recent success rate, any other with its odds of success times `clean_odds`. They
follow a drift within a few results of each item, where the weights take thousands
(`learn_one` judges the combination, then learns the result into them). The conflict probe
reads the served probability too: with the weights alone, worst-world conflict precision and
recall on the held-out worlds were 0.917 and 0.808; with it, 0.923 and 0.846.

Conflicts come from two sources that must agree (`find_conflicts`): the model's contextual
probe (the pair fails where each member succeeds), and the evidence: aged success/failure
counts per node type for every mixin and pair (the observations `mixin_compatibility_matrix`
holds, with each result's weight halving every `half_life` results; cleared at a detected
drift), tested with a Beta-binomial posterior once the pair has `min_evidence` of it: the
pair's success rate is credibly below half the rate of either member without the other. The
pair's prior borrows `prior_strength` pseudo-observations from all node types pooled. The
conflict settings were chosen on generated worlds (bench/worlds.py, seeds 1-12: clearing the
evidence at a drift took the worst recall from 0.35 to 0.81 on the held-out seeds) and are
reported on others; a conflict that stops holding after a drift is withdrawn with the
evidence it stood on.

Each pair also keeps the same aged counts over the results where it was free
(items.free_mask: the combination without either member holds nothing the item rates judge
failing). A pair met almost only beside a real conflict fails together as one does, so it
passes both sources (a confound): a pair that succeeds more than it fails where it is free is
not reported (`works_where_free`). A pair whose members mostly fail for other reasons cannot
be credibly below half their rates: it is credible too when it is credibly under `free_bar`
where it is free. Held-out worlds: worst precision 0.923 -> 0.969, recall 0.846 -> 0.865
(with the item rates' failing line at 0.18).
"""

from __future__ import annotations

import math
import uuid
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
from river import drift
from scipy.special import betainc

from agents.learning import items
from agents.learning.features import canonical, feature_numbers, number_mixins, pair_number
from agents.learning.linear import log_loss_gradient, sigmoid
from agents.learning.model import LEARNT_IDS, Conflict, Prediction, Progressive
from agents.stats import RecentIds

# Rescale the growing evidence weights before they overflow a double.
_RESCALE_AT = 1e200


@dataclass
class HierarchyConfig:
    lr: float = 0.08             # shared weights, once settled
    deviation_lr: float = 0.05   # per-node-type deviations: the stronger prior
    boost: float = 3.0           # extra rate at the start and after a drift ...
    boost_tau: float = 3000.0    # ... fading with this many results
    drift_shrink: float = 0.5    # weights are scaled by this when a drift is detected
    avg_rate: float = 0.01       # predictions use weights averaged at this rate (1: no averaging)
    adwin_delta: float = 0.01
    fast_alpha: float = 0.02     # EWMA of recent error ...
    slow_alpha: float = 0.002    # ... against the long-run error: "did the error go up?"
    half_life: float = 6000.0    # results after which a result's evidence weighs half
    prior_strength: float = 3.0  # pseudo-observations a pair borrows from all node types
    ratio: float = 0.5           # conflict: pair rate below ratio × the members' rates ...
    credibility: float = 0.8     # ... with this posterior probability
    min_observations: int = 3
    min_evidence: float = 10.0   # ... and this much aged evidence of the pair since the last drift
    probe_threshold: float = 0.7  # the model's probe: members above it, the pair below it
    drift_evidence_keep: float = 0.0  # evidence kept at a drift (0: conflicts from what follows)
    free_bar: float = 0.5        # ... or: the pair succeeds under this rate where it is free
    confidence_k: float = 10.0   # evidence at which a prediction's support reaches 1/2
    # The item rates (items.py), chosen on bench/worlds.py's seeds 1-12 (and 25-36: item_bad_rate):
    item_memory: float = 10.0    # an item's rate is over about its last this many results
    item_min_weight: float = 4.0  # recent results an item needs before it is judged
    item_bad_rate: float = 0.18  # an item below this smoothed rate is failing
    clean_odds: float = 4.0      # odds of success times this when no item fails


@dataclass
class HierarchicalModel:
    max_mixins: int = 64
    max_node_types: int = 15
    cfg: HierarchyConfig = field(default_factory=HierarchyConfig)

    def __post_init__(self) -> None:
        k = self.max_mixins
        self.block = k + k * k
        size = self.block * (1 + self.max_node_types)
        self.weights = [0.0] * size
        self.intercepts = [0.0] * (1 + self.max_node_types)
        # Predictions read an exponential average of the weights: the SGD steps that noisy
        # labels cause cancel out in it. Kept lazily: `avg[i]` is averaged over the results
        # before number `stamp[i]` (a weight does not move between its results, so the
        # average is brought up to result n by n - stamp[i] steps towards the same weight).
        self.avg = [0.0] * size
        self.stamp = [0] * size
        self.avg_intercepts = [0.0] * (1 + self.max_node_types)
        self.counts = [0] * size       # results learnt holding each feature (per type blocks)
        self.succ = [0.0] * size       # aged evidence: successes ...
        self.fail = [0.0] * size       # ... and failures, per node type and feature
        # The same for pairs, counted only where the pair is free (items.free_mask: nothing
        # else the item rates know of fails in the result): what tells a conflict from a pair
        # met beside one.
        self.free_succ = [0.0] * size
        self.free_fail = [0.0] * size
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self.node_types: list[str] = []
        self.type_index: dict[str, int] = {}
        self.updates = 0
        self.version = 1
        self.since = 0                 # result number of the last (re)start of the boost
        self.weight = 1.0              # evidence weight of the next result (grows; see _age)
        self.progressive = Progressive()
        self.by_type: dict[str, Progressive] = {}
        self.adwin = drift.ADWIN(delta=self.cfg.adwin_delta)
        self.err_fast = self.err_slow = 0.5
        self.drifts: list[int] = []
        self.conflicts: dict[str, list[Conflict]] = {}
        self.applied: dict[str, int] = {}
        self.learnt = RecentIds(LEARNT_IDS)
        self.item_n, self.item_s = items.empty(self.max_mixins, self.max_node_types)

    # -------------------------------------------------------------- snapshots

    def __getstate__(self) -> dict[str, Any]:
        """Weights and evidence sparse (a few thousand of the ~66,000 features are ever set)."""
        state = dict(self.__dict__)
        for name, code in (("weights", "d"), ("counts", "q"), ("succ", "d"), ("fail", "d"), ("avg", "d"),
                           ("stamp", "q"), ("free_succ", "d"), ("free_fail", "d")):
            values = np.asarray(state.pop(name), dtype=np.float64 if code == "d" else np.int64)
            used = np.flatnonzero(values)
            kept, at = array(code), array("l")
            kept.frombytes(values[used].tobytes())
            at.frombytes(used.astype(at.typecode).tobytes())
            state[name] = (len(values), at, kept)
        for name in ("item_n", "item_s"):
            values = state.pop(name)
            used = np.flatnonzero(values)
            state[name] = (len(values), used.astype(np.int64), values[used])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name in ("free_succ", "free_fail"):  # a snapshot from before the free evidence
            state.setdefault(name, (state["succ"][0], (), ()))
        for name, zero in (("weights", 0.0), ("counts", 0), ("succ", 0.0), ("fail", 0.0), ("avg", 0.0),
                           ("stamp", 0), ("free_succ", 0.0), ("free_fail", 0.0)):
            size, used, values = state[name]
            dense = [zero] * size
            for i, v in zip(used, values, strict=True):
                dense[i] = v
            state[name] = dense
        for name in ("item_n", "item_s"):
            size = items.stride(state["max_mixins"]) * state["max_node_types"]
            dense_items = np.zeros(size)
            if name in state:  # a snapshot from before the item rates: they start empty
                _, used_items, values_items = state[name]
                dense_items[used_items] = values_items
            state[name] = dense_items
        self.__dict__.update(state)

    def seen_result(self, result_id: uuid.UUID) -> bool:
        return self.learnt.seen(result_id.int >> 64)

    def seen_ids(self, id_prefixes: Sequence[int | None]) -> list[bool]:
        """For each result in order, by its id's first 64 bits: learnt already? (among the
        last LEARNT_IDS learnt; otherwise it is remembered). None: a result without an id."""
        return self.learnt.seen_many(id_prefixes)

    # -------------------------------------------------------------- features

    @property
    def mixins(self) -> list[str]:
        return sorted(self.names)

    def _type(self, node_type: str, learn: bool) -> int | None:
        t = self.type_index.get(node_type)
        if t is None and learn and len(self.node_types) < self.max_node_types:
            t = self.type_index[node_type] = len(self.node_types)
            self.node_types.append(node_type)
        return t

    def _ids(self, mixins: list[str] | tuple[str, ...], learn: bool) -> list[int]:
        if learn:
            return number_mixins(self.index, self.names, mixins, self.max_mixins)
        return sorted({self.index[m] for m in mixins if m in self.index})

    def _features(self, ids: list[int]) -> list[int]:
        return feature_numbers(ids, self.max_mixins)

    def pair_feature(self, a: str, b: str) -> int | None:
        return pair_number(self.index, self.max_mixins, a, b)

    def _features_of(self, t: int | None, base: list[int]) -> list[int]:
        """Shared features, then the node type's deviations of them."""
        if t is None:  # more node types than the model has room for: shared weights only
            return base
        off = self.block * (1 + t)
        return base + [off + f for f in base]

    def _logit(self, t: int | None, base: list[int]) -> float:
        """The served logit: averaged weights, as they stand now (nothing is written)."""
        w, avg, stamp, n = self.weights, self.avg, self.stamp, self.updates
        keep = 1.0 - self.cfg.avg_rate
        z = self.avg_intercepts[0] + (self.avg_intercepts[1 + t] if t is not None else 0.0)
        for f in self._features_of(t, base):
            age = n - stamp[f]
            if age == 0:
                z += avg[f]
            else:
                wf = w[f]
                z += wf + (avg[f] - wf) * keep ** age
        return z

    # -------------------------------------------------------------- learning

    def learn_one(self, node_type: str, mixins: list[str] | tuple[str, ...], success: bool) -> float:
        """Learn one result; returns the probability predicted before learning (progressive),
        from the averaged weights."""
        t = self._type(node_type, learn=True)
        ids = self._ids(mixins, learn=True)
        base = self._features(ids)
        feats = self._features_of(t, base)
        y = bool(success)
        w, intercepts, avg, stamp, n = self.weights, self.intercepts, self.avg, self.stamp, self.updates
        rate = self.cfg.avg_rate
        keep = 1.0 - rate
        for f in feats:  # bring the averages of this result's features up to now
            s = stamp[f]
            if s != n:
                wf = w[f]
                avg[f] = wf + (avg[f] - wf) * keep ** (n - s)
        avg_intercepts = self.avg_intercepts
        z = intercepts[0] + sum(map(w.__getitem__, feats))
        served = avg_intercepts[0] + sum(map(avg.__getitem__, feats))
        if t is not None:
            z += intercepts[1 + t]
            served += avg_intercepts[1 + t]
        p, free = self._learn_items(sigmoid(served), t, ids, y)
        self.progressive.update(p, y)
        scored = self.by_type.get(node_type)
        if scored is None:
            scored = self.by_type[node_type] = Progressive()
        scored.update(p, y)
        self._watch_drift((sigmoid(z) >= 0.5) != y)  # the learner's own error shows drift first

        cfg = self.cfg
        boost = 1.0 + cfg.boost * math.exp(-(self.updates - self.since) / cfg.boost_tau)
        g = log_loss_gradient(y, z) * boost
        step = cfg.lr * g
        # a drift may have just rescaled the weights and restarted the averages
        w, avg, stamp = self.weights, self.avg, self.stamp
        intercepts, avg_intercepts = self.intercepts, self.avg_intercepts
        intercepts[0] -= step
        avg_intercepts[0] += rate * (intercepts[0] - avg_intercepts[0])
        for f in base:
            w[f] -= step
        if t is not None:
            dstep = cfg.deviation_lr * g
            intercepts[1 + t] -= dstep
            avg_intercepts[1 + t] += rate * (intercepts[1 + t] - avg_intercepts[1 + t])
            counts, evidence, weight = self.counts, self.succ if y else self.fail, self.weight
            for i in feats[len(base):]:
                w[i] -= dstep
                counts[i] += 1
                evidence[i] += weight
            if free:
                self._free_evidence(t, ids, free, y)
        n += 1
        for f in feats:  # averaged through this result
            avg[f] += rate * (w[f] - avg[f])
            stamp[f] = n
        self._age()
        self.updates += 1
        return p

    def _overlaid(self, p: float, t: int | None, ids: list[int]) -> float:
        """`p` with the verdict of the item rates of the combination (its sorted, distinct
        mixin numbers `ids`; items.overlay)."""
        if t is None:  # more node types than the model has room for
            return p
        cfg = self.cfg
        worst = items.judge_one(self.item_n, self.item_s, items.stride(self.max_mixins) * t,
                                np.array(ids, dtype=np.int64), self.max_mixins, cfg.item_min_weight,
                                cfg.item_bad_rate)
        return items.overlay(p, worst, cfg.clean_odds)

    def _learn_items(self, p: float, t: int | None, ids: list[int], y: bool) -> tuple[float, int]:
        """`_overlaid`, and the combination's free mask (items.free_mask), both before the
        result is learnt into the item rates."""
        if t is None:
            return p, 0
        cfg = self.cfg
        worst, free = items.learn_one(self.item_n, self.item_s, items.stride(self.max_mixins) * t,
                                      np.array(ids, dtype=np.int64), self.max_mixins,
                                      items.keep_of(cfg.item_memory), y, cfg.item_min_weight,
                                      cfg.item_bad_rate)
        return items.overlay(p, worst, cfg.clean_odds), free

    def _free_evidence(self, t: int, ids: list[int], free: int, y: bool) -> None:
        """The result's weight into the free evidence of each pair whose members are both
        set in the free mask (`ids`: the sorted, distinct mixin numbers the mask numbers)."""
        k, weight = self.max_mixins, self.weight
        evidence = self.free_succ if y else self.free_fail
        pairs = self.block * (1 + t) + k
        dropped = [a for i, a in enumerate(ids) if free >> i & 1]
        for i, a in enumerate(dropped):
            for b in dropped[i + 1:]:
                evidence[pairs + a * k + b] += weight

    def drift_seen(self, err: float) -> bool:
        """Watch one result's error (0 or 1, from the unaveraged weights): True when ADWIN finds
        a change while the recent error is above the long-run one (the rules changed)."""
        cfg = self.cfg
        self.err_fast += cfg.fast_alpha * (err - self.err_fast)
        self.err_slow += cfg.slow_alpha * (err - self.err_slow)
        self.adwin.update(err)
        return self.adwin.drift_detected and self.err_fast > self.err_slow

    def _watch_drift(self, err: bool) -> None:
        if self.drift_seen(float(err)):
            # Rules changed: halve every weight (what still holds is re-learnt within a few
            # hundred results, at the boosted rate; what no longer holds fades that much faster)
            self.drifts.append(self.updates)
            self.since = self.updates
            shrink = self.cfg.drift_shrink
            self.weights = [w * shrink for w in self.weights]
            self.intercepts = [w * shrink for w in self.intercepts]
            # The average restarts from the shrunk weights: the old rules are not averaged in.
            self.avg = list(self.weights)
            self.avg_intercepts = list(self.intercepts)
            self.stamp = [self.updates] * len(self.weights)
            # Conflicts from the evidence of the rules now in force: what was seen before fades
            # (kept at `drift_evidence_keep`), or a pair that became a conflict waits for its
            # new failures to outweigh its old successes at the half-life's pace.
            self._scale_evidence(self.cfg.drift_evidence_keep)

    def _age(self) -> None:
        """Each result's evidence weighs 2^(1/half_life) times the previous one's, which is the
        same as every older result's weight halving each `half_life` results; the stored sums
        are scaled down before they overflow."""
        growth = self.__dict__.get("_growth")
        if growth is None:  # 2^(1/half_life), computed once
            growth = self._growth = 2.0 ** (1.0 / self.cfg.half_life)
        self.weight *= growth
        if self.weight > _RESCALE_AT:
            self._scale_evidence(1.0 / self.weight)
            self.weight = 1.0

    def _scale_evidence(self, factor: float) -> None:
        """Every aged count, the free ones too, times `factor` (a drift; a rescale)."""
        for name in ("succ", "fail", "free_succ", "free_fail"):
            setattr(self, name, [v * factor for v in getattr(self, name)])

    # -------------------------------------------------------------- prediction

    def predict_proba(self, node_type: str, mixins: list[str] | tuple[str, ...]) -> float:
        """The served probability: the averaged weights' with the item rates' verdict."""
        ids = self._ids(mixins, learn=False)
        t = self._type(node_type, learn=False)
        return self._overlaid(sigmoid(self._logit(t, self._features(ids))), t, ids)

    def predict(self, node_type: str, mixins: list[str] | tuple[str, ...]) -> Prediction:
        combo = canonical(mixins)
        index = self.index
        unseen = [m for m in combo if m not in index]
        t = self._type(node_type, learn=False)
        ids = sorted(index[m] for m in combo if m in index)
        base = self._features(ids)
        p = self._overlaid(sigmoid(self._logit(t, base)), t, ids)
        if unseen or t is None:
            n = 0
        else:  # least-seen feature of the combination for this node type
            off, counts = self.block * (1 + t), self.counts
            n = min((counts[off + f] for f in base), default=0)
        support = n / (n + self.cfg.confidence_k)
        confidence = support * (0.5 + 0.5 * abs(2 * p - 1))
        conflicts = self.conflicts.get(node_type)
        found = [c.as_dict() for c in conflicts if c.pair[0] in combo and c.pair[1] in combo] \
            if conflicts else []
        return Prediction(node_type=node_type, mixins=list(combo), score=p, confidence=confidence,
                          evidence=n, conflicts=found, unseen=unseen, risky=p < 0.5 or bool(found),
                          model_version=self.version, updates=self.updates)

    # -------------------------------------------------------------- conflicts

    def posteriors(self, node_type: str) -> dict[tuple[str, str], tuple[float, int]]:
        """Per observed pair of this node type: (posterior probability that the pair succeeds
        at under `ratio` × the rate of either member without the other, observations); or, if
        higher, that it succeeds at under `free_bar` where it is free (uniform prior): a pair
        whose members often fail for other reasons is judged where they do not."""
        t = self._type(node_type, learn=False)
        if t is None:
            return {}
        cfg, block = self.cfg, self.block
        off = block * (1 + t)
        succ, fail = self.succ, self.fail
        pairs, rows = [], []
        for a, b in combinations(self.mixins, 2):
            f = self.pair_feature(a, b)
            assert f is not None
            n_obs = self.counts[off + f]
            if n_obs < cfg.min_observations:
                continue
            i, j = self.index[a], self.index[b]
            s_ab, f_ab = succ[off + f], fail[off + f]
            if (s_ab + f_ab) / self.weight < cfg.min_evidence:
                continue
            # The pair's rate over all node types: the prior's centre.
            pooled_s = sum(succ[block * (1 + u) + f] for u in range(len(self.node_types)))
            pooled_n = pooled_s + sum(fail[block * (1 + u) + f] for u in range(len(self.node_types)))
            members = []
            for x in (i, j):
                s_x, n_x = succ[off + x] - s_ab, succ[off + x] + fail[off + x] - s_ab - f_ab
                members.append((max(s_x, 0.0) + 1) / (max(n_x, 0.0) + 2))
            pairs.append((a, b, n_obs))
            rows.append((s_ab, f_ab, self.free_succ[off + f], self.free_fail[off + f],
                         (pooled_s + 1) / (pooled_n + 2), min(members)))
        if not rows:
            return {}
        weight = self.weight
        data = np.asarray(rows, dtype=float) / np.array([weight, weight, weight, weight, 1, 1])
        s, f, free_s, free_f, centre, member = data.T
        alpha = 1 + cfg.prior_strength * centre + s
        beta = 1 + cfg.prior_strength * (1 - centre) + f
        posterior = np.maximum(betainc(alpha, beta, np.clip(cfg.ratio * member, 0.0, 1.0)),
                               betainc(1 + free_s, 1 + free_f, cfg.free_bar))
        return {(a, b): (float(p), n) for (a, b, n), p in zip(pairs, posterior, strict=True)}

    def find_conflicts(self, node_type: str, threshold: float | None = None) -> list[Conflict]:
        """Pairs the evidence and the model agree on: the Beta-binomial posterior is credible
        and the model's probe (the served probability, item rates included), each member in
        the context where it succeeds, scores the pair below `threshold`."""
        cfg = self.cfg
        threshold = cfg.probe_threshold if threshold is None else threshold
        credible = {pair: v for pair, v in self.posteriors(node_type).items() if v[0] >= cfg.credibility}
        if not credible:
            self.conflicts[node_type] = []
            return []
        names = self.mixins
        p = lambda combo: self.predict_proba(node_type, canonical(combo))  # noqa: E731
        best: dict[str, tuple[float, tuple[str, ...]]] = {}

        def context(a: str) -> tuple[float, tuple[str, ...]]:
            if a not in best:
                alone = p((a,))
                best[a] = (alone, ()) if alone > threshold else max(
                    ((p((a, c)), (c,)) for c in names if c != a), key=lambda x: x[0], default=(alone, ()))
            return best[a]

        found = []
        t = self.type_index[node_type]
        for (a, b), (posterior, n_obs) in sorted(credible.items()):
            (p_a, ctx_a), (p_b, ctx_b) = context(a), context(b)
            if p_a <= threshold or p_b <= threshold:
                continue
            ctx = tuple(c for c in dict.fromkeys(ctx_a + ctx_b) if c not in (a, b))
            p_ab = p((a, b) + ctx)
            f = self.pair_feature(a, b)
            assert f is not None
            if p_ab >= threshold or self.works_where_free(t, f):
                continue
            weight = self.weights[f] + self.weights[self.block * (1 + t) + f]
            found.append(Conflict((a, b), p_ab, p_a, p_b, weight, n_obs, ctx, posterior))
        self.conflicts[node_type] = found
        return found

    def type_status(self, node_type: str) -> dict[str, Any]:
        """What /api/models shows for one node type served by this model."""
        scored = self.by_type.get(node_type, Progressive())
        return {"node_type": node_type, "model": "shared", "model_version": self.version,
                "updates": scored.n, "mixins": len(self.names),
                "progressive_accuracy": round(scored.accuracy, 4),
                "progressive_log_loss": round(scored.log_loss, 4), "drifts": len(self.drifts),
                "conflicts": len(self.conflicts.get(node_type, ()))}

    def works_where_free(self, t: int, f: int) -> bool:
        """Does pair feature `f` of node type `t` succeed more than it fails (aged evidence,
        since the last drift) in the results where it was free? Then its failures elsewhere
        are another item's (a pair met mostly beside a real conflict fails with it), and it is
        no conflict. No free evidence: the data cannot say, and the pair is kept."""
        x = self.block * (1 + t) + f
        return self.free_succ[x] > self.free_fail[x]

    def find_all_conflicts(self) -> dict[str, list[Conflict]]:
        """`find_conflicts` for every node type learnt."""
        return {t: self.find_conflicts(t) for t in self.node_types}

    def status(self) -> dict[str, Any]:
        return {"model_version": self.version, "updates": self.updates, "mixins": len(self.names),
                "node_types": list(self.node_types),
                "progressive_accuracy": round(self.progressive.accuracy, 4),
                "progressive_log_loss": round(self.progressive.log_loss, 4), "drifts": len(self.drifts),
                "conflicts": {t: len(c) for t, c in sorted(self.conflicts.items())}}
