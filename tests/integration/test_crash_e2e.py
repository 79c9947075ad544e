"""Crashes for real: workers SIGKILLed mid-load (and a broker stopped) leave exact counts.

Every test positions its worker's consumer group at the current end of the public topics it
reads (so the shared topics' history of other tests is not in its counts), publishes a known
load while killing and restarting workers with SIGKILL at random moments, then waits until the
output stops changing and compares exact counts: nothing lost, nothing applied twice.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.codec import DecodeError, decode, encode
from schemas.events import DeadLetter, GenerationResult, MetricEvent, PrdCompleted, PrdSubmitted
from schemas.topics import ALL, CODEGEN_COMPLETED, CODEGEN_RESULTS, DLQ, METRICS_EVENTS, PRD_REQUESTS
from streams.infra.proc import free_port
from streams.runtime.replica import topic_partitions
from streams.runtime.topics import ensure_topics
from tests.conftest import OMNISTREAM, Services, Worker, http_json, pg_fetch, pg_fetchval, stop_worker

pytestmark = pytest.mark.slow

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
    proc = subprocess.Popen([OMNISTREAM, "worker"], env=services.env(
        DATABASE_URL=db, OMNISTREAM_WEB_PORT=str(port), OMNISTREAM_APP_ID=app_id,
        OMNISTREAM_LOG_FILE=str(log_file), OMNISTREAM_LOG_LEVEL="INFO",
        OMNISTREAM_AUTO_OFFSET_RESET="earliest", OMNISTREAM_SESSION_TIMEOUT_S="10", **env),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return Worker(proc, port, log_file, app_id)


async def web_up(worker: Worker, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited ({worker.proc.returncode}):\n"
                                 + "\n".join(worker.log_lines()[-20:]))
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
                        seconds: float) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        chunk = max(1, len(values) // max(1, int(seconds * 10)))
        for i in range(0, len(values), chunk):
            for key, value in values[i:i + chunk]:
                await producer.send(topic, value, key=key)
            await asyncio.sleep(0.1)
        await producer.flush()
    finally:
        await producer.stop()


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


# ---------------------------------------------------------------------------- metric windows


async def metric_run(services: Services, db: str, prefix: str, n: int, env: dict[str, str],
                     ago: float = 400) -> tuple[str, str, list[MetricEvent], dict, Worker]:
    """A fresh app (its group starting at the topic's end), a fresh metric of n samples with
    their expected window counts, and the app's first worker, started."""
    app_id = f"crash-{prefix}-{uuid.uuid4().hex[:6]}"
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    events, expected = samples(name, n, ago=ago)
    await start_group_at_end(services.bootstrap, app_id, [METRICS_EVENTS.name])
    return app_id, name, events, expected, spawn(services, db, app_id, "first", env)


async def assert_windows(db: str, name: str, expected: dict, timeout: float = 240) -> None:
    got = await settle(lambda: window_counts(db, name), expected, timeout=timeout)
    assert got == expected, f"sum {sum(got.values())} of {sum(expected.values())}; {diff(got, expected)}"


async def test_sigkill_three_times_during_20000_metric_samples(services, migrated_db):
    rng = random.Random()
    app_id, name, events, expected, worker = await metric_run(services, migrated_db, "metrics", 20_000,
                                                              WINDOW_ENV)
    try:
        publishing = asyncio.ensure_future(publish_paced(
            services.bootstrap, METRICS_EVENTS.name, [(name.encode(), encode(e)) for e in events], 20))
        worker = await kill_and_restart(services, migrated_db, app_id, worker, 3, WINDOW_ENV, rng, (2, 6))
        await publishing
        await assert_windows(migrated_db, name, expected)
    finally:
        stop_all(worker)


async def test_windows_left_open_by_a_killed_worker_close_on_the_next_one(services, migrated_db):
    """The worker applied and committed every sample, then died before its last windows were
    quiet long enough to close. The next owner has nothing to replay, so no sample brings the
    partition's windows back: it restores them anyway and closes them by wall time."""
    app_id, name, events, expected, worker = await metric_run(services, migrated_db, "open", 2_000,
                                                              WINDOW_ENV)
    try:
        await web_up(worker)
        await publish_paced(services.bootstrap, METRICS_EVENTS.name,
                            [(name.encode(), encode(e)) for e in events], 1)
        # Everything folded and committed (faust commits every 2.8 s), the last windows still
        # open: they close only after 8 s without a sample.
        await asyncio.sleep(5)
        closed_before = await window_counts(migrated_db, name)
        assert sum(closed_before.values()) < 2_000
        kill9(worker)
        await asyncio.sleep(11)  # the session timeout: the next worker gets the partition at once
        worker = spawn(services, migrated_db, app_id, "next", WINDOW_ENV)
        await web_up(worker)
        await assert_windows(migrated_db, name, expected, timeout=120)
    finally:
        stop_all(worker)


async def test_sigkill_three_times_during_100000_samples_in_batched_records(services, migrated_db):
    """200 records of 500 samples each; a quarter published with no key, so their samples are
    re-keyed one by one through the inbox (positions carried in a header): every sample lands
    in its window exactly once."""
    rng = random.Random()
    env = {**WINDOW_ENV, "OMNISTREAM_METRIC_LATENESS_S": "400", "OMNISTREAM_METRIC_IDLE_CLOSE_S": "30"}
    app_id, name, events, expected, worker = await metric_run(services, migrated_db, "batch", 100_000, env,
                                                              ago=1000)
    records = []
    for i in range(0, len(events), 500):
        body = b'{"samples":[' + b",".join(encode(e) for e in events[i:i + 500]) + b"]}"
        records.append((None if (i // 500) % 4 == 3 else name.encode(), body))
    try:
        publishing = asyncio.ensure_future(
            publish_paced(services.bootstrap, METRICS_EVENTS.name, records, 20))
        worker = await kill_and_restart(services, migrated_db, app_id, worker, 3, env, rng, (2, 6))
        await publishing
        await assert_windows(migrated_db, name, expected)
    finally:
        stop_all(worker)


async def test_two_workers_one_sigkilled_the_other_takes_over(services, migrated_db):
    """Samples published with no key (re-keyed through the inbox), two workers, one killed for
    good mid-run: the survivor takes its partitions over from the changelog."""
    rng = random.Random()
    app_id = f"crash-pair-{uuid.uuid4().hex[:6]}"
    name = f"pair_{uuid.uuid4().hex[:8]}"
    events, expected = samples(name, 12_000, series=4, ago=1000)
    await start_group_at_end(services.bootstrap, app_id, [METRICS_EVENTS.name])
    # Re-keyed samples arrive out of event-time order (by how far their source partitions'
    # owners lag): a lateness covering the whole run (samples end 700 s ago, so wall time can
    # still close them), and an idle time longer than the takeover, so windows close by idle
    # time once everything is in.
    env = {**WINDOW_ENV, "OMNISTREAM_METRIC_LATENESS_S": "400", "OMNISTREAM_METRIC_IDLE_CLOSE_S": "30"}
    a = spawn(services, migrated_db, app_id, "a", env)
    b = spawn(services, migrated_db, app_id, "b", env)
    try:
        await web_up(a)
        await web_up(b)
        # Half keyed by name, half with no key (the intake re-keys those).
        values = [(name.encode() if i % 2 else None, encode(e)) for i, e in enumerate(events)]
        publishing = asyncio.ensure_future(publish_paced(services.bootstrap, METRICS_EVENTS.name, values, 15))
        await asyncio.sleep(rng.uniform(5, 9))
        kill9(a)
        await publishing
        await assert_windows(migrated_db, name, expected)
        assert b.proc.poll() is None
    finally:
        stop_all(a, b)


# ---------------------------------------------------------------------------- learning


async def test_sigkill_during_8000_generation_results(services, migrated_db):
    rng = random.Random()
    app_id = f"crash-results-{uuid.uuid4().hex[:6]}"
    tag = uuid.uuid4().hex[:6].upper()
    mixins = [f"MixinK{tag}{c}" for c in "ABCDEF"]
    source = f"crash-{tag.lower()}"
    results = []
    for i in range(8000):
        combo = rng.sample(mixins, rng.randint(1, 3))
        ok = not ({mixins[0], mixins[1]} <= set(combo)) and rng.random() > 0.05
        body = {"node_type": ["effect", "compute", "reducer", "orchestrator"][i % 4], "mixins": combo,
                "success": ok, "source": source}
        if i % 2:  # half with a full envelope, half left for the intake to fill in
            body = GenerationResult(**body).model_dump(mode="json")
        results.append((None if i % 3 == 0 else body["node_type"].encode(), orjson.dumps(body)))
    start = await start_group_at_end(services.bootstrap, app_id, [CODEGEN_RESULTS.name])
    env = {"OMNISTREAM_MODEL_SNAPSHOT_EVERY": "200", "OMNISTREAM_MODEL_SNAPSHOT_INTERVAL_S": "0.5"}
    worker = spawn(services, migrated_db, app_id, "first", env)
    try:
        publishing = asyncio.ensure_future(
            publish_paced(services.bootstrap, CODEGEN_RESULTS.name, results, 20))
        worker = await kill_and_restart(services, migrated_db, app_id, worker, 3, env, rng, (2, 6))
        await publishing
        # Everything on the topic since the group's start is what the model must have learnt.
        on_topic = 0
        for rec in await read_topic(services.bootstrap, CODEGEN_RESULTS.name, start):
            try:
                decode(GenerationResult, rec.value)
                on_topic += 1
            except DecodeError:
                pass
        assert on_topic >= 8000

        async def logged() -> int:
            return await pg_fetchval(migrated_db, "SELECT count(*) FROM mixin_results_log WHERE source = $1",
                                     source)

        assert await settle(logged, 8000) == 8000
        matrix = await pg_fetchval(
            migrated_db, "SELECT coalesce(sum(success_count + failure_count), 0) FROM "
                         "mixin_compatibility_matrix WHERE mixin_combination && $1::text[]", mixins)
        assert matrix == 8000

        async def updates() -> int:
            report = http_json(f"{worker.base}/api/models")
            return sum(m["updates"] for m in report["models"].values())

        assert await settle(updates, on_topic) == on_topic  # each result learnt exactly once
    finally:
        stop_all(worker)


# ---------------------------------------------------------------------------- codegen


async def test_sigkill_during_200_prds(services, migrated_db):
    rng = random.Random()
    app_id = f"crash-prds-{uuid.uuid4().hex[:6]}"
    start = await start_group_at_end(services.bootstrap, app_id, [PRD_REQUESTS.name])
    completed_start = await start_group_at_end(services.bootstrap, f"{app_id}-reader",
                                               [CODEGEN_COMPLETED.name])
    prds, nodes = [], 0
    for i in range(200):
        n = 1 + i % 3
        prd = PrdSubmitted(title=f"Crash {i}", service_name="crash_svc", nodes=[
            {"node_type": ["effect", "compute", "reducer"][j], "name": f"Part{j}",
             "mixins": ["MixinRetry", "MixinLogging"][: 1 + j % 2]} for j in range(n)])
        prds.append(prd)
        nodes += n
    cids = {str(p.correlation_id) for p in prds}
    worker = spawn(services, migrated_db, app_id, "first", {})
    try:
        publishing = asyncio.ensure_future(publish_paced(
            services.bootstrap, PRD_REQUESTS.name, [(p.prd_id.encode(), encode(p)) for p in prds], 15))
        worker = await kill_and_restart(services, migrated_db, app_id, worker, 3, {}, rng, (3, 7))
        await publishing

        async def rows() -> int:
            return await pg_fetchval(migrated_db, "SELECT count(*) FROM generation_performance_metrics "
                                                  "WHERE correlation_id = ANY($1::uuid[])", list(cids))

        assert await settle(rows, nodes) == nodes  # one row per node, none twice
        distinct = await pg_fetchval(
            migrated_db, "SELECT count(DISTINCT (correlation_id, metadata->>'node_name')) FROM "
                         "generation_performance_metrics WHERE correlation_id = ANY($1::uuid[])", list(cids))
        assert distinct == nodes

        async def completions() -> dict[str, set[str]]:
            by_cid: dict[str, set[str]] = {}
            for rec in await read_topic(services.bootstrap, CODEGEN_COMPLETED.name, completed_start):
                done = decode(PrdCompleted, rec.value)
                if str(done.correlation_id) in cids:
                    by_cid.setdefault(str(done.correlation_id), set()).add(str(done.id))
            return by_cid

        deadline = time.monotonic() + 120
        by_cid: dict[str, set[str]] = {}
        while time.monotonic() < deadline and len(by_cid) < 200:
            by_cid = await completions()
            await asyncio.sleep(2)
        assert set(by_cid) == cids  # every PRD completed
        assert all(len(ids) == 1 for ids in by_cid.values())  # each under exactly one id
        assert start  # the group started at the end of prd.requests
    finally:
        stop_all(worker)


# ---------------------------------------------------------------------------- broker outage


async def test_broker_stopped_20s_under_load_workers_carry_on(services, migrated_db):
    """A broker of its own, stopped (and started again) 20 s in the middle of 15 000 samples."""
    from streams.config import cache_dir
    from streams.infra import kafka
    from streams.infra.proc import stop_pid

    folder = Path(tempfile.mkdtemp(prefix="omnistream-kafka-", dir="/tmp"))
    port, controller = free_port(), free_port()
    bootstrap = f"127.0.0.1:{port}"
    pid = await asyncio.to_thread(kafka.start, folder, cache_dir(), port, controller, lambda _: None)
    await asyncio.to_thread(kafka.wait_ready, bootstrap, pid, folder)
    own = Services(bootstrap, services.database_url, services.home, "own broker")
    app_id = f"crash-broker-{uuid.uuid4().hex[:6]}"
    name = f"broker_{uuid.uuid4().hex[:8]}"
    events, expected = samples(name, 15_000)
    worker = None
    try:
        await ensure_topics(bootstrap)
        worker = spawn(own, migrated_db, app_id, "w", WINDOW_ENV)
        await web_up(worker)
        await asyncio.sleep(5)
        values = [(name.encode(), encode(e)) for e in events]
        await publish_paced(bootstrap, METRICS_EVENTS.name, values[:7000], 6)
        await asyncio.to_thread(stop_pid, pid)
        await asyncio.sleep(20)
        pid = await asyncio.to_thread(kafka.start, folder, cache_dir(), port, controller, lambda _: None)
        await asyncio.to_thread(kafka.wait_ready, bootstrap, pid, folder)
        await publish_paced(bootstrap, METRICS_EVENTS.name, values[7000:], 6)
        await assert_windows(migrated_db, name, expected, timeout=300)
        assert worker.proc.poll() is None  # it carried on by itself
    finally:
        stop_all(worker)
        await asyncio.to_thread(stop_pid, pid)
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------- hostile input

HOSTILE: list[tuple[bytes | None, bytes | None]] = [
    (None, b""),                                    # null key, empty value
    (b"k", None),                                   # tombstone
    (None, b"\xff\xfe\x00garbage\x80"),             # binary garbage
    (b"k", b"[1, 2, 3]"),                           # a JSON array
    (b"k", b"null"),
    (b"k", b'"just a string"'),
    (b"k", b"{" * 5000),                            # deeply nested / unterminated
    (b"k", b'{"id": "not-a-uuid"}'),
    (None, b'{"a": ' + b'"' + b"x" * 1_000_000 + b'"}'),  # near the 1 MiB limit, oversized
]


async def test_hostile_records_on_every_public_topic_are_dead_lettered(services, migrated_db):
    app_id = f"crash-hostile-{uuid.uuid4().hex[:6]}"
    public = [PRD_REQUESTS.name, "codegen.tasks", "codegen.generated", CODEGEN_RESULTS.name,
              "pattern.feedback", METRICS_EVENTS.name, "alerts.commands"]
    await start_group_at_end(services.bootstrap, app_id, public)
    dlq_start = await start_group_at_end(services.bootstrap, f"{app_id}-dlq", [DLQ.name])
    worker = spawn(services, migrated_db, app_id, "w", {})
    producer = AIOKafkaProducer(bootstrap_servers=services.bootstrap, max_request_size=4 * 2**20)
    sent: set[tuple[str, int, int]] = set()
    try:
        await web_up(worker)
        await producer.start()
        for topic in public:
            for key, value in HOSTILE:
                # A control header on a public topic is data: it must not make a tick.
                meta = await producer.send_and_wait(topic, value, key=key,
                                                    headers=[("omnistream.kind", b"tick")])
                sent.add((topic, meta.partition, meta.offset))
        await producer.stop()

        async def lettered() -> set[tuple[str, int, int]]:
            got = set()
            for rec in await read_topic(services.bootstrap, DLQ.name, dlq_start):
                letter = decode(DeadLetter, rec.value)
                assert len(rec.value) < 1_000_000  # every letter fits the broker's limit
                got.add((letter.topic, letter.partition, letter.offset))
            return got & sent

        got = await settle(lettered, sent, timeout=120, quiet_s=2)
        assert got == sent, f"{len(sent - got)} hostile records not dead-lettered: {sorted(sent - got)[:5]}"
        assert worker.proc.poll() is None
        status = http_json(f"{worker.base}/health", any_status=True)
        assert all(state == "running" for state in status["agents"].values())
        big = [decode(DeadLetter, r.value) for r in await read_topic(services.bootstrap, DLQ.name, dlq_start)]
        truncated = [b for b in big if b.truncated]
        assert truncated and all(b.value_size > 1_000_000 and len(b.value_sha256) == 64 for b in truncated)
    finally:
        stop_all(worker)
