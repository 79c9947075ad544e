"""One node task → (GeneratedNode, GenerationResult): render, validate, score. No Kafka here."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from agents.codegen.render import CodeGenerator, GenerationFailed
from agents.codegen.validate import ValidationFailed, validate
from schemas.events import Compatibility, GeneratedNode, GenerationResult, NodeTask

log = logging.getLogger(__name__)


def _no_clock() -> int:
    return 0


Phase = tuple[str, int, int]  # (what, start, end) in wall-clock ns: traced by the worker


def generate_node(generator: CodeGenerator, task: NodeTask, worker: str | None = None,
                  suppressed: frozenset[str] = frozenset(),
                  compatibility: Compatibility | None = None,
                  phases: list[Phase] | None = None) -> tuple[GeneratedNode, GenerationResult]:
    """`suppressed`: patterns feedback has shown to be bad (not reported); `compatibility`: the
    mixin model's view of this node's combination, attached to the GeneratedNode as is;
    `phases`: given, it receives when rendering and validating (compile and detectors) ran."""
    started = time.perf_counter()
    clock = time.time_ns if phases is not None else _no_clock
    began = clock()
    before = generator.cache.totals()
    files, findings, score, reason = [], [], 0.0, None
    operations: list[str] = []
    scaffolds: list[str] = []
    try:
        rendered = generator.generate(task)
        rendered_at = clock()
        if phases is not None:
            phases.append(("render", began, rendered_at))
        report = validate(rendered.files, suppressed)
        if phases is not None:
            phases.append(("compile and detect", rendered_at, clock()))
        files, findings, score = rendered.files, report.findings, report.quality_score
        operations, scaffolds = rendered.operations, rendered.scaffolds
    except (GenerationFailed, ValidationFailed) as exc:
        reason = str(exc)
        log.warning("node could not be built", extra={"metadata": {
            "node": task.node.name, "reason": reason}})
    after = generator.cache.totals()
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    common: dict[str, Any] = {"correlation_id": task.correlation_id}
    node = GeneratedNode(
        id=uuid.uuid5(task.id, "generated"), **common, prd_id=task.prd_id, service_name=task.service_name,
        node_type=task.node.node_type, node_name=task.node.name, node_index=task.node_index,
        node_count=task.node_count, mixins=list(task.node.mixins), files=files,
        findings=findings[:500], quality_score=score, duration_ms=duration_ms,
        success=reason is None, failure_reason=reason, worker=worker,
        prd_nodes=list(task.prd_nodes), submitted_at=task.submitted_at,
        cache_hits=int(after["hits"] - before["hits"]),
        cache_misses=int(after["misses"] - before["misses"]),
        compatibility=compatibility, fanned_out_at=task.occurred_at,
        operations=operations, scaffold_operations=scaffolds,
    )
    result = GenerationResult(
        id=uuid.uuid5(task.id, "result"), **common, node_type=task.node.node_type,
        mixins=list(task.node.mixins), success=reason is None,
        failure_reason=reason, source="pipeline", duration_ms=duration_ms,
        scaffold_operations=scaffolds,
    )
    return node, result
