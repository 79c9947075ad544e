"""Soak run: a worker under mixed load for N minutes, its memory and backlog reported every minute.

`python -m bench.soak [--minutes 30]` (or `omnistream bench --only soak`) starts a throwaway
Kafka + PostgreSQL, one worker, and offers at once: PRDs (2/s), outside generation results
(50/s), pattern feedback (5/s) and metric samples (500/s over 20 series). Every minute it prints
and records the worker's RSS, its open metric windows, the sizes of its tables (rows per
PostgreSQL table, records per Faust table as the worker reports them) and its consumer lag.
Memory should stay flat after warm-up; the JSON lands in bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from schemas.codec import encode
from schemas.events import GenerationResult, MetricEvent, PatternFeedback, PrdSubmitted
from schemas.topics import CODEGEN_RESULTS, METRICS_EVENTS, PATTERN_FEEDBACK, PRD_REQUESTS
from streams.config import Settings, omnistream_home
from streams.infra.proc import free_port
from streams.infra.workerproc import spawn_worker, stop_worker, wait_healthy

TABLES = ("generation_performance_metrics", "mixin_results_log", "mixin_compatibility_matrix",
          "pattern_feedback_log", "metric_window_aggregates", "alerts", "event_processing_metrics")
MIXINS = ["MixinRetry", "MixinLogging", "MixinCaching", "MixinMetrics", "MixinTimeout", "MixinAudit"]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read()
    except urllib.error.HTTPError as exc:  # /health answers 503 under a backlog: still a body
        return exc.read()


def gauge(text: str, name: str) -> float:
    total = 0.0
    for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M):
        total += float(m.group(1))
    return total


async def offer(bootstrap: str, stop: asyncio.Event) -> dict[str, int]:
    rng = random.Random(3)
    sent = {"prds": 0, "results": 0, "feedback": 0, "samples": 0}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        tick = 0
        while not stop.is_set():
            started = time.monotonic()
            tick += 1
            for _ in range(50):  # 500 samples/s in 10 rounds a second
                name = f"soak_metric_{rng.randrange(4)}"
                s = MetricEvent(name=name, value=rng.random() * 100, metric_type="gauge",
                                labels={"series": f"s{rng.randrange(5)}"})
                await producer.send(METRICS_EVENTS.name, encode(s), key=name.encode())
                sent["samples"] += 1
            for _ in range(5):
                r = GenerationResult(node_type=rng.choice(["effect", "compute", "reducer"]),
                                     mixins=rng.sample(MIXINS, rng.randint(1, 3)),
                                     success=rng.random() > 0.2, source="soak")
                await producer.send(CODEGEN_RESULTS.name, encode(r), key=r.node_type.encode())
                sent["results"] += 1
            if tick % 2 == 0:
                fb = PatternFeedback(pattern_name=rng.choice(["stub_operation", "bare_except"]),
                                     feedback_type=rng.choice(["true_positive", "false_positive"]),
                                     source=f"soak{rng.randrange(3)}")
                await producer.send(PATTERN_FEEDBACK.name, encode(fb), key=fb.pattern_name.encode())
                sent["feedback"] += 1
            if tick % 5 == 0:
                prd = PrdSubmitted(title="Soak", service_name="soak", nodes=[
                    {"node_type": "effect", "name": "SoakWriter", "mixins": rng.sample(MIXINS, 2)},
                    {"node_type": "compute", "name": "SoakScore", "mixins": ["MixinCaching"]}])
                await producer.send(PRD_REQUESTS.name, encode(prd), key=prd.prd_id.encode())
                sent["prds"] += 1
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - started)))
    finally:
        await producer.stop()
    return sent


async def soak(minutes: float) -> dict:
    settings = Settings.from_env()
    port = free_port()
    log = omnistream_home() / "bench-soak-worker.log"
    proc = spawn_worker(port, log, OMNISTREAM_APP_ID=f"soak-{int(time.time())}")
    report: list[dict] = []
    try:
        wait_healthy(port, proc, progress=lambda m: print(f"  {m}"))
        stop = asyncio.Event()
        offering = asyncio.ensure_future(offer(settings.kafka_bootstrap, stop))
        started = time.monotonic()
        for minute in range(1, int(minutes) + 1):
            await asyncio.sleep(max(0.0, started + minute * 60 - time.monotonic()))
            metrics = (await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")).decode()
            health = orjson.loads(await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/health"))
            conn = await asyncpg.connect(settings.database_url)
            try:
                rows = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}
            finally:
                await conn.close()
            point = {"minute": minute, "rss_mib": round(rss_mib(proc.pid), 1),
                     "open_windows": int(gauge(metrics, "omnistream_metric_windows_open")),
                     "consumer_lag": health.get("consumer_lag"), "rows": rows}
            report.append(point)
            print(f"  min {minute:3d}  rss {point['rss_mib']:7.1f} MiB  open windows "
                  f"{point['open_windows']:5d}  lag {point['consumer_lag']}  rows {sum(rows.values()):,}",
                  flush=True)
        stop.set()
        sent = await offering
    finally:
        stop_worker(proc)
    first = next((p["rss_mib"] for p in report if p["minute"] >= min(10, len(report))), None)
    return {"minutes": minutes, "sent": sent, "per_minute": report,
            "rss_mib_at": {str(m): p["rss_mib"] for p in report for m in (1, 10, 30) if p["minute"] == m},
            "rss_growth_after_warmup_mib": round(report[-1]["rss_mib"] - first, 1) if first else None,
            "measured_at": datetime.now(UTC).isoformat()}


def run(minutes: float = 30) -> dict:
    return asyncio.run(soak(minutes))


def main() -> None:
    from bench.common import isolated_stack, write_result

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30)
    args = parser.parse_args()
    print(f"== soak: {args.minutes:g} minutes of mixed load")
    with isolated_stack():
        result = run(args.minutes)
    print(f"  RSS at minutes 1/10/30: {result['rss_mib_at']}; growth after warm-up "
          f"{result['rss_growth_after_warmup_mib']} MiB")
    print(f"  -> {write_result('soak', result)}")


if __name__ == "__main__":
    main()
