"""Compiled loops of the shared model (hierarchy.py) over many results: what replay runs.

`HierarchicalModel.learn_one` is a Python loop over a result's features (10-15 µs a result);
these are the same loops compiled with numba, over rows of results held in numpy arrays. They
learn the rows one after another, exactly as `learn_one` would (each result is predicted with
the weights its predecessors left): a mini-batch gradient, which sums a batch's gradients
taken at the batch's start, lost accuracy on the bench's stream (progressive accuracy 0.9560
sequentially; 0.9556, 0.9542, 0.9475 and 0.9018 with batches of 8, 32, 64 and 256).

A row is a node-type index (-1: the model has no room for it), a label, and its mixin numbers
in any order (`ids[indptr[r]:indptr[r + 1]]`, -1 for a name the model has no room for);
features are numbered as features.feature_numbers numbers them (mixin i is feature i, the
pair i < j is k + i*k + j) and a node type's deviations follow in its block
(`block * (1 + t) + feature`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from agents.learning import items, linear
from agents.learning.hierarchy import _RESCALE_AT

# The same functions as the Python learner's, compiled from their source.
_sigmoid = njit(cache=True, inline="always")(linear.sigmoid)
_gradient = njit(cache=True, inline="always")(linear.log_loss_gradient)
_overlay = items.overlay_compiled
_stride = njit(cache=True, inline="always")(items.stride)
# numba's cache (cache=True) knows a kernel's own file only: a kernel below that inlines
# items.py's functions is compiled again when this file changes, not when items.py does
# (an install writes both; while editing items.py, delete __pycache__/*.nb[ic]).


@njit(cache=True, inline="always")
def _distinct(ids: np.ndarray, lo: int, hi: int, out: np.ndarray) -> int:
    """Writes the row's mixin numbers sorted and distinct into `out`, leaving out -1 (a name
    the model has no room for); returns how many."""
    m = 0
    for i in range(lo, hi):
        x = ids[i]
        if x < 0:
            continue
        j = m
        while j > 0 and out[j - 1] > x:
            j -= 1
        if j > 0 and out[j - 1] == x:
            continue
        for h in range(m, j, -1):
            out[h] = out[h - 1]
        out[j] = x
        m += 1
    return m


@njit(cache=True, inline="always")
def _features(mixins: np.ndarray, m: int, k: int, t: int, block: int,
              out: np.ndarray) -> tuple[int, int]:
    """Writes the shared features of the sorted, distinct mixin numbers `mixins[:m]`, then
    their node type's deviations, into `out`; returns (number of shared features, of all)."""
    n = 0
    for i in range(m):
        out[n] = mixins[i]
        n += 1
    for i in range(m):
        a = mixins[i]
        for j in range(i + 1, m):
            out[n] = k + a * k + mixins[j]
            n += 1
    base = n
    if t >= 0:
        off = block * (1 + t)
        for i in range(base):
            out[n] = off + out[i]
            n += 1
    return base, n


