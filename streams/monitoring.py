"""Metric windows: metrics.events → per-series tumbling and hopping windows → PostgreSQL.

metrics-aggregator reads metrics.events itself: a sample keyed by its metric name (the topic's
contract) is already on the partition that owns that metric's windows and is folded in at
once; one with another key or none is re-keyed by name through <app>-metric-series first
(faust assigns the same partition numbers of both topics to the same worker). Bad events go to
the DLQ. The aggregator folds samples into in-memory windows (agents/monitoring/windows.py)
and, at least every second, writes the windows that changed into the `metric-windows` table
(changelog-backed) and only then acks the samples: a crash replays samples onto the last
written state, never loses them. Windows past their end (plus lateness) are upserted into
metric_window_aggregates through the batched sink and removed from the table only after that
batch committed.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client import Counter, Gauge

from agents.monitoring.windows import Aggregate, Windows, WindowSpec
from schemas.codec import encode
from schemas.events import MetricEvent
from schemas.topics import METRICS_EVENTS
from streams import tables
from streams.alerting import window_closed
from streams.app import app, metrics_events, settings
from streams.dlq import CORRELATION_HEADER, correlation_headers, handle_event, header
from streams.emit import emitter
from streams.metrics import EVENTS_PROCESSED
from streams.sink import PgBatchSink
from streams.tables import KIND_HEADER

log = logging.getLogger(__name__)

TUMBLING_S = float(os.environ.get("OMNISTREAM_METRIC_WINDOW_S", "60"))
HOPPING_S = float(os.environ.get("OMNISTREAM_METRIC_HOPPING_WINDOW_S", "300"))
HOP_STEP_S = float(os.environ.get("OMNISTREAM_METRIC_HOPPING_STEP_S", "60"))
LATENESS_S = float(os.environ.get("OMNISTREAM_METRIC_LATENESS_S", "5"))
FLUSH_S = float(os.environ.get("OMNISTREAM_METRIC_FLUSH_S", "1"))
IDLE_CLOSE_S = float(os.environ.get("OMNISTREAM_METRIC_IDLE_CLOSE_S", "30"))
SPECS = [WindowSpec(TUMBLING_S)] + ([WindowSpec(HOPPING_S, HOP_STEP_S)] if HOPPING_S > 0 else [])

SAMPLES = Counter("omnistream_metric_samples_total", "Metric samples folded into windows")
LATE = Counter("omnistream_metric_samples_late_total", "Samples for windows already closed")
WINDOWS_CLOSED = Counter("omnistream_metric_windows_closed_total", "Windows written to PostgreSQL")
OPEN_WINDOWS = Gauge("omnistream_metric_windows_open", "Open metric windows on this worker")

metrics_inbox = app.topic(tables.metrics_inbox(settings.app_id), key_type=bytes, value_type=bytes,
                          partitions=METRICS_EVENTS.partitions, internal=True,
                          value_serializer="raw", key_serializer="raw")
window_table = app.Table(tables.WINDOW_TABLE, default=None, partitions=METRICS_EVENTS.partitions,
                         key_type=bytes, value_type=bytes)  # raw bytes in the changelog


WINDOW_COLUMNS = ("metric_name", "metric_type", "labels", "labels_hash", "window_start", "window_end",
                  "sample_count", "value_sum", "value_min", "value_max", "p50", "p95", "p99")
_UPSERT = ("ON CONFLICT (metric_name, labels_hash, window_start, window_end) DO UPDATE SET "
           + ", ".join(f"{c} = EXCLUDED.{c}" for c in WINDOW_COLUMNS[5:]))


class Aggregator:
    """Windows of the partitions this worker holds, with what is not yet in the table."""

    def __init__(self) -> None:
        self.by_partition: dict[int, Windows] = {}
        self.pending: dict[int, list[Any]] = defaultdict(list)   # samples not yet in the table
        self.closing: dict[int, set[bytes]] = defaultdict(set)   # sunk, delete once committed
        self.committed: dict[int, set[bytes]] = defaultdict(set)
        self.sink: PgBatchSink | None = None

    def reset(self) -> None:
        self.by_partition.clear()
        self.pending.clear()
        self.closing.clear()
        self.committed.clear()

    def windows(self, partition: int) -> Windows:
        w = self.by_partition.get(partition)
        if w is None:  # first event since start or a rebalance: reload this partition's state
            w = self.by_partition[partition] = Windows(SPECS, LATENESS_S)
            prefix = f"{partition}|".encode()
            for key, raw in list(window_table.items()):
                if raw is not None and key.startswith(prefix):
                    w.seed(key[len(prefix):].decode(), Aggregate.from_json(raw))
        return w

    def add(self, m: MetricEvent, event: Any) -> None:
        partition = event.message.partition
        w = self.windows(partition)
        ts = min(m.occurred_at.timestamp(), time.time() + LATENESS_S)  # no closing from the future
        late_before = w.late
        w.add(m.name, m.metric_type, dict(m.labels), float(m.value), ts)
        SAMPLES.inc()
        if w.late > late_before:
            LATE.inc(w.late - late_before)
        self.pending[partition].append(event)

    def flush(self, partition: int) -> list[Aggregate]:
        """In partition context: write changed windows, close due ones, ack what is safe.
        Returns the windows closed now (the alert rules look at them)."""
        w = self.by_partition.get(partition)
        if w is None:
            return []
        closed = []
        for key in self.committed.pop(partition, set()):
            window_table.pop(key, None)
        for key in list(w.dirty):
            window_table[_table_key(partition, key)] = w.open[key].to_json()
        w.dirty.clear()
        for key in w.due(time.time(), IDLE_CLOSE_S):
            agg = w.pop(key)
            closed.append(agg)
            bkey = _table_key(partition, key)
            self.closing[partition].add(bkey)
            self.sink.add_nowait(_row(agg), on_commit=lambda p=partition, k=bkey: self._closed(p, k))
        for event in self.pending.pop(partition, []):
            event.ack()
        OPEN_WINDOWS.set(sum(len(x.open) for x in self.by_partition.values()))
        return closed

    def _closed(self, partition: int, key: bytes) -> None:
        if key in self.closing.get(partition, set()):
            self.closing[partition].discard(key)
            self.committed[partition].add(key)
            WINDOWS_CLOSED.inc()


def _table_key(partition: int, key: str) -> bytes:
    """The partition leads the key: after a restart each partition reloads only its windows."""
    return f"{partition}|{key}".encode()


def _row(agg: Aggregate) -> tuple:
    r = agg.row()
    return (r["metric_name"], r["metric_type"], orjson.dumps(r["labels"]).decode(), r["labels_hash"],
            datetime.fromtimestamp(r["window_start"], UTC), datetime.fromtimestamp(r["window_end"], UTC),
            r["sample_count"], r["value_sum"], r["value_min"], r["value_max"], r["p50"], r["p95"], r["p99"])


aggregator = Aggregator()


@app.on_partitions_revoked.connect
async def _forget_windows(sender: Any, revoked: Any, **kwargs: Any) -> None:
    aggregator.reset()


@app.agent(app.topic(METRICS_EVENTS.name, metrics_inbox.get_topic_name(), key_type=bytes, value_type=bytes,
                     value_serializer="raw", key_serializer="raw"), name="metrics-aggregator")
async def metrics_aggregator(stream: Any) -> None:
    aggregator.sink = await PgBatchSink(
        settings.database_url, "metric_window_aggregates", WINDOW_COLUMNS, on_conflict=_UPSERT,
        dedupe_key=lambda row: (row[0], row[3], row[4], row[5]), max_ms=500,
        source_topic=METRICS_EVENTS.name).start()

    async def handle(m: MetricEvent, event: Any) -> None:
        if event.key != m.name.encode():  # repartition: a metric's windows live on one partition
            await metrics_inbox.send(key=m.name.encode(), value=encode(m), headers={
                **correlation_headers(m.correlation_id), KIND_HEADER: b"sample"})
            event.ack()
            return
        aggregator.add(m, event)

    try:
        async for event in stream.noack().events():
            if header(event, KIND_HEADER) == "tick":
                for agg in aggregator.flush(event.message.partition):
                    await window_closed(agg)
                event.ack()
            elif not await handle_event(event, MetricEvent, "metrics-aggregator", handle):
                event.ack()
    finally:
        await aggregator.sink.stop()


EMIT_S = float(os.environ.get("OMNISTREAM_METRIC_EMIT_S", "1"))
COLLECT_S = float(os.environ.get("OMNISTREAM_METRIC_COLLECT_S", "10"))


@app.timer(interval=EMIT_S)
async def send_metric_samples() -> None:
    try:
        await emitter.flush(metrics_events)
    except Exception:  # Kafka away: samples stay buffered (bounded) for the next round
        log.warning("metric samples not sent yet", exc_info=True)


@app.timer(interval=COLLECT_S)
async def collect_worker_metrics() -> None:
    from streams.agents import template_cache
    from streams.learning import patterns
    from streams.web import consumer_lag

    totals = template_cache.totals()
    lookups = totals["hits"] + totals["misses"]
    if lookups:
        emitter.emit("template_cache_hit_rate", totals["hits"] / lookups)
    for st in template_cache.snapshot():
        emitter.emit("template_load_ms", st.load_time_ms, template=st.name)
    for summary in patterns.summaries():
        emitter.emit("pattern_precision", summary["precision"], pattern=summary["pattern"])
    outcomes: dict[str, dict[str, float]] = defaultdict(dict)
    for metric in EVENTS_PROCESSED.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                outcomes[sample.labels["agent"]][sample.labels["outcome"]] = sample.value
    for agent, counts in outcomes.items():
        total = sum(counts.values())
        if total:
            emitter.emit("event_success_rate", counts.get("ok", 0.0) / total, agent=agent)
    await consumer_lag()  # refreshes omnistream_consumer_lag, collected below
    emitter.collect_registry()


@app.timer(interval=FLUSH_S)
async def metric_window_ticks() -> None:
    """One tick per partition this worker holds windows for: flushes run in partition context."""
    for partition, w in list(aggregator.by_partition.items()):
        if aggregator.pending.get(partition) or w.open or aggregator.committed.get(partition):
            await metrics_inbox.send(key=b"tick", value=b"{}", partition=partition,
                                     headers={KIND_HEADER: b"tick", CORRELATION_HEADER: b""})
