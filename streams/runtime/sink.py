"""Batched, idempotent PostgreSQL sink.

Contract (what callers rely on):
- `add(row, source)` buffers a row (`source`: the event it came from); a batch starts being
  written when `max_rows` rows wait or the oldest is `max_ms` old, whichever comes first, in
  the background (pipelined: the next batch fills meanwhile; `add` only waits once
  `max_pending` rows wait), and whenever `flush()` is awaited: `flush()` returns once every
  row added before it has committed. The checkpointed processing path (streams.runtime.processing)
  flushes its sinks at the end of each batch and only then acks the batch's events, so an
  offset is committed only after its rows are in PostgreSQL.
- A batch is COPY'd into a temporary staging table (made once per connection) and moved with
  one `INSERT … SELECT … ON CONFLICT …` in one transaction: with the event id as key a replayed
  batch changes nothing.
- Any failure that is not a row's fault (PostgreSQL unreachable, a deadlock, a serialization
  failure, a table missing until a migration runs) puts the batch back and retries it with
  capped exponential backoff; `add` blocks once `max_pending` rows wait (backpressure):
  nothing is dropped or duplicated and no partition stalls for good.
- A row PostgreSQL refuses (CHECK violation, bad value) is isolated by writing the batch row
  by row; it goes to `on_reject(row, error, source)` (the agents dead-letter its source event
  with its coordinates) and is counted, and the other rows land.
- Every committed batch writes one row to `event_processing_metrics` in the same transaction
  (event_type `sink:<table>`, batch size, write time, how long its oldest row waited, retries),
  so the record exists exactly when the batch does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import asyncpg
from faust.types import StreamT
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel

from streams.runtime import tracing
from streams.runtime.emit import emitter
from streams.runtime.errors import PG_ROW_REFUSED, retrying
from streams.runtime.faust import Record

log = logging.getLogger(__name__)

SINK_ROWS = Counter("omnistream_sink_rows_total", "Rows written by a sink", ["table"])
SINK_REJECTED = Counter("omnistream_sink_rejected_rows_total", "Rows PostgreSQL refused", ["table"])
SINK_RETRIES = Counter("omnistream_sink_retries_total", "Failed batch writes retried", ["table"])
SINK_PENDING = Gauge("omnistream_sink_pending_rows", "Rows waiting for PostgreSQL", ["table"])
SINK_FLUSH_SECONDS = Histogram("omnistream_sink_flush_seconds", "Time to write one batch", ["table"])

Reject = Callable[[tuple, str, Any], Any]



class RowSink(Protocol):
    """The contract a state holder needs of a sink: buffer a row, and flush (wait until every
    buffered row is committed, raising when it cannot be). PgBatchSink is the implementation;
    unit tests pass a list-backed one."""

    def add_nowait(self, row: tuple, source: Any = None) -> None: ...

    def flush(self) -> Awaitable[int]: ...

class PgBatchSink:
    def __init__(self, dsn: str, table: str, columns: Sequence[str], *,
                 on_conflict: str = "ON CONFLICT (id) DO NOTHING",
                 dedupe_key: Callable[[tuple], Any] | None = None,
                 max_rows: int = 500, max_ms: float = 250, max_pending: int = 20_000,
                 on_reject: Reject | None = None,
                 backoff_max_s: float = 5.0, apply_sql: str | None = None,
                 stage_ddl: str | None = None, source_topic: str | None = None,
                 record_batches: bool = True):
        self.dsn, self.table, self.columns = dsn, table, list(columns)
        self._pending_gauge = SINK_PENDING.labels(table)  # set on every add: look the child up once
        self.on_conflict, self.dedupe_key = on_conflict, dedupe_key
        self.max_rows, self.max_ms, self.max_pending = max_rows, max_ms, max_pending
        self.on_reject, self.backoff_max_s = on_reject, backoff_max_s
        self._rows: list[tuple] = []
        self._sources: list[Any] = []  # the event each row came from (None: not from a stream)
        self._oldest: float | None = None
        self._lock = asyncio.Lock()
        self._room = asyncio.Event()
        self._room.set()
        self._pool: asyncpg.Pool | None = None
        self._task: asyncio.Task | None = None
        self._writing: asyncio.Future | None = None  # a flush started by add, in the background
        self._closed = False
        self.written = 0
        self.rejected = 0
        self._stage = f"_stage_{table}"
        # How staged rows reach the table: by default INSERT … SELECT … {on_conflict}; a sink that
        # goes through an SQL function passes its own statement ({stage} names the staging table).
        cols = ", ".join(self.columns)
        self.apply_sql = (apply_sql or
                          f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {{stage}} {on_conflict}"
                          ).format(stage=self._stage)
        self.stage_ddl = stage_ddl or f"(LIKE {table} INCLUDING DEFAULTS)"
        self.source_topic, self.record_batches = source_topic, record_batches

    async def start(self) -> PgBatchSink:
        self._task = asyncio.ensure_future(self._timer())
        return self

    async def stop(self) -> None:
        self._closed = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
        if self._pool is not None:
            await self._pool.close()

    async def __aenter__(self) -> PgBatchSink:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def pending(self) -> int:
        return len(self._rows)

    async def add(self, row: tuple, source: Record | None = None) -> None:
        while len(self._rows) >= self.max_pending:  # backpressure: the caller stops consuming
            self._room.clear()
            await self._room.wait()
        self.add_nowait(row, source)
        self._pending_gauge.set(len(self._rows))
        if len(self._rows) >= self.max_rows and (self._writing is None or self._writing.done()):
            # pipelined: this batch is written while the next one fills (up to max_pending)
            self._writing = asyncio.ensure_future(self._flush_logged())

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except Exception:  # flush retries what is not a row's fault; anything else is logged
            log.exception("sink flush failed", extra={"metadata": {"table": self.table}})

    def add_nowait(self, row: tuple, source: Record | None = None) -> None:
        """Buffer a row without waiting (no backpressure); the timer or the next flush writes it."""
        if self._oldest is None:
            self._oldest = time.monotonic()
        self._rows.append(row)
        self._sources.append(source)

    async def _timer(self) -> None:
        while True:
            await asyncio.sleep(self.max_ms / 1000 / 2)
            if self._oldest is not None and (time.monotonic() - self._oldest) * 1000 >= self.max_ms:
                await self._flush_logged()  # the timer must keep running

    async def flush(self) -> int:
        """Write what is buffered; returns once it has committed (retrying until it does)."""
        async with self._lock:
            if not self._rows:
                return 0
            pairs, oldest = list(zip(self._rows, self._sources, strict=True)), self._oldest
            self._rows, self._sources, self._oldest = [], [], None
            if self.dedupe_key is not None:
                pairs = list({self.dedupe_key(r): (r, src) for r, src in pairs}.values())
            self._pending_gauge.set(len(pairs) + len(self._rows))
            with tracing.span(f"sink flush {self.table}", **{
                    "db.system.name": "postgresql", "db.collection.name": self.table,
                    "db.operation.name": "COPY", "omnistream.rows": len(pairs)}):
                await self._write_with_retry(pairs, oldest)
            self._pending_gauge.set(len(self._rows))
            self._room.set()
            return len(pairs)

    async def _connect(self) -> asyncpg.Pool:
        if self._pool is None:
            pool = asyncpg.create_pool(self.dsn, min_size=1, max_size=2, timeout=10,
                                       command_timeout=60, init=self._create_stage)
            try:
                await pool  # opens the first connection (and its staging table)
            except BaseException:
                pool.terminate()  # e.g. the table is not migrated yet: retried with a new pool
                raise
            self._pool = pool
        return self._pool

    async def _create_stage(self, conn: asyncpg.Connection) -> None:
        """Once per connection, not per batch: the staging table lives as long as the session
        and empties itself at every commit."""
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {self._stage} {self.stage_ddl} ON COMMIT DELETE ROWS")

    def _after_failure(self, exc: BaseException) -> None:
        """Before a retry: count it and, when the connection itself failed, drop the pool."""
        SINK_RETRIES.labels(self.table).inc()
        if self._pool is not None and not isinstance(exc, asyncpg.PostgresError):
            with contextlib.suppress(Exception):
                self._pool.terminate()
            self._pool = None

    def _retrying(self, what: str):
        """Retry everything but a refused row (that is the row's fault, not the database's)."""
        return retrying(f"{what} into {self.table}", cap_s=self.backoff_max_s, log=log,
                        retry_if=lambda exc: not isinstance(exc, PG_ROW_REFUSED),
                        on_retry=self._after_failure)

    async def _write_with_retry(self, pairs: list[tuple[tuple, Any]], oldest: float | None = None) -> None:
        rows = [r for r, _ in pairs]
        try:
            async for attempt in self._retrying(f"batch of {len(rows)} rows"):
                with attempt:
                    started = time.perf_counter()
                    await self._write(rows, attempt.retry_state.attempt_number - 1, oldest)
                    took = time.perf_counter() - started
                    SINK_FLUSH_SECONDS.labels(self.table).observe(took)
                    if self.table != "metric_window_aggregates":  # its own flushes would feed back
                        emitter.emit("sink_flush_ms", took * 1000, "histogram", table=self.table)
        except PG_ROW_REFUSED as exc:
            log.warning("batch refused, isolating bad rows", extra={"metadata": {
                "table": self.table, "error": str(exc)}})
            await self._write_one_by_one(pairs, oldest)

    async def _write(self, rows: list[tuple], retries: int = 0, oldest: float | None = None) -> None:
        pool = await self._connect()
        async with pool.acquire() as conn, conn.transaction():
            started = time.monotonic()
            await conn.copy_records_to_table(self._stage, records=rows, columns=self.columns)
            await conn.execute(self.apply_sql)
            if self.record_batches:
                await conn.execute(
                    "INSERT INTO event_processing_metrics (event_type, topic, processing_duration_ms, "
                    "queue_wait_time_ms, success, retry_count, batch_size, metadata) "
                    "VALUES ($1, $2, $3, $4, true, $5, $6, $7)",
                    f"sink:{self.table}", self.source_topic,
                    round((time.monotonic() - started) * 1000, 3),
                    round(max(0.0, started - oldest) * 1000, 3) if oldest else 0.0,
                    retries, len(rows), '{"sink": "PgBatchSink"}')
        self.written += len(rows)
        SINK_ROWS.labels(self.table).inc(len(rows))

    async def _write_one_by_one(self, pairs: list[tuple[tuple, Any]], oldest: float | None) -> None:
        for row, source in pairs:
            try:
                await self._retrying("row")(self._write, [row], 0, oldest)
            except PG_ROW_REFUSED as exc:
                self.rejected += 1
                SINK_REJECTED.labels(self.table).inc()
                log.error("row refused by PostgreSQL", extra={"metadata": {
                    "table": self.table, "error": str(exc), "row": repr(row)[:500]}})
                if self.on_reject is not None:
                    result = self.on_reject(row, str(exc), source)
                    if asyncio.iscoroutine(result):
                        await result


def dead_letter_row(agent: str) -> Reject:
    """An `on_reject` that sends the refused row's source event to the dead-letter topic."""
    from streams.runtime.dlq import send_to_dlq

    async def reject(row: tuple, error: str, source: Any) -> None:
        if source is not None:
            await send_to_dlq(source, "row_refused", error, agent)

    return reject


async def run_sink(stream: StreamT, agent: str, model: type[BaseModel], sink: PgBatchSink,
                   to_row: Callable[[Any], tuple | None],
                   accept: Callable[[Any], bool] | None = None, max_events: int | None = None) -> None:
    """A sink agent on the checkpointed path: decode each event (bad ones dead-lettered), buffer
    its row, flush at the end of the batch; the batch is acked only after the commit.
    `accept(event)` False: the event is not for this sink (e.g. a control message)."""
    from streams.runtime.processing import decode_event, run_batches

    if sink.on_reject is None:
        sink.on_reject = dead_letter_row(agent)
    await sink.start()

    async def on_batch(events: Sequence[Any]) -> None:
        for event in events:
            if accept is not None and not accept(event):
                continue
            value = await decode_event(event, model, agent)
            row = to_row(value) if value is not None else None
            if row is not None:
                await sink.add(row, event)
        await sink.flush()

    try:
        await run_batches(stream, agent, on_batch, max_events=max_events)
    finally:
        await sink.stop()
