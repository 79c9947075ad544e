"""Metrics ingest (1) and sink throughput (3), each beside its baselines in the same run.

1. metrics.events → windows → metric_window_aggregates, events/s, beside a bare aiokafka
   consumer reading the same events (the limit) and the naive way: read, decode, one INSERT
   (one transaction) per event. The throwaway PostgreSQL flushes every commit to disk, as a
   production one does; on a no-fsync cluster the naive way is several times faster.
2. PgBatchSink rows/s (COPY into a staging table + INSERT … ON CONFLICT, one transaction per
   batch, plus its event_processing_metrics row) beside raw `copy_records_to_table` into a temp
   table and into the same table, and beside the same staged upsert without the sink around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.codec import encode, metric_records, validate
from schemas.events import MetricEvent
from schemas.topics import METRICS_EVENTS, TopicSpec
from streams.config import Settings, omnistream_home
from streams.infra.proc import free_port
from streams.infra.workerproc import spawn_worker, stop_worker, wait_healthy
from streams.runtime.sink import PgBatchSink
from streams.runtime.topics import ensure_topics


def _samples(name: str, n: int, series: int) -> list[MetricEvent]:
    base = time.time() - 600
    return [MetricEvent(name=name, value=float(i % 500), metric_type="histogram",
                        labels={"series": f"s{i % series}"},
                        # 5 minutes of samples: closed by the watermark as they go
                        occurred_at=datetime.fromtimestamp(base + i * (300 / n), UTC))
            for i in range(n)]


def _records(name: str, n: int, series: int, batched: bool) -> list[tuple[bytes, bytes]]:
    """n samples, one per record or in batched records, encoded before any clock starts (the
    publisher is not what is measured)."""
    samples = _samples(name, n, series)
    return (list(metric_records(samples)) if batched
            else [(name.encode(), encode(s)) for s in samples])


@contextlib.asynccontextmanager
async def _reader_at(bootstrap: str, start: dict) -> AsyncIterator[AIOKafkaConsumer]:
    """A group-less consumer positioned at the offsets the published events start from."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(start))
        for tp, off in start.items():
            consumer.seek(tp, off)
        yield consumer
    finally:
        await consumer.stop()


async def _bare(bootstrap: str, records: list[tuple[bytes, bytes]], topic: str) -> float:
    """A bare aiokafka consumer already at the end of `topic`, timed as ours is: from the first
    record sent until the last one is read."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(METRICS_EVENTS.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        began = time.perf_counter()
        sending = asyncio.ensure_future(_send(bootstrap, topic, records))
        seen = 0
        while seen < len(records):
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            seen += sum(len(r) for r in batch.values())
        await sending
        return seen / (time.perf_counter() - began)
    finally:
        await consumer.stop()


async def _naive(bootstrap: str, db: str, start: dict, limit: int) -> float:
    """The naive way: read the same events, decode each, one INSERT (one transaction) per event
    into a durable table of a sample's shape."""
    conn = await asyncpg.connect(db)
    try:
        await conn.execute("DROP TABLE IF EXISTS bench_naive_samples")
        await conn.execute("CREATE TABLE bench_naive_samples (id uuid PRIMARY KEY, name text, value float8, "
                           "labels jsonb, at timestamptz)")
        async with _reader_at(bootstrap, start) as consumer:
            return await _insert_each(consumer, conn, limit)
    finally:
        with contextlib.suppress(Exception):
            await conn.execute("DROP TABLE IF EXISTS bench_naive_samples")
        await conn.close()


