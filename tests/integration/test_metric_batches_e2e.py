"""Batched records on metrics.events, through a real worker, Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.codec import MAX_VALUE_BYTES, decode, metric_records
from schemas.events import DeadLetter, MetricEvent
from schemas.topics import DLQ, METRICS_EVENTS
from streams.interfaces.client import OmnistreamClient
from tests.conftest import OMNISTREAM, pg_fetchval, start_worker, stop_worker

WORKER_ENV = {"OMNISTREAM_AUTO_OFFSET_RESET": "latest", "OMNISTREAM_METRIC_WINDOW_S": "5",
              "OMNISTREAM_METRIC_HOPPING_WINDOW_S": "0", "OMNISTREAM_METRIC_LATENESS_S": "1",
              "OMNISTREAM_METRIC_IDLE_CLOSE_S": "3", "OMNISTREAM_METRIC_COLLECT_S": "3600"}


@pytest.fixture
def metrics_worker(services, migrated_db):
    worker = start_worker(services, migrated_db, f"metric-batches-{uuid.uuid4().hex[:6]}", "m", WORKER_ENV)
    time.sleep(3)  # its consumer holds the partitions (reset = latest)
    yield worker
    stop_worker(worker)


async def _counted(db: str, name: str, want: int, timeout: float = 60) -> int:
    deadline, total = time.monotonic() + timeout, -1
    while time.monotonic() < deadline:
        total = await pg_fetchval(db, "SELECT coalesce(sum(sample_count), 0)::int "
                                      "FROM metric_window_aggregates WHERE metric_name = $1", name)
        if total >= want:
            await asyncio.sleep(2)  # nothing more may arrive
            return await pg_fetchval(db, "SELECT coalesce(sum(sample_count), 0)::int "
                                         "FROM metric_window_aggregates WHERE metric_name = $1", name)
        await asyncio.sleep(0.5)
    return total


def test_metric_records_group_by_name_within_the_limits():
    samples = [MetricEvent(name=f"m{i % 3}", value=float(i), metric_type="gauge") for i in range(25_000)]
    records = list(metric_records(samples))
    by_key: dict[bytes, int] = {}
    for key, value in records:
        assert len(value) <= MAX_VALUE_BYTES
        body = orjson.loads(value)
        items = body["samples"] if "samples" in body else [body]
        assert len(items) <= 10_000 and {s["name"].encode() for s in items} == {key}
        assert "id" not in items[0]  # the intake derives the envelope from the record
        by_key[key] = by_key.get(key, 0) + len(items)
    assert by_key == {b"m0": 8334, b"m1": 8333, b"m2": 8333}
    single = list(metric_records([MetricEvent(name="one", value=1.0, metric_type="counter")]))
    assert len(single) == 1 and "samples" not in orjson.loads(single[0][1])


async def test_a_batch_of_10000_samples_lands_exactly_once(services, migrated_db, metrics_worker):
    name = f"b{uuid.uuid4().hex[:6]}"
    body = b'{"samples":[' + b",".join(
        orjson.dumps({"name": name, "value": i % 7, "metric_type": "gauge", "labels": {"s": f"{i % 4}"}})
        for i in range(10_000)) + b"]}"
    assert len(body) <= MAX_VALUE_BYTES
    async with OmnistreamClient(services.bootstrap) as client:
        await client.publish_raw(METRICS_EVENTS.name, body, key=name.encode())
    assert await _counted(migrated_db, name, 10_000) == 10_000
    rows = await pg_fetchval(migrated_db, "SELECT count(DISTINCT labels->>'s')::int "
                                          "FROM metric_window_aggregates WHERE metric_name = $1", name)
    assert rows == 4


async def test_a_bad_sample_is_dead_lettered_alone_and_the_rest_land(services, migrated_db, metrics_worker):
    name = f"bad{uuid.uuid4().hex[:6]}"
    samples = [{"name": name, "value": i, "metric_type": "counter"} for i in range(100)]
    samples[37] = {"name": name, "value": "forty", "metric_type": "counter"}
    dlq = AIOKafkaConsumer(bootstrap_servers=services.bootstrap, group_id=None)
    await dlq.start()
    try:
        # Where the topic ends now, resolved before publishing ("latest" on a subscription is
        # only resolved at the first fetch, which may come after the dead letter).
        tps = [TopicPartition(DLQ.name, p) for p in range(DLQ.partitions)]
        dlq.assign(tps)
        await dlq.seek_to_end(*tps)
        for tp in tps:
            await dlq.position(tp)
        async with OmnistreamClient(services.bootstrap) as client:
            await client.publish_raw(METRICS_EVENTS.name, orjson.dumps({"samples": samples}),
                                     key=name.encode())
        assert await _counted(migrated_db, name, 99) == 99
        letters = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not letters:
            batch = await dlq.getmany(timeout_ms=1000)
            letters += [decode(DeadLetter, r.value) for rs in batch.values() for r in rs
                        if r.key == name.encode()]
    finally:
        await dlq.stop()
    assert len(letters) == 1
    letter = letters[0]
    assert letter.sample_index == 37 and letter.topic == METRICS_EVENTS.name
    assert orjson.loads(letter.value) == samples[37] and "sample 37" in letter.error


async def test_publish_metrics_cli_round_trips(services, migrated_db, metrics_worker, tmp_path):
    name = f"cli{uuid.uuid4().hex[:6]}"
    lines = [orjson.dumps({"name": name, "value": i, "metric_type": "histogram",
                           "labels": {"route": "/a" if i % 2 else "/b"}}).decode() for i in range(500)]
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join(lines) + "\n")
    proc = subprocess.run([OMNISTREAM, "publish", "metrics", str(path)], env=services.env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "published 500 samples in 1 records" in proc.stderr
    assert await _counted(migrated_db, name, 500) == 500
    total = await pg_fetchval(migrated_db, "SELECT sum(value_sum)::int FROM metric_window_aggregates "
                                           "WHERE metric_name = $1", name)
    assert total == sum(range(500))
    path.write_text(lines[0] + "\n" + '{"name": "x", "value": "NaN?"}\n')
    bad = subprocess.run([OMNISTREAM, "publish", "metrics", str(path)], env=services.env(),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "event 2" in bad.stderr and "Traceback" not in bad.stderr
