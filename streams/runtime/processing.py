"""The one checkpointed processing path every agent runs on.

`run_batches(stream, agent, on_batch)` hands the agent its events in batches (up to
`max_events`, or what arrived within `within_s`) and acknowledges a batch only after
`on_batch` has returned. An agent's `on_batch` does, in this order:

1. decode each event (`decode_event`: bad input → dead-letter topic) and apply it to its
   in-memory state, skipping events its state has already applied (`Applied`);
2. flush its sinks (PostgreSQL commits);
3. write the state it changed into its changelogged table (`table_put`), each record carrying,
   per source topic-partition, the highest offset folded into it;
4. return: the events are acked, and faust flushes the producer (changelog records and output
   events) before it commits their offsets.

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
import logging
import os
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from faust.transport.consumer import Consumer
from faust.types import TP, EventT, StreamT, TableT
from pydantic import BaseModel

from agents.logging import log_context
from schemas.codec import DecodeError, decode
from streams.config import Settings
from streams.runtime.dlq import CORRELATION_HEADER, header, send_to_dlq, valid_uuid
from streams.runtime.errors import InputRefused, is_retriable, retrying
from streams.runtime.faust_patches import InOrder
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


def record_defaults(event: EventT) -> dict[str, Any]:
    """Envelope fields for a value that left them out, derived from the record itself, so a
    replayed record is the same event (same id, same window)."""
    msg = event.message
    rid = record_id(msg.topic, msg.partition, msg.offset)
    ts = msg.timestamp if msg.timestamp and msg.timestamp > 0 else time.time()
    return {"id": rid, "occurred_at": datetime.fromtimestamp(ts, UTC),
            "correlation_id": valid_uuid(header(event, CORRELATION_HEADER)) or rid}


def internal_topic(topic: str) -> bool:
    """Topics the workers write for themselves (inboxes, changelogs): `<app id>-…`."""
    from streams.runtime.app import settings

    return topic.startswith(f"{settings.app_id}-")


def control_kind(event: EventT) -> ControlKind | None:
    """The `omnistream.kind` header, honoured only on internal topics: an outside publisher
    cannot make its record a tick, an install or anything but data. An unknown kind is data."""
    if not internal_topic(event.message.topic):
        return None
    kind = header(event, KIND_HEADER)
    try:
        return ControlKind(kind) if kind is not None else None
    except ValueError:
        return None


def origin(event: EventT) -> tuple[str, int]:
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


def source_headers(event: EventT) -> dict[str, bytes]:
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


async def decode_event(event: EventT, model: type[M], agent: str) -> M | None:
    """The event's value as `model` (envelope filled from the record), or None once it has been
    dead-lettered."""
    try:
        return decode(model, event.value, defaults=record_defaults(event))
    except DecodeError as exc:
        EVENTS_PROCESSED.labels(agent, "invalid").inc()
        await send_to_dlq(event, exc.kind, str(exc), agent)
        return None


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


async def handle_event(event: EventT, model: type[M], agent: str, handler: Handler) -> bool:
    """Decode and handle one event. Bad input and refused events go to the DLQ; failures that
    are not the input's fault are retried. True when it was handled."""
    header_cid = valid_uuid(header(event, CORRELATION_HEADER))
    started = time.perf_counter()
    LAST_EVENT[agent] = time.time()
    with log_context(correlation_id=header_cid, component=agent):
        value = await decode_event(event, model, agent)
        if value is None:
            return False
        with log_context(correlation_id=getattr(value, "correlation_id", header_cid)):
            try:
                await call_retrying(f"{agent} handler", handler, value, event)
            except InputRefused as exc:
                EVENTS_PROCESSED.labels(agent, "refused").inc()
                await send_to_dlq(event, exc.reason, str(exc), agent)
                return False
            except Exception as exc:  # a handler bug must not stop the agent
                log.exception("handler failed")
                EVENTS_PROCESSED.labels(agent, "error").inc()
                await send_to_dlq(event, "handler_error", f"{type(exc).__name__}: {exc}", agent)
                return False
    EVENTS_PROCESSED.labels(agent, "ok").inc()
    HANDLE_SECONDS.labels(agent).observe(time.perf_counter() - started)
    return True


# ---------------------------------------------------------------------------- batches

Batch = Callable[[Sequence[Any]], Awaitable[None]]


async def run_batches(stream: StreamT, agent: str, on_batch: Batch, *, max_events: int | None = None,
                      within_s: float | None = None) -> None:
    """Feed the stream to `on_batch` in batches; a batch is acked once `on_batch` has returned.

    The events are read by a task of their own into a bounded queue, and batched here (up to
    `max_events`, or what arrived within `within_s` of the batch's first event); this path, not
    faust's `take_events`, decides when an event is acked (faust's take acks whatever happens
    to the batch, and was measured to drop events at a full buffer's edge)."""
    max_events = max_events or BATCH_EVENTS
    within = BATCH_WITHIN_S if within_s is None else within_s
    queue: asyncio.Queue = asyncio.Queue(maxsize=max_events)
    loop = asyncio.get_running_loop()

    from streams.runtime.app import app

    in_order = InOrder()
    consumer = cast(Consumer, app.consumer)  # faust's transport consumer behind ConsumerT

    async def read() -> None:
        async for event in stream.noack().events():  # type: ignore[attr-defined]  # Stream.noack; not on StreamT
            if not in_order.holds_back(event.message, consumer):
                await queue.put(event)

    reader = asyncio.ensure_future(read())
    last_offsets: dict[tuple[str, int], int] = {}
    try:
        while True:
            first = await _first(queue, reader)
            if first is _ENDED:
                return
            batch = [first]
            deadline = loop.time() + within
            while len(batch) < max_events:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), left))
                except TimeoutError:
                    break
            _check_contiguous(agent, batch, last_offsets)
            await _apply(agent, on_batch, batch)
            for event in batch:
                event.ack()
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader


