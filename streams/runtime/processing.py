"""The one checkpointed processing path every agent runs on.

`run_batches(stream, agent, on_batch)` hands the agent its events in batches (up to
`max_events`, or what arrived within `within_s`) and acknowledges a batch only after
`on_batch` has returned. A stateful agent declares its batch as a `Checkpoint`, which
`run_checkpoints` drives in this order (the metrics aggregator, the alert evaluator, the PRD
assembler, the mixin and pattern-feedback learners):

1. `apply`: decode each event (`decode_event`: bad input → dead-letter topic) and apply it to
   its in-memory state, skipping events its state has already applied (`Applied`);
2. `flush`: its outputs (PostgreSQL sinks commit, records go to the producer);
3. `save`: write the state it changed into its changelogged table (`table_put`), each record
   carrying, per source topic-partition, the highest offset folded into it;
4. the events are acked, and faust flushes the producer (changelog records and output events)
   before it commits their offsets.

A worker killed anywhere in there restarts from the last committed offsets with state that may
be ahead of them; the offsets stored in each state record make the replayed events no-ops, so
every table, window and model ends as if the crash never happened. Outputs (topics) are
at-least-once with deterministic event ids, so a subscriber drops a duplicate by id.

Failures that are not the input's fault (streams.runtime.errors) are retried with backoff and keep the
event; failures that are go to the dead-letter topic. An unexpected error outside the
per-event handlers means state could be half-written: the worker stops hard (nothing of the
batch is acknowledged) and a restart replays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from faust.types import TP, StreamT, TableT
from pydantic import BaseModel

from agents.logging import log_context
from schemas.codec import DecodeError, decode
from streams.config import Settings
from streams.runtime import faust as faust_runtime
from streams.runtime import tracing
from streams.runtime.dlq import CORRELATION_HEADER, header, send_to_dlq, valid_uuid
from streams.runtime.errors import InputRefused, is_fatal, is_retriable, refusal, retrying
from streams.runtime.faust import Reader, Record
from streams.runtime.metrics import EVENTS_PROCESSED, HANDLE_SECONDS
from streams.runtime.tables import KIND_HEADER, SOURCE_HEADER, ControlKind

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[M, Any], Awaitable[None]]

RECORD_NS = uuid.UUID("0b9c7f1e-3a6d-4e25-8c4b-5d2f9e8a1c37")
LAST_EVENT: dict[str, float] = {}  # agent → wall time of the last event it took (for /health)
_DEFAULTS = Settings.from_env(local_stack=False)
BATCH_EVENTS = _DEFAULTS.batch_events
BATCH_WITHIN_S = _DEFAULTS.batch_within_s
STOP_GRACE_S = 30.0  # a stopping worker waits this long for the batch in hand


# ---------------------------------------------------------------------------- records


def record_id(topic: str, partition: int, offset: int) -> uuid.UUID:
    """The id of an event whose publisher gave none: the same record always gets the same id."""
    return uuid.uuid5(RECORD_NS, f"{topic}/{partition}/{offset}")


def record_defaults(event: Record) -> dict[str, Any]:
    """Envelope fields for a value that left them out, derived from the record itself, so a
    replayed record is the same event (same id, same window)."""
    msg = event.message
    rid = record_id(msg.topic, msg.partition, msg.offset)
    ts = msg.timestamp if msg.timestamp and msg.timestamp > 0 else time.time()
    return {"id": rid, "occurred_at": datetime.fromtimestamp(ts, UTC),
            "correlation_id": valid_uuid(header(event, CORRELATION_HEADER)) or rid}


_internal_prefix: str | None = None


def internal_topic(topic: str) -> bool:
    """Topics the workers write for themselves (inboxes, changelogs): `<app id>-…`."""
    global _internal_prefix
    if _internal_prefix is None:  # once: this runs for every record
        from streams.runtime.app import settings

        _internal_prefix = f"{settings.app_id}-"
    return topic.startswith(_internal_prefix)


def control_kind(event: Record) -> ControlKind | None:
    """The `omnistream.kind` header, honoured only on internal topics: an outside publisher
    cannot make its record a tick, an install or anything but data. An unknown kind is data."""
    if not internal_topic(event.message.topic):
        return None
    kind = header(event, KIND_HEADER)
    try:
        return ControlKind(kind) if kind is not None else None
    except ValueError:
        return None


def origin(event: Record) -> tuple[str, int]:
    """(source topic:partition, offset) of the record this event stands for: the record itself,
    or for a record an intake re-keyed, the one it came from (SOURCE_HEADER)."""
    src = header(event, SOURCE_HEADER) if internal_topic(event.message.topic) else None
    if src:
        # Its own key: records of one source partition may reach a state record both directly
        # and through an intake's re-keying hop, each path in order but not with each other.
        topic, part, off = src.rsplit(":", 2)
        return f"via:{topic}:{part}", int(off)
    msg = event.message
    return f"{msg.topic}:{msg.partition}", msg.offset


def source_headers(event: Record) -> dict[str, bytes]:
    """Headers that carry an event's origin across a re-keying hop (see `origin`)."""
    where, offset = origin(event)
    return {SOURCE_HEADER: f"{where}:{offset}".encode()}


