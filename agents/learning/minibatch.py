"""Learning many results at once into the shared model: what replay uses (river's
`learn_many`, for the hierarchical model of hierarchy.py).

`MiniBatch` holds the model's weights, averages and evidence as numpy arrays while it learns
rows of results with the compiled loop of kernels.py, which computes what `learn_one`
computes, result after result. The drift watch stays in Python (river's ADWIN): it reads the
rows' errors after the loop; when it fires at a row, the rows from there on are learnt again
from the state saved before the loop, with the weights halved at that row, as `learn_one`
halves them. `close()` writes the arrays back into the model, which then learns and predicts
one result at a time as before (a replayed model is installed and goes on learning).

`FrozenScorer` scores rows with a model that does not learn (the one in use during a replay).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np

from agents.learning import items
from agents.learning.hierarchy import HierarchicalModel
from agents.learning.kernels import item_rows, learn_rows, overlay_rows, served_probabilities
from agents.learning.model import Progressive

Mixins = list[str] | tuple[str, ...]
# node type, mixins, success
Example = tuple[str, Mixins, bool]

DECAY_TABLE = 4096
_ARRAYS = ("w", "avg", "stamp", "counts", "succ", "fail", "free_succ", "free_fail", "ic", "aic")


@dataclass
class Rows:
    """Results numbered by a model: per row the node type (`kind`, an index into
    `node_types`), the model's index of it (-1: no room left for it), the label, and the
    mixin numbers as given (`ids[indptr[i]:indptr[i + 1]]`; -1: no room left for the name)."""
    node_types: list[str]
    kind: np.ndarray
    types: np.ndarray
    y: np.ndarray
    indptr: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def number_rows(model: HierarchicalModel, node_types: Sequence[str], mixins: Sequence[Mixins],
                successes: Sequence[bool]) -> Rows:
    """Number the results' node types and mixins in `model` (new ones get numbers in order,
    as `learn_one` would give them)."""
    kinds = list(dict.fromkeys(node_types))
    type_of = [model._type(t, learn=True) for t in kinds]
    kind_of = {t: c for c, t in enumerate(kinds)}
    index = model.index
    ids: list[int | None] = list(map(index.get, chain.from_iterable(mixins)))
    if None in ids:
        if len(model.names) < model.max_mixins:  # new names: number them in order
            for combo in mixins:
                model._ids(combo, learn=True)
        ids = [index.get(m, -1) for combo in mixins for m in combo]  # -1: no room for the name
    lengths = np.zeros(len(mixins) + 1, dtype=np.int64)
    lengths[1:] = list(map(len, mixins))
    kind = np.array(list(map(kind_of.__getitem__, node_types)), dtype=np.int64)
    types = np.array([-1 if t is None else t for t in type_of], dtype=np.int64)
    return Rows(kinds, kind, types[kind] if len(kind) else kind, np.array(successes, dtype=bool),
                np.cumsum(lengths), np.array(ids, dtype=np.int64))


def _no_rows() -> Rows:
    none = np.empty(0, dtype=np.int64)
    return Rows([], none, none, np.empty(0, dtype=bool), np.zeros(1, dtype=np.int64), none)


@functools.lru_cache(maxsize=8)
def _identity(k: int) -> np.ndarray:
    return np.arange(k, dtype=np.int64)  # shared: never written


@functools.lru_cache(maxsize=8)
def _decay_table(keep: float) -> np.ndarray:
    return np.array([keep ** age for age in range(DECAY_TABLE)])  # shared: never written


class MiniBatch:
    """Learns rows into `model`; `close()` hands the model back with what it learnt."""

    def __init__(self, model: HierarchicalModel) -> None:
        self.model = model
        self.w = np.array(model.weights, dtype=float)
        self.avg = np.array(model.avg, dtype=float)
        self.stamp = np.array(model.stamp, dtype=np.int64)
        self.counts = np.array(model.counts, dtype=np.int64)
        self.succ = np.array(model.succ, dtype=float)
        self.fail = np.array(model.fail, dtype=float)
        self.free_succ = np.array(model.free_succ, dtype=float)
        self.free_fail = np.array(model.free_fail, dtype=float)
        self.ic = np.array(model.intercepts, dtype=float)
        self.aic = np.array(model.avg_intercepts, dtype=float)
        self.growth = 2.0 ** (1.0 / model.cfg.half_life)
        # (1 - avg_rate) ** age for the ages most features have when met again, computed as
        # learn_one computes them (Python's float power), so both give the same averages
        self.decay = _decay_table(1.0 - model.cfg.avg_rate)
        # compile the loop (or load it from numba's cache) now, not in the first result's time
        self._run(_no_rows(), np.empty(0, dtype=np.int64), 0, 0, False, np.empty(0), np.empty(0, dtype=bool))

    def learn(self, examples: Sequence[Example]) -> tuple[Rows, np.ndarray]:
        """Number and learn the examples; returns the rows and `learn_many`'s probabilities."""
        node_types, mixins, successes = zip(*examples, strict=True) if examples else ((), (), ())
        rows = number_rows(self.model, node_types, mixins, successes)
        return rows, self.learn_many(rows)

    def learn_many(self, rows: Rows) -> np.ndarray:
        """Learn the rows in order; returns each row's probability predicted before it was
        learnt (progressive validation), and scores the model's `progressive` and `by_type`."""
        model = self.model
        cfg = model.cfg
        # the item rates' verdicts and free masks, each before its row is learnt (a drift does
        # not touch the rates)
        worst, free = np.empty(len(rows)), np.empty(len(rows), dtype=np.int64)
        item_rows(model.item_n, model.item_s, model.max_mixins, _identity(model.max_mixins), rows.types,
                  rows.y, rows.indptr, rows.ids, items.keep_of(cfg.item_memory), cfg.item_min_weight,
                  cfg.item_bad_rate, True, worst, free)
        p = np.empty(len(rows))
        errors = np.zeros(len(rows), dtype=bool)
        start, drift_first = 0, False
        while start < len(rows):
            saved = self._save()
            self._run(rows, free, start, len(rows), drift_first, p, errors)
            watched = start + 1 if drift_first else start  # a drift row's error was watched
            found = self._watch(errors[watched:])
            if found is None:
                break
            # Rules changed at row `at`: learn again from there, weights halved at that row.
            at = watched + found
            self._restore(saved)
            self._run(rows, free, start, at, drift_first, p, errors)
            model.drifts.append(model.updates)
            start, drift_first = at, True
        overlay_rows(p, worst, cfg.clean_odds)
        self._score(rows, p)
        return p

    def close(self) -> HierarchicalModel:
        m = self.model
        m.weights, m.avg, m.stamp = self.w.tolist(), self.avg.tolist(), self.stamp.tolist()
        m.counts, m.succ, m.fail = self.counts.tolist(), self.succ.tolist(), self.fail.tolist()
        m.free_succ, m.free_fail = self.free_succ.tolist(), self.free_fail.tolist()
        m.intercepts, m.avg_intercepts = self.ic.tolist(), self.aic.tolist()
        return m

    def _run(self, rows: Rows, free: np.ndarray, start: int, stop: int, drift_first: bool,
             p: np.ndarray, errors: np.ndarray) -> None:
        model, cfg = self.model, self.model.cfg
        model.updates, model.since, model.weight = learn_rows(
            self.w, self.avg, self.stamp, self.counts, self.succ, self.fail, self.free_succ,
            self.free_fail, self.ic, self.aic, rows.types, rows.y, rows.indptr, rows.ids, free, start, stop,
            model.updates, model.since, model.weight, drift_first,
            model.max_mixins, model.block, cfg.lr, cfg.deviation_lr, cfg.boost, cfg.boost_tau,
            cfg.avg_rate, self.growth, cfg.drift_shrink, cfg.drift_evidence_keep, self.decay, p, errors)

    def _save(self) -> tuple:
        """What a run may change: the blocks of the node types known (the rows were numbered
        before the run), the intercepts, and the scalars."""
        m = self.model
        used = m.block * (1 + len(m.node_types))
        return tuple(getattr(self, a)[:used].copy() for a in _ARRAYS) + (m.updates, m.since, m.weight)

    def _restore(self, saved: tuple) -> None:
        # A drift halves all weights (and stamps all averages): beyond the used blocks they are
        # zero, and the run learnt again from the restored state halves and stamps them again.
        for a, value in zip(_ARRAYS, saved, strict=False):
            getattr(self, a)[:len(value)] = value
        m = self.model
        m.updates, m.since, m.weight = saved[len(_ARRAYS):]

    def _watch(self, errors: np.ndarray) -> int | None:
        """`learn_one`'s drift watch over the errors in order; the index of a drift, or None."""
        seen = self.model.drift_seen
        return next((i for i, e in enumerate(errors.astype(float).tolist()) if seen(e)), None)

    def _score(self, rows: Rows, p: np.ndarray) -> None:
        model = self.model
        model.progressive.update_many(p, rows.y)
        for c, node_type in enumerate(rows.node_types):
            mine = rows.kind == c
            scored = model.by_type.get(node_type)
            if scored is None:
                scored = model.by_type[node_type] = Progressive()
            scored.update_many(p[mine], rows.y[mine])


