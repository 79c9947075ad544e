"""Recent success rates of everything a rule can name: the served model's fast verdict.

A result fails when its combination holds something the rules of its node type forbid: a
banned mixin, a forbidden pair, a mixin without the one it needs (a forbidden triple shows as
pairs that fail more often than not). Each of those is an *item* of the combination, and an
item that is forbidden fails every time it is met, whatever else the combination holds,
while an allowed item also succeeds. So per node type this keeps, for every item, an
exponentially weighted success rate over the last `memory` results that held it (not the
last results of the stream: a rare item keeps its history, a frequent one forgets fast):

- mixin a: feature a;
- the pair a < b: `k + a*k + b` (the numbering of features.py);
- a without b (a in the combination, b not): `k + k*k + a*k + b`, for every mixin number b
  the model has room for, named yet or not.

An item is *failing* once it holds `min_weight` of recent results and its smoothed rate
`(s + 0.5) / (n + 1)` is below `bad_rate`. The served probability (`overlay`) of a
combination with a failing item is at most that item's rate; of one with none whose mixins
and pairs have all been seen that often, the logistic model's odds of success times
`clean_odds` (a combination not seen enough yet is served as the logistic model says). A
failure of a combination that already holds a failing item counts `EXPLAINED` for its other
items. The logistic model learns slowly (its weights move by small steps so that noisy labels
do not shake them); the item rates follow a drift within a few results of each item
(bench/worlds.py, held-out seeds 13-24: back to 0.97 held-out accuracy within 5,000 results
after 34 of 34 drifts, against 8 with the logistic model alone).

The functions are compiled (numba) and shared by `HierarchicalModel.learn_one` and the
compiled rows of kernels.py, so both compute the same rates.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

EXPLAINED = 0.5  # a failure explained by another failing item counts this much for the others


def stride(k: int) -> int:
    """Items of one node type for a model with room for `k` mixins."""
    return k + 2 * k * k


@njit(cache=True, inline="always")
def _rate(n: np.ndarray, s: np.ndarray, x: int, min_weight: float, bad_rate: float) -> float:
    """Item x's smoothed rate if it is failing, else -1."""
    weight = n[x]
    if weight >= min_weight:
        rate = (s[x] + 0.5) / (weight + 1.0)
        if rate < bad_rate:
            return rate
    return -1.0


@njit(cache=True, inline="always")
def _tally(tally: np.ndarray, section: int, m: int, i: int, j: int) -> None:
    """One item naming `mixins[i]` (and `mixins[j]`, j >= 0) into a section of the tally."""
    tally[section + i] += 1
    if j >= 0:
        tally[section + j] += 1
    tally[section + m] += 1


@njit(cache=True, inline="always")
def verdict(n: np.ndarray, s: np.ndarray, off: int, mixins: np.ndarray, m: int, k: int,
            min_weight: float, bad_rate: float, held: np.ndarray, tally: np.ndarray) -> float:
    """The smoothed rate of the combination's worst failing item; -1: none fails, and each of
    its mixins and pairs holds `min_weight` of results; NaN: none fails, but some mixin or
    pair has too few results to say (an empty combination too). `mixins[:m]`: its sorted,
    distinct mixin numbers; `held`: k booleans, all False (scratch). Counts into `tally`
    (2m + 2 numbers, overwritten; what free_mask reads) the failing items, `tally[i]` those
    naming `mixins[i]` and `tally[m]` all of them, and the mixins and pairs with too few
    results to judge, `tally[m + 1 + i]` and `tally[2m + 1]` the same way."""
    worst = -1.0
    known = m > 0
    unknown = m + 1
    for i in range(2 * m + 2):
        tally[i] = 0
    for i in range(m):
        held[mixins[i]] = True
    for i in range(m):
        a = mixins[i]
        if n[off + a] < min_weight:
            known = False
            _tally(tally, unknown, m, i, -1)
        rate = _rate(n, s, off + a, min_weight, bad_rate)
        if rate >= 0.0:
            _tally(tally, 0, m, i, -1)
            worst = rate if worst < 0.0 else min(worst, rate)
        for j in range(i + 1, m):
            pair = off + k + a * k + mixins[j]
            if n[pair] < min_weight:
                known = False
                _tally(tally, unknown, m, i, j)
            rate = _rate(n, s, pair, min_weight, bad_rate)
            if rate >= 0.0:
                _tally(tally, 0, m, i, j)
                worst = rate if worst < 0.0 else min(worst, rate)
        without = off + k + k * k + a * k
        for b in range(k):
            if not held[b]:
                rate = _rate(n, s, without + b, min_weight, bad_rate)
                if rate >= 0.0:
                    _tally(tally, 0, m, i, -1)
                    worst = rate if worst < 0.0 else min(worst, rate)
    for i in range(m):
        held[mixins[i]] = False
    return worst if worst >= 0.0 or known else np.nan


