"""Batched, idempotent PostgreSQL sink.

Contract (what callers rely on):
- `add(row, on_commit)` buffers a row; a batch is written when it holds `max_rows` rows or its
  oldest row is `max_ms` old, whichever comes first.
- A batch is COPY'd into a temporary staging table and moved with one
  `INSERT … SELECT … ON CONFLICT …` in one transaction: with the event id as key a replayed
  batch changes nothing.
- `on_commit` callbacks (e.g. acking the Kafka event, so its offset may be committed) run only
  after that transaction commits.
- When PostgreSQL is unreachable the batch is retried with capped exponential backoff and
  `add` blocks once `max_pending` rows wait (backpressure): nothing is dropped or duplicated.
- A row PostgreSQL rejects (CHECK violation, bad value) is isolated by writing the batch row
  by row; it goes to `on_reject` and is counted, and the other rows land.
- Every committed batch writes one row to `event_processing_metrics` in the same transaction
  (event_type `sink:<table>`, batch size, write time, how long its oldest row waited, retries),
  so the record exists exactly when the batch does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger(__name__)

SINK_ROWS = Counter("omnistream_sink_rows_total", "Rows written by a sink", ["table"])
SINK_REJECTED = Counter("omnistream_sink_rejected_rows_total", "Rows PostgreSQL refused", ["table"])
SINK_RETRIES = Counter("omnistream_sink_retries_total", "Failed batch writes retried", ["table"])
SINK_PENDING = Gauge("omnistream_sink_pending_rows", "Rows waiting for PostgreSQL", ["table"])
SINK_FLUSH_SECONDS = Histogram("omnistream_sink_flush_seconds", "Time to write one batch", ["table"])

Callback = Callable[[], Any]
_RETRYABLE = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
              asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError, asyncio.TimeoutError,
              asyncpg.AdminShutdownError)


class PgBatchSink:
    def __init__(self, dsn: str, table: str, columns: Sequence[str], *,
                 on_conflict: str = "ON CONFLICT (id) DO NOTHING",
                 dedupe_key: Callable[[tuple], Any] | None = None,
                 max_rows: int = 500, max_ms: float = 250, max_pending: int = 20_000,
                 on_reject: Callable[[tuple, str], Any] | None = None,
                 backoff_max_s: float = 5.0, apply_sql: str | None = None,
                 stage_ddl: str | None = None, source_topic: str | None = None,
                 record_batches: bool = True):
        self.dsn, self.table, self.columns = dsn, table, list(columns)
        self._pending_gauge = SINK_PENDING.labels(table)  # set on every add: look the child up once
        self.on_conflict, self.dedupe_key = on_conflict, dedupe_key
        self.max_rows, self.max_ms, self.max_pending = max_rows, max_ms, max_pending
        self.on_reject, self.backoff_max_s = on_reject, backoff_max_s
        self._rows: list[tuple] = []
        self._callbacks: list[Callback] = []
        self._oldest: float | None = None
        self._lock = asyncio.Lock()
        self._room = asyncio.Event()
        self._room.set()
        self._pool: asyncpg.Pool | None = None
        self._task: asyncio.Task | None = None
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

    async def add(self, row: tuple, on_commit: Callback | None = None) -> None:
        while len(self._rows) >= self.max_pending:  # backpressure: the caller stops consuming
            self._room.clear()
            await self._room.wait()
        if self._oldest is None:
            self._oldest = time.monotonic()
        self._rows.append(row)
        if on_commit is not None:
            self._callbacks.append(on_commit)
        self._pending_gauge.set(len(self._rows))
        if len(self._rows) >= self.max_rows:
            await self.flush()

    def add_nowait(self, row: tuple, on_commit: Callback | None = None) -> None:
        """Buffer a row without waiting (no backpressure); the timer writes it. For callers
        outside a stream, e.g. a model's latest conflicts after a snapshot."""
        if self._oldest is None:
            self._oldest = time.monotonic()
        self._rows.append(row)
        if on_commit is not None:
            self._callbacks.append(on_commit)

    async def _timer(self) -> None:
        while True:
            await asyncio.sleep(self.max_ms / 1000 / 2)
            if self._oldest is not None and (time.monotonic() - self._oldest) * 1000 >= self.max_ms:
                try:
                    await self.flush()
                except Exception:  # logged in flush; the timer must keep running
                    log.exception("sink flush failed", extra={"metadata": {"table": self.table}})

    async def flush(self) -> int:
        async with self._lock:
            if not self._rows:
                return 0
            rows, callbacks, oldest = self._rows, self._callbacks, self._oldest
            self._rows, self._callbacks, self._oldest = [], [], None
            if self.dedupe_key is not None:
                rows = list({self.dedupe_key(r): r for r in rows}.values())
            self._pending_gauge.set(len(rows) + len(self._rows))
            await self._write_with_retry(rows, oldest)
            self._pending_gauge.set(len(self._rows))
            self._room.set()
            for callback in callbacks:
                callback()
            return len(rows)

    async def _connect(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2, timeout=10,
                                                   command_timeout=60)
        return self._pool

    async def _write_with_retry(self, rows: list[tuple], oldest: float | None = None) -> None:
        delay, retries = 0.1, 0
        while True:
            try:
                started = time.perf_counter()
                await self._write(rows, retries, oldest)
                SINK_FLUSH_SECONDS.labels(self.table).observe(time.perf_counter() - started)
                return
            except _RETRYABLE as exc:
                SINK_RETRIES.labels(self.table).inc()
                retries += 1
                log.warning("PostgreSQL unavailable, retrying batch", extra={"metadata": {
                    "table": self.table, "rows": len(rows), "retry_in_s": delay, "error": str(exc)}})
                if self._pool is not None:
                    with contextlib.suppress(Exception):
                        self._pool.terminate()
                    self._pool = None
                await asyncio.sleep(delay)
                delay = min(self.backoff_max_s, delay * 2)
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                log.warning("batch refused, isolating bad rows", extra={"metadata": {
                    "table": self.table, "error": str(exc)}})
                await self._write_one_by_one(rows, retries, oldest)
                return

    async def _write(self, rows: list[tuple], retries: int = 0, oldest: float | None = None) -> None:
        pool = await self._connect()
        async with pool.acquire() as conn, conn.transaction():
            started = time.monotonic()
            await conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {self._stage} {self.stage_ddl} ON COMMIT DELETE ROWS")
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

    async def _write_one_by_one(self, rows: list[tuple], retries: int, oldest: float | None) -> None:
        for row in rows:
            try:
                await self._write([row], retries, oldest)
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                self.rejected += 1
                SINK_REJECTED.labels(self.table).inc()
                log.error("row refused by PostgreSQL", extra={"metadata": {
                    "table": self.table, "error": str(exc), "row": repr(row)[:500]}})
                if self.on_reject is not None:
                    result = self.on_reject(row, str(exc))
                    if asyncio.iscoroutine(result):
                        await result