async def _insert_each(consumer: AIOKafkaConsumer, conn: asyncpg.Connection, limit: int) -> float:
    seen, began = 0, time.perf_counter()
    while seen < limit:
        batch = await consumer.getmany(timeout_ms=500, max_records=500)
        for record in (r for records in batch.values() for r in records):
            body = orjson.loads(record.value)  # a sample, or a batch (the worker's own telemetry)
            for item in body["samples"] if "samples" in body else [body]:
                m = validate(MetricEvent, item)
                await conn.execute("INSERT INTO bench_naive_samples VALUES ($1, $2, $3, $4, $5) "
                                   "ON CONFLICT (id) DO NOTHING", m.id, m.name, m.value,
                                   orjson.dumps(m.labels).decode(), m.occurred_at)
                seen += 1
                if seen == limit:
                    break
            if seen == limit:
                break
    return seen / (time.perf_counter() - began)


async def _aggregated(db: str, name: str) -> int:
    conn = await asyncpg.connect(db)
    try:
        # Tumbling windows only (hopping ones would count each sample again).
        return int(await conn.fetchval(
            "SELECT coalesce(sum(sample_count), 0) FROM metric_window_aggregates "
            "WHERE metric_name = $1 AND window_end - window_start = interval '10 s'", name))
    finally:
        await conn.close()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def ingest(n: int, batched: bool = False) -> dict:
    """Ours on n samples (one per record, or batched records) sent to a fresh, idle worker:
    samples/s from the first record sent until every sample is in a closed window's row,
    less one record's own time to land (its window closing by idleness and the sink's flush
    interval; Quix's run closes its windows with a sample an hour ahead instead)."""
    settings = Settings.from_env()
    await ensure_topics(settings.kafka_bootstrap)
    port = free_port()
    log = omnistream_home() / "bench-metrics-worker.log"
    worker = spawn_worker(port, log, OMNISTREAM_APP_ID=f"bench-metrics-{uuid.uuid4().hex[:6]}",
                          OMNISTREAM_AUTO_OFFSET_RESET="latest", OMNISTREAM_METRIC_WINDOW_S="10",
                          OMNISTREAM_METRIC_HOPPING_WINDOW_S="0", OMNISTREAM_METRIC_IDLE_CLOSE_S="2")
    name = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        await asyncio.to_thread(wait_healthy, port, worker, 120, lambda m: print(f"  {m}", flush=True))
        await asyncio.sleep(2)
        one = await _landed_in(settings, _records(f"{name}_one", 1, series=1, batched=False), 1)
        records = _records(name, n, series=20, batched=batched)
        cpu_before = _cpu_seconds(worker.pid)
        elapsed = await _landed_in(settings, records, n, name)
        cpu_s = _cpu_seconds(worker.pid) - cpu_before
        done = await _aggregated(settings.database_url, name)
    finally:
        stop_worker(worker)
    rate = done / max(elapsed - one, 1e-3)
    return {"samples": n, "records": len(records), "aggregated": done, "seconds": round(elapsed, 2),
            "one_record_s": round(one, 2), "samples_per_s": round(rate),
            # cores the worker needs to sustain 10,000 samples/s (its CPU time per sample)
            "worker_cores_per_10k_samples_per_s": round(cpu_s * 10_000 / max(done, 1), 3)}


async def _landed_in(settings: Settings, records: list[tuple[bytes, bytes]], n: int,
                     name: str | None = None) -> float:
    """Seconds from the first record sent until n samples of `name` are aggregated."""
    name = name or records[0][0].decode()
    began = time.perf_counter()
    await _send(settings.kafka_bootstrap, METRICS_EVENTS.name, records)
    deadline = time.monotonic() + 300
    while await _aggregated(settings.database_url, name) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return time.perf_counter() - began


async def limits(n: int) -> dict:
    """The same single-sample records read by a bare aiokafka consumer (the limit, timed as
    ours is) and the naive way (one INSERT per event into a durable table)."""
    settings = Settings.from_env()
    topic = f"bench.bare.{uuid.uuid4().hex[:6]}"
    await ensure_topics(settings.kafka_bootstrap, (
        TopicSpec(topic, "name", MetricEvent, partitions=METRICS_EVENTS.partitions),))
    records = _records(f"bench_{uuid.uuid4().hex[:8]}", n, series=20, batched=False)
    bare = await _bare(settings.kafka_bootstrap, records, topic)
    start = {TopicPartition(topic, p): 0 for p in range(METRICS_EVENTS.partitions)}
    naive = await _naive(settings.kafka_bootstrap, settings.database_url, start, min(n, 5000))
    return {"bare_consumer_events_per_s": round(bare), "naive_insert_events_per_s": round(naive)}


