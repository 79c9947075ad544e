"""A Faust worker end to end on the real broker: fan-out, dead letters, health, log correlation."""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.request

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.codec import decode
from schemas.events import DeadLetter, NodeTask, PrdSubmitted
from streams.interfaces.client import OmnistreamClient

PRD = {"title": "Orders", "service_name": "orders", "description": "Order service",
       "nodes": [{"node_type": "effect", "name": "OrderWriter", "mixins": ["MixinRetry"]},
                 {"node_type": "compute", "name": "PriceCalculator", "operations": ["price"]},
                 {"node_type": "reducer", "name": "TotalsReducer"}]}


async def _collect(bootstrap: str, topic: str, want, count: int, timeout: float = 60.0) -> list:
    """Records of `topic` for which want(record) is true, until count or timeout."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    found = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                found.extend(r for r in records if want(r))
    finally:
        await consumer.stop()
    return found


def _header(record, name):
    return dict(record.headers).get(name, b"").decode()


async def test_prd_fans_out_to_node_tasks(services, worker):
    prd = PrdSubmitted.model_validate(PRD)
    async with OmnistreamClient(services.bootstrap) as client:
        cid = await client.publish_prd(prd)
    records = await _collect(services.bootstrap, "codegen.tasks",
                             lambda r: r.key == str(cid).encode(), count=3)
    tasks = sorted((decode(NodeTask, r.value) for r in records), key=lambda t: t.node_index)
    assert [t.node.name for t in tasks] == ["OrderWriter", "PriceCalculator", "TotalsReducer"]
    assert {t.correlation_id for t in tasks} == {cid}
    assert all(t.node_count == 3 and t.prd_id == prd.prd_id for t in tasks)
    assert {_header(r, "correlation_id") for r in records} == {str(cid)}
    # The nodes of one PRD are spread over partitions so several workers can share them.
    assert len({r.partition for r in records}) == 3


async def test_bad_bytes_go_to_dlq_and_agent_lives_on(services, worker):
    producer = AIOKafkaProducer(bootstrap_servers=services.bootstrap)
    await producer.start()
    try:
        marker = f"garbage-{time.time_ns()}".encode()
        bad = await producer.send_and_wait("prd.requests", b"\x00" + marker, key=marker)
        invalid = await producer.send_and_wait(
            "prd.requests", orjson.dumps({**PRD, "nodes": [], "title": marker.decode()}), key=marker)
        shadowing = await producer.send_and_wait("prd.requests", orjson.dumps({**PRD, "nodes": [
            {"node_type": "effect", "name": "Charger", "mixins": ["MixinLogging"],
             "operations": ["charge", "log"]}]}), key=marker)
        colliding = await producer.send_and_wait("prd.requests", orjson.dumps({**PRD, "nodes": [
            {"node_type": "effect", "name": "HttpServer"}, {"node_type": "effect", "name": "HTTPServer"}]}),
            key=marker)
        unknown_rule = await producer.send_and_wait("prd.requests", orjson.dumps({**PRD, "nodes": [
            {"node_type": "reducer", "name": "Totals", "operations": [
                {"name": "refund", "input": {"amount": "decimal", "customer_id": "str"},
                 "rule": "subtract amount per customer_id; import os"}]}]}), key=marker)
        badly_typed = await producer.send_and_wait("prd.requests", orjson.dumps({**PRD, "nodes": [
            {"node_type": "reducer", "name": "Totals", "operations": [
                {"name": "refund", "input": {"amount": "money"}}]}]}), key=marker)
        good = PrdSubmitted.model_validate(PRD)
        await producer.send_and_wait("prd.requests", good.model_dump_json().encode(),
                                     key=good.prd_id.encode())
    finally:
        await producer.stop()

    letters = await _collect(services.bootstrap, "omnistream.dlq", lambda r: r.key == marker, 6)
    by_offset = {decode(DeadLetter, r.value).offset: decode(DeadLetter, r.value) for r in letters}
    assert set(by_offset) == {bad.offset, invalid.offset, shadowing.offset, colliding.offset,
                              unknown_rule.offset, badly_typed.offset}
    # a declared operation outside the vocabulary: one line saying which and why
    rule_error = by_offset[unknown_rule.offset].error
    assert "unknown rule 'subtract amount per customer_id; import os'" in rule_error
    assert "\n" not in rule_error
    assert "unknown type 'money'" in by_offset[badly_typed.offset].error
    assert by_offset[shadowing.offset].error_type == "schema"
    shadow_error = by_offset[shadowing.offset].error
    assert "operation 'log' of node Charger would shadow MixinLogging.log" in shadow_error
    assert "nodes HttpServer and HTTPServer are both 'http_server'" in by_offset[colliding.offset].error
    first = by_offset[bad.offset]
    assert first.topic == "prd.requests" and first.partition == bad.partition
    assert first.error_type == "invalid_json" and first.agent == "prd-fanout"
    assert first.value is None or marker.decode() in first.value
    import base64
    assert base64.b64decode(first.value_b64) == b"\x00" + marker
    assert by_offset[invalid.offset].error_type == "schema"
    assert "nodes" in by_offset[invalid.offset].error

    # The agent went on: the good PRD after the bad ones was fanned out.
    tasks = await _collect(services.bootstrap, "codegen.tasks",
                           lambda r: r.key == str(good.correlation_id).encode(), 3)
    assert len(tasks) == 3
    with urllib.request.urlopen(f"{worker.base}/health", timeout=10) as resp:
        health = orjson.loads(resp.read())
    assert resp.status == 200 and health["agents"]["prd-fanout"] == "running"
    with urllib.request.urlopen(f"{worker.base}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert 'omnistream_dlq_events_total{reason="invalid_json",topic="prd.requests"}' in text


async def test_correlation_id_followed_across_kafka_hop_in_logs(services, worker):
    """kcat publishes a PRD without envelope, with the id only in a header; the worker's log
    lines for it carry that id, and so does the next hop's header."""
    cid = "7d4f1c9e-3a52-4c4e-9a8b-0f2e6d1c5b3a"
    body = orjson.dumps({**PRD, "prd_id": "kcat-prd-1"})
    proc = subprocess.run(["kcat", "-b", services.bootstrap, "-t", "prd.requests", "-P",
                           "-k", "kcat-prd-1", "-H", f"correlation_id={cid}"],
                          input=body, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    tasks = await _collect(services.bootstrap, "codegen.tasks", lambda r: r.key == cid.encode(), 3)
    assert len(tasks) == 3 and {_header(r, "correlation_id") for r in tasks} == {cid}
    deadline = time.monotonic() + 10
    lines: list[dict] = []
    while time.monotonic() < deadline and not lines:
        lines = [orjson.loads(line) for line in worker.log_lines() if cid in line]
        await asyncio.sleep(0.2)
    assert lines, "no worker log line carries the correlation id"
    assert all(entry["correlation_id"] == cid for entry in lines)
    assert any(entry["message"] == "PRD fanned out" and entry["component"] == "prd-fanout"
               for entry in lines)