class Applied:
    """Highest offset applied per source topic-partition, kept inside a state record.

    Records of one source partition reach one state record in offset order (a re-keying intake
    keeps that order; a replay after a crash starts lower), so "at or below the stored offset"
    means "already in this state"."""

    @staticmethod
    def seen(applied: dict[str, int], where: str, offset: int) -> bool:
        return offset <= applied.get(where, -1)

    @staticmethod
    def mark(applied: dict[str, int], where: str, offset: int) -> None:
        if offset > applied.get(where, -1):
            applied[where] = offset


# ---------------------------------------------------------------------------- events


@functools.cache
def _processed(agent: str, outcome: str) -> Any:
    """The counter child of (agent, outcome), found once (`labels()` costs ~1 µs a call)."""
    return EVENTS_PROCESSED.labels(agent, outcome)


@functools.cache
def _handle_seconds(agent: str) -> Any:
    return HANDLE_SECONDS.labels(agent)


async def decode_event(event: Record, model: type[M], agent: str) -> M | None:
    """The event's value as `model` (envelope filled from the record), or None once it has been
    dead-lettered."""
    cached = event.decoded
    if cached is not None and cached[0] is model:  # another agent of this record decoded it
        return cached[1]
    try:
        value = decode(model, event.value, defaults=lambda: record_defaults(event))
    except DecodeError as exc:
        _processed(agent, "invalid").inc()
        await send_to_dlq(event, exc.kind, str(exc), agent)
        return None
    event.decoded = (model, value)
    return value