PEER_PYTHON = Path(__file__).resolve().parent.parent / ".venv-bench" / "bin" / "python"


def bare_faust(records: list[tuple[bytes, bytes]]) -> float:
    """Records/s of a faust agent that only acks (bench/faust_ack.py) on the same records."""
    import sys

    settings = Settings.from_env()
    topic = f"bench.faust.{uuid.uuid4().hex[:6]}"
    asyncio.run(ensure_topics(settings.kafka_bootstrap, (
        TopicSpec(topic, "name", MetricEvent, partitions=METRICS_EVENTS.partitions),)))
    count = Path(tempfile.mkdtemp(prefix="faust-ack-", dir="/tmp")) / "count"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("faust_ack.py")),
                             settings.kafka_bootstrap, topic, str(count), str(free_port())],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not count.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        began = time.perf_counter()
        asyncio.run(_send(settings.kafka_bootstrap, topic, records))
        n, seen = len(records), 0
        deadline = time.monotonic() + 300
        while seen < n and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            seen = int(count.read_text() or 0)
        return seen / (time.perf_counter() - began)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(count.parent, ignore_errors=True)


async def _send(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Send (key, value) records and wait until the broker has them all."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20,
                                max_batch_size=256 * 1024, max_request_size=2 * 1024 * 1024)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def peer(records: list[tuple[bytes, bytes]], n: int, name: str) -> dict:
    """Quix Streams on the same records (a topic of its own, same broker, same PostgreSQL):
    samples/s from the first record sent until every sample is in a closed window's row."""
    python = Path(os.environ.get("OMNISTREAM_BENCH_PEER_PYTHON", PEER_PYTHON))
    if not python.exists():
        return {"skipped": f"{python} missing: `make bench` installs Quix Streams there"}
    settings = Settings.from_env()
    topic, table = f"bench.quix.{uuid.uuid4().hex[:6]}", f"quix_{uuid.uuid4().hex[:6]}"
    asyncio.run(ensure_topics(settings.kafka_bootstrap, (
        TopicSpec(topic, "name", MetricEvent, partitions=METRICS_EVENTS.partitions),)))
    closing = time.time() + 3600  # a sample an hour ahead closes every window before it
    tail = orjson.dumps({"name": name, "value": 0, "metric_type": "gauge",
                         "occurred_at": datetime.fromtimestamp(closing, UTC).isoformat()})
    state = tempfile.mkdtemp(prefix="quix-state-", dir="/tmp")
    proc = subprocess.Popen([str(python), str(Path(__file__).with_name("quix_peer.py")),
                             settings.kafka_bootstrap, topic, settings.database_url, table, state],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # Timed once it holds its partitions, like our worker already running.
        asyncio.run(_group_ready(settings.kafka_bootstrap, f"quix-peer-{table}", proc))
        done, elapsed = asyncio.run(_drive_peer(settings, topic, table, records + [(name.encode(), tail)],
                                                n, int(closing * 1000) - 10_000, proc))
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        shutil.rmtree(state, ignore_errors=True)
    if done < n:
        return {"failed": f"{done}/{n} samples in Quix's windows", "stderr": err.decode()[-2000:]}
    return {"samples": n, "aggregated": done, "samples_per_s": round(n / elapsed)}


async def _group_ready(bootstrap: str, group: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until `group` is Stable with a member holding partitions (the peer can read)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            for response in await admin.describe_consumer_groups([group]):
                for described in response.groups:
                    state, members = described[2], described[5]
                    if state == "Stable" and any(m[-1] for m in members):  # an assignment
                        return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"Quix Streams' group {group} was not ready within {timeout:g} s")
    finally:
        await admin.close()


async def _drive_peer(settings: Settings, topic: str, table: str, records: list[tuple[bytes, bytes]],
                      n: int, before_ms: int, proc: subprocess.Popen) -> tuple[int, float]:
    began = time.perf_counter()
    await _send(settings.kafka_bootstrap, topic, records)
    conn = await asyncpg.connect(settings.database_url)
    done, deadline = 0, time.monotonic() + 600
    try:
        while done < n and time.monotonic() < deadline and proc.poll() is None:
            await asyncio.sleep(0.25)
            try:
                done = int(await conn.fetchval(
                    f'SELECT coalesce(sum("count"), 0) FROM {table} WHERE "start" < $1', before_ms))
            except asyncpg.UndefinedTableError:
                continue
    finally:
        await conn.close()
    return done, time.perf_counter() - began


async def sink_rates(n: int) -> dict:
    db = Settings.from_env().database_url
    columns = ("id", "pattern_name", "feedback_type", "user_weight")
    rows = [(uuid.uuid4(), "bench", "true_positive", 1.0) for _ in range(n)]
    async with PgBatchSink(db, "pattern_feedback_log", columns, max_rows=1000) as sink:
        began = time.perf_counter()
        for row in rows:
            await sink.add(row)
        await sink.flush()
        sink_rate = n / (time.perf_counter() - began)
    conn = await asyncpg.connect(db)
    try:
        # Three baselines: COPY into an unlogged, unindexed temp table (the client's limit), COPY
        # into the same table (its indexes and WAL, but no dedupe), and the sink's own SQL alone.
        await conn.execute("CREATE TEMP TABLE raw_copy (LIKE pattern_feedback_log INCLUDING DEFAULTS)")
        rates = {}
        for target in ("raw_copy", "pattern_feedback_log"):
            fresh = [(uuid.uuid4(), *r[1:]) for r in rows]
            began = time.perf_counter()
            for i in range(0, n, 1000):
                await conn.copy_records_to_table(target, records=fresh[i:i + 1000], columns=columns)
            rates[target] = n / (time.perf_counter() - began)
        fresh = [(uuid.uuid4(), *r[1:]) for r in rows]
        cols = ", ".join(columns)
        began = time.perf_counter()
        for i in range(0, n, 1000):
            async with conn.transaction():
                await conn.execute("CREATE TEMP TABLE IF NOT EXISTS bare_stage "
                                   "(LIKE pattern_feedback_log INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
                await conn.copy_records_to_table("bare_stage", records=fresh[i:i + 1000], columns=columns)
                await conn.execute(f"INSERT INTO pattern_feedback_log ({cols}) SELECT {cols} "
                                   "FROM bare_stage ON CONFLICT (id) DO NOTHING")
        staged_rate = n / (time.perf_counter() - began)
    finally:
        await conn.close()
    raw_rate, same_rate = rates["raw_copy"], rates["pattern_feedback_log"]
    return {"rows": n, "sink_rows_per_s": round(sink_rate), "raw_copy_rows_per_s": round(raw_rate),
            "copy_same_table_rows_per_s": round(same_rate),
            "bare_staged_upsert_rows_per_s": round(staged_rate),
            "sink_vs_raw_copy": round(sink_rate / raw_rate, 3),
            "sink_vs_copy_same_table": round(sink_rate / same_rate, 3),
            "sink_vs_bare_staged_upsert": round(sink_rate / staged_rate, 3)}


def _spread(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"min": round(ordered[0], 2), "median": round(statistics.median(ordered), 2),
            "max": round(ordered[-1], 2), "rounds": [round(v, 2) for v in values]}


def run(quick: bool = False, rounds: int | None = None) -> dict:
    """Ours and Quix Streams on the same single-sample records, then on the same batched
    records, alternating, `rounds` times (peers vary 2x between machines and runs: each ratio
    is taken within its round, and min/median/max reported)."""
    rounds = rounds or (1 if quick else 3)
    n_single = 10_000 if quick else 50_000
    n_batched = 100_000 if quick else 1_000_000
    kinds = {"single": (n_single, False), "batched": (n_batched, True)}
    out: dict = {kind: {"ours": [], "quix": [], "vs_quix": []} for kind in kinds}
    for r in range(rounds):
        for kind, (n, batched) in kinds.items():
            ours = asyncio.run(ingest(n, batched=batched))
            name = f"bench_{uuid.uuid4().hex[:8]}"
            quix = peer(_records(name, n, 20, batched=batched), n, name)
            out[kind]["ours"].append(ours)
            out[kind]["quix"].append(quix)
            if "samples_per_s" in quix:
                out[kind]["vs_quix"].append(ours["samples_per_s"] / quix["samples_per_s"])
            print(f"  round {r + 1}/{rounds} {kind:7}: ours {ours['samples_per_s']:,} samples/s, "
                  f"Quix {quix.get('samples_per_s', quix.get('skipped') or quix.get('failed'))}", flush=True)
    for kind in kinds:
        ratios = out[kind].pop("vs_quix")
        out[kind]["vs_quix"] = _spread(ratios) if ratios else None
        out[kind]["ours_samples_per_s"] = _spread([o["samples_per_s"] for o in out[kind]["ours"]])
    out["limits"] = asyncio.run(limits(n_single))
    faust_rate = bare_faust(_records(f"bench_{uuid.uuid4().hex[:8]}", n_single, 20, batched=False))
    out["limits"]["bare_faust_ack_events_per_s"] = round(faust_rate)
    out["sink"] = asyncio.run(sink_rates(20_000 if quick else 100_000))
    return out


def print_report(r: dict) -> None:
    lim = r["limits"]
    for kind, label in (("single", "one sample per record"), ("batched", "batched records")):
        k = r[kind]
        ours, vs = k["ours_samples_per_s"], k["vs_quix"]
        target = "1x" if kind == "single" else "3x"
        quix = ", ".join(f"{q['samples_per_s']:,}" if "samples_per_s" in q else "-" for q in k["quix"])
        print(f"  {label}: ours {ours['rounds']} samples/s | Quix Streams {quix} | ours / Quix "
              + (f"min {vs['min']}x median {vs['median']}x max {vs['max']}x (target median >= {target})"
                 if vs else "not measured (Quix Streams missing: `make bench` installs it)"))
    single = r["single"]["ours_samples_per_s"]["median"]
    bare, ack, naive = (lim["bare_consumer_events_per_s"], lim["bare_faust_ack_events_per_s"],
                        lim["naive_insert_events_per_s"])
    print(f"  limits, single records: bare aiokafka consumer {bare:,} ev/s (ours {single / bare:.2f}x) "
          f"| a faust agent that only acks {ack:,} ev/s (ours {single / ack:.2f}x) "
          f"| one INSERT per event {naive:,} ev/s (ours {single / naive:.1f}x)")
    cores = r["batched"]["ours"][-1]["worker_cores_per_10k_samples_per_s"]
    print(f"  worker CPU on batched records: {cores:.2f} cores per 10,000 samples/s")
    s = r["sink"]
    print(f"  sink {s['rows']} rows: {s['sink_rows_per_s']:,} rows/s | raw copy_records_to_table "
          f"{s['raw_copy_rows_per_s']:,} rows/s into a temp table ({s['sink_vs_raw_copy']:.2f}x), "
          f"{s['copy_same_table_rows_per_s']:,} into the same table ({s['sink_vs_copy_same_table']:.2f}x) "
          f"| its staged upsert without the sink {s['bare_staged_upsert_rows_per_s']:,} "
          f"({s['sink_vs_bare_staged_upsert']:.2f}x)")
