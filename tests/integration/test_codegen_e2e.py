"""PRD → codegen.generated → codegen.completed on the real broker, with real workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from agents.codegen.fanout import fan_out
from schemas.codec import encode
from schemas.events import GeneratedNode, GenerationResult, PrdCompleted, PrdSubmitted
from schemas.topics import CODEGEN_COMPLETED, CODEGEN_GENERATED, CODEGEN_RESULTS
from streams.interfaces.client import OmnistreamClient
from tests.conftest import OMNISTREAM, ROOT, start_worker, stop_worker, wait_split


def _example(name: str, **changes) -> PrdSubmitted:
    data = orjson.loads((ROOT / "examples" / name).read_bytes())
    data.update(prd_id=f"{data.get('prd_id', 'p')}-{uuid.uuid4().hex[:6]}", **changes)
    return PrdSubmitted.model_validate(data)


async def _completed(client: OmnistreamClient, cids: set[str], timeout: float = 90,
                     worker_prefix: str | None = None) -> dict[str, PrdCompleted]:
    out: dict[str, PrdCompleted] = {}
    async for done in client.subscribe(CODEGEN_COMPLETED, PrdCompleted, correlation_ids=cids,
                                       timeout=timeout):
        if worker_prefix and not (done.worker or "").startswith(worker_prefix):
            continue
        out.setdefault(str(done.correlation_id), done)
        if len(out) == len(cids):
            break
    return out


async def test_prd_to_completed_with_compiling_code(services, worker):
    prd = _example("orders.json")
    async with OmnistreamClient(services.bootstrap) as client:
        cid = str(await client.publish_prd(prd))
        done = (await _completed(client, {cid}))[cid]
        nodes = [n async for n in client.generated(correlation_ids={cid}, count=4, timeout=30)]
        results = [r async for r in client.subscribe(CODEGEN_RESULTS, GenerationResult,
                                                     correlation_ids={cid}, count=4, timeout=30)]
    assert done.status == "complete" and done.node_count == 4 and done.missing == []
    assert [n.node_name for n in done.nodes] == [n.name for n in prd.nodes]
    assert {n.node_name for n in nodes} == {n.name for n in prd.nodes}
    for node in nodes:
        assert node.success
        assert {f.pattern_name for f in node.findings} <= {"stub_operation"}  # scaffolds only
        for f in node.files:
            compile(f.content, f.path, "exec")
        expected = next(n for n in prd.nodes if n.name == node.node_name)
        assert node.mixins == expected.mixins
        mixins_py = next((f.content for f in node.files if f.path.endswith("mixins.py")), "")
        for mixin in expected.mixins:
            assert f"class {mixin}:" in mixins_py
    assert all(r.success and r.source == "pipeline" for r in results)
    assert {r.node_type for r in results} == {"effect", "compute", "reducer", "orchestrator"}


async def test_unknown_mixin_fails_its_node_only(services, worker):
    prd = _example("experimental.json")
    async with OmnistreamClient(services.bootstrap) as client:
        cid = str(await client.publish_prd(prd))
        done = (await _completed(client, {cid}))[cid]
        results = [r async for r in client.subscribe(CODEGEN_RESULTS, GenerationResult,
                                                     correlation_ids={cid}, count=2, timeout=30)]
    assert done.status == "partial" and done.failed == ["QuantumRouter"]
    failed = next(n for n in done.nodes if n.node_name == "QuantumRouter")
    assert "unknown mixin MixinQuantumEntanglement" in failed.failure_reason
    assert sorted(r.success for r in results) == [False, True]


async def test_kcat_published_prd_completes(services, worker):
    """A non-Python publisher: no envelope, no key, no header."""
    body = orjson.dumps({"title": "From kcat", "service_name": "kcat_svc",
                         "nodes": [{"node_type": "compute", "name": "KcatCompute"},
                                   {"node_type": "effect", "name": "KcatEffect",
                                    "mixins": ["MixinRetry"]}]})
    marker_start = time.time()
    proc = subprocess.run(["kcat", "-b", services.bootstrap, "-t", "prd.requests", "-P"],
                          input=body, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    async with OmnistreamClient(services.bootstrap) as client:
        async for done in client.subscribe(CODEGEN_COMPLETED, PrdCompleted, timeout=90):
            if done.service_name == "kcat_svc" and done.occurred_at.timestamp() >= marker_start:
                break
        else:
            pytest.fail("no codegen.completed for the kcat PRD")
    assert done.status == "complete" and [n.node_name for n in done.nodes] == ["KcatCompute", "KcatEffect"]


def test_cli_publish_and_subscribe_out(services, worker, tmp_path):
    env = services.env()
    bad = subprocess.run([OMNISTREAM, "publish", "prd", str(ROOT / "examples" / "invalid.json")],
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert "service_name" in bad.stderr and "Traceback" not in bad.stderr
    clash = tmp_path / "clash.json"
    clash.write_bytes(orjson.dumps({"title": "Clash", "service_name": "clash", "nodes": [
        {"node_type": "compute", "name": "Pricer", "mixins": ["MixinRetry"], "operations": ["with_retry"]}]}))
    refused = subprocess.run([OMNISTREAM, "publish", "prd", str(clash)], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "operation 'with_retry' of node Pricer would shadow MixinRetry.with_retry" in refused.stderr
    good = subprocess.run([OMNISTREAM, "publish", "prd", str(ROOT / "examples" / "payments.json")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    cid, prd_id = good.stdout.strip().split("\t")
    out = tmp_path / "out"
    sub = subprocess.run([OMNISTREAM, "subscribe", "generated", "--correlation-id", cid,
                          "--out", str(out), "--count", "2", "--timeout", "90"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert sub.returncode == 0, sub.stderr
    lines = [orjson.loads(line) for line in sub.stdout.splitlines()]
    assert {line["node"] for line in lines} == {"CardCharger", "FraudScorer"}
    node_py = out / prd_id / "payments/nodes/node_card_charger_effect/v1_0_0/node.py"
    assert node_py.exists() and "class NodeCardChargerEffect(" in node_py.read_text()
    timeout = subprocess.run([OMNISTREAM, "subscribe", "generated", "--correlation-id",
                              str(uuid.uuid4()), "--count", "1", "--timeout", "3"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert timeout.returncode == 4 and "timed out after 0 of 1" in timeout.stderr


async def test_statistics_reach_postgresql(services, worker, pipeline_db):
    prd = _example("search.json")
    async with OmnistreamClient(services.bootstrap) as client:
        cid = str(await client.publish_prd(prd))
        await _completed(client, {cid})
    conn = await asyncpg.connect(pipeline_db)
    try:
        deadline = time.monotonic() + 30
        rows, cache_rows = [], []
        while time.monotonic() < deadline and (len(rows) < 2 or not cache_rows):
            rows = await conn.fetch("SELECT * FROM generation_performance_metrics "
                                    "WHERE correlation_id = $1", uuid.UUID(cid))
            cache_rows = await conn.fetch("SELECT * FROM template_cache_efficiency "
                                          "WHERE template_name = 'node/effect.py.j2'")
            await asyncio.sleep(0.5)
    finally:
        await conn.close()
    assert len(rows) == 2 and all(r["success"] and r["phase"] == "render" for r in rows)
    assert cache_rows and cache_rows[0]["hit_count"] >= 1 and cache_rows[0]["size_bytes"] > 0


@pytest.mark.slow
async def test_two_workers_share_codegen_tasks(services, pipeline_db):
    app_id = f"omnistream-pair-{uuid.uuid4().hex[:6]}"
    workers = [start_worker(services, pipeline_db, app_id, tag) for tag in ("a", "b")]
    try:
        await wait_split(workers, "codegen.tasks", partitions=4)
        prds = [_example("orders.json") for _ in range(6)]
        async with OmnistreamClient(services.bootstrap) as client:
            cids = {str(await client.publish_prd(p)) for p in prds}
            done = await _completed(client, cids, timeout=120, worker_prefix=app_id)
            nodes = [n async for n in client.generated(correlation_ids=cids, timeout=20)
                     if (n.worker or "").startswith(app_id)]
    finally:
        for w in workers:
            stop_worker(w)
    assert len(done) == 6 and all(d.status == "complete" for d in done.values())
    renderers = {n.worker for n in nodes}
    assert len(renderers) == 2, renderers  # both workers rendered part of the tasks
    assert len({(n.correlation_id, n.node_name) for n in nodes}) == 24


@pytest.mark.slow
async def test_assembler_state_survives_a_restart_and_deadline_fires(services, pipeline_db):
    app_id = f"omnistream-restart-{uuid.uuid4().hex[:6]}"
    extra = {"OMNISTREAM_ASSEMBLY_DEADLINE_S": "45"}
    prd = _example("orders.json")
    tasks = fan_out(prd)
    lonely = fan_out(_example("payments.json"))
    cid, lonely_cid = str(prd.correlation_id), str(lonely[0].correlation_id)

    def node(task) -> GeneratedNode:
        return GeneratedNode(correlation_id=task.correlation_id, prd_id=task.prd_id,
                             service_name=task.service_name, node_type=task.node.node_type,
                             node_name=task.node.name, node_index=task.node_index,
                             node_count=task.node_count, mixins=list(task.node.mixins), files=[],
                             quality_score=1.0, duration_ms=1.0, prd_nodes=task.prd_nodes,
                             submitted_at=task.submitted_at)

    producer = AIOKafkaProducer(bootstrap_servers=services.bootstrap)
    await producer.start()

    async def send(task, keyed: bool = True) -> None:
        await producer.send_and_wait(CODEGEN_GENERATED.name, encode(node(task)),
                                     key=str(task.correlation_id).encode() if keyed else None)

    first = start_worker(services, pipeline_db, app_id, "first", extra)
    try:
        for t in tasks[:3]:
            await send(t)
        await send(lonely[0], keyed=False)  # no key: the assembler re-keys it itself
        await asyncio.sleep(5)  # let the first worker fold them into its table
    finally:
        stop_worker(first)
    second = start_worker(services, pipeline_db, app_id, "second", extra)
    try:
        await send(tasks[3])
        async with OmnistreamClient(services.bootstrap) as client:
            done = await _completed(client, {cid}, timeout=60, worker_prefix=app_id)
            expired = await _completed(client, {lonely_cid}, timeout=90, worker_prefix=app_id)
    finally:
        stop_worker(second)
        await producer.stop()
    assert done[cid].status == "complete"
    assert [n.node_name for n in done[cid].nodes] == [t.node.name for t in tasks]
    late = expired[lonely_cid]
    assert late.status == "timed_out" and late.missing == [lonely[1].node.name]
    assert [n.node_name for n in late.nodes] == [lonely[0].node.name]


def test_codegen_processes_leave_with_a_worker_killed_by_sigkill(services, pipeline_db):
    """The pool's processes are the worker's children; `kill -9` of the worker alone (not its
    process group) must not leave them running."""
    worker = start_worker(services, pipeline_db, f"pool-kill-{uuid.uuid4().hex[:6]}",
                          extra_env={"OMNISTREAM_CODEGEN_PROCESSES": "2"})
    try:
        deadline = time.monotonic() + 30
        pool: list[int] = []
        while time.monotonic() < deadline and len(pool) < 2:
            kids = subprocess.run(["pgrep", "-P", str(worker.proc.pid)], capture_output=True,
                                  text=True).stdout.split()
            pool = [int(k) for k in kids if "spawn_main" in Path(f"/proc/{k}/cmdline").read_text()]
            time.sleep(0.3)
        assert len(pool) == 2, "the worker should run two codegen processes"
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)

        def running(pid: int) -> bool:  # a zombie waiting for init to reap it has left
            try:
                return "\tZ" not in Path(f"/proc/{pid}/status").read_text().split("State:")[1][:4]
            except (FileNotFoundError, ProcessLookupError):
                return False

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(running(p) for p in pool):
            time.sleep(0.2)
        assert not any(running(p) for p in pool)
    finally:
        stop_worker(worker)
