"""The batched, idempotent PostgreSQL sink against a real PostgreSQL, including an outage."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from streams.infra import postgres
from streams.infra.migrate import migrate
from streams.infra.proc import free_port
from streams.runtime.sink import PgBatchSink
from tests.conftest import pg_fetch, pg_fetchval

COLUMNS = ("id", "pattern_name", "feedback_type", "user_weight")


def _rows(n: int, name: str = "p") -> list[tuple]:
    return [(uuid.uuid4(), name, "true_positive", 1.0) for _ in range(n)]


async def test_batches_close_on_size_or_time_and_flush_returns_after_the_commit(migrated_db):
    sink = await PgBatchSink(migrated_db, "pattern_feedback_log", COLUMNS, max_rows=100,
                             max_ms=300, source_topic="pattern.feedback").start()
    try:
        rows = _rows(250)
        for row in rows:
            await sink.add(row)
        # Past 100 rows a batch is written in the background: add never waited for a commit.
        assert sink.written == 0 and sink.pending == 250
        for _ in range(100):
            if sink.written == 250:
                break
            await asyncio.sleep(0.05)
        assert sink.written == 250 and sink.pending == 0
        assert await pg_fetchval(migrated_db, "SELECT count(*) FROM pattern_feedback_log") == 250
        few = _rows(20)  # below max_rows: the timer closes this batch
        for row in few:
            await sink.add(row)
        for _ in range(100):
            if sink.written == 270:
                break
            await asyncio.sleep(0.05)
        assert sink.written == 270
        more = _rows(10)
        for row in more:
            await sink.add(row)
        assert await sink.flush() == 10  # flush returns once they are committed
        assert await pg_fetchval(migrated_db, "SELECT count(*) FROM pattern_feedback_log") == 280
        # The same rows again (a replay after a crash): nothing changes.
        for row in rows:
            await sink.add(row)
        await sink.flush()
    finally:
        await sink.stop()
    assert await pg_fetchval(migrated_db, "SELECT count(*) FROM pattern_feedback_log") == 280
    batches = await pg_fetch(migrated_db, "SELECT * FROM event_processing_metrics WHERE "
                                          "event_type = 'sink:pattern_feedback_log' ORDER BY created_at")
    assert sum(b["batch_size"] for b in batches) == 530  # written twice, counted as batches
    assert all(b["success"] and b["topic"] == "pattern.feedback" and b["retry_count"] == 0 for b in batches)
    assert max(float(b["queue_wait_time_ms"]) for b in batches) >= 250  # the timer-closed batch
    assert max(float(b["queue_wait_time_ms"]) for b in batches) >= 250  # the timer-closed batch


async def test_a_refused_row_is_isolated_and_the_others_land(migrated_db):
    rejected: list[tuple] = []
    bad = (uuid.uuid4(), "p", "not-a-feedback-type", 1.0)
    async with PgBatchSink(migrated_db, "pattern_feedback_log", COLUMNS,
                           on_reject=lambda row, err, src: rejected.append((row, err, src))) as sink:
        for i, row in enumerate([*_rows(5), bad, *_rows(5)]):
            await sink.add(row, source=f"event-{i}")
    # The refused row comes back with its source (the agents dead-letter that event).
    assert [(r, s) for r, _, s in rejected] == [(bad, "event-5")] and "check" in rejected[0][1].lower()
    assert sink.rejected == 1 and sink.written == 10
    assert await pg_fetchval(migrated_db, "SELECT count(*) FROM pattern_feedback_log") == 10


@pytest.mark.slow
async def test_postgresql_down_for_a_while_loses_and_doubles_nothing():
    """A PostgreSQL of its own, stopped for 8 s in the middle of 6000 rows."""
    folder = Path(tempfile.mkdtemp(prefix="omnistream-sink-", dir="/tmp"))
    folder.chmod(0o755)
    port = free_port()
    await asyncio.to_thread(postgres.start, folder, port, lambda _: None)
    db = postgres.login_url(folder, port)
    try:
        await postgres.provision(folder, port, postgres.DB_NAME)
        await migrate(db, progress=lambda _: None)

        rows = _rows(6000)
        sink = await PgBatchSink(db, "pattern_feedback_log", COLUMNS, max_rows=200, max_ms=100,
                                 max_pending=1000, backoff_max_s=1.0).start()
        blocked_at = None
        try:
            for i, row in enumerate(rows):
                if i == 2000:
                    await asyncio.to_thread(postgres.stop, folder)
                    down_at = time.monotonic()
                    restart = asyncio.ensure_future(_restart_after(folder, port, 8.0))
                before = time.monotonic()
                await sink.add(row)
                if i > 2000 and blocked_at is None and time.monotonic() - before > 1.0:
                    blocked_at = i  # backpressure: add() waited while PostgreSQL was away
            await restart
            await sink.flush()
        finally:
            await sink.stop()
        assert blocked_at is not None and blocked_at <= 2000 + 1000 + 200
        assert time.monotonic() - down_at >= 8.0
        assert sink.written == 6000
        ids = {r[0] for r in rows}
        conn = await asyncpg.connect(db)
        try:
            stored = [r["id"] for r in await conn.fetch("SELECT id FROM pattern_feedback_log")]
            retried = await conn.fetchval("SELECT max(retry_count) FROM event_processing_metrics")
        finally:
            await conn.close()
        assert len(stored) == 6000 and set(stored) == ids  # nothing lost, nothing doubled
        assert retried >= 1
    finally:
        await asyncio.to_thread(postgres.stop, folder)
        shutil.rmtree(folder, ignore_errors=True)


async def _restart_after(folder: Path, port: int, seconds: float) -> None:
    await asyncio.sleep(seconds)
    await asyncio.to_thread(postgres.start, folder, port, lambda _: None)


async def test_an_error_that_is_not_the_rows_fault_is_retried_until_it_clears(migrated_db):
    """A missing table (say, a migration not yet applied) is the database's problem, not the
    rows': the batch is put back and retried, and lands once the table exists."""
    conn = await asyncpg.connect(migrated_db)
    try:
        await conn.execute("CREATE TABLE later_rows (id uuid PRIMARY KEY, n int NOT NULL)")
        await conn.execute("ALTER TABLE later_rows RENAME TO later_rows_hidden")
        sink = await PgBatchSink(migrated_db, "later_rows", ("id", "n"), backoff_max_s=0.3,
                                 stage_ddl="(id uuid, n int)", record_batches=False).start()
        rows = [(uuid.uuid4(), i) for i in range(50)]
        for row in rows:
            await sink.add(row)
        flushing = asyncio.ensure_future(sink.flush())
        await asyncio.sleep(1.5)
        assert not flushing.done() and sink.written == 0  # retrying, nothing dropped
        await conn.execute("ALTER TABLE later_rows_hidden RENAME TO later_rows")
        assert await asyncio.wait_for(flushing, 10) == 50
        await sink.stop()
        assert await conn.fetchval("SELECT count(*) FROM later_rows") == 50
        assert sink.rejected == 0
    finally:
        await conn.close()