class FrozenScorer:
    """The served predictions of a model that does not learn (the one in use, while a replay
    trains its successor) for rows another model numbered: its averaged weights are taken
    once, as it serves them now."""

    def __init__(self, model: HierarchicalModel) -> None:
        self.model = model
        keep = 1.0 - model.cfg.avg_rate
        w = np.array(model.weights, dtype=float)
        age = model.updates - np.array(model.stamp, dtype=np.int64)
        self.served = w + (np.array(model.avg, dtype=float) - w) * keep ** age
        self.intercepts = np.array(model.avg_intercepts, dtype=float)
        self.item_n, self.item_s = model.item_n.copy(), model.item_s.copy()
        self._map = np.empty(0, dtype=np.int64)
        self._mapped = (0, -1)  # which model's numbering `_map` translates, with how many names
        self.predict_many(model, _no_rows())  # compiles now

    def predict_many(self, numbering: HierarchicalModel, rows: Rows) -> np.ndarray:
        """The probability this model serves for each row (`numbering` numbered them)."""
        model = self.model
        if self._mapped != (id(numbering), len(numbering.names)):  # another model, or new names
            self._map = np.array([model.index.get(n, -1) for n in numbering.names], dtype=np.int64)
            self._mapped = (id(numbering), len(numbering.names))
        own_type = np.array([model.type_index.get(t, -1) for t in rows.node_types], dtype=np.int64)
        p = np.empty(len(rows))
        types = own_type[rows.kind]
        served_probabilities(self.served, self.intercepts, model.max_mixins, model.block, self._map,
                             types, rows.indptr, rows.ids, p)
        cfg, worst = model.cfg, np.empty(len(rows))
        item_rows(self.item_n, self.item_s, model.max_mixins, self._map, types, rows.y, rows.indptr,
                  rows.ids, 1.0, cfg.item_min_weight, cfg.item_bad_rate, False, worst,
                  np.empty(len(rows), dtype=np.int64))
        overlay_rows(p, worst, cfg.clean_odds)
        return p
