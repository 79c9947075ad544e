"""Windowed aggregation of metric samples: tumbling and hopping windows per series.

A series is a metric name plus its label set (identified by a SHA-256 of the sorted labels).
Each window keeps count, sum, min, max and a KLL quantile sketch (Apache DataSketches:
mergeable, a few KB, ~0.1 µs per update) from which p50/p95/p99 are read when it closes.
A window closes once the newest event time seen for its series (the series' watermark) passes
its end plus the allowed lateness, so a backfill or replay of old samples closes windows in
event-time order (series interleave on a partition, but each arrives in order); when a
partition has been idle, wall time closes what is left. Samples for a closed window are counted
as late and dropped (a written row is never re-opened).
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from datasketches import kll_floats_sketch
from pydantic import ConfigDict

from schemas.state import VersionedState

SKETCH_K = 200  # KLL accuracy parameter: ~1.3 % normalized rank error
VECTOR_FROM = 64  # a series' run of this many samples is folded with numpy


def labels_hash(labels: dict[str, str]) -> str:
    return hashlib.sha256(orjson.dumps(labels, option=orjson.OPT_SORT_KEYS)).hexdigest()


def series_key(name: str, labels: dict[str, str]) -> str:
    return f"{name}|{labels_hash(labels)}"


@dataclass(frozen=True)
class WindowSpec:
    size_s: float
    step_s: float | None = None  # None or == size: tumbling; smaller: hopping

    @property
    def tumbling(self) -> bool:
        return self.step_s is None or self.step_s == self.size_s

    @property
    def step(self) -> float:
        return self.step_s or self.size_s

    @property
    def kind(self) -> str:
        return "tumbling" if self.step == self.size_s else "hopping"

    def starts(self, ts: float) -> list[float]:
        """Start times of every window holding ts (one when tumbling, size/step when hopping)."""
        last = math.floor(ts / self.step) * self.step
        out = []
        start = last
        while start > ts - self.size_s:
            out.append(start)
            start -= self.step
        return sorted(out)


@dataclass
class Aggregate:
    name: str
    metric_type: str
    labels: dict[str, str]
    start: float
    end: float
    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    sketch: Any = field(default_factory=lambda: kll_floats_sketch(SKETCH_K))

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        self.sketch.update(value)

    def add_many(self, values: Sequence[float] | np.ndarray) -> None:
        if len(values) == 1:
            self.add(float(values[0]))
            return
        as_list = values.tolist() if isinstance(values, np.ndarray) else values
        self.count += len(as_list)
        self.total += sum(as_list)
        self.low = min(self.low, min(as_list))
        self.high = max(self.high, max(as_list))
        self.sketch.update(np.asarray(values, dtype=np.float32))

    def merge(self, other: Aggregate) -> None:
        self.count += other.count
        self.total += other.total
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)
        self.sketch.merge(other.sketch)

    def quantile(self, q: float) -> float | None:
        return float(self.sketch.get_quantile(q)) if self.count else None

    def to_json(self) -> bytes:
        return orjson.dumps({
            "name": self.name, "type": self.metric_type, "labels": self.labels, "start": self.start,
            "end": self.end, "count": self.count, "sum": self.total,
            "min": self.low if self.count else None, "max": self.high if self.count else None,
            "sketch": base64.b64encode(self.sketch.serialize()).decode()})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Aggregate:
        d = orjson.loads(raw)
        return cls(d["name"], d["type"], d["labels"], d["start"], d["end"], d["count"], d["sum"],
                   math.inf if d["min"] is None else d["min"], -math.inf if d["max"] is None else d["max"],
                   kll_floats_sketch.deserialize(base64.b64decode(d["sketch"])))

    def row(self) -> dict[str, Any]:
        return {"metric_name": self.name, "metric_type": self.metric_type, "labels": self.labels,
                "labels_hash": labels_hash(self.labels), "window_start": self.start,
                "window_end": self.end, "sample_count": self.count, "value_sum": self.total,
                "value_min": self.low if self.count else None,
                "value_max": self.high if self.count else None,
                "p50": self.quantile(0.5), "p95": self.quantile(0.95), "p99": self.quantile(0.99)}


def window_key(series: str, spec: WindowSpec, start: float) -> str:
    return f"{series}|{spec.size_s:g}|{start:.3f}"


def series_of(key: str) -> str:
    return key.rsplit("|", 2)[0]


class SeriesRecord(VersionedState):
    """Everything known about one series, one record in the window table (see Windows)."""

    model_config = ConfigDict(extra="forbid")

    series: str
    watermark: float
    closed_until: dict[str, float]  # window size → end of its latest closed window
    applied: dict[str, int]         # source partition → highest sample position folded in
    windows: dict[str, dict[str, Any]]  # open windows: key → Aggregate.to_json()


class Windows:
    """Open windows of the series one partition owns; `add` then `due` / `pop`.

    Everything known about one series (its open windows, watermark, how far its windows are
    closed, the source offsets folded in) is one state record (`dump_series` / `load_series`),
    so a record restored after a crash is consistent with itself whatever else was lost."""

    def __init__(self, specs: list[WindowSpec], lateness_s: float = 5.0,
                 monotonic: Callable[[], float] = time.monotonic):
        self.specs, self.lateness_s = specs, lateness_s
        self.monotonic = monotonic  # how long a series has been quiet (injected in tests)
        self.open: dict[str, Aggregate] = {}
        self.by_series: dict[str, set[str]] = {}  # series → keys of its open windows
        self.watermarks: dict[str, float] = {}  # series → newest event time seen
        self.last_seen: dict[str, float] = {}   # series → monotonic time of its last sample
        self.closed_until: dict[str, float] = {}  # series|size → end of its latest closed window
        self.applied: dict[str, dict[str, int]] = {}  # series → source partition → offset
        self.late = 0
        self.dirty: set[str] = set()  # series whose record changed

    def add(self, name: str, metric_type: str, labels: dict[str, str], value: float, ts: float) -> int:
        """Fold one sample into every window holding it; returns how many windows took it."""
        return self.add_many(name, metric_type, labels, [value], [ts])

    def add_many(self, name: str, metric_type: str, labels: dict[str, str], values: Sequence[float],
                 stamps: Sequence[float], series: str | None = None) -> int:
        """Fold samples of one series, in their order, exactly as `add` one by one would (each
        is checked against the watermark including itself), but each window takes its share
        in one update. Returns how many window updates were made."""
        series = series or series_key(name, labels)
        before = self.watermarks.get(series, 0.0)
        self.last_seen[series] = self.monotonic()
        self.dirty.add(series)
        closed = [self.closed_until.get(f"{series}|{spec.size_s:g}", -math.inf) for spec in self.specs]
        if len(values) >= VECTOR_FROM:
            shares, late, watermark = self._shares_of_array(values, stamps, before, closed)
        else:
            shares, late, watermark = self._shares_one_by_one(values, stamps, before, closed)
        self.watermarks[series] = max(watermark, before)
        self.late += late
        taken = 0
        for (index, start), share in shares.items():
            spec = self.specs[index]
            key = window_key(series, spec, start)
            agg = self.open.get(key)
            if agg is None:
                agg = self.open[key] = Aggregate(name, metric_type, dict(labels), start, start + spec.size_s)
                self.by_series.setdefault(series, set()).add(key)
            agg.add_many(share)
            taken += len(share)
        return taken

    def _take(self, shares: dict[tuple[int, float], Any], index: int, value: float, ts: float,
              watermark: float, closed: float) -> int:
        """Give one sample to every window of spec `index` holding it; returns how many of those
        were late: past the lateness, or already closed and written (a re-opened window would
        overwrite that row with a partial count)."""
        spec = self.specs[index]
        size = spec.size_s
        late = 0
        for start in (math.floor(ts / size) * size,) if spec.tumbling else spec.starts(ts):
            end = start + size
            if end + self.lateness_s <= watermark or end <= closed:
                late += 1
                continue
            share = shares.get((index, start))
            if share is None:
                share = shares[(index, start)] = []
            share.append(value)
        return late

    def _shares_one_by_one(self, values: Sequence[float], stamps: Sequence[float], watermark: float,
                           closed: list[float]) -> tuple[dict[tuple[int, float], Any], int, float]:
        shares: dict[tuple[int, float], list[float]] = {}
        late = 0
        for value, ts in zip(values, stamps, strict=True):
            if ts > watermark:
                watermark = ts
            for index in range(len(self.specs)):
                late += self._take(shares, index, value, ts, watermark, closed[index])
        return shares, late, watermark

    def _shares_of_array(self, values: Sequence[float], stamps: Sequence[float], watermark: float,
                         closed: list[float]) -> tuple[dict[tuple[int, float], Any], int, float]:
        """What `_shares_one_by_one` computes, with numpy over the whole run: the watermark each
        sample is checked against is the running maximum including it, and each window's
        share keeps the samples' order."""
        ts = np.asarray(stamps, dtype=float)
        vals = np.asarray(values, dtype=float)
        running = np.maximum(np.maximum.accumulate(ts), watermark)
        shares: dict[tuple[int, float], Any] = {}
        late = 0
        for index, spec in enumerate(self.specs):
            size = spec.size_s
            if not spec.tumbling:  # a sample is in several hopping windows: one by one
                for value, at, mark in zip(vals.tolist(), ts.tolist(), running.tolist(), strict=True):
                    late += self._take(shares, index, value, at, mark, closed[index])
                continue
            starts = np.floor(ts / size) * size
            ends = starts + size
            keep = ~((ends + self.lateness_s <= running) | (ends <= closed[index]))
            late += int(len(ts) - np.count_nonzero(keep))
            kept_starts, kept_values = starts[keep], vals[keep]
            if not len(kept_starts):
                continue
            order = np.argsort(kept_starts, kind="stable")
            kept_starts, kept_values = kept_starts[order], kept_values[order]
            cuts = np.flatnonzero(kept_starts[1:] != kept_starts[:-1]) + 1
            for first, share in zip(np.split(kept_starts, cuts), np.split(kept_values, cuts), strict=True):
                shares[(index, float(first[0]))] = share
        return shares, late, float(running[-1]) if len(running) else watermark

    def due(self, now: float | None = None, idle_s: float | None = None) -> list[str]:
        """Keys of windows past their end plus lateness by their series' watermark; with `now`
        (wall time) and `idle_s`, also those of series that sent nothing for idle_s seconds."""
        quiet = self.monotonic() - (idle_s or 0.0)
        out = []
        for k, a in self.open.items():
            series = series_of(k)
            clock = self.watermarks.get(series, 0.0)
            if now is not None and idle_s is not None and self.last_seen.get(series, 0.0) <= quiet:
                clock = max(clock, now)
            if a.end + self.lateness_s <= clock:
                out.append(k)
        return out

    def pop(self, key: str) -> Aggregate:
        agg = self.open.pop(key)
        series = series_of(key)
        self.by_series.get(series, set()).discard(key)
        self.dirty.add(series)
        series_size = key.rsplit("|", 1)[0]
        self.closed_until[series_size] = max(self.closed_until.get(series_size, float("-inf")), agg.end)
        return agg

    def dump_series(self, series: str) -> bytes:
        """The state record of one series."""
        prefix = f"{series}|"
        return orjson.dumps({
            "version": SeriesRecord.VERSION, "series": series,
            "watermark": float(self.watermarks.get(series, 0.0)),
            "closed_until": {k[len(prefix):]: float(v) for k, v in self.closed_until.items()
                             if k.startswith(prefix)},
            "applied": self.applied.get(series, {}),
            "windows": {k: orjson.loads(self.open[k].to_json())
                        for k in sorted(self.by_series.get(series, ()))}})

    def load_series(self, raw: bytes | str) -> str:
        """Put back a series record read from the table (after a restart or a rebalance). Its
        series counts as just seen: wall time closes it only after it stays quiet."""
        record = SeriesRecord.load(orjson.loads(raw))
        assert record is not None
        series = record.series
        self.watermarks[series] = record.watermark
        self.last_seen[series] = self.monotonic()
        for size, end in record.closed_until.items():
            self.closed_until[f"{series}|{size}"] = end
        self.applied[series] = dict(record.applied)
        keys = self.by_series.setdefault(series, set())
        for key, agg in record.windows.items():
            self.open[key] = Aggregate.from_json(orjson.dumps(agg))
            keys.add(key)
        return series