async def call_retrying(what: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Await fn(*args); a retriable failure is retried with capped backoff, others raise."""
    try:  # the common case without the retry machinery's per-call cost
        return await fn(*args)
    except Exception as exc:
        if not is_retriable(exc):
            raise
        log.warning("%s failed, retrying", what, extra={"metadata": {
            "error": f"{type(exc).__name__}: {exc}"[:500], "attempt": 1}})
    return await retrying(what, log=log)(fn, *args)


async def handle_event(event: Record, model: type[M], agent: str, handler: Handler) -> bool:
    """Decode and handle one event. Bad input and refused events go to the DLQ; failures that
    are not the input's fault are retried. True when it was handled."""
    header_cid = valid_uuid(header(event, CORRELATION_HEADER))
    started = time.perf_counter()
    LAST_EVENT[agent] = time.time()
    with tracing.processing(event, agent) as span, log_context(correlation_id=header_cid, component=agent):
        value = await decode_event(event, model, agent)
        if value is None:
            return False
        cid = getattr(value, "correlation_id", header_cid)
        tracing.annotate(span, correlation_id=cid)
        with log_context(correlation_id=cid):
            try:
                await call_retrying(f"{agent} handler", handler, value, event)
            except InputRefused as exc:
                _processed(agent, "refused").inc()
                await send_to_dlq(event, exc.reason, str(exc), agent)
                return False
            except Exception as exc:  # a handler bug must not stop the agent
                if is_fatal(exc):  # the deployment's fault: no dead letter makes it pass
                    _stop_hard(agent, 1, refusal(exc, _principal()))
                log.exception("handler failed")
                _processed(agent, "error").inc()
                await send_to_dlq(event, "handler_error", f"{type(exc).__name__}: {exc}", agent)
                return False
    _processed(agent, "ok").inc()
    _handle_seconds(agent).observe(time.perf_counter() - started)
    return True


# ---------------------------------------------------------------------------- batches

Batch = Callable[[Sequence[Any]], Awaitable[None]]


def _reader(stream: StreamT, agent: str, capacity: int, time_ordered: bool = False) -> Reader:
    """The agent's lane reader for the topics its faust stream subscribes."""
    return faust_runtime.LANES.reader(agent, faust_runtime.channel_topics(stream.channel), capacity,
                                      time_ordered=time_ordered)


async def run_batches(stream: StreamT, agent: str, on_batch: Batch, *, max_events: int | None = None,
                      within_s: float | None = None, time_ordered: bool = False) -> None:
    """Feed the agent's records to `on_batch` in batches; a batch counts as done (its offsets
    may be committed) once `on_batch` has returned.

    Records come from the agent's lane (streams.runtime.faust): whole fetches, in offset order
    per partition, without faust's per-record path. A batch is up to `max_events` records, or
    what arrived within `within_s` of its first. `time_ordered`: the partitions' records are
    merged by timestamp (lanes.TimeOrderedReader), not handed on one fetched list after another."""
    max_events = max_events or BATCH_EVENTS
    within = BATCH_WITHIN_S if within_s is None else within_s
    reader = _reader(stream, agent, capacity=max(4 * max_events, 10_000), time_ordered=time_ordered)
    try:
        while True:
            batch = await reader.take(max_events, within)
            await _apply(agent, on_batch, batch, reader)
    finally:
        reader.close()


class Checkpoint(Protocol):
    """One batch of a stateful agent, in the order `run_checkpoints` calls it (the module
    docstring says why this order makes a crash anywhere harmless)."""

    async def apply(self, events: Sequence[Record]) -> None:
        """Decode each event and fold it into the in-memory state, skipping what the state has
        already applied (its offsets); bad input to the dead-letter topic."""

    async def flush(self) -> None:
        """Make the batch's outputs durable: sinks committed, records handed to the producer
        (faust awaits their delivery before it commits the batch's offsets)."""

    def save(self) -> None:
        """Write the changed state, with the offsets it applied, into the changelogged table,
        for the partitions this worker still holds."""


async def run_checkpoints(stream: StreamT, agent: str, begin: Callable[[], Checkpoint], *,
                          max_events: int | None = None, within_s: float | None = None) -> None:
    """A stateful agent: per batch (see run_batches), a checkpoint from `begin()` is applied,
    flushed and saved; the batch is acknowledged after `save` returns."""
    async def on_batch(events: Sequence[Record]) -> None:
        checkpoint = begin()
        await checkpoint.apply(events)
        await checkpoint.flush()
        checkpoint.save()

    await run_batches(stream, agent, on_batch, max_events=max_events, within_s=within_s)


async def _apply(agent: str, on_batch: Batch, batch: list[Record], reader: Reader) -> None:
    """Run on_batch to the end. Cancelled (the worker stops): the batch gets a grace period to
    finish; if it does not, it is handed back uncommitted (replayed, and skipped by state,
    after restart). Failed: state may be half-applied, so the worker stops hard without
    committing it."""
    work = asyncio.ensure_future(on_batch(batch))
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(work), STOP_GRACE_S)
        finished = work.done() and not work.cancelled() and work.exception() is None
        reader.done(batch, handed_back=not finished)
        raise
    except Exception as exc:
        why = refusal(exc, _principal()) if is_fatal(exc) else "batch could not be applied"
        _stop_hard(agent, len(batch), why)
    reader.done(batch)


def _principal() -> str | None:
    """The Kafka principal this worker logs in as (for the line it stops with)."""
    from streams.config import Settings

    try:
        return Settings.from_env().kafka_sasl_username
    except Exception:  # the settings were read at start; this is only for a message
        return None


def _stop_hard(agent: str, events: int, why: str) -> None:
    log.critical("%s; stopping the worker without acknowledging it", why, exc_info=True,
                 extra={"metadata": {"agent": agent, "events": events}})
    logging.shutdown()
    os._exit(70)


async def run_intake(stream: StreamT, model: type[M], agent: str, handler: Handler, *,
                     concurrency: int = 1, time_ordered: bool = False) -> None:
    """A stateless agent: each event decoded and handled, the batch marked done after. A batch
    is whatever has arrived (no waiting to fill it: latency first). With `concurrency` > 1 the
    events are handled side by side instead (see run_concurrent). `time_ordered`: handled in
    timestamp order across partitions (see run_batches)."""
    if concurrency > 1:
        await run_concurrent(stream, model, agent, handler, concurrency)
        return

    async def on_batch(events: Sequence[Any]) -> None:
        for event in events:
            await handle_event(event, model, agent, handler)

    await run_batches(stream, agent, on_batch, within_s=0.0, time_ordered=time_ordered)