@njit(cache=True)
def learn_rows(w: np.ndarray, avg: np.ndarray, stamp: np.ndarray, counts: np.ndarray,
               succ: np.ndarray, fail: np.ndarray, free_succ: np.ndarray, free_fail: np.ndarray,
               ic: np.ndarray, aic: np.ndarray, types: np.ndarray, ys: np.ndarray, indptr: np.ndarray,
               ids: np.ndarray, free: np.ndarray, start: int, stop: int, n: int, since: int,
               weight: float, drift_first: bool,
               k: int, block: int, lr: float, deviation_lr: float, boost: float, boost_tau: float,
               avg_rate: float, growth: float, shrink: float, evidence_keep: float, decay: np.ndarray,
               p_out: np.ndarray, err_out: np.ndarray) -> tuple[int, int, float]:
    """`HierarchicalModel.learn_one` for rows start..stop-1 in order; the drift watch is the
    caller's (it sees `err_out`). `drift_first`: a drift was detected at the first row, whose
    weights are halved after it is predicted and before it is learnt, as in learn_one.
    `decay[a]` is (1 - avg_rate) ** a for the ages it holds; `free[r]` is the row's free mask
    (items.free_mask over its sorted distinct mixins). Returns (updates, since, weight) after
    the rows."""
    keep = 1.0 - avg_rate
    widest = 0
    for r in range(start, stop):
        widest = max(widest, indptr[r + 1] - indptr[r])
    mixins = np.empty(widest, dtype=np.int64)
    feats = np.empty(2 * (widest + widest * (widest - 1) // 2), dtype=np.int64)
    for r in range(start, stop):
        t = types[r]
        y = ys[r]
        m = _distinct(ids, indptr[r], indptr[r + 1], mixins)
        base, total = _features(mixins, m, k, t, block, feats)
        s_w = 0.0
        s_avg = 0.0
        for i in range(total):
            f = feats[i]
            s = stamp[f]
            if s != n:
                wf = w[f]
                age = n - s
                avg[f] = wf + (avg[f] - wf) * (decay[age] if age < decay.shape[0] else keep ** age)
            s_w += w[f]
            s_avg += avg[f]
        z = ic[0] + s_w
        served = aic[0] + s_avg
        if t >= 0:
            z += ic[1 + t]
            served += aic[1 + t]
        p_out[r] = _sigmoid(served)
        err_out[r] = (_sigmoid(z) >= 0.5) != y
        if drift_first and r == start:
            since = n
            for i in range(w.shape[0]):
                w[i] *= shrink
                avg[i] = w[i]
                stamp[i] = n
            for i in range(ic.shape[0]):
                ic[i] *= shrink
                aic[i] = ic[i]
            for i in range(succ.shape[0]):
                succ[i] *= evidence_keep
                fail[i] *= evidence_keep
                free_succ[i] *= evidence_keep
                free_fail[i] *= evidence_keep
        g = _gradient(y, z) * (1.0 + boost * math.exp(-(n - since) / boost_tau))
        step = lr * g
        ic[0] -= step
        aic[0] += avg_rate * (ic[0] - aic[0])
        for i in range(base):
            w[feats[i]] -= step
        if t >= 0:
            dstep = deviation_lr * g
            ic[1 + t] -= dstep
            aic[1 + t] += avg_rate * (ic[1 + t] - aic[1 + t])
            for i in range(base, total):
                f = feats[i]
                w[f] -= dstep
                counts[f] += 1
                if y:
                    succ[f] += weight
                else:
                    fail[f] += weight
            mask = free[r]
            if mask:
                free_evidence = free_succ if y else free_fail
                pairs = block * (1 + t) + k
                for i in range(m):
                    for j in range(i + 1, m):
                        if mask >> i & 1 and mask >> j & 1:
                            free_evidence[pairs + mixins[i] * k + mixins[j]] += weight
        n += 1
        for i in range(total):
            f = feats[i]
            avg[f] += avg_rate * (w[f] - avg[f])
            stamp[f] = n
        weight *= growth
        if weight > _RESCALE_AT:
            scale = 1.0 / weight
            for i in range(succ.shape[0]):
                succ[i] *= scale
                fail[i] *= scale
                free_succ[i] *= scale
                free_fail[i] *= scale
            weight = 1.0
    return n, since, weight


@njit(cache=True)
def served_probabilities(served: np.ndarray, intercepts: np.ndarray, k: int, block: int,
                         mixin_map: np.ndarray, types: np.ndarray, indptr: np.ndarray,
                         ids: np.ndarray, out: np.ndarray) -> None:
    """The probabilities served by a model that does not learn (its served weights given) for
    rows another model numbered: `mixin_map` takes the other model's mixin numbers to this
    one's (-1: unknown here, left out as predict_proba leaves unknown names out); `types` are
    this model's node-type indices (-1: none)."""
    widest = 0
    for r in range(types.shape[0]):
        widest = max(widest, indptr[r + 1] - indptr[r])
    mapped = np.empty(ids.shape[0], dtype=np.int64)
    mine = np.empty(widest, dtype=np.int64)
    feats = np.empty(2 * (widest + widest * (widest - 1) // 2), dtype=np.int64)
    for r in range(types.shape[0]):
        lo, hi = indptr[r], indptr[r + 1]
        for i in range(lo, hi):
            mapped[i] = mixin_map[ids[i]] if ids[i] >= 0 else -1
        t = types[r]
        _, total = _features(mine, _distinct(mapped, lo, hi, mine), k, t, block, feats)
        z = intercepts[0]
        for i in range(total):
            z += served[feats[i]]
        if t >= 0:
            z += intercepts[1 + t]
        out[r] = _sigmoid(z)


@njit(cache=True)
def item_rows(n: np.ndarray, s: np.ndarray, k: int, mixin_map: np.ndarray, types: np.ndarray,
              y: np.ndarray, indptr: np.ndarray, ids: np.ndarray, keep: float, min_weight: float,
              bad_rate: float, learn: bool, out: np.ndarray, free_out: np.ndarray) -> None:
    """Per row, the verdict of its combination's item rates (items.py; -1: no item fails)
    before the row, then (`learn`) its free mask (items.free_mask, over its sorted distinct
    mixins; 0 without `learn`) and the row learnt into them, as `learn_one` does result after
    result. `mixin_map` takes the rows' mixin numbers to the rates' (-1: unknown there)."""
    widest = 0
    for r in range(types.shape[0]):
        widest = max(widest, indptr[r + 1] - indptr[r])
    mapped = np.empty(ids.shape[0], dtype=np.int64)
    mine = np.empty(widest, dtype=np.int64)
    held = np.zeros(k, dtype=np.bool_)
    tally = np.empty(2 * widest + 2, dtype=np.int64)
    size = _stride(k)
    for r in range(types.shape[0]):
        t = types[r]
        free_out[r] = 0
        if t < 0:
            out[r] = np.nan  # no rates for a node type beyond the model's room
            continue
        lo, hi = indptr[r], indptr[r + 1]
        for i in range(lo, hi):
            mapped[i] = mixin_map[ids[i]] if ids[i] >= 0 else -1
        m = _distinct(mapped, lo, hi, mine)
        out[r] = items.verdict(n, s, size * t, mine, m, k, min_weight, bad_rate, held, tally)
        if learn:
            free_out[r] = items.free_mask(n, s, size * t, mine, m, k, min_weight, bad_rate, tally)
            items.learn(n, s, size * t, mine, m, k, keep, y[r], out[r], min_weight, bad_rate, held)


@njit(cache=True)
def overlay_rows(p: np.ndarray, worst: np.ndarray, clean_odds: float) -> None:
    """items.overlay on every row's probability, in place."""
    for r in range(p.shape[0]):
        p[r] = _overlay(p[r], worst[r], clean_odds)
