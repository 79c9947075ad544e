"""Metric windows (pure) and the windowed metrics pipeline on real Kafka + PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from agents.monitoring.windows import Aggregate, Windows, WindowSpec, labels_hash, series_key
from tests.conftest import pg_fetchval


def test_tumbling_and_hopping_window_starts():
    assert WindowSpec(60).starts(125.0) == [120.0]
    assert WindowSpec(60).kind == "tumbling"
    hop = WindowSpec(300, 60)
    assert hop.kind == "hopping" and hop.starts(125.0) == [-120.0, -60.0, 0.0, 60.0, 120.0]
    assert all(s <= 125.0 < s + 300 for s in hop.starts(125.0))


def test_aggregate_counts_sums_and_quantiles_and_survives_serialisation():
    agg = Aggregate("m", "histogram", {"a": "1"}, 0, 60)
    values = [random.Random(1).uniform(0, 1000) for _ in range(5000)]
    for v in values:
        agg.add(v)
    back = Aggregate.from_json(agg.to_json())
    assert (back.count, back.total, back.low, back.high) == (5000, sum(values), min(values), max(values))
    exact = sorted(values)
    for q in (0.5, 0.95, 0.99):
        assert abs(back.quantile(q) - exact[int(q * 5000)]) < 0.02 * 1000  # KLL rank error ~1.3 %
    other = Aggregate("m", "histogram", {"a": "1"}, 0, 60)
    other.add(-5.0)
    back.merge(other)
    assert back.count == 5001 and back.low == -5.0


def test_windows_close_after_lateness_and_late_samples_are_counted_not_merged():
    w = Windows([WindowSpec(10)], lateness_s=2)
    for t in range(0, 10):
        w.add("m", "gauge", {}, float(t), float(t))
    assert w.due() == []
    w.add("m", "gauge", {}, 1.0, 11.0)   # watermark 11 < 10 + 2: [0,10) still open
    assert w.due() == []
    w.add("m", "gauge", {}, 1.0, 12.5)
    (key,) = w.due()
    closed = w.pop(key)
    assert (closed.start, closed.end, closed.count, closed.total) == (0.0, 10.0, 10, 45.0)
    w.add("m", "gauge", {}, 99.0, 3.0)   # belongs to the closed window
    assert w.late == 1 and all(a.start == 10.0 for a in w.open.values())
    # Closed by wall time (idle) while its series' watermark is still inside: never re-opened.
    w2 = Windows([WindowSpec(10)], lateness_s=100)
    w2.add("m", "gauge", {}, 1.0, 1.0)
    (k2,) = w2.due(now=1e9, idle_s=0.0)
    w2.pop(k2)
    w2.add("m", "gauge", {}, 1.0, 2.0)
    assert w2.late == 1 and w2.open == {}


def test_each_series_keeps_its_own_watermark():
    w = Windows([WindowSpec(10)], lateness_s=1)
    w.add("m", "gauge", {"s": "fast"}, 1.0, 100.0)   # one series far ahead on the partition...
    w.add("m", "gauge", {"s": "slow"}, 1.0, 5.0)     # ...does not make another one's samples late
    assert w.late == 0 and len(w.open) == 2
    assert [w.open[k].labels["s"] for k in w.due()] == []
    w.add("m", "gauge", {"s": "slow"}, 1.0, 11.5)
    assert [w.open[k].labels["s"] for k in w.due()] == ["slow"]


def test_series_identity_ignores_label_order():
    assert labels_hash({"a": "1", "b": "2"}) == labels_hash({"b": "2", "a": "1"})
    assert series_key("m", {"a": "1"}) != series_key("m", {"a": "2"})


@pytest.mark.slow
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
    db = postgres.url_for(port)
    name = f"outage_{uuid.uuid4().hex[:8]}"
    n, series = 20_000, 5
    base = time.time() - 400
    expected: dict[tuple[str, float], int] = {}
    worker = None
    try:
        await postgres.ensure_database(db)
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


@pytest.mark.parametrize("specs", [[WindowSpec(10)], [WindowSpec(10), WindowSpec(30, 10)]])
def test_folding_a_batch_equals_folding_its_samples_one_by_one(specs):
    """add_many keeps add's semantics: each sample is checked against the watermark that
    includes it, late ones are dropped, every window gets the same count/sum/min/max/sketch."""
    rng = random.Random(7)
    stamps = [1000 + i * 0.5 + rng.uniform(-12, 3) for i in range(3000)]  # out of order, some late
    values = [rng.uniform(-5, 50) for _ in stamps]
    one, many = Windows(specs, 2.0), Windows(specs, 2.0)
    for v, ts in zip(values, stamps, strict=True):
        one.add("m", "gauge", {"a": "1"}, v, ts)
    for lo in range(0, len(values), 700):  # batches of 700
        many.add_many("m", "gauge", {"a": "1"}, values[lo:lo + 700], stamps[lo:lo + 700])
    assert one.late == many.late > 0
    assert one.watermarks == many.watermarks
    assert set(one.open) == set(many.open)
    for key, agg in one.open.items():
        other = many.open[key]
        assert (agg.count, agg.low, agg.high) == (other.count, other.low, other.high)
        assert agg.total == pytest.approx(other.total)
        assert agg.quantile(0.5) == pytest.approx(other.quantile(0.5), rel=0.2)
