"""Helpers of the fault runs (tests/integration/test_crash_e2e.py, test_cluster_e2e.py): workers
spawned in sessions of their own and SIGKILLed, consumer groups started at a topic's end, paced
idempotent publishing, and exact window counts read back from PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.codec import decode
from schemas.events import MetricEvent, PrdCompleted, PrdSubmitted
from schemas.topics import ALL, CODEGEN_COMPLETED, METRICS_EVENTS
from streams.infra.proc import free_port
from streams.runtime.replica import topic_partitions
from streams.runtime.topics import ensure_topics
from tests.conftest import (
    Services,
    Worker,
    assert_running,
    http_json,
    pg_fetch,
    pg_fetchval,
    popen_worker,
    stop_worker,
)

WINDOW_ENV = {"OMNISTREAM_METRIC_WINDOW_S": "10", "OMNISTREAM_METRIC_HOPPING_WINDOW_S": "0",
              "OMNISTREAM_METRIC_LATENESS_S": "2", "OMNISTREAM_METRIC_IDLE_CLOSE_S": "8",
              # the workers' own samples would share the topic: keep them out of the counts
              "OMNISTREAM_METRIC_EMIT_S": "3600", "OMNISTREAM_METRIC_COLLECT_S": "3600"}


# ---------------------------------------------------------------------------- helpers


async def start_group_at_end(bootstrap: str, group: str, topics: list[str]) -> dict[TopicPartition, int]:
    """Commit the group's offsets at the current ends of every public topic (a new group would
    otherwise work through the history other tests left, e.g. render old tasks again); returns
    the ends of `topics`."""
    await ensure_topics(bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [tp for t in {*topics, *(spec.name for spec in ALL)}
               for tp in await topic_partitions(bootstrap, t)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.commit({tp: off for tp, off in ends.items()})
        return {tp: off for tp, off in ends.items() if tp.topic in topics}
    finally:
        await consumer.stop()


def spawn(services: Services, db: str, app_id: str, tag: str, env: dict[str, str]) -> Worker:
    """A worker process in a session of its own (so SIGKILL takes all of it); not waited for."""
    port = free_port()
    log_file = services.home / f"{app_id}-{tag}.log"
    proc = popen_worker(services.env(
        DATABASE_URL=db, OMNISTREAM_WEB_PORT=str(port), OMNISTREAM_APP_ID=app_id,
        OMNISTREAM_LOG_FILE=str(log_file), OMNISTREAM_LOG_LEVEL="INFO",
        OMNISTREAM_AUTO_OFFSET_RESET="earliest", OMNISTREAM_SESSION_TIMEOUT_S="10", **env), log_file)
    return Worker(proc, port, log_file, app_id)


async def web_up(worker: Worker, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert_running(worker)
        try:
            http_json(f"{worker.base}/health", any_status=True, timeout=2)
            return
        except OSError:
            await asyncio.sleep(0.3)
    raise AssertionError("worker web server did not come up")


def kill9(worker: Worker) -> None:
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(30)


async def kill_and_restart(services: Services, db: str, app_id: str, first: Worker, kills: int,
                           env: dict[str, str], rng: random.Random, gap: tuple[float, float]) -> Worker:
    """SIGKILL the running worker `kills` times, each at a random moment of its work. The next
    one starts once the group has expelled the dead member (its session timeout): a worker that
    joins while a dead member still holds its place goes through a second rebalance right after
    its first fetch, where faust skips and acks in-flight messages (see the README)."""
    worker = first
    for k in range(kills):
        await web_up(worker)
        await asyncio.sleep(rng.uniform(*gap))
        kill9(worker)
        await asyncio.sleep(11)  # OMNISTREAM_SESSION_TIMEOUT_S=10 below
        worker = spawn(services, db, app_id, f"after-kill-{k + 1}", env)
    await web_up(worker)
    return worker


async def settle(read: Callable[[], Awaitable[object]], want: object, timeout: float = 240,
                 quiet_s: float = 6) -> object:
    """Poll until `read()` equals `want` and stays there for quiet_s (a late duplicate would
    show); returns the last value read."""
    deadline = time.monotonic() + timeout
    value, since = None, None
    while time.monotonic() < deadline:
        value = await read()
        if value == want:
            since = since or time.monotonic()
            if time.monotonic() - since >= quiet_s:
                return value
        else:
            since = None
        await asyncio.sleep(1)
    return value


async def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    """The current end of every partition of the topic."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.end_offsets(await topic_partitions(bootstrap, topic))
    finally:
        await consumer.stop()


