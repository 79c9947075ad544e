"""The learner end to end (6): generation results from `codegen.results` through results-intake
to the mixin-learner of a fresh worker, and a replay's install behind a backlog.

1. n results published at once (an outside build system's burst); timed from the first sent
   until the worker's `omnistream_model_updates_total` counts them all, less one result's own
   time alone (its batch waits up to OMNISTREAM_MODEL_SNAPSHOT_INTERVAL_S for company): results/s.
2. The model changelog's bytes over those results: what learning costs Kafka per result.
3. `replay` trains a model from the topic; n more results are published and its install sent
   right behind them: seconds until the workers' changelog holds the installed version, and
   the model's update count once all is learnt (exactly n learnt after the install's offsets,
   on top of the installed model: 2n in all).
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
import uuid

import orjson
from aiokafka import AIOKafkaConsumer

from schemas.topics import CODEGEN_RESULTS
from streams.config import Settings, model_key, omnistream_home
from streams.infra.proc import free_port
from streams.infra.workerproc import spawn_worker, stop_worker, wait_healthy
from streams.learning import replay
from streams.runtime import tables
from streams.runtime.replica import read_all, topic_partitions
from streams.runtime.topics import ensure_topics

MIXINS = [f"Mixin{c}" for c in "ABCDEFGHIJKLMNOPQRSTUVWX"]
NODE_TYPES = ("effect", "compute", "reducer", "orchestrator")


def results(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    """n results as an outside system sends them (no envelope, no key)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        mixins = rng.sample(MIXINS, rng.randint(1, 5))
        ok = not ({"MixinA", "MixinB"} <= set(mixins)) and rng.random() < 0.95
        out.append((b"", orjson.dumps({"node_type": rng.choice(NODE_TYPES), "mixins": mixins,
                                       "success": ok, "source": "bench"})))
    return out


def _updates(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("omnistream_model_updates_total{")))


async def _wait_updates(port: int, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        seen = await asyncio.to_thread(_updates, port)
        if seen >= at_least:
            return seen
        await asyncio.sleep(0.05)
    return seen


async def _changelog_bytes(settings: Settings, app_id: str) -> tuple[int, int]:
    """(records, value bytes) in the model table's changelog."""
    seen = [0, 0]

    def count(key: bytes | None, value: bytes | None, partition: int, offset: int) -> None:
        seen[0] += 1
        seen[1] += len(value or b"")

    await read_all(settings.kafka_bootstrap, tables.changelog_topic(app_id, tables.MODEL_TABLE), count)
    return seen[0], seen[1]


async def run(n: int = 30_000) -> dict:
    from bench.metrics import _send

    settings = Settings.from_env()
    await ensure_topics(settings.kafka_bootstrap)
    app_id = f"bench-learner-{uuid.uuid4().hex[:6]}"
    port = free_port()
    worker = spawn_worker(port, omnistream_home() / "bench-learner-worker.log", OMNISTREAM_APP_ID=app_id,
                          OMNISTREAM_AUTO_OFFSET_RESET="latest")
    try:
        await asyncio.to_thread(wait_healthy, port, worker, 120, lambda m: print(f"  {m}", flush=True))
        await asyncio.sleep(2)
        # One result's own time through both hops and into a batch (it waits up to the
        # learner's batch interval for company), measured first, subtracted from the burst's.
        began = time.perf_counter()
        await _send(settings.kafka_bootstrap, CODEGEN_RESULTS.name, results(1, 0))
        await _wait_updates(port, 1, 60)
        one = time.perf_counter() - began
        began = time.perf_counter()
        await _send(settings.kafka_bootstrap, CODEGEN_RESULTS.name, results(n, 1))
        learnt = await _wait_updates(port, n + 1, 300) - 1
        elapsed = time.perf_counter() - began
        snapshots, changelog = await _changelog_bytes(settings, app_id)

        # A replay's install right behind a burst of n more results.
        own = Settings.from_env().model_copy(update={"app_id": app_id})
        report = await replay.replay(own, CODEGEN_RESULTS.name, swap=False, progress=False)
        assert report.model is not None
        trained = report.model.updates
        trained_through = await _end_offsets(settings, CODEGEN_RESULTS.name)
        await _send(settings.kafka_bootstrap, CODEGEN_RESULTS.name, results(n, 2))
        sent = time.perf_counter()
        await replay._install(own, model_key(), report, trained_through)
        key = model_key()
        swap_s = None
        while time.perf_counter() - sent < 120:
            shared = (await replay.current_models(own, key)).shared
            if shared is not None and shared.version > report.old_version:
                swap_s = time.perf_counter() - sent
                break
            await asyncio.sleep(0.1)
        await _wait_updates(port, 2 * n + 1, 300)
        await asyncio.sleep(3)  # the last batch's snapshot
        final = (await replay.current_models(own, key)).shared
    finally:
        stop_worker(worker)
    return {"results": n, "learnt": learnt, "seconds": round(elapsed, 2), "one_result_s": round(one, 2),
            "results_per_s": round(learnt / max(elapsed - one, 1e-3)),
            "results_per_s_uncorrected": round(learnt / elapsed),
            "changelog_records": snapshots, "changelog_bytes": changelog,
            "changelog_bytes_per_result": round(changelog / max(learnt, 1), 1),
            "install_behind_backlog_s": round(swap_s, 2) if swap_s is not None else None,
            "updates_after_install": final.updates if final is not None else None,
            "updates_expected": trained + n}


async def _end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    tps = await topic_partitions(settings.kafka_bootstrap, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None)
    await consumer.start()
    try:
        return {tp.partition: off for tp, off in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


def print_report(r: dict) -> None:
    install = r["install_behind_backlog_s"]
    print(f"  learner end to end: {r['learnt']}/{r['results']} results in {r['seconds']} s, one result "
          f"alone {r['one_result_s']} s: {r['results_per_s']:,} results/s (target >= 20,000; "
          f"{r['results_per_s_uncorrected']:,} without the correction) | model changelog "
          f"{r['changelog_records']} snapshots, {r['changelog_bytes']:,} B = "
          f"{r['changelog_bytes_per_result']} B/result")
    print(f"  replay install behind {r['results']:,} results: "
          f"{'not seen' if install is None else f'{install} s'} (target <= 5 s) | model updates after all "
          f"{r['updates_after_install']} (expected {r['updates_expected']})")
