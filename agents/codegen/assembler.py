"""Gathers the nodes of one PRD and decides when it is complete. Pure: the state is a plain
dict (it lives in a changelog-backed Faust table), time is passed in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from schemas.events import CompletedNode, CompletionStatus, GeneratedNode, PrdCompleted

COMPLETED_NS = uuid.UUID("2f1d1b8e-7c11-4c4e-9a55-1e3f6b0c9d21")


def completion_id(correlation_id: uuid.UUID | str) -> uuid.UUID:
    """Deterministic: a PRD completed twice (replay, restart) yields the same event id."""
    return uuid.uuid5(COMPLETED_NS, f"{correlation_id}:completed")


def add_node(state: dict | None, node: GeneratedNode, now: float, deadline_s: float) -> dict:
    """Record one generated node (a redelivered one just overwrites itself)."""
    if state is None:
        submitted = node.submitted_at.timestamp() if node.submitted_at else now
        state = {
            "prd_id": node.prd_id, "service_name": node.service_name,
            "node_count": node.node_count, "expected": list(node.prd_nodes),
            "nodes": {}, "started_at": submitted, "deadline_at": now + deadline_s,
            "done": False,
        }
    if state["done"]:
        return state
    timing: dict[str, Any] = {"gen_ms": {**state.get("gen_ms", {}), node.node_name: node.duration_ms}}
    if node.fanned_out_at is not None:
        fanned = node.fanned_out_at.timestamp()
        timing["fanned_out_at"] = min(fanned, state.get("fanned_out_at") or fanned)
    entry = CompletedNode(node_name=node.node_name, node_type=node.node_type, success=node.success,
                          failure_reason=node.failure_reason, files=[f.path for f in node.files],
                          quality_score=node.quality_score if node.success else None)
    return {**state, **timing, "nodes": {**state["nodes"], node.node_name: entry.model_dump(mode="json")}}


def parallel_speedup(state: dict, now: float) -> float | None:
    """Sum of the nodes' generation times / wall time from fan-out to now (the seed's metric):
    above 1 when nodes were generated side by side. None without the timings."""
    fanned, gen_ms = state.get("fanned_out_at"), state.get("gen_ms")
    if not fanned or not gen_ms or now <= fanned:
        return None
    return round(sum(gen_ms.values()) / ((now - fanned) * 1000), 4)


def is_complete(state: dict) -> bool:
    return not state["done"] and len(state["nodes"]) >= state["node_count"]


def is_overdue(state: dict, now: float) -> bool:
    return not state["done"] and now >= state["deadline_at"]


def completed_event(state: dict, correlation_id: str, now: float, worker: str | None,
                    timed_out: bool = False) -> PrdCompleted:
    nodes = [CompletedNode.model_validate(n) for n in state["nodes"].values()]
    nodes.sort(key=lambda n: (state["expected"].index(n.node_name)
                              if n.node_name in state["expected"] else 99, n.node_name))
    failed = [n.node_name for n in nodes if not n.success]
    missing = [name for name in state["expected"] if name not in state["nodes"]]
    status: CompletionStatus
    if timed_out:
        status = "timed_out"
    elif not failed:
        status = "complete"
    else:
        status = "failed" if len(failed) == len(nodes) else "partial"
    return PrdCompleted(
        id=completion_id(correlation_id), correlation_id=uuid.UUID(correlation_id),
        occurred_at=datetime.fromtimestamp(now, UTC), prd_id=state["prd_id"],
        service_name=state["service_name"], status=status, node_count=state["node_count"],
        nodes=nodes, missing=missing, failed=failed,
        duration_ms=round(max(0.0, now - state["started_at"]) * 1000, 3), worker=worker,
        parallel_speedup=parallel_speedup(state, now))


def mark_done(state: dict, now: float) -> dict:
    return {**state, "done": True, "completed_at": now}
