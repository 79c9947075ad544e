"""Faust agents. Each stays thin: decode (streams.runtime.processing), call the domain code in agents/, send.

PRD flow: prd.requests → prd-fanout → codegen.tasks → codegen-render → codegen.generated
(+ codegen.results) → prd-assembler (table keyed by correlation id) → codegen.completed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from datetime import UTC, datetime

import orjson
from faust.types import StreamT

from agents.codegen import assembler
from agents.codegen.assembler import AssemblyState
from agents.codegen.fanout import fan_out, task_partition
from agents.codegen.pool import GenerationPool, default_processes
from schemas.codec import encode
from schemas.events import Compatibility, GeneratedNode, NodeTask, PrdCompleted, PrdSubmitted
from schemas.topics import CODEGEN_GENERATED
from streams.codegen.assembly import Assembly
from streams.learning.replicas import models, patterns
from streams.runtime import tables, tracing
from streams.runtime.app import (
    app,
    codegen_completed,
    codegen_generated,
    codegen_results,
    codegen_tasks,
    prd_requests,
    settings,
)
from streams.runtime.dlq import CORRELATION_HEADER, correlation_headers
from streams.runtime.emit import MetricEmitter, emitter
from streams.runtime.faust import Record
from streams.runtime.processing import (
    TableStore,
    produce,
    run_checkpoints,
    run_intake,
)
from streams.runtime.sink import PgBatchSink, run_sink
from streams.runtime.tables import KIND_HEADER, ControlKind

log = logging.getLogger(__name__)

WORKER_ID = f"{settings.app_id}@{socket.gethostname()}:{os.getpid()}"
ASSEMBLY_DEADLINE_S = settings.assembly_deadline_s
ASSEMBLY_PURGE_S = settings.assembly_purge_s

# Rendering, compiling and the detectors run in a process pool (one process per core by
# default; 0 runs them on the event loop), each process with its own template cache.
codegen_pool = GenerationPool(
    default_processes() if settings.codegen_processes is None else settings.codegen_processes,
    max_entries=settings.template_cache_entries,
    max_bytes=settings.template_cache_bytes,
    ttl_s=settings.template_cache_ttl_s,
)


@emitter.collecting
def _template_cache_figures(out: MetricEmitter) -> None:
    totals = codegen_pool.totals()
    lookups = totals["hits"] + totals["misses"]
    if lookups:
        out.emit("template_cache_hit_rate", totals["hits"] / lookups)
    for st in codegen_pool.snapshot():
        out.emit("template_load_ms", st.load_time_ms, template=st.name)

# The assembler's inbox: deadline ticks from its timer and nodes that arrived under another key
# (outside publishers may send no key), re-keyed by correlation id so the table stays
# co-partitioned with codegen.generated.
assembler_inbox = app.topic(tables.assembler_inbox(settings.app_id), key_type=bytes, value_type=bytes,
                            partitions=settings.partitions, internal=True,
                            value_serializer="raw", key_serializer="raw")
assembly_table = app.Table(tables.ASSEMBLY_TABLE, default=None, partitions=settings.partitions,
                           key_type=str)  # json keys and values in the changelog


# ---------------------------------------------------------------------------- fan-out


@app.agent(prd_requests, name="prd-fanout")
async def prd_fanout(stream: StreamT) -> None:
    async def handle(prd: PrdSubmitted, event: Record) -> None:
        tasks = fan_out(prd)
        for task in tasks:
            await produce(codegen_tasks, str(task.correlation_id).encode(), encode(task),
                          partition=task_partition(task, settings.partitions),
                          headers=correlation_headers(task.correlation_id))
        log.info("PRD fanned out", extra={"metadata": {"prd_id": prd.prd_id, "nodes": len(tasks)}})

    await run_intake(stream, PrdSubmitted, "prd-fanout", handle)


# ---------------------------------------------------------------------------- render


@app.task
async def start_codegen_pool() -> None:
    processes = await codegen_pool.start()
    log.info("codegen processes started, template caches warmed",
             extra={"metadata": {"processes": processes}})
    # No explicit shutdown: the pool's processes exit with the worker, also when it is killed
    # (agents.codegen.pool watches the parent).


@app.agent(codegen_tasks, name="codegen-render")
async def codegen_render(stream: StreamT) -> None:
    async def handle(task: NodeTask, event: Record) -> None:
        prediction = models.predict(task.node.node_type, list(task.node.mixins))
        node = await codegen_pool.generate(task, WORKER_ID, patterns.suppressed,
                                           Compatibility(**prediction.compatibility()),
                                           timed=tracing.ENABLED)
        tracing.timed_spans(node.phases, **{"omnistream.node": task.node.name,
                                            "omnistream.node_type": task.node.node_type})
        headers = correlation_headers(task.correlation_id)
        await produce(codegen_generated, str(task.correlation_id).encode(), node.node, headers=headers)
        await produce(codegen_results, task.node.node_type.encode(), node.result, headers=headers)
        emitter.emit("codegen_node_duration_ms", node.duration_ms, "histogram",
                     node_type=node.node_type, success=str(node.success).lower())
        emitter.emit("codegen_quality_score", node.quality_score, "histogram", node_type=node.node_type)
        emitter.emit("mixin_compatibility_score", prediction.score, "histogram", node_type=node.node_type)
        log.info("node generated", extra={"metadata": {
            "node": task.node.name, "success": node.success, "files": node.files,
            "quality": node.quality_score, "ms": node.duration_ms,
            "compatibility": prediction.score, "risky": prediction.risky}})

    # a batch's nodes are generated side by side, as many at once as there are processes
    await run_intake(stream, NodeTask, "codegen-render", handle,
                     concurrency=max(1, codegen_pool.processes) * 2)


# ---------------------------------------------------------------------------- assembler


class _AssemblyOutputs:
    """Where a batch of the assembler sends what it makes (streams.codegen.assembly.Outputs)."""

    async def rekey(self, cid: str, node: GeneratedNode) -> None:
        await produce(assembler_inbox, cid.encode(), encode(node), headers={
            **correlation_headers(cid), KIND_HEADER: ControlKind.NODE.header})

    async def publish(self, done: PrdCompleted) -> None:
        cid = str(done.correlation_id)
        await produce(codegen_completed, cid.encode(), encode(done), headers=correlation_headers(cid))


_ASSEMBLY_OUTPUTS = _AssemblyOutputs()


@app.agent(app.topic(CODEGEN_GENERATED.name, assembler_inbox.get_topic_name(), key_type=bytes,
                     value_type=bytes, value_serializer="raw", key_serializer="raw"),
           name="prd-assembler")
async def prd_assembler(stream: StreamT) -> None:
    store = TableStore(assembly_table)
    # latency: a batch is what has arrived, no waiting to fill it
    await run_checkpoints(stream, "prd-assembler",
                          lambda: Assembly(store, ASSEMBLY_DEADLINE_S, WORKER_ID, _ASSEMBLY_OUTPUTS),
                          within_s=0.0)


_ticks_sent: dict[str, float] = {}


@app.timer(interval=1.0)
async def assembly_deadlines() -> None:
    """Ask the assembler (in its own partition's context) to close overdue or old PRDs."""
    now = time.time()
    for key, raw in list(assembly_table.items()):
        state = AssemblyState.load(raw) if raw else None
        if state is None:
            continue
        if assembler.is_overdue(state, now):
            action = "expire"
        elif state.done and now - (state.completed_at or now) > ASSEMBLY_PURGE_S:
            action = "purge"
        else:
            continue
        if now - _ticks_sent.get(key, 0) < 10:
            continue
        _ticks_sent[key] = now
        await tracing.send(assembler_inbox, key=key.encode(), value=orjson.dumps({"action": action}),
                                   headers={KIND_HEADER: ControlKind.TICK.header,
                                            CORRELATION_HEADER: key.encode()})
    for key in [k for k, t in _ticks_sent.items() if now - t > 60]:
        del _ticks_sent[key]


# ---------------------------------------------------------------------------- sinks

GENERATION_COLUMNS = ("id", "correlation_id", "node_type", "phase", "duration_ms", "cache_hit",
                      "worker_id", "quality_score", "success", "metadata")


def generation_row(node: GeneratedNode) -> tuple:
    return (node.id, node.correlation_id, node.node_type, "render", node.duration_ms,
            node.cache_misses == 0, node.worker, node.quality_score, node.success,
            orjson.dumps({"prd_id": node.prd_id, "node_name": node.node_name,
                          "files": len(node.files), "findings": len(node.findings),
                          "failure_reason": node.failure_reason}).decode())


@app.agent(codegen_generated, name="generation-metrics-sink")
async def generation_metrics_sink(stream: StreamT) -> None:
    """codegen.generated → generation_performance_metrics (one row per node id); a batch is
    acked only after its rows have committed."""
    await run_sink(stream, "generation-metrics-sink", GeneratedNode, PgBatchSink(
        settings.database_url, "generation_performance_metrics", GENERATION_COLUMNS,
        source_topic=CODEGEN_GENERATED.name), generation_row)


CACHE_COLUMNS = ("template_name", "template_type", "worker_id", "content_hash", "size_bytes",
                 "load_time_ms", "access_count", "hit_count", "miss_count", "eviction_count",
                 "last_accessed_at")
_cache_sink: PgBatchSink | None = None


@app.timer(interval=settings.cache_stats_interval_s)
async def persist_template_cache_stats() -> None:
    """Absolute counters per (template, worker): writing the same snapshot twice is harmless."""
    global _cache_sink
    if _cache_sink is None:
        _cache_sink = await PgBatchSink(
            settings.database_url, "template_cache_metadata", CACHE_COLUMNS,
            on_conflict=(
                "ON CONFLICT (template_name, worker_id) DO UPDATE SET "
                "content_hash = EXCLUDED.content_hash, size_bytes = EXCLUDED.size_bytes, "
                "load_time_ms = EXCLUDED.load_time_ms, access_count = EXCLUDED.access_count, "
                "hit_count = EXCLUDED.hit_count, miss_count = EXCLUDED.miss_count, "
                "eviction_count = EXCLUDED.eviction_count, "
                "last_accessed_at = EXCLUDED.last_accessed_at"),
            dedupe_key=lambda row: (row[0], row[2]), max_ms=1000).start()
    for st in codegen_pool.snapshot():
        await _cache_sink.add((
            st.name, st.template_type, WORKER_ID, st.sha256, st.size_bytes,
            round(st.load_time_ms, 3), st.hits + st.misses, st.hits, st.misses, st.evictions,
            datetime.fromtimestamp(st.last_access or time.time(), UTC)))
    try:
        await asyncio.wait_for(_cache_sink.flush(), timeout=30)
    except Exception:  # PostgreSQL away: the rows stay buffered, the next tick retries
        log.warning("template cache statistics not persisted yet", exc_info=True)