def _check_contiguous(agent: str, batch: list[Any], last: dict[tuple[str, int], int]) -> None:
    """Log when a partition's offsets jump between deliveries. A record faust passed over within
    one generation never gets here (InOrder rewinds to it first); what does is a new generation
    or a hole InOrder found to hold no record."""
    for event in batch:
        msg = event.message
        tp = (msg.topic, msg.partition)
        before = last.get(tp)
        if before is not None and msg.offset > before + 1:
            log.info("offsets jumped in delivery (a new consumer generation, or an empty hole)",
                     extra={"metadata": {
                "agent": agent, "topic": msg.topic, "partition": msg.partition,
                "after": before, "next": msg.offset}})
        last[tp] = msg.offset


_ENDED = object()  # the stream stopped (the worker is stopping)


async def _first(queue: asyncio.Queue, reader: asyncio.Future) -> Any:
    """The next event, waiting as long as it takes; raises if the reading task ended."""
    if not queue.empty():
        return queue.get_nowait()
    getter = asyncio.ensure_future(queue.get())
    try:
        await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        return getter.result()
    reader.result()  # raises what ended the reader
    return _ENDED


async def _apply(agent: str, on_batch: Batch, batch: list[Any]) -> None:
    """Run on_batch to the end. Cancelled (the worker stops): the batch gets a grace period to
    finish; if it does not, it is left unacked (replayed, and skipped by state, after restart).
    Failed: state may be half-applied, so the worker stops hard without acking it."""
    work = asyncio.ensure_future(on_batch(batch))
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(work), STOP_GRACE_S)
        if work.done() and not work.cancelled() and work.exception() is None:
            for event in batch:
                event.ack()
        raise
    except Exception:
        _stop_hard(agent, len(batch), "batch could not be applied")


def _stop_hard(agent: str, events: int, why: str) -> None:
    log.critical("%s; stopping the worker without acknowledging it", why, exc_info=True,
                 extra={"metadata": {"agent": agent, "events": events}})
    logging.shutdown()
    os._exit(70)


async def run_intake(stream: StreamT, model: type[M], agent: str, handler: Handler, *,
                     concurrency: int = 1) -> None:
    """A stateless agent: each event decoded and handled, the batch acked after. A batch is
    whatever has arrived (no waiting to fill it: latency first). With `concurrency` > 1 the
    events are handled side by side instead (see run_concurrent)."""
    if concurrency > 1:
        await run_concurrent(stream, model, agent, handler, concurrency)
        return

    async def on_batch(events: Sequence[Any]) -> None:
        for event in events:
            await handle_event(event, model, agent, handler)

    await run_batches(stream, agent, on_batch, within_s=0.0)


class OrderedAcks:
    """Acks events handled out of order in their partition's offset order: an event is acked
    once it and every event before it in its partition are done. (faust's own commit of
    out-of-order acks does not see a gap of one offset right after the committed one.)"""

    def __init__(self) -> None:
        self._pending: dict[Any, deque[list]] = defaultdict(deque)  # tp → [event, done]

    def started(self, event: EventT) -> list:
        entry = [event, False]
        self._pending[event.message.tp].append(entry)
        return entry

    def done(self, entry: list) -> None:
        entry[1] = True
        queue = self._pending[entry[0].message.tp]
        while queue and queue[0][1]:
            queue.popleft()[0].ack()


async def run_concurrent(stream: StreamT, model: type[M], agent: str, handler: Handler,
                         concurrency: int) -> None:
    """A stateless agent whose events are handled side by side, up to `concurrency` at once
    (their outputs may leave in another order than they came), each acked in offset order
    once handled. No batch waits for its slowest event before the next ones start."""
    from streams.runtime.app import app

    gate = asyncio.Semaphore(concurrency)
    acks = OrderedAcks()
    in_order = InOrder()
    consumer = cast(Consumer, app.consumer)
    inflight: set[asyncio.Future] = set()

    async def one(event: EventT, entry: list) -> None:
        try:
            await handle_event(event, model, agent, handler)
        except asyncio.CancelledError:
            raise
        except Exception:
            _stop_hard(agent, 1, "event could not be handled")
        else:
            acks.done(entry)
        finally:
            gate.release()

    try:
        async for event in stream.noack().events():  # type: ignore[attr-defined]  # Stream.noack; not on StreamT
            if in_order.holds_back(event.message, consumer):
                continue
            await gate.acquire()
            task = asyncio.create_task(one(event, acks.started(event)))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
    finally:  # stopping: what is in hand gets the grace period, the rest stays unacked
        if inflight:
            await asyncio.wait(set(inflight), timeout=STOP_GRACE_S)
        for pending in inflight:
            pending.cancel()


# ---------------------------------------------------------------------------- tables


def table_put(table: TableT, partition: int, key: Any, value: Any) -> None:
    """Set a table key and send it to the changelog partition `partition` (faust would take the
    partition from the current event, which a batch does not have)."""
    table.data[key] = value
    table.send_changelog(partition, key, value)


def table_delete(table: TableT, partition: int, key: Any) -> None:
    table.data.pop(key, None)
    table.send_changelog(partition, key, None, value_serializer="raw")


def held(topic: str, partition: int) -> bool:
    """True while this worker is assigned the partition (a batch taken before a rebalance must
    not write the state of a partition another worker now owns)."""
    from streams.runtime.app import app

    return TP(topic, partition) in app.consumer.assignment()  # a set of TopicPartitions