@dataclass(slots=True)
class InFlight:
    """A record being handled, and whether it is."""
    record: Any
    done: bool = False


class OrderedAcks:
    """Marks records handled out of order done in their partition's offset order: a record is
    done once it and every record before it in its partition are (`on_done(record)`)."""

    def __init__(self, on_done: Callable[[Any], None]) -> None:
        self._pending: dict[Any, deque[InFlight]] = defaultdict(deque)  # tp → in offset order
        self._on_done = on_done

    def started(self, event: Any) -> InFlight:
        entry = InFlight(event)
        self._pending[event.message.tp].append(entry)
        return entry

    def done(self, entry: InFlight) -> None:
        entry.done = True
        queue = self._pending[entry.record.message.tp]
        while queue and queue[0].done:
            self._on_done(queue.popleft().record)


async def run_concurrent(stream: StreamT, model: type[M], agent: str, handler: Handler,
                         concurrency: int) -> None:
    """A stateless agent whose events are handled side by side, up to `concurrency` at once
    (their outputs may leave in another order than they came), each marked done in offset
    order once handled. No batch waits for its slowest event before the next ones start."""
    gate = asyncio.Semaphore(concurrency)
    reader = _reader(stream, agent, capacity=max(8 * concurrency, 1000))
    acks = OrderedAcks(reader.mark)
    inflight: set[asyncio.Future] = set()

    async def one(event: Record, entry: InFlight) -> None:
        try:
            await handle_event(event, model, agent, handler)
        except asyncio.CancelledError:
            raise
        except Exception:
            _stop_hard(agent, 1, "event could not be handled")
        else:
            acks.done(entry)
        finally:
            reader.release(1)
            gate.release()

    try:
        while True:
            taken = await reader.take(concurrency, 0.0)
            for i, event in enumerate(taken):
                try:
                    await gate.acquire()
                except asyncio.CancelledError:
                    reader.release(len(taken) - i)  # never started: not committed
                    raise
                task = asyncio.create_task(one(event, acks.started(event)))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
    finally:  # stopping: what is in hand gets the grace period, the rest is not committed
        if inflight:
            await asyncio.wait(set(inflight), timeout=STOP_GRACE_S)
        for pending in inflight:
            pending.cancel()
        reader.close()


# ---------------------------------------------------------------------------- tables


def table_put(table: TableT, partition: int, key: Any, value: Any) -> None:
    """Set a table key and send it to the changelog partition `partition` (faust would take the
    partition from the current event, which a batch does not have)."""
    table.data[key] = value
    table.send_changelog(partition, key, value)


def table_delete(table: TableT, partition: int, key: Any) -> None:
    table.data.pop(key, None)
    table.send_changelog(partition, key, None, value_serializer="raw")


class TableStore:
    """A feature's changelogged table as its checkpoint uses it: read by key; written to a
    given changelog partition; and whether a source partition is still this worker's."""

    def __init__(self, table: TableT) -> None:
        self.table = table

    def get(self, key: Any) -> Any:
        return self.table.get(key)

    def put(self, partition: int, key: Any, value: Any) -> None:
        table_put(self.table, partition, key, value)

    def delete(self, partition: int, key: Any) -> None:
        table_delete(self.table, partition, key)

    @staticmethod
    def held(topic: str, partition: int) -> bool:
        return held(topic, partition)


def held(topic: str, partition: int) -> bool:
    """True while this worker is assigned the partition (a batch taken before a rebalance must
    not write the state of a partition another worker now owns)."""
    from streams.runtime.app import app

    return TP(topic, partition) in app.consumer.assignment()  # a set of TopicPartitions


async def produce(topic: Any, key: bytes | None, value: bytes | None, *,
                  headers: Mapping[str, bytes] | None = None, partition: int | None = None) -> None:
    """Send one record through the app's producer (`topic`: a faust topic or a name). Its
    delivery is awaited with the batch's commit (faust flushes the producer before it commits
    offsets), so this only hands the record over: faust's `Topic.send` builds a future message
    with callbacks per record, which cost more than the send (streams/runtime/faust)."""
    from streams.runtime.app import app

    name = topic if isinstance(topic, str) else topic.get_topic_name()
    send = faust_runtime.kafka_producer(app).send
    with tracing.sending(name, headers, key, partition) as traced:
        await call_retrying(f"send to {name}", functools.partial(
            send, name, value, key=key, partition=partition,
            headers=list(traced.items()) if traced else None))