async def read_topic(bootstrap: str, topic: str, start: dict[TopicPartition, int] | None = None) -> list:
    """Every record of the topic from `start` (default: the beginning) to its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await topic_partitions(bootstrap, topic)
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, (start or {}).get(tp, 0))
        out = []
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                out.extend(r for r in records if r.offset < ends[TopicPartition(r.topic, r.partition)])
        return out
    finally:
        await consumer.stop()


def samples(name: str, n: int, series: int = 5, ago: float = 400
            ) -> tuple[list[MetricEvent], dict[tuple[str, float], int]]:
    """n samples over 300 s of event time (in order), starting `ago` s ago; expected counts."""
    base = time.time() - ago
    out, expected = [], {}
    for i in range(n):
        ts = base + i * 300 / n
        label = f"s{i % series}"
        out.append(MetricEvent(name=name, value=float(i % 250), metric_type="histogram",
                               labels={"series": label}, occurred_at=datetime.fromtimestamp(ts, UTC)))
        start = ts - ts % 10
        expected[(label, start)] = expected.get((label, start), 0) + 1
    return out, expected


async def publish_paced(bootstrap: str, topic: str, values: list[tuple[bytes | None, bytes]],
                        seconds: float) -> float:
    """Send `values` evenly over `seconds`; return the longest time (s) no record was
    acknowledged while the run lasted (how long the producer waited through a fault)."""
    # Idempotent, and patient: a leader killed mid-run makes the producer send a batch again,
    # which without idempotence the new leader could hold twice; on a cluster that lost its
    # quorum for 20 s the batches wait rather than expire.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all",
                                enable_idempotence=True, request_timeout_ms=120_000)
    await producer.start()
    acked: list[float] = []
    pending = []
    began = time.monotonic()
    try:
        chunk = max(1, len(values) // max(1, int(seconds * 10)))
        for i in range(0, len(values), chunk):
            for key, value in values[i:i + chunk]:
                sent = await producer.send(topic, value, key=key)
                sent.add_done_callback(lambda _: acked.append(time.monotonic()))
                pending.append(sent)
            await asyncio.sleep(0.1)
        await producer.flush()
    finally:
        await producer.stop()
    failed = [f.exception() for f in pending if f.exception() is not None]
    assert not failed, f"the publisher lost {len(failed)} records: {failed[0]!r}"
    times = [began, *sorted(acked)]
    return round(max(b - a for a, b in zip(times, times[1:], strict=False)), 2)


async def window_counts(db: str, name: str) -> dict[tuple[str, float], int]:
    rows = await pg_fetch(db, "SELECT labels->>'series' AS s, extract(epoch FROM window_start) AS start, "
                              "sample_count FROM metric_window_aggregates WHERE metric_name = $1", name)
    return {(r["s"], float(r["start"])): r["sample_count"] for r in rows}


def diff(got: dict, expected: dict) -> str:
    wrong = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
    extra = {k: got[k] for k in got if k not in expected}
    return f"(got, want) per window: {dict(list(wrong.items())[:10])}; unexpected: {extra}"


def stop_all(*workers: Worker | None) -> None:
    for w in workers:
        if w is not None and w.proc.poll() is None:
            stop_worker(w)


async def metric_run(services: Services, db: str, prefix: str, n: int, env: dict[str, str],
                     ago: float = 400) -> tuple[str, str, list[MetricEvent], dict, Worker]:
    """A fresh app (its group starting at the topic's end), a fresh metric of n samples with
    their expected window counts, and the app's first worker, started."""
    app_id = f"crash-{prefix}-{uuid.uuid4().hex[:6]}"
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    events, expected = samples(name, n, ago=ago)
    await start_group_at_end(services.bootstrap, app_id, [METRICS_EVENTS.name])
    return app_id, name, events, expected, spawn(services, db, app_id, "first", env)


def workers_said(*workers: Worker | None, last: int = 40) -> str:
    """The workers' own log lines (omnistream's, warnings, errors), the last `last`, each tagged
    with its worker: what a failed count is read against."""
    said = [f"[{w.log_file.stem.rsplit('-', 1)[-1]}] {line[:400]}" for w in workers if w is not None
            for line in w.log_lines() if "Heartbeat failed" not in line
            and ('"WARNING"' in line or '"ERROR"' in line or '"logger":"streams.' in line)][-last:]
    return "\nworkers said:\n" + "\n".join(said)


async def assert_windows(db: str, name: str, expected: dict, timeout: float = 240,
                         workers: tuple[Worker | None, ...] = ()) -> None:
    got = await settle(lambda: window_counts(db, name), expected, timeout=timeout)
    assert got == expected, (f"sum {sum(got.values())} of {sum(expected.values())}; {diff(got, expected)}"
                             + (workers_said(*workers) if workers else ""))




# ---------------------------------------------------------------------------- PRDs under faults

def prd_batch(n: int, title: str) -> tuple[list[PrdSubmitted], int, set[str]]:
    """n PRDs of one to three nodes each: (PRDs, how many nodes, their correlation ids)."""
    prds, nodes = [], 0
    for i in range(n):
        parts = 1 + i % 3
        prds.append(PrdSubmitted(title=f"{title} {i}", service_name=f"{title.lower()}_svc", nodes=[
            {"node_type": ["effect", "compute", "reducer"][j], "name": f"Part{j}",
             "mixins": ["MixinRetry", "MixinLogging"][: 1 + j % 2]} for j in range(parts)]))
        nodes += parts
    return prds, nodes, {str(p.correlation_id) for p in prds}


async def assert_one_row_per_node(db: str, cids: set[str], nodes: int, timeout: float = 240) -> None:
    """generation_performance_metrics holds one row per generated node, none twice."""
    async def rows() -> int:
        return await pg_fetchval(db, "SELECT count(*) FROM generation_performance_metrics "
                                     "WHERE correlation_id = ANY($1::uuid[])", list(cids))

    assert await settle(rows, nodes, timeout=timeout) == nodes
    distinct = await pg_fetchval(
        db, "SELECT count(DISTINCT (correlation_id, metadata->>'node_name')) FROM "
            "generation_performance_metrics WHERE correlation_id = ANY($1::uuid[])", list(cids))
    assert distinct == nodes


async def completions(bootstrap: str, start: dict[TopicPartition, int], cids: set[str],
                      timeout: float = 120) -> dict[str, list[str]]:
    """The ids of the codegen.completed records of these PRDs (each record once, in topic order),
    read until every PRD has one or `timeout` passes."""
    deadline = time.monotonic() + timeout
    by_cid: dict[str, list[str]] = {}
    while True:
        by_cid = {}
        for rec in await read_topic(bootstrap, CODEGEN_COMPLETED.name, start):
            done = decode(PrdCompleted, rec.value)
            if str(done.correlation_id) in cids:
                by_cid.setdefault(str(done.correlation_id), []).append(str(done.id))
        if len(by_cid) >= len(cids) or time.monotonic() > deadline:
            return by_cid
        await asyncio.sleep(2)
