"""A PRD is one OpenTelemetry trace from its publisher to codegen.completed, exported over
OTLP/HTTP (the standard OTEL_* settings) to a receiver this test runs, as a collector would."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from schemas.events import PrdCompleted
from schemas.topics import CODEGEN_COMPLETED
from streams.infra.proc import free_port
from streams.interfaces.client import OmnistreamClient
from tests.conftest import OMNISTREAM, session_workers_paused, start_worker, stop_worker, wait_split


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    attributes: dict[str, object]


@dataclass
class OtlpReceiver:
    """What an OpenTelemetry collector's OTLP/HTTP receiver is given (POST /v1/traces)."""
    spans: list[Span] = field(default_factory=list)
    port: int = 0
    runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _traces(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in export.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    attributes = {a.key: (a.value.string_value or a.value.int_value) for a in s.attributes}
                    self.spans.append(Span(s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex() or None,
                                           s.name, service, attributes))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans if s.trace_id == trace_id]


@pytest.fixture(autouse=True)
def alone():
    """The traced worker is the only deployment reading the topics (the session's shared worker
    would fan the same PRD out and its nodes could complete this worker's assembly first)."""
    with session_workers_paused():
        yield


@pytest.fixture
async def otlp():
    receiver = OtlpReceiver()
    await receiver.start()
    yield receiver
    assert receiver.runner is not None
    await receiver.runner.cleanup()


def _otel_env(receiver: OtlpReceiver, service: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_SERVICE_NAME": service,
            "OTEL_BSP_SCHEDULE_DELAY": "100"}


async def _traced_worker(services, db: str, receiver: OtlpReceiver):
    """A worker of its own app id reading only what is published from now on (the session's
    topics hold every earlier test's PRDs), once it holds every partition of prd.requests."""
    app_id = f"omnistream-test-trace-{uuid.uuid4().hex[:6]}"
    worker = start_worker(services, db, app_id, extra_env={
        **_otel_env(receiver, "omnistream-traced"), "OMNISTREAM_AUTO_OFFSET_RESET": "latest"})
    try:
        await wait_split([worker], "prd.requests", partitions=4)
    except BaseException:
        stop_worker(worker)
        raise
    return app_id, worker


async def _completed(bootstrap: str, service_name: str, since: float) -> PrdCompleted:
    async with OmnistreamClient(bootstrap) as client:
        async for done in client.subscribe(CODEGEN_COMPLETED, PrdCompleted, timeout=120):
            if done.service_name == service_name and done.occurred_at.timestamp() >= since:
                return done
    pytest.fail(f"no codegen.completed for {service_name}")


