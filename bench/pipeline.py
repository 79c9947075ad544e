"""PRD → codegen.completed latency at fixed offered loads, beside a bare aiokafka relay
through the same three hops (the floor), and the highest sustained PRD/s, in one run."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from agents.stats import percentile
from schemas.codec import decode
from schemas.events import PrdCompleted, PrdSubmitted
from schemas.topics import CODEGEN_COMPLETED, CODEGEN_GENERATED, CODEGEN_TASKS, PRD_REQUESTS
from streams.config import Settings, omnistream_home
from streams.infra.proc import free_port
from streams.infra.workerproc import spawn_worker, stop_worker, wait_healthy
from streams.interfaces.client import OmnistreamClient

PRD = {"title": "Bench", "service_name": "bench", "description": "load",
       "nodes": [{"node_type": "effect", "name": "BenchWriter", "mixins": ["MixinRetry", "MixinLogging"]},
                 {"node_type": "compute", "name": "BenchCompute", "mixins": ["MixinCaching"]},
                 {"node_type": "reducer", "name": "BenchReducer"}]}


def pct(values: list[float], q: int) -> float:
    return percentile(values, q, empty=float("nan"))


def summarise(latencies: list[float], offered: int, sent: int, wall: float) -> dict:
    return {"offered_per_s": offered, "sent": sent, "completed": len(latencies),
            "p50_ms": pct(latencies, 50), "p95_ms": pct(latencies, 95),
            "p99_ms": pct(latencies, 99),
            "achieved_per_s": len(latencies) / wall if wall else 0.0}


async def _paced(rate: int, seconds: float, send) -> int:
    total = int(rate * seconds)
    started = time.monotonic()
    for i in range(total):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(i)
    return total


class Hops:
    """Each hop's time from the records' own timestamps (set by their producers, ms): PRD →
    its first task (fan-out), task → its generated node less the node's own generation time
    (render: what the hop adds), last generated node → completion (assembly)."""

    TOPICS = (PRD_REQUESTS.name, CODEGEN_TASKS.name, CODEGEN_GENERATED.name)

    def __init__(self) -> None:
        self.prd: dict[str, int] = {}
        self.tasks: dict[tuple[str, str], int] = {}
        self.generated: dict[str, list[tuple[str, int, float]]] = {}
        self.fan_out: list[float] = []
        self.render: list[float] = []
        self.assembly: list[float] = []

    def see(self, topic: str, value: bytes, ts: int) -> None:
        body = orjson.loads(value)
        cid = str(body.get("correlation_id"))
        if topic == PRD_REQUESTS.name:
            self.prd[cid] = ts
        elif topic == CODEGEN_TASKS.name:
            self.tasks[(cid, body["node"]["name"])] = ts
        elif topic == CODEGEN_GENERATED.name:
            self.generated.setdefault(cid, []).append((body["node_name"], ts, body["duration_ms"]))

    def completed(self, cid: str, ts: int) -> None:
        nodes = self.generated.pop(cid, [])
        starts = [t for (c, _), t in self.tasks.items() if c == cid]
        if cid in self.prd and starts:
            self.fan_out.append(min(starts) - self.prd.pop(cid))
        for name, at, work_ms in nodes:
            task_ts = self.tasks.pop((cid, name), None)
            if task_ts is not None:
                self.render.append(max(0.0, at - task_ts - work_ms))
        if nodes:
            self.assembly.append(ts - max(at for _, at, _ in nodes))

    def summary(self) -> dict:
        return {hop: {"p50_ms": pct(v, 50), "p95_ms": pct(v, 95)}
                for hop, v in (("fan_out", self.fan_out), ("render_less_work", self.render),
                               ("assembly", self.assembly))}


async def pipeline_load(bootstrap: str, rate: int, seconds: float) -> dict:
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    hops = Hops()
    consumer = AIOKafkaConsumer(CODEGEN_COMPLETED.name, *Hops.TOPICS, bootstrap_servers=bootstrap,
                                group_id=None, auto_offset_reset="latest")
    await consumer.start()
    await asyncio.sleep(1)

    async def collect() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            now = time.perf_counter()
            for records in batch.values():
                for r in records:
                    if r.topic != CODEGEN_COMPLETED.name:
                        hops.see(r.topic, r.value, r.timestamp)
                        continue
                    done = decode(PrdCompleted, r.value)
                    hops.completed(str(done.correlation_id), r.timestamp)
                    t0 = sent_at.pop(str(done.correlation_id), None)
                    if t0 is not None:
                        latencies.append((now - t0) * 1000)

    collector = asyncio.ensure_future(collect())
    started = time.monotonic()
    async with OmnistreamClient(bootstrap) as client:
        async def send(i: int) -> None:
            prd = PrdSubmitted.model_validate({**PRD, "prd_id": f"bench-{uuid.uuid4().hex[:10]}"})
            sent_at[str(prd.correlation_id)] = time.perf_counter()
            await client.publish_prd(prd)
        sent = await _paced(rate, seconds, send)
    deadline = time.monotonic() + 30
    while sent_at and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    wall = time.monotonic() - started
    collector.cancel()
    await consumer.stop()
    return {**summarise(latencies, rate, sent, wall), "hops": hops.summary()}


async def relay_load(bootstrap: str, rate: int, seconds: float, hops: int = 3) -> dict:
    """The floor: the same payload through `hops` bare aiokafka consume→produce relays."""
    run_id = uuid.uuid4().hex[:6]
    topics = [f"bench.relay.{run_id}.{i}" for i in range(hops + 1)]
    from schemas.topics import TopicSpec
    from streams.runtime.topics import ensure_topics
    await ensure_topics(bootstrap, tuple(TopicSpec(t, "k", PrdSubmitted) for t in topics))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()

    async def relay(src: str, dst: str) -> None:
        c = AIOKafkaConsumer(src, bootstrap_servers=bootstrap, group_id=f"relay-{src}",
                             auto_offset_reset="earliest")
        await c.start()
        try:
            async for r in c:
                await producer.send(dst, r.value, key=r.key)
        finally:
            await c.stop()

    relays = [asyncio.ensure_future(relay(topics[i], topics[i + 1])) for i in range(hops)]
    sent_at: dict[bytes, float] = {}
    latencies: list[float] = []
    sink = AIOKafkaConsumer(topics[-1], bootstrap_servers=bootstrap, group_id=None,
                            auto_offset_reset="earliest")
    await sink.start()

    async def collect() -> None:
        async for r in sink:
            t0 = sent_at.pop(r.key, None)
            if t0 is not None:
                latencies.append((time.perf_counter() - t0) * 1000)

    collector = asyncio.ensure_future(collect())
    await asyncio.sleep(3)  # let the relays join
    payload = PrdSubmitted.model_validate(PRD).model_dump_json().encode()
    started = time.monotonic()

    async def send(i: int) -> None:
        key = f"k{i}".encode()
        sent_at[key] = time.perf_counter()
        await producer.send(topics[0], payload, key=key)

    sent = await _paced(rate, seconds, send)
    deadline = time.monotonic() + 20
    while sent_at and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    wall = time.monotonic() - started
    for task in [*relays, collector]:
        task.cancel()
    await asyncio.gather(*relays, collector, return_exceptions=True)
    await sink.stop()
    await producer.stop()
    return summarise(latencies, rate, sent, wall)


PRD4 = {"title": "Speedup", "service_name": "speedup", "description": "four nodes",
        "nodes": [{"node_type": "effect", "name": "SpeedWriter", "mixins": ["MixinRetry", "MixinTimeout"]},
                  {"node_type": "compute", "name": "SpeedCompute", "mixins": ["MixinCaching"]},
                  {"node_type": "reducer", "name": "SpeedReducer", "mixins": ["MixinMetrics"]},
                  {"node_type": "orchestrator", "name": "SpeedFlow", "mixins": ["MixinTracing"]}]}


async def parallel_probe(bootstrap: str, count: int) -> list[float]:
    """parallel_speedup of 4-node PRDs sent one at a time to an idle worker."""
    speedups: list[float] = []
    async with OmnistreamClient(bootstrap) as client:
        for _ in range(count):
            prd = PrdSubmitted.model_validate({**PRD4, "prd_id": f"speed-{uuid.uuid4().hex[:10]}"})
            cid = str(await client.publish_prd(prd))
            found = [d async for d in client.subscribe(CODEGEN_COMPLETED, PrdCompleted,
                                                       correlation_ids={cid}, count=1, timeout=30)]
            done = found[0] if found else None
            if done is not None and done.parallel_speedup is not None:
                speedups.append(done.parallel_speedup)
            await asyncio.sleep(0.3)
    return speedups


def start_worker(**env: str) -> subprocess.Popen:
    port = free_port()
    proc = spawn_worker(
        port, omnistream_home() / "bench-worker.log",  # the default log level, as users run it
        # a new consumer group: start at the end, not at every PRD ever published
        OMNISTREAM_AUTO_OFFSET_RESET="latest",
        OMNISTREAM_APP_ID=f"omnistream-bench-{uuid.uuid4().hex[:6]}", **env)
    try:
        wait_healthy(port, proc, progress=lambda m: print(f"  {m}", flush=True))
    except SystemExit:
        stop_worker(proc)
        raise
    return proc


def _sustains(pipe: dict) -> bool:
    return pipe["completed"] == pipe["sent"] and pipe["p95_ms"] < 2000


def run(quick: bool = False) -> dict:
    """One worker with the codegen process pool (one process per core) and without it (all on
    the event loop): PRD→completed latency by offered load up to the highest rate it sustains
    (all completed, p95 < 2 s), beside the bare three-hop relay at 10 PRD/s; and the
    parallel_speedup of 4-node PRDs on the idle worker."""
    settings = Settings.from_env()
    bootstrap = settings.kafka_bootstrap
    seconds = 5 if quick else 15
    rates = [10, 20, 40] if quick else [10, 20, 30, 40, 50, 60, 80]
    floor = asyncio.run(relay_load(bootstrap, 10, seconds))
    print(f"  relay floor at 10 PRD/s: p50 {floor['p50_ms']:6.1f} p95 {floor['p95_ms']:6.1f} ms", flush=True)
    modes: dict[str, dict] = {}
    for mode, env in (("pool", {}), ("no_pool", {"OMNISTREAM_CODEGEN_PROCESSES": "0"})):
        worker = start_worker(**env)
        try:
            asyncio.run(pipeline_load(bootstrap, 1, 3))  # warm-up, not reported
            speedups = asyncio.run(parallel_probe(bootstrap, 3 if quick else 8))
            rows = []
            for rate in rates:
                pipe = asyncio.run(pipeline_load(bootstrap, rate, seconds))
                rows.append({"rate": rate, "pipeline": pipe})
                print(f"  {mode:7} {rate:>3} PRD/s  p50 {pipe['p50_ms']:7.1f} p95 {pipe['p95_ms']:7.1f} "
                      f"p99 {pipe['p99_ms']:7.1f} ms ({pipe['completed']}/{pipe['sent']})", flush=True)
                if not _sustains(pipe):
                    break
        finally:
            stop_worker(worker)
        sustained = [r["rate"] for r in rows if _sustains(r["pipeline"])]
        at10 = next(r["pipeline"] for r in rows if r["rate"] == 10)
        modes[mode] = {"rows": rows, "max_sustained_prd_per_s": max(sustained) if sustained else 0,
                       "p95_ms_at_10": at10["p95_ms"],
                       "p95_ratio_vs_floor_at_10": at10["p95_ms"] / floor["p95_ms"],
                       "hops_at_10": at10["hops"],
                       "parallel_speedup": sorted(speedups)}
    pool, plain = modes["pool"], modes["no_pool"]
    ratio = (pool["max_sustained_prd_per_s"] / plain["max_sustained_prd_per_s"]
             if plain["max_sustained_prd_per_s"] else float("nan"))

    def median(values: list[float]) -> float:
        return pct(values, 50) if values else float("nan")

    print(f"  {'figure':58} {'no pool':>9} {'pool':>9}  target")
    print(f"  {'max sustained PRD/s (3 nodes, all completed, p95 < 2 s)':58} "
          f"{plain['max_sustained_prd_per_s']:>9} {pool['max_sustained_prd_per_s']:>9}  >= 40")
    print(f"  {'p95 PRD->completed / bare 3-hop relay p95, 10 PRD/s':58} "
          f"{plain['p95_ratio_vs_floor_at_10']:>8.2f}x {pool['p95_ratio_vs_floor_at_10']:>8.2f}x"
          "  <= 2x")
    print(f"  {'pool / no pool, max sustained (the pool uses both cores)':58} {'':>9} {ratio:>8.2f}x"
          "  >= 1.6x")
    for hop, label in (("fan_out", "hop p50 at 10 PRD/s: PRD -> first task"),
                       ("render_less_work", "hop p50 at 10 PRD/s: task -> node, less its generation"),
                       ("assembly", "hop p50 at 10 PRD/s: last node -> completed")):
        print(f"  {label:58} {plain['hops_at_10'][hop]['p50_ms']:>7.1f}ms "
              f"{pool['hops_at_10'][hop]['p50_ms']:>7.1f}ms  <= 3 ms")
    print(f"  {'parallel_speedup, 4-node PRD, idle worker (median)':58} "
          f"{median(plain['parallel_speedup']):>9.2f} {median(pool['parallel_speedup']):>9.2f}  reported")
    traced = tracing_cost(bootstrap, 10 if quick else 20, seconds, 2 if quick else 3)
    return {"seconds_per_rate": seconds, "relay_floor_at_10": floor, "modes": modes,
            "pool_vs_no_pool_max_sustained": ratio,
            "max_sustained_prd_per_s": pool["max_sustained_prd_per_s"], "tracing": traced}


class _OtlpSink:
    """Where the traced worker exports (OTLP/HTTP on loopback): takes every export and answers
    200, as a collector would, counting what it was sent."""

    def __init__(self) -> None:
        import http.server
        import threading

        sink = self
        self.requests = self.bytes = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.requests += 1
                sink.bytes += len(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def tracing_cost(bootstrap: str, rate: int, seconds: float, rounds: int) -> dict:
    """PRD→completed latency at one rate with traces off (the default) and on (every span
    exported over OTLP/HTTP to a sink on loopback), `rounds` runs each; min/median/max."""
    sink = _OtlpSink()
    out: dict[str, dict] = {}
    try:
        for mode, env in (("off", {}), ("on", {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
                                               "OTEL_SERVICE_NAME": "omnistream-bench"})):
            worker = start_worker(**env)
            try:
                asyncio.run(pipeline_load(bootstrap, 1, 3))  # warm-up
                runs = [asyncio.run(pipeline_load(bootstrap, rate, seconds)) for _ in range(rounds)]
            finally:
                stop_worker(worker)
            p50s, p95s = sorted(r["p50_ms"] for r in runs), sorted(r["p95_ms"] for r in runs)
            out[mode] = {"rate": rate, "p50_ms": p50s, "p95_ms": p95s,
                         "completed": sum(r["completed"] for r in runs),
                         "sent": sum(r["sent"] for r in runs)}
            print(f"  tracing {mode:3} {rate} PRD/s x{rounds}: "
                  f"p50 {p50s[0]:.1f}/{pct(p50s, 50):.1f}/{p50s[-1]:.1f} "
                  f"p95 {p95s[0]:.1f}/{pct(p95s, 50):.1f}/{p95s[-1]:.1f} ms (min/median/max), "
                  f"{out[mode]['completed']}/{out[mode]['sent']} completed", flush=True)
    finally:
        sink.close()
    out["p95_median_on_vs_off"] = pct(out["on"]["p95_ms"], 50) / pct(out["off"]["p95_ms"], 50)
    out["p50_median_on_vs_off"] = pct(out["on"]["p50_ms"], 50) / pct(out["off"]["p50_ms"], 50)
    out["exported"] = {"requests": sink.requests, "bytes": sink.bytes}
    print(f"  {'tracing on / off, median p95 (p50) PRD->completed':58} "
          f"{out['p95_median_on_vs_off']:>8.2f}x ({out['p50_median_on_vs_off']:.2f}x)  reported; "
          f"{sink.requests} exports, {sink.bytes / 1e6:.1f} MB", flush=True)
    return out
