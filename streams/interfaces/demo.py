"""`omnistream demo`: bring the stack up, run a worker, publish examples/, summarise."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import orjson

from agents.stats import percentile
from schemas.codec import DecodeError, validate
from schemas.events import DeadLetter, GeneratedNode, PrdCompleted, PrdSubmitted
from schemas.topics import CODEGEN_COMPLETED as CODEGEN_COMPLETED_SPEC
from schemas.topics import CODEGEN_GENERATED, DLQ, PRD_REQUESTS
from streams.config import Settings, omnistream_home
from streams.infra.proc import free_port, port_is_free
from streams.infra.workerproc import spawn_worker, stop_worker, wait_healthy


async def _run(examples: Path, out: Path, timeout: float) -> dict:
    from streams.interfaces.client import OmnistreamClient
    from streams.interfaces.output import write_node

    valid: list[PrdSubmitted] = []
    invalid: list[tuple[str, bytes, str]] = []
    for path in sorted(examples.glob("*.json")):  # noqa: ASYNC240 - a dozen small files
        raw = path.read_bytes()
        try:
            valid.append(validate(PrdSubmitted, orjson.loads(raw)))
        except (DecodeError, orjson.JSONDecodeError) as exc:
            invalid.append((path.name, raw, str(exc)))
    started = time.monotonic()
    async with OmnistreamClient() as client:
        for prd in valid:
            await client.publish_prd(prd)
            print(f"published {prd.prd_id:<18} {len(prd.nodes)} node(s)  correlation id {prd.correlation_id}")
        for name, raw, reason in invalid:
            # Sent raw, as a non-Python publisher would, to show the dead-letter path.
            key = f"demo-invalid-{time.time_ns()}".encode()
            await client.publish_raw(PRD_REQUESTS.name, raw, key=key)
            print(f"published {name} unvalidated (the CLI would refuse it: {reason[:90]}…)")
        ids = {str(p.correlation_id) for p in valid}
        completed: dict[str, PrdCompleted] = {}
        async for done in client.subscribe(CODEGEN_COMPLETED_SPEC, PrdCompleted, correlation_ids=ids,
                                           timeout=timeout):
            completed.setdefault(str(done.correlation_id), done)
            print(f"completed {done.prd_id:<18} {done.status:<9} {done.duration_ms:8.1f} ms")
            if len(completed) == len(ids):
                break
        nodes: list[GeneratedNode] = []
        async for node in client.subscribe(CODEGEN_GENERATED, GeneratedNode, correlation_ids=ids,
                                           timeout=10):
            nodes.append(node)
            if len({(str(n.correlation_id), n.node_name) for n in nodes}) >= sum(
                    len(p.nodes) for p in valid):
                break
        letters = []
        if invalid:
            async for letter in client.subscribe(DLQ, DeadLetter, timeout=10):
                if letter.key and letter.key.startswith("demo-invalid-"):
                    letters.append(letter)
                    if len(letters) >= len(invalid):
                        break
    unique = {(str(n.correlation_id), n.node_name): n for n in nodes}
    files = sum(len(write_node(out, n)) for n in unique.values())
    hits = sum(n.cache_hits for n in unique.values())
    misses = sum(n.cache_misses for n in unique.values())
    latencies = [c.duration_ms for c in completed.values()]
    return {
        "prds": len(valid), "completed": len(completed), "invalid": len(invalid),
        "dead_lettered": len(letters), "nodes": len(unique),
        "failed_nodes": sum(1 for n in unique.values() if not n.success),
        "files": files, "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
        "cache_hit_rate": hits / (hits + misses) if hits + misses else 0.0,
        "statuses": {s: sum(1 for c in completed.values() if c.status == s)
                     for s in ("complete", "partial", "failed", "timed_out")},
        "wall_s": time.monotonic() - started,
        "failures": [f"{n.prd_id}/{n.node_name}: {n.failure_reason}" for n in unique.values()
                     if not n.success],
        "risky": sum(1 for n in unique.values() if n.compatibility and n.compatibility.risky),
        # what was generated from a declared rule, and what is left for a developer to write
        "operations": sum(len(n.operations) for n in unique.values() if n.success),
        "scaffolds": sum(len(n.scaffold_operations) for n in unique.values() if n.success),
    }


def _learnt(report: dict) -> int:
    return sum(m["updates"] for m in report["models"].values())


def _models(port: int, at_least: int = 0, timeout: float = 10) -> dict:
    """The worker's model report, once it has learnt from this run's results (snapshots lag)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models", timeout=5) as resp:
            report = orjson.loads(resp.read())
        if _learnt(report) >= at_least or time.monotonic() > deadline:
            return report
        time.sleep(0.5)


def run_demo(examples: Path, out: Path, serve: bool = False, timeout: float = 180) -> int:
    from streams.infra import stack
    from streams.infra.migrate import migrate

    print("== infra up")
    state = stack.up()
    os.environ.setdefault("KAFKA_BOOTSTRAP_SERVERS", state["kafka"]["bootstrap"])
    os.environ.setdefault("DATABASE_URL", state["postgres"]["url"])
    settings = Settings.from_env()
    print("== migrate")
    asyncio.run(migrate(settings.database_url))
    port = settings.web_port if port_is_free(settings.web_port) else free_port()
    log = omnistream_home() / "demo-worker.log"
    print(f"== worker (http://127.0.0.1:{port}/health, log {log})")
    worker = spawn_worker(port, log)
    try:
        wait_healthy(port, worker, progress=print)
        learnt_before = _learnt(_models(port, timeout=0))
        print(f"== publishing {examples}/")
        summary = asyncio.run(_run(examples, out, timeout))
        print("\n== summary")
        print(f"PRDs published      {summary['prds']} valid, {summary['invalid']} invalid "
              f"({summary['dead_lettered']} in omnistream.dlq)")
        print(f"PRDs completed      {summary['completed']} of {summary['prds']}  {summary['statuses']}")
        print(f"nodes generated     {summary['nodes']}  ({summary['failed_nodes']} failed)")
        for failure in summary["failures"]:
            print(f"  failed: {failure}")
        print(f"operations          {summary['operations'] - summary['scaffolds']} generated from "
              f"declared rules, {summary['scaffolds']} scaffolds left to write (their tests are "
              "strict xfails)")
        print(f"files written       {summary['files']} under {out.resolve()}/<prd_id>/")
        print(f"PRD latency         p50 {summary['p50_ms']:.1f} ms, p95 {summary['p95_ms']:.1f} ms")
        print(f"template cache      {summary['cache_hit_rate']:.1%} hit rate")
        models = _models(port, learnt_before + summary["nodes"])["models"]
        learnt = ", ".join(f"{t} v{m['model_version']} ({m['updates']} results)" for t, m in models.items())
        print(f"mixin models        {learnt or 'none yet'}; {summary['risky']} node(s) flagged risky")
        print(f"worker              http://127.0.0.1:{port}/health, /metrics, /api/predict, "
              "/api/patterns, /api/models")
        ok = summary["completed"] == summary["prds"] and summary["dead_lettered"] == summary["invalid"]
        if serve:
            print("worker keeps running; Ctrl-C stops it")
            worker.wait()
        return 0 if ok else 1
    finally:
        stop_worker(worker)
