"""A drifting world's burst from an outside publisher, served (issue 25's outside check).

Per seed, a world of bench/worlds.py cut to one drift at 55 % of n results (the rules of its
first two phases) is published to `codegen.results` by kcat (no key, no worker of ours behind
it; aiokafka when kcat is not installed) for a fresh worker with an app id of its own. While
the backlog drains, and after, the served model is read through `POST /api/predict` on 2,000
held-out combinations of the world after the drift, scored against its noiseless truth:
seconds until every result is learnt, the held-out accuracy then, and the seconds from the
first result sent until it first reached 0.97. The seeds are worlds the settings were not
chosen on (13-24).
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid

import orjson

from bench import worlds
from bench.learner_e2e import _updates, _wait_updates
from schemas.topics import CODEGEN_RESULTS
from streams.config import Settings, omnistream_home
from streams.infra.proc import free_port
from streams.infra.workerproc import spawn_worker, stop_worker, wait_healthy
from streams.runtime.topics import ensure_topics

SEEDS = (13, 18, 22)
HELD_OUT = 2000
TARGET = 0.97
WITHIN_S = 120.0
PREDICT_AT_ONCE = 1000  # streams/interfaces/web.py's MAX_PREDICT


def one_drift_world(seed: int, n: int) -> worlds.World:
    """The world of `seed` with its first change of rules at 55 % of n, and no other."""
    world = worlds.make_world(seed, n)
    return dataclasses.replace(world, drifts=(int(n * 0.55),), phases=world.phases[:2])


def _records(world: worlds.World) -> list[bytes]:
    return [orjson.dumps({"node_type": t, "mixins": m, "success": label, "source": "outside-burst"})
            for t, m, label, _ in world]


def _publish(bootstrap: str, values: list[bytes]) -> str:
    """Publish `values` (no key) and wait until the broker has them; returns the publisher."""
    kcat = shutil.which("kcat")
    if kcat is None:
        from bench.metrics import _send

        asyncio.run(_send(bootstrap, CODEGEN_RESULTS.name, [(b"", v) for v in values]))
        return "aiokafka"
    with tempfile.NamedTemporaryFile("wb", suffix=".jsonl") as f:
        f.write(b"\n".join(values) + b"\n")
        f.flush()
        subprocess.run([kcat, "-P", "-b", bootstrap, "-t", CODEGEN_RESULTS.name, "-l", f.name],
                       check=True, timeout=300)
    return "kcat"


def _held_out_accuracy(port: int, test: list[tuple[str, list[str], bool]]) -> float:
    hits = 0
    for start in range(0, len(test), PREDICT_AT_ONCE):
        chunk = test[start:start + PREDICT_AT_ONCE]
        body = orjson.dumps([{"node_type": t, "mixins": m} for t, m, _ in chunk])
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/predict", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            answers = orjson.loads(r.read())
        hits += sum((a["score"] >= 0.5) == truth for a, (_, _, truth) in zip(answers, chunk, strict=True))
    return hits / len(test)


async def run_seed(seed: int, n: int) -> dict:
    settings = Settings.from_env()
    world = one_drift_world(seed, n)
    test = worlds._held_out(world, world.phases[1], seed * 31 + 1, HELD_OUT)
    values = _records(world)
    port = free_port()
    worker = spawn_worker(port, omnistream_home() / f"bench-drift-burst-{seed}.log",
                          OMNISTREAM_APP_ID=f"bench-drift-{seed}-{uuid.uuid4().hex[:6]}",
                          OMNISTREAM_AUTO_OFFSET_RESET="latest")
    try:
        await asyncio.to_thread(wait_healthy, port, worker, 120, lambda m: print(f"  {m}", flush=True))
        # The group's `latest` is resolved at its first fetch: the world's first result alone,
        # until it is learnt, so that every result after it counts.
        deadline, warmups = time.monotonic() + 90, 0
        while await asyncio.to_thread(_updates, port) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the worker learnt no result in 90 s")
            await asyncio.to_thread(_publish, settings.kafka_bootstrap, values[:1])
            warmups += 1
            await asyncio.sleep(2)
        every = n - 1 + warmups  # updates once all is learnt: the first result counts each time sent
        began = time.perf_counter()
        publishing = asyncio.ensure_future(asyncio.to_thread(_publish, settings.kafka_bootstrap, values[1:]))
        curve: list[tuple[float, int, float]] = []
        drained_s = reached_s = None
        while time.perf_counter() - began < WITHIN_S:
            learnt = await asyncio.to_thread(_updates, port)
            accuracy = await asyncio.to_thread(_held_out_accuracy, port, test)
            at = time.perf_counter() - began
            curve.append((round(at, 1), learnt, round(accuracy, 4)))
            if reached_s is None and accuracy >= TARGET and learnt >= every * 0.55:
                reached_s = round(at, 1)
            if learnt >= every:
                drained_s = drained_s or round(at, 1)
                if reached_s is not None or at > drained_s + 10:  # learnt all, no more to come
                    break
            await asyncio.sleep(1.0)
        publisher = await publishing
        learnt = await _wait_updates(port, every, 60)
        final = await asyncio.to_thread(_held_out_accuracy, port, test)
    finally:
        stop_worker(worker)
    return {"seed": seed, "world": world.describe(), "publisher": publisher, "results": n,
            "first_result_sent": warmups, "learnt": learnt, "learnt_expected": every,
            "drained_s": drained_s, "held_out_after": round(final, 4), "reached_target_s": reached_s,
            "curve": curve}


async def run(n: int = 30_000, seeds: tuple[int, ...] = SEEDS) -> dict:
    settings = Settings.from_env()
    await ensure_topics(settings.kafka_bootstrap)
    runs = []
    for seed in seeds:
        runs.append(await run_seed(seed, n))
        print(f"  seed {seed}: {_line(runs[-1])}", flush=True)
    return {"results": n, "target": TARGET, "within_s": WITHIN_S, "runs": runs,
            "worst_held_out": min(r["held_out_after"] for r in runs)}


def _line(r: dict) -> str:
    reached = "never" if r["reached_target_s"] is None else f"{r['reached_target_s']} s"
    again = r["first_result_sent"] - 1  # sent again while the group resolved its offset
    return (f"{r['learnt']:,}/{r['results']:,} results by {r['publisher']}"
            f"{f' (the first sent {again} more times while the group found its offset)' if again else ''}, "
            f"all learnt after "
            f"{r['drained_s']} s; held-out accuracy on the world after the drift {r['held_out_after']} "
            f"(>= {TARGET} after {reached})")


def print_report(r: dict) -> None:
    print(f"  worst of {len(r['runs'])} worlds: held-out accuracy {r['worst_held_out']} after a "
          f"{r['results']:,}-result burst with a drift at 55 % (target >= {r['target']} within "
          f"{r['within_s']:.0f} s, every run)")


if __name__ == "__main__":
    print_report(asyncio.run(run()))
