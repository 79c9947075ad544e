"""Scale-out (8): metric samples/s with 1, 2 and 3 workers of one app on 12 partitions, CPU
seconds per 10,000 samples beside each, and how long a rebalance takes when a worker joins
and when one is SIGKILLed.

One consumer group throughout: a worker is added between rounds. Each round drains a backlog:
once every worker holds its share, the workers are paused (SIGSTOP, well within the session
timeout), fresh single-sample records (48 metric names, spread over the 12 partitions) are
published, and the workers resumed at once (SIGCONT); samples/s counts from the resume until
the workers' own counters have folded every sample (then every sample is checked into a closed
window's row). So the publisher does not share the cores while the workers run; the broker and
PostgreSQL still do, and on a 2-core machine the CPU per sample says what more workers cost.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

import orjson

from bench.metrics import _cpu_seconds, _samples, _send
from schemas.codec import encode
from schemas.topics import METRICS_EVENTS
from streams.config import Settings, omnistream_home
from streams.infra.proc import free_port
from streams.infra.workerproc import spawn_worker, stop_worker

PARTITIONS = 12
NAMES = 48
SESSION_TIMEOUT_S = 15  # longer than a round's pause while the backlog is published


@dataclass
class Member:
    proc: subprocess.Popen
    port: int


def _health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return orjson.loads(exc.read())
    except OSError:
        return None


def _split(members: list[Member]) -> bool:
    """Every member ready and holding part of metrics.events, all 12 partitions held once."""
    held = []
    for m in members:
        report = _health(m.port)
        if not report or not report.get("ready"):
            return False
        parts = report.get("assignment", {}).get(METRICS_EVENTS.name, [])
        if not parts:
            return False
        held.extend(parts)
    return sorted(held) == list(range(PARTITIONS))


async def _until_split(members: list[Member], timeout: float = 180) -> float:
    began = time.monotonic()
    while not _split(members):
        if time.monotonic() - began > timeout:
            raise SystemExit(f"omnistream bench: {len(members)} workers did not share the "
                             f"{PARTITIONS} partitions within {timeout:.0f}s")
        if any(m.proc.poll() is not None for m in members):
            raise SystemExit("omnistream bench: a scale-out worker exited; see its log")
        await asyncio.sleep(0.1)
    return time.monotonic() - began


async def _aggregated(db: str, prefix: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(db)
    try:
        return int(await conn.fetchval(
            "SELECT coalesce(sum(sample_count), 0) FROM metric_window_aggregates "
            "WHERE metric_name LIKE $1 AND window_end - window_start = interval '10 s'", prefix + "%"))
    finally:
        await conn.close()


def _records(prefix: str, n: int) -> list[tuple[bytes, bytes]]:
    out = []
    per = n // NAMES
    for k in range(NAMES):
        name = f"{prefix}{k:02d}"
        out.extend((name.encode(), encode(s)) for s in _samples(name, per, series=4))
    # Interleaved, as many sources publishing at once would be.
    return [out[(i % NAMES) * per + i // NAMES] for i in range(per * NAMES)]


def _folded(members: list[Member]) -> float:
    """Samples folded into windows so far, summed over the workers' /metrics."""
    total = 0.0
    for m in members:
        with urllib.request.urlopen(f"http://127.0.0.1:{m.port}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("omnistream_metric_samples_total "):
                    total += float(line.split()[1])
    return total


async def _round(settings: Settings, members: list[Member], n: int) -> dict:
    prefix = f"scale_{uuid.uuid4().hex[:6]}_"
    records = _records(prefix, n)
    before = _folded(members)
    for m in members:
        os.killpg(m.proc.pid, signal.SIGSTOP)
    try:
        await _send(settings.kafka_bootstrap, METRICS_EVENTS.name, records)
    finally:
        cpu_before = sum(_cpu_seconds(m.proc.pid) for m in members)
        began = time.perf_counter()
        for m in members:
            os.killpg(m.proc.pid, signal.SIGCONT)
    deadline = time.monotonic() + 300
    while _folded(members) - before < len(records):
        if time.monotonic() > deadline:
            raise SystemExit("omnistream bench: scale-out samples were not all folded within 300 s")
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - began
    cpu = sum(_cpu_seconds(m.proc.pid) for m in members) - cpu_before
    while await _aggregated(settings.database_url, prefix) < len(records):
        if time.monotonic() > deadline:
            raise SystemExit("omnistream bench: scale-out samples did not all land within 300 s")
        await asyncio.sleep(0.1)
    return {"workers": len(members), "samples": len(records), "seconds": round(elapsed, 2),
            "samples_per_s": round(len(records) / elapsed),
            "landed": await _aggregated(settings.database_url, prefix),
            "cpu_s_per_10k_samples": round(cpu * 10_000 / len(records), 3)}


def _spawn(app_id: str, tag: str) -> Member:
    port = free_port()
    proc = spawn_worker(port, omnistream_home() / f"bench-scaleout-{tag}.log",
                        OMNISTREAM_APP_ID=app_id, OMNISTREAM_PARTITIONS=str(PARTITIONS),
                        OMNISTREAM_AUTO_OFFSET_RESET="latest",
                        OMNISTREAM_SESSION_TIMEOUT_S=str(SESSION_TIMEOUT_S),
                        OMNISTREAM_METRIC_WINDOW_S="10", OMNISTREAM_METRIC_HOPPING_WINDOW_S="0",
                        OMNISTREAM_METRIC_IDLE_CLOSE_S="2",
                        # the workers' own samples would share the topic: keep them out
                        OMNISTREAM_METRIC_EMIT_S="3600", OMNISTREAM_METRIC_COLLECT_S="3600")
    return Member(proc, port)


async def _run(n: int) -> dict:
    os.environ["OMNISTREAM_PARTITIONS"] = str(PARTITIONS)  # the topics the workers create
    settings = Settings.from_env()
    app_id = f"bench-scaleout-{uuid.uuid4().hex[:6]}"
    members: list[Member] = []
    rounds, rebalance = [], {}
    try:
        for k in (1, 2, 3):
            spawned = time.monotonic()
            members.append(_spawn(app_id, str(k)))
            while _health(members[-1].port) is None:  # its own start-up: imports, faust, web
                await asyncio.sleep(0.05)
            answered = time.monotonic()
            await _until_split(members)
            if k > 1:
                # From the new worker's web answering until every member is ready again and
                # holds its share (its start-up before that apart).
                rebalance[f"join_{k}_s"] = round(time.monotonic() - answered, 2)
                rebalance[f"join_{k}_startup_s"] = round(answered - spawned, 2)
            print(f"  {k} worker(s) hold the {PARTITIONS} partitions; sending {n:,} samples", flush=True)
            rounds.append(await _round(settings, members, n))
        victim = members.pop()
        os.killpg(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        killed = time.monotonic()
        await _until_split(members, timeout=SESSION_TIMEOUT_S + 120)
        rebalance["after_sigkill_s"] = round(time.monotonic() - killed, 2)
        rebalance["session_timeout_s"] = SESSION_TIMEOUT_S
    finally:
        for m in members:
            stop_worker(m.proc)
        os.environ.pop("OMNISTREAM_PARTITIONS", None)
    base = rounds[0]["samples_per_s"]
    for r in rounds:
        r["vs_one_worker"] = round(r["samples_per_s"] / max(base, 1), 2)
    return {"partitions": PARTITIONS, "rounds": rounds, "rebalance": rebalance,
            "cores": os.cpu_count()}


def run(quick: bool = False) -> dict:
    return asyncio.run(_run(48_000 if quick else 144_000))


def print_report(r: dict) -> None:
    for x in r["rounds"]:
        print(f"  {x['workers']} worker(s): {x['samples_per_s']:>8,} samples/s ({x['vs_one_worker']:.2f}x "
              f"one worker), {x['cpu_s_per_10k_samples']:.3f} CPU s per 10k samples")
    rb = r["rebalance"]
    print(f"  rebalance: a worker joins {rb.get('join_2_s')} s (2nd) / {rb.get('join_3_s')} s (3rd) "
          f"after its start-up ({rb.get('join_2_startup_s')} / {rb.get('join_3_startup_s')} s); "
          f"one SIGKILLed: {rb['after_sigkill_s']} s "
          f"(session timeout {rb['session_timeout_s']} s)")
