"""Gathers the nodes of one PRD and decides when it is complete. Pure: the state is an
`AssemblyState` (stored as JSON in a changelog-backed Faust table), time is passed in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import ConfigDict, Field

from schemas.events import CompletedNode, CompletionStatus, GeneratedNode, PrdCompleted
from schemas.state import VersionedState

COMPLETED_NS = uuid.UUID("2f1d1b8e-7c11-4c4e-9a55-1e3f6b0c9d21")


class AssemblyState(VersionedState):
    """One PRD being assembled. Version 1; a record without `version` is version 1."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prd_id: str
    service_name: str
    node_count: int
    expected: list[str]
    nodes: dict[str, CompletedNode] = Field(default_factory=dict)
    started_at: float
    deadline_at: float
    done: bool = False
    completed_at: float | None = None
    gen_ms: dict[str, float] = Field(default_factory=dict)  # generation time per node
    fanned_out_at: float | None = None  # earliest fan-out time of its nodes


def completion_id(correlation_id: uuid.UUID | str) -> uuid.UUID:
    """Deterministic: a PRD completed twice (replay, restart) yields the same event id."""
    return uuid.uuid5(COMPLETED_NS, f"{correlation_id}:completed")


def add_node(state: AssemblyState | None, node: GeneratedNode, now: float,
             deadline_s: float) -> AssemblyState:
    """Record one generated node (a redelivered one just overwrites itself)."""
    if state is None:
        state = AssemblyState(
            prd_id=node.prd_id, service_name=node.service_name, node_count=node.node_count,
            expected=list(node.prd_nodes),
            started_at=node.submitted_at.timestamp() if node.submitted_at else now,
            deadline_at=now + deadline_s)
    if state.done:
        return state
    update: dict[str, Any] = {"gen_ms": {**state.gen_ms, node.node_name: node.duration_ms}}
    if node.fanned_out_at is not None:
        fanned = node.fanned_out_at.timestamp()
        update["fanned_out_at"] = min(fanned, state.fanned_out_at or fanned)
    entry = CompletedNode(node_name=node.node_name, node_type=node.node_type, success=node.success,
                          failure_reason=node.failure_reason, files=[f.path for f in node.files],
                          quality_score=node.quality_score if node.success else None,
                          operations=node.operations, scaffold_operations=node.scaffold_operations)
    return state.model_copy(update={**update, "nodes": {**state.nodes, node.node_name: entry}})


def parallel_speedup(state: AssemblyState, now: float) -> float | None:
    """Sum of the nodes' generation times / wall time from fan-out to now (the seed's metric):
    above 1 when nodes were generated side by side. None without the timings."""
    fanned = state.fanned_out_at
    if not fanned or not state.gen_ms or now <= fanned:
        return None
    return round(sum(state.gen_ms.values()) / ((now - fanned) * 1000), 4)


def is_complete(state: AssemblyState) -> bool:
    return not state.done and len(state.nodes) >= state.node_count


def is_overdue(state: AssemblyState, now: float) -> bool:
    return not state.done and now >= state.deadline_at


def completed_event(state: AssemblyState, correlation_id: str, now: float, worker: str | None,
                    timed_out: bool = False) -> PrdCompleted:
    nodes = sorted(state.nodes.values(), key=lambda n: (
        state.expected.index(n.node_name) if n.node_name in state.expected else 99, n.node_name))
    failed = [n.node_name for n in nodes if not n.success]
    missing = [name for name in state.expected if name not in state.nodes]
    status: CompletionStatus
    if timed_out:
        status = "timed_out"
    elif not failed:
        status = "complete"
    else:
        status = "failed" if len(failed) == len(nodes) else "partial"
    return PrdCompleted(
        id=completion_id(correlation_id), correlation_id=uuid.UUID(correlation_id),
        occurred_at=datetime.fromtimestamp(now, UTC), prd_id=state.prd_id,
        service_name=state.service_name, status=status, node_count=state.node_count,
        nodes=nodes, missing=missing, failed=failed,
        duration_ms=round(max(0.0, now - state.started_at) * 1000, 3), worker=worker,
        parallel_speedup=parallel_speedup(state, now))


def mark_done(state: AssemblyState, now: float) -> AssemblyState:
    return state.model_copy(update={"done": True, "completed_at": now})