async def _spans_of(receiver: OtlpReceiver, trace_id: str, names: Counter, timeout: float = 30) -> list[Span]:
    """The trace's spans once it holds at least `names` (name → how many)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        spans = receiver.trace(trace_id)
        have = Counter(s.name for s in spans)
        if all(have[n] >= k for n, k in names.items()):
            return spans
        await asyncio.sleep(0.2)
    pytest.fail(f"trace {trace_id} holds {Counter(s.name for s in receiver.trace(trace_id))}, "
                f"wanted at least {names}")


def _prd(service: str) -> dict:
    return {"title": "Traced", "service_name": service, "nodes": [
        {"node_type": "effect", "name": "Loader", "operations": ["load"]},
        {"node_type": "compute", "name": "Pricer", "mixins": ["MixinCaching"], "operations": [
            {"name": "share", "input": {"part": "decimal", "whole": "decimal"},
             "rule": "ratio part / whole"}]},
        {"node_type": "orchestrator", "name": "Shipper", "operations": ["ship"]}]}


async def test_a_kcat_prd_with_a_traceparent_is_one_trace_through_every_hop(services, pipeline_db, otlp):
    """kcat publishes a PRD of three nodes carrying the traceparent of a trace the test starts: the
    fan-out continues it, three tasks are sent and rendered (with the pool's render span under
    each), and the assembly and codegen.completed end in the same trace, parents before children."""
    app_id, worker = await _traced_worker(services, pipeline_db, otlp)
    try:
        trace_id, publisher_span = uuid.uuid4().hex, os.urandom(8).hex()
        service = f"traced_{uuid.uuid4().hex[:6]}"
        since = time.time()
        proc = subprocess.run(["kcat", "-b", services.bootstrap, "-t", "prd.requests", "-P",
                               "-H", f"traceparent=00-{trace_id}-{publisher_span}-01"],
                              input=orjson.dumps(_prd(service)), capture_output=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        done = await _completed(services.bootstrap, service, since)
        assert done.status == "complete" and done.node_count == 3
        spans = await _spans_of(otlp, trace_id, Counter({
            "process prd.requests": 1, "send codegen.tasks": 3, "process codegen.tasks": 3, "render": 3,
            "compile and detect": 3, "assemble PRD": 1, "send codegen.completed": 1}))
        by_id = {s.span_id: s for s in spans}

        def parent(s: Span) -> Span:
            assert s.parent_id in by_id, f"{s.name}'s parent {s.parent_id} is not in the trace"
            return by_id[s.parent_id]

        def ancestors(s: Span) -> list[str]:
            names = []
            while s.parent_id in by_id:
                s = by_id[s.parent_id]
                names.append(s.name)
            return names

        (fanout,) = [s for s in spans if s.name == "process prd.requests"]
        assert fanout.parent_id == publisher_span  # continued from the publisher's own trace
        assert fanout.service == "omnistream-traced"
        assert fanout.attributes["messaging.system"] == "kafka"
        assert fanout.attributes["messaging.destination.name"] == "prd.requests"
        assert fanout.attributes["messaging.consumer.group.name"] == app_id
        assert "messaging.kafka.offset" in fanout.attributes
        assert fanout.attributes["omnistream.correlation_id"] == str(done.correlation_id)
        for sent in (s for s in spans if s.name == "send codegen.tasks"):
            assert parent(sent) is fanout
        renders = [s for s in spans if s.name == "render"]
        assert sorted(s.attributes["omnistream.node"] for s in renders) == ["Loader", "Pricer", "Shipper"]
        for render in renders:
            handling = parent(render)
            assert handling.name == "process codegen.tasks"
            assert parent(handling).name == "send codegen.tasks" and parent(parent(handling)) is fanout
        (assembly,) = [s for s in spans if s.name == "assemble PRD"]
        assert assembly.attributes["omnistream.status"] == "complete"
        assert ancestors(assembly)[:2] == ["process codegen.generated", "send codegen.generated"]
        assert "process codegen.tasks" in ancestors(assembly) and ancestors(assembly)[-1] == fanout.name
        (completed,) = [s for s in spans if s.name == "send codegen.completed"]
        assert parent(completed) is assembly
        # the worker's JSON log lines of this PRD carry its trace id
        lines = [orjson.loads(line) for line in worker.log_lines()]
        mine = [line for line in lines if line.get("correlation_id") == str(done.correlation_id)]
        assert mine and all(line.get("trace_id") == trace_id for line in mine), mine[:3]
    finally:
        stop_worker(worker)


async def test_a_prd_published_by_the_cli_starts_its_trace_there(services, pipeline_db, otlp, tmp_path):
    _, worker = await _traced_worker(services, pipeline_db, otlp)
    try:
        service = f"traced_{uuid.uuid4().hex[:6]}"
        path = tmp_path / "prd.json"
        path.write_bytes(orjson.dumps(_prd(service)))
        since = time.time()
        proc = subprocess.run([OMNISTREAM, "publish", "prd", str(path)], capture_output=True, text=True,
                              timeout=60, env=services.env(**_otel_env(otlp, "omnistream-cli-test")))
        assert proc.returncode == 0, proc.stderr
        cid = proc.stdout.split()[0]
        done = await _completed(services.bootstrap, service, since)
        assert str(done.correlation_id) == cid
        (published,) = [s for s in otlp.spans if s.name == "send prd.requests"
                        and s.attributes.get("omnistream.correlation_id") == cid]
        assert published.parent_id is None and published.service == "omnistream-cli-test"
        spans = await _spans_of(otlp, published.trace_id, Counter({"process prd.requests": 1, "render": 3,
                                                                   "send codegen.completed": 1}))
        (fanout,) = [s for s in spans if s.name == "process prd.requests"]
        assert fanout.parent_id == published.span_id
    finally:
        stop_worker(worker)
