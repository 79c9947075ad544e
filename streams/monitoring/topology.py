"""Metric windows: metrics.events → per-series tumbling and hopping windows → PostgreSQL.

metrics-aggregator reads metrics.events itself: a sample keyed by its metric name (the topic's
contract) is already on the partition that owns that metric's windows and is folded in at
once; one with another key or none is re-keyed by name through <app>-metric-series first
(faust assigns the same partition numbers of both topics to the same worker). Bad events go to
the DLQ. On the checkpointed path (streams.runtime.processing) each batch folds its samples into
in-memory windows (agents/monitoring/windows.py), upserts the windows past their end (plus
lateness) into metric_window_aggregates and waits for that commit, then writes each changed
series' record (open windows, watermark, closed-until marks, source offsets applied) into the
`metric-windows` table, and only then is acked. After a crash a series' record says which
samples it holds (a replayed one is skipped) and which windows are closed (a replayed sample
for one is late, never a new partial row).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from faust.types import TP, StreamT
from pydantic import TypeAdapter, ValidationError

from agents.monitoring.windows import Aggregate, WindowSpec
from schemas.codec import MAX_VALUE_BYTES, describe, encode
from schemas.events import MAX_BATCH_SAMPLES, MetricBatchFields, MetricEvent, MetricSampleFields
from schemas.topics import METRICS_EVENTS
from streams.monitoring.aggregator import WINDOW_COLUMNS, Aggregator
from streams.runtime import tables, tracing
from streams.runtime.app import app, metrics_events, settings
from streams.runtime.dlq import CORRELATION_HEADER, correlation_headers, send_to_dlq
from streams.runtime.emit import emitter
from streams.runtime.faust import LANES, Record, fetch_is_stale, known_position
from streams.runtime.metrics import EVENTS_PROCESSED
from streams.runtime.processing import (
    LAST_EVENT,
    control_kind,
    decode_event,
    held,
    origin,
    produce,
    record_defaults,
    run_checkpoints,
    table_put,
)
from streams.runtime.sink import PgBatchSink
from streams.runtime.tables import KIND_HEADER, SOURCE_HEADER, ControlKind

log = logging.getLogger(__name__)

TUMBLING_S = settings.metric_window_s
HOPPING_S = settings.metric_hopping_window_s
HOP_STEP_S = settings.metric_hopping_step_s
LATENESS_S = settings.metric_lateness_s
FLUSH_S = settings.metric_flush_s
IDLE_CLOSE_S = settings.metric_idle_close_s
# A fetch answered this recently (an idle partition's is answered every fetch wait, 0.5 s) is
# what "caught up" is measured against.
FRESH_FETCH_S = 3.0
SPECS = [WindowSpec(TUMBLING_S)] + ([WindowSpec(HOPPING_S, HOP_STEP_S)] if HOPPING_S > 0 else [])


metrics_inbox = app.topic(tables.metrics_inbox(settings.app_id), key_type=bytes, value_type=bytes,
                          partitions=settings.partitions, internal=True,
                          value_serializer="raw", key_serializer="raw")
window_table = app.Table(tables.WINDOW_TABLE, default=None, partitions=settings.partitions,
                         key_type=bytes, value_type=bytes)  # raw bytes in the changelog


_UPSERT = ("ON CONFLICT (metric_name, labels_hash, window_start, window_end) DO UPDATE SET "
           + ", ".join(f"{c} = EXCLUDED.{c}" for c in WINDOW_COLUMNS[5:]))


# A batched record's samples share its offset: a sample's position is offset × SAMPLE_SLOTS +
# its index, so "applied up to" stays one number per source partition.
SAMPLE_SLOTS = 16384
assert SAMPLE_SLOTS > MAX_BATCH_SAMPLES


def sample_origin(event: Record) -> tuple[str, int]:
    """(source, base): sample i of the record behind `event` sits at position base + i of
    `source`. A sample re-keyed through the inbox carries its position in the source header."""
    where, offset = origin(event)
    if where.startswith("via:"):
        return where, offset
    return where, offset * SAMPLE_SLOTS


_BATCH = TypeAdapter(MetricBatchFields)
_SAMPLE = TypeAdapter(MetricSampleFields)


def _fields(m: MetricEvent) -> MetricSampleFields:
    return {"name": m.name, "value": m.value, "metric_type": m.metric_type, "labels": m.labels,
            "occurred_at": m.occurred_at, "id": m.id, "correlation_id": m.correlation_id}


async def decode_samples(event: Record, agent: str) -> list[tuple[int, MetricSampleFields]]:
    """The samples of one `metrics.events` record (one `MetricEvent` or a `MetricBatch`) as
    `MetricSampleFields` dicts with their index. A batch is validated straight from its bytes
    in one call; only when that fails are its samples checked one by one: a bad sample is
    dead-lettered alone (the letter carries it and its index), a record that is neither form
    whole."""
    raw = event.value
    if raw is not None and b'"samples"' in raw[:64]:
        if len(raw) <= MAX_VALUE_BYTES:
            try:
                return list(enumerate(_BATCH.validate_json(raw)["samples"]))
            except ValidationError:
                pass
        return await _decode_one_by_one(event, agent)
    if raw is not None and len(raw) <= MAX_VALUE_BYTES:
        try:  # one sample: the same checks, without a model or an envelope made for it
            return [(0, _SAMPLE.validate_json(raw))]
        except ValidationError:
            pass
    value = await decode_event(event, MetricEvent, agent)  # says what is wrong, dead-letters
    return [] if value is None else [(0, _fields(value))]


async def _decode_one_by_one(event: Record, agent: str) -> list[tuple[int, MetricSampleFields]]:
    raw = event.value or b""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        await send_to_dlq(event, "invalid_json", f"not valid JSON: {exc}", agent)
        return []
    if isinstance(data, dict) and "samples" not in data:  # one sample with "samples" in its text
        value = await decode_event(event, MetricEvent, agent)
        return [] if value is None else [(0, _fields(value))]
    samples = data.get("samples") if isinstance(data, dict) else None
    if not isinstance(data, dict) or set(data) != {"samples"} or not isinstance(samples, list) \
            or not samples or len(samples) > MAX_BATCH_SAMPLES or len(raw) > MAX_VALUE_BYTES:
        await send_to_dlq(event, "schema", "a MetricBatch is {\"samples\": [MetricEvent, ...]} "
                          f"with 1..{MAX_BATCH_SAMPLES} samples in at most {MAX_VALUE_BYTES} bytes", agent)
        return []
    out: list[tuple[int, MetricSampleFields]] = []
    for index, item in enumerate(samples):
        try:
            out.append((index, _SAMPLE.validate_python(item)))
        except ValidationError as exc:
            EVENTS_PROCESSED.labels(agent, "invalid").inc()
            await send_to_dlq(event, "schema", f"sample {index}: invalid MetricEvent: {describe(exc)}",
                              agent, sample=orjson.dumps(item), sample_index=index)
    return out


def as_event(event: Record, index: int, sample: MetricSampleFields) -> MetricEvent:
    """Sample `index` of the record behind `event` as a whole MetricEvent (its envelope derived
    from the record where it left it out: a replayed batch gives the same events)."""
    defaults = record_defaults(event)
    fields = {k: v for k, v in sample.items() if v is not None}
    return MetricEvent(**{**defaults, "id": uuid.uuid5(defaults["id"], str(index)), **fields})


aggregator = Aggregator(window_table, SPECS, LATENESS_S, IDLE_CLOSE_S)
# Told of every closed window, in order, before the series records saying "closed" are written
# (the alert evaluator registers itself): the windows know none of their readers by name.
WINDOW_LISTENERS: list[Callable[[Aggregate], Awaitable[None]]] = []


@app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust types receivers with `signal=`; ours take **kwargs
async def _forget_windows(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
    aggregator.reset()


@app.agent(app.topic(METRICS_EVENTS.name, metrics_inbox.get_topic_name(), key_type=bytes, value_type=bytes,
                     value_serializer="raw", key_serializer="raw"), name="metrics-aggregator")
async def metrics_aggregator(stream: StreamT) -> None:
    sink = aggregator.sink = await PgBatchSink(
        settings.database_url, "metric_window_aggregates", WINDOW_COLUMNS, on_conflict=_UPSERT,
        dedupe_key=lambda row: (row[0], row[3], row[4], row[5]), max_rows=5000, max_ms=500,
        source_topic=METRICS_EVENTS.name).start()

    try:
        await run_checkpoints(stream, "metrics-aggregator", _AggregatorCheckpoint)
    finally:
        await sink.stop()


class _AggregatorCheckpoint:
    """A batch of metric records (streams.runtime.processing.Checkpoint): samples folded into
    their windows; the due windows closed (rows in PostgreSQL, closings to the alert engine);
    the changed series saved."""

    def __init__(self) -> None:
        self.touched: set[int] = set()

    async def apply(self, events: Sequence[Any]) -> None:
        touched = self.touched
        folded = 0
        # One group per (partition, series, source) for the whole batch, as columns (values,
        # event times, positions): a series' samples stay in source order, and each group is
        # folded in one call.
        groups: dict[tuple, tuple[list[float], list[float], list[int]]] = {}
        for event in events:
            partition = event.partition
            if control_kind(event) is ControlKind.TICK:
                # A worker that took a partition over with nothing left to replay restores
                # its open windows here: wall time closes them once they are quiet.
                aggregator.windows(partition)
                touched.add(partition)
                continue
            received = event.timestamp
            received = received if received and received > 0 else time.time()
            where, base = sample_origin(event)
            key = event.key
            for index, m in await decode_samples(event, "metrics-aggregator"):
                name, position = m["name"], base + index
                if key != name.encode():  # repartition: a metric's windows live on one partition
                    whole = as_event(event, index, m)
                    await produce(metrics_inbox, name.encode(), encode(whole), headers={
                        **correlation_headers(whole.correlation_id),
                        KIND_HEADER: ControlKind.SAMPLE.header,
                        SOURCE_HEADER: f"{where}:{position}".encode()})
                    continue
                at = m.get("occurred_at")
                labels = m.get("labels")
                group = (partition, name, m["metric_type"],
                         tuple(sorted(labels.items())) if labels else (), where)
                columns = groups.get(group)
                if columns is None:
                    columns = groups[group] = ([], [], [])
                columns[0].append(float(m["value"]))
                columns[1].append(at.timestamp() if at is not None else received)
                columns[2].append(position)
            touched.add(partition)
        for (partition, name, metric_type, labels, where), (values, stamps, positions) in groups.items():
            folded += aggregator.add_columns(partition, name, metric_type, dict(labels), where,
                                             values, stamps, positions)
        if folded:  # bookkeeping once per batch, not per sample
            EVENTS_PROCESSED.labels("metrics-aggregator", "ok").inc(folded)
            LAST_EVENT["metrics-aggregator"] = time.time()

    async def flush(self) -> None:
        """Close the due windows; their rows committed and their closings sent to the alert
        engine before the series records saying "closed" are written."""
        idle = {p for p in self.touched if await _caught_up(p)}
        for _, agg in await aggregator.flush(self.touched, idle):
            for listener in WINDOW_LISTENERS:
                await listener(agg)

    def save(self) -> None:
        aggregator.save({p for p in self.touched if held(METRICS_EVENTS.name, p)},
                        put=lambda p, k, v: table_put(window_table, p, k, v))


EMIT_S = settings.metric_emit_s
COLLECT_S = settings.metric_collect_s


@app.timer(interval=EMIT_S)
async def send_metric_samples() -> None:
    try:
        await emitter.flush(metrics_events)
    except Exception:  # Kafka away: samples stay buffered (bounded) for the next round
        log.warning("metric samples not sent yet", exc_info=True)


@app.timer(interval=COLLECT_S)
async def collect_worker_metrics() -> None:
    from streams.runtime.introspect import consumer_lag

    emitter.collect_features()  # each feature's own figures (cache hit rate, pattern precision…)
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
    """A tick per partition holding open windows, or not restored yet since this worker took
    it: wall time closes idle series' windows, in the partition's own batch."""
    assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == METRICS_EVENTS.name}
    for partition in sorted(assigned | set(aggregator.by_partition)):
        w = aggregator.by_partition.get(partition)
        if (w is None or w.open) and await _caught_up(partition):
            await tracing.send(metrics_inbox, key=b"tick", value=b"{}", partition=partition,
                                     headers={KIND_HEADER: ControlKind.TICK.header, CORRELATION_HEADER: b""})


_behind_said: dict[int, float] = {}
BEHIND_SAY_EVERY_S = 30.0


def _say_behind(partition: int, tp: TP, high: int | None, position: int | None,
                handed_on: int | None) -> None:
    """Why a partition's open windows are not closed by idle time, once in a while: a source
    this worker reads is behind (or waits for its rebalance's seek)."""
    now = time.monotonic()
    if now - _behind_said.get(partition, 0.0) < BEHIND_SAY_EVERY_S:
        return
    _behind_said[partition] = now
    log.info("open windows wait for a source partition to be read up to its end", extra={"metadata": {
        "partition": partition, "source": f"{tp.topic}:{tp.partition}", "end": high,
        "fetched_to": position, "handed_on_to": handed_on,
        "sought": tp in LANES.expected}})


async def _caught_up(partition: int) -> bool:
    """True when this worker has read everything its sources hold for `partition` (every
    metrics.events partition it holds, and this partition of the inbox): a partition
    that is only behind (restoring after a restart, rewound, catching up) is not idle, and
    closing its windows by wall time would drop the samples still on their way as late. (A
    rewound partition reads as behind too: its position is back at the rewound offset.) The
    highwater must be fresh: while the partition's leader is unreachable (a broker died) the
    consumer keeps the last one it was told, and the samples published meanwhile are not idle
    time either."""
    consumer = app.consumer
    assigned = consumer.assignment()
    # Every source partition this worker reads, not only `partition`: a sample published with
    # no key can come from any of them, re-keyed into this partition of the inbox (after a
    # takeover the series is silent while its samples wait in another partition's backlog).
    inbox = TP(metrics_inbox.get_topic_name(), partition)
    for tp in sorted(tp for tp in assigned if tp.topic == METRICS_EVENTS.name or tp == inbox):
        if fetch_is_stale(app, tp, FRESH_FETCH_S):
            return False
        try:
            high = consumer.highwater(tp)
        except Exception:  # not known yet (just assigned): not idle either
            return False
        position = known_position(app, tp)  # never waits (see known_position)
        lane = LANES.handed_on(tp, position)  # None: waiting for the rebalance's seek
        if high is None or lane is None or lane < high:
            _say_behind(partition, tp, high, position, lane)
            return False
    return True
