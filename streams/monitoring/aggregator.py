"""Metric windows of the partitions a worker holds, and the batch logic around them, without
Faust: one state record per series in a table, closed windows written through a sink.

The table, sink, window specs and clock are given to it, so its contract is tested in
milliseconds (tests/unit/test_aggregator.py): closed windows are committed to the sink before
any series record says so, a sample a record already holds (by source position) is skipped
after a restart, and only partitions still held write their records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime

import numpy as np
import orjson
from prometheus_client import Counter, Gauge

from agents.monitoring.windows import Aggregate, Windows, WindowSpec, series_key
from streams.runtime.processing import Applied
from streams.runtime.sink import RowSink

log = logging.getLogger(__name__)

SAMPLES = Counter("omnistream_metric_samples_total", "Metric samples folded into windows")
LATE = Counter("omnistream_metric_samples_late_total", "Samples for windows already closed")
WINDOWS_CLOSED = Counter("omnistream_metric_windows_closed_total", "Windows written to PostgreSQL")
OPEN_WINDOWS = Gauge("omnistream_metric_windows_open", "Open metric windows on this worker")

WINDOW_COLUMNS = ("metric_name", "metric_type", "labels", "labels_hash", "window_start", "window_end",
                  "sample_count", "value_sum", "value_min", "value_max", "p50", "p95", "p99")


class Aggregator:
    """Windows of the partitions this worker holds, one state record per series in the table.

    A batch folds its samples into memory (skipping those a series' record already holds by
    offset), closes the windows that are due, writes their rows to PostgreSQL and waits for the
    commit, and only then writes the changed series records: a record never says "closed"
    before its row is in PostgreSQL, and a replayed sample never counts twice."""

    def __init__(self, table: MutableMapping[bytes, bytes] | None, specs: list[WindowSpec],
                 lateness_s: float, idle_close_s: float, sink: RowSink | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.table: MutableMapping[bytes, bytes] = table if table is not None else {}
        self.specs, self.lateness_s, self.idle_close_s = specs, lateness_s, idle_close_s
        self.clock, self.monotonic = clock, monotonic
        self.by_partition: dict[int, Windows] = {}
        self.sink = sink
        self.replayed = 0  # samples a replay brought again, already in their series' record

    def reset(self) -> None:
        self.by_partition.clear()

    def windows(self, partition: int) -> Windows:
        w = self.by_partition.get(partition)
        if w is None:  # first event since start or a rebalance: reload this partition's state
            w = self.by_partition[partition] = Windows(self.specs, self.lateness_s, self.monotonic)
            prefix = f"{partition}|".encode()
            for key, raw in list(self.table.items()):
                if raw is not None and key.startswith(prefix):
                    w.load_series(raw)
            log.info("metric windows restored", extra={"metadata": {
                "partition": partition, "series": len(w.applied), "open_windows": len(w.open)}})
        return w

    def add_columns(self, partition: int, name: str, metric_type: str, labels: dict[str, str], where: str,
                    values: list[float], stamps: list[float], positions: list[int]) -> int:
        """Fold samples of one series from one source, in the order they came, skipping each
        one at or below the highest position folded in before it (its record's, or an earlier
        sample's of this run: a re-keying worker that crashed sends a stretch again, so the
        inbox can hold positions 1..9, 5..9, 10..); returns how many were folded."""
        w = self.windows(partition)
        series = series_key(name, labels)
        applied = w.applied.setdefault(series, {})
        held = applied.get(where, -1)
        pos = np.asarray(positions, dtype=np.int64)
        before = np.maximum.accumulate(np.concatenate(([held], pos[:-1])))
        fresh = pos > before
        kept = int(np.count_nonzero(fresh))
        if kept < len(positions):  # a replay after a crash, or a stretch sent again
            self.replayed += len(positions) - kept
            log.debug("samples already in their series skipped", extra={"metadata": {
                "partition": partition, "series": series, "source": where, "skipped": len(positions) - kept,
                "first": positions[0], "held": held}})
            if not kept:
                return 0
            keep = fresh.tolist()
            values = [v for v, new in zip(values, keep, strict=True) if new]
            stamps = [t for t, new in zip(stamps, keep, strict=True) if new]
        Applied.mark(applied, where, int(pos.max()))
        horizon = self.clock() + self.lateness_s  # no closing from the future
        if max(stamps) >= horizon:
            stamps = [ts if ts < horizon else horizon for ts in stamps]
        late_before = w.late
        w.add_many(name, metric_type, labels, values, stamps, series)
        SAMPLES.inc(len(values))
        if w.late > late_before:
            LATE.inc(w.late - late_before)
            log.info("late samples dropped", extra={"metadata": {
                "series": series, "metric": name, "labels": labels, "late": w.late - late_before,
                "watermark": w.watermarks.get(series)}})
        return len(values)

    def close_due(self, partitions: set[int], idle: set[int] | None = None) -> list[tuple[int, Aggregate]]:
        """Pop the windows that are due in these partitions and buffer their rows. Wall time
        closes a silent series' windows only in the `idle` partitions (None: all), those whose
        sources the worker has read to their end: a series is not silent while its samples wait
        behind a broker that cannot be reached."""
        closed = []
        for partition in partitions:
            w = self.by_partition.get(partition)
            if w is None:
                continue
            idle_s = self.idle_close_s if idle is None or partition in idle else None
            for key in w.due(self.clock(), idle_s):
                agg = w.pop(key)
                closed.append((partition, agg))
                assert self.sink is not None, "started with the agent"
                self.sink.add_nowait(_row(agg))
        return closed

    async def flush(self, touched: set[int], idle: set[int] | None = None) -> list[tuple[int, Aggregate]]:
        """A batch's outputs: close the due windows of the touched partitions and wait until
        their rows are committed; `save` writes the series records after. A sink failure raises
        before any record is written (the batch is not acked; its replay closes the same
        windows again, as upserts). Returns the windows closed."""
        closed = self.close_due(touched, idle)
        assert self.sink is not None, "started with the agent"
        await self.sink.flush()
        WINDOWS_CLOSED.inc(len(closed))
        return closed

    def save(self, partitions: set[int], put: Callable[[int, bytes, bytes], None]) -> None:
        """Write the series records that changed (after the sink committed)."""
        for partition in partitions:
            w = self.by_partition.get(partition)
            if w is None:
                continue
            for series in w.dirty:
                put(partition, _table_key(partition, series), w.dump_series(series))
            w.dirty.clear()
        OPEN_WINDOWS.set(sum(len(x.open) for x in self.by_partition.values()))


def _table_key(partition: int, series: str) -> bytes:
    """The partition leads the key: after a restart each partition reloads only its series."""
    return f"{partition}|{series}".encode()


def _row(agg: Aggregate) -> tuple:
    r = agg.row()
    return (r["metric_name"], r["metric_type"], orjson.dumps(r["labels"]).decode(), r["labels_hash"],
            datetime.fromtimestamp(r["window_start"], UTC), datetime.fromtimestamp(r["window_end"], UTC),
            r["sample_count"], r["value_sum"], r["value_min"], r["value_max"], r["p50"], r["p95"], r["p99"])