@njit(cache=True, inline="always")
def _count(n: np.ndarray, s: np.ndarray, x: int, keep: float, hit: float, explained: bool,
           min_weight: float, bad_rate: float) -> None:
    if explained:  # a failure another failing item explains counts less for the others
        weight = n[x]
        if weight < min_weight or (s[x] + 0.5) / (weight + 1.0) >= bad_rate:
            kept = keep ** EXPLAINED
            n[x] = n[x] * kept + EXPLAINED
            s[x] = s[x] * kept
            return
    n[x] = n[x] * keep + 1.0
    s[x] = s[x] * keep + hit


@njit(cache=True, inline="always")
def learn(n: np.ndarray, s: np.ndarray, off: int, mixins: np.ndarray, m: int, k: int, keep: float,
          y: bool, worst: float, min_weight: float, bad_rate: float, held: np.ndarray) -> None:
    """One result into the rates of its combination's items. A success counts for every item;
    a failure of a combination already holding a failing item (`worst` >= 0, its verdict)
    counts whole for the failing ones and `EXPLAINED` for the others (a mixin met mostly beside
    a banned one would otherwise look failing itself)."""
    hit = 1.0 if y else 0.0
    explained = (not y) and worst >= 0.0
    for i in range(m):
        held[mixins[i]] = True
    for i in range(m):
        a = mixins[i]
        _count(n, s, off + a, keep, hit, explained, min_weight, bad_rate)
        for j in range(i + 1, m):
            _count(n, s, off + k + a * k + mixins[j], keep, hit, explained, min_weight, bad_rate)
        without = off + k + k * k + a * k
        for b in range(k):
            if not held[b]:
                _count(n, s, without + b, keep, hit, explained, min_weight, bad_rate)
    for i in range(m):
        held[mixins[i]] = False


@njit(cache=True, inline="always")
def free_mask(n: np.ndarray, s: np.ndarray, off: int, mixins: np.ndarray, m: int, k: int,
              min_weight: float, bad_rate: float, tally: np.ndarray) -> int:
    """Which of the combination's mixins can be dropped to leave it judged clean: bit i is set
    when the sorted, distinct `mixins[:m]` without `mixins[i]` hold no failing item and no
    mixin or pair with too few results to judge. A pair whose two bits are set is *free* in
    this result: nothing else explains what it did (the combination without either member
    would be judged clean). Every failing or unjudged item must name the dropped mixin
    (`tally`, as `verdict` left it for this combination), and no other mixin may fail without
    it. 0 for more than 62 mixins."""
    if m > 62:
        return 0
    mask = 0
    for i in range(m):
        if tally[i] != tally[m] or tally[m + 1 + i] != tally[2 * m + 1]:
            continue
        dropped = mixins[i]
        clean = True
        for j in range(m):  # the others without the dropped one: items the result did not hold
            if j != i and _rate(n, s, off + k + k * k + mixins[j] * k + dropped, min_weight, bad_rate) >= 0.0:
                clean = False
                break
        if clean:
            mask |= 1 << i
    return mask


@njit(cache=True)
def learn_one(n: np.ndarray, s: np.ndarray, off: int, mixins: np.ndarray, k: int, keep: float, y: bool,
              min_weight: float, bad_rate: float) -> tuple[float, int]:
    """The verdict on one result's combination and its free mask (`free_mask`), both before
    it is learnt, then learn it."""
    held = np.zeros(k, dtype=np.bool_)
    m = mixins.shape[0]
    tally = np.empty(2 * m + 2, dtype=np.int64)
    worst = verdict(n, s, off, mixins, m, k, min_weight, bad_rate, held, tally)
    free = free_mask(n, s, off, mixins, m, k, min_weight, bad_rate, tally)
    learn(n, s, off, mixins, m, k, keep, y, worst, min_weight, bad_rate, held)
    return worst, free


@njit(cache=True)
def judge_one(n: np.ndarray, s: np.ndarray, off: int, mixins: np.ndarray, k: int, min_weight: float,
              bad_rate: float) -> float:
    held = np.zeros(k, dtype=np.bool_)
    m = mixins.shape[0]
    return verdict(n, s, off, mixins, m, k, min_weight, bad_rate, held, np.empty(2 * m + 2, dtype=np.int64))


def overlay(p: float, worst: float, clean_odds: float) -> float:
    """The served probability: the logistic model's `p`, capped at the worst failing item's
    rate, or with its odds times `clean_odds` when no item fails (`worst` < 0); unchanged
    without rates enough to judge by (`worst` NaN: a mixin or pair seen too seldom yet, or a
    node type beyond the model's room)."""
    if math.isnan(worst):
        return p
    if worst >= 0.0:
        return min(p, worst)
    if p <= 0.0 or p >= 1.0:
        return p
    odds = p / (1.0 - p) * clean_odds
    return odds / (1.0 + odds)


overlay_compiled = njit(cache=True, inline="always")(overlay)


def keep_of(memory: float) -> float:
    """The weight an item's older results keep at each new one (memory: results remembered)."""
    return 1.0 - 1.0 / memory


def empty(k: int, node_types: int) -> tuple[np.ndarray, np.ndarray]:
    size = stride(k) * node_types
    return np.zeros(size), np.zeros(size)

