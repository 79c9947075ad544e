"""The windowed metrics pipeline on real Kafka + PostgreSQL: a database outage mid-load."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from tests.conftest import pg_fetchval


async def test_postgresql_stopped_20s_during_20000_metric_events_loses_and_doubles_nothing(services):
    """Samples keyed by metric name; PostgreSQL of its own, stopped for 20 s after 8000 of them."""
    from aiokafka import AIOKafkaProducer

    from schemas.codec import encode
    from schemas.events import MetricEvent
    from schemas.topics import METRICS_EVENTS
    from streams.infra import postgres
    from streams.infra.migrate import migrate
    from streams.infra.proc import free_port
    from tests.conftest import start_worker, stop_worker

    folder = Path(tempfile.mkdtemp(prefix="omnistream-metrics-", dir="/tmp"))
    folder.chmod(0o755)
    port = free_port()
    await asyncio.to_thread(postgres.start, folder, port, lambda _: None)
    db = postgres.login_url(folder, port)
    name = f"outage_{uuid.uuid4().hex[:8]}"
    n, series = 20_000, 5
    base = time.time() - 400
    expected: dict[tuple[str, float], int] = {}
    worker = None
    try:
        await postgres.provision(folder, port, postgres.DB_NAME)
        await migrate(db, progress=lambda _: None)
        worker = start_worker(services, db, f"omnistream-metrics-{uuid.uuid4().hex[:6]}", "m", {
            "OMNISTREAM_AUTO_OFFSET_RESET": "latest", "OMNISTREAM_METRIC_WINDOW_S": "10",
            "OMNISTREAM_METRIC_HOPPING_WINDOW_S": "0",
            "OMNISTREAM_METRIC_LATENESS_S": "2"})
        await asyncio.sleep(3)  # the worker's consumer holds its partitions (reset = latest)
        producer = AIOKafkaProducer(bootstrap_servers=services.bootstrap, linger_ms=10)
        await producer.start()
        stopped_at = None
        try:
            for i in range(n):
                ts = base + i * 0.015  # 300 s of samples: 30 ten-second windows
                label = f"s{i % series}"
                event = MetricEvent(name=name, value=float(i % 250), metric_type="histogram",
                                    labels={"series": label}, occurred_at=datetime.fromtimestamp(ts, UTC))
                await producer.send(METRICS_EVENTS.name, encode(event), key=name.encode())
                start = ts - ts % 10
                expected[(label, start)] = expected.get((label, start), 0) + 1
                if i == 8000:
                    await producer.flush()
                    await asyncio.to_thread(postgres.stop, folder)
                    stopped_at = time.monotonic()
            await producer.flush()
        finally:
            await producer.stop()
        await asyncio.sleep(max(0.0, 20 - (time.monotonic() - stopped_at)))
        await asyncio.to_thread(postgres.start, folder, port, lambda _: None)

        deadline = time.monotonic() + 120
        total = 0
        while time.monotonic() < deadline and total != n:
            total = await pg_fetchval(db, "SELECT coalesce(sum(sample_count), 0) "
                                          "FROM metric_window_aggregates WHERE metric_name = $1", name)
            await asyncio.sleep(1)
        conn = await asyncpg.connect(db)
        try:
            rows = await conn.fetch("SELECT labels->>'series' AS s, extract(epoch FROM window_start) "
                                    "AS start, sample_count, value_min, value_max, p50 "
                                    "FROM metric_window_aggregates WHERE metric_name = $1", name)
            retried = await conn.fetchval("SELECT max(retry_count) FROM event_processing_metrics "
                                          "WHERE event_type = 'sink:metric_window_aggregates'")
        finally:
            await conn.close()
        got = {(r["s"], float(r["start"])): r["sample_count"] for r in rows}
        assert total == n
        assert got == {k: v for k, v in expected.items()}  # every window once, with every sample
        assert all(r["value_min"] >= 0 and r["value_max"] <= 249 for r in rows)
        assert retried and retried >= 1  # the sink did retry while PostgreSQL was away
    finally:
        if worker is not None:
            stop_worker(worker)
        await asyncio.to_thread(postgres.stop, folder)
        shutil.rmtree(folder, ignore_errors=True)
