"""Crashes for real: workers SIGKILLed mid-load (and a broker stopped) leave exact counts.

Every test positions its worker's consumer group at the current end of the public topics it
reads (so the shared topics' history of other tests is not in its counts), publishes a known
load while killing and restarting workers with SIGKILL at random moments, then waits until the
output stops changing and compares exact counts: nothing lost, nothing applied twice.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from schemas.codec import DecodeError, decode, encode
from schemas.events import DeadLetter, GenerationResult
from schemas.topics import CODEGEN_COMPLETED, CODEGEN_RESULTS, DLQ, METRICS_EVENTS, PRD_REQUESTS
from streams.infra.proc import free_port
from streams.runtime.topics import ensure_topics
from tests.conftest import Services, assert_running, http_json, pg_fetchval
from tests.faults import (
    WINDOW_ENV,
    assert_one_row_per_node,
    assert_windows,
    completions,
    kill9,
    kill_and_restart,
    metric_run,
    prd_batch,
    publish_paced,
    read_topic,
    samples,
    settle,
    spawn,
    start_group_at_end,
    stop_all,
    web_up,
    window_counts,
)

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------- metric windows


async def test_sigkill_three_times_during_20000_metric_samples(services, migrated_db, rng):
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


async def test_sigkill_three_times_during_100000_samples_in_batched_records(services, migrated_db, rng):
    """200 records of 500 samples each; a quarter published with no key, so their samples are
    re-keyed one by one through the inbox (positions carried in a header): every sample lands
    in its window exactly once."""
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


async def test_two_workers_one_sigkilled_the_other_takes_over(services, migrated_db, rng):
    """Samples published with no key (re-keyed through the inbox), two workers, one killed for
    good mid-run: the survivor takes its partitions over from the changelog."""
    app_id = f"crash-pair-{uuid.uuid4().hex[:6]}"
    name = f"pair_{uuid.uuid4().hex[:8]}"
    events, expected = samples(name, 12_000, series=4, ago=1000)
    await start_group_at_end(services.bootstrap, app_id, [METRICS_EVENTS.name])
    # Re-keyed samples arrive out of event-time order (by how far their source partitions'
    # owners lag): a lateness covering the whole run (samples end 700 s ago, so wall time can
    # still close them), and an idle time well beyond the takeover, so windows close by idle
    # time once everything is in. A series whose samples had no key is silent on the survivor
    # from the kill until it has taken the dead worker's partitions and re-keyed their backlog
    # (session timeout 10 s, recovery, catching up: over 30 s on a loaded 2-core machine), and
    # those partitions are nobody's meanwhile, so no worker can tell they hold its samples.
    env = {**WINDOW_ENV, "OMNISTREAM_METRIC_LATENESS_S": "400", "OMNISTREAM_METRIC_IDLE_CLOSE_S": "75"}
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
        await assert_windows(migrated_db, name, expected, workers=(a, b))
        assert_running(b)
    finally:
        stop_all(a, b)


# ---------------------------------------------------------------------------- learning


async def test_sigkill_during_8000_generation_results(services, migrated_db, rng):
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


async def test_sigkill_during_200_prds(services, migrated_db, rng):
    app_id = f"crash-prds-{uuid.uuid4().hex[:6]}"
    start = await start_group_at_end(services.bootstrap, app_id, [PRD_REQUESTS.name])
    completed_start = await start_group_at_end(services.bootstrap, f"{app_id}-reader",
                                               [CODEGEN_COMPLETED.name])
    prds, nodes, cids = prd_batch(200, "Crash")
    worker = spawn(services, migrated_db, app_id, "first", {})
    try:
        publishing = asyncio.ensure_future(publish_paced(
            services.bootstrap, PRD_REQUESTS.name, [(p.prd_id.encode(), encode(p)) for p in prds], 15))
        worker = await kill_and_restart(services, migrated_db, app_id, worker, 3, {}, rng, (3, 7))
        await publishing

        await assert_one_row_per_node(migrated_db, cids, nodes)
        by_cid = await completions(services.bootstrap, completed_start, cids)
        assert set(by_cid) == cids  # every PRD completed
        # Outputs are at-least-once with deterministic ids: a crash may send one twice, never
        # under another id.
        assert all(len(set(ids)) == 1 for ids in by_cid.values())
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
        assert_running(worker)  # it carried on by itself
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
        assert_running(worker)
        status = http_json(f"{worker.base}/health", any_status=True)
        assert all(state == "running" for state in status["agents"].values())
        big = [decode(DeadLetter, r.value) for r in await read_topic(services.bootstrap, DLQ.name, dlq_start)]
        truncated = [b for b in big if b.truncated]
        assert truncated and all(b.value_size > 1_000_000 and len(b.value_sha256) == 64 for b in truncated)
    finally:
        stop_all(worker)
