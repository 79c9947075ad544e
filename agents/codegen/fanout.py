"""PRD → one NodeTask per node. Pure: no Kafka here."""

from __future__ import annotations

import uuid
import zlib

from schemas.events import NodeTask, PrdSubmitted


def fan_out(prd: PrdSubmitted) -> list[NodeTask]:
    """The node tasks of a PRD; they share its correlation id so they can be assembled again.
    Their ids derive from the PRD event's id: fanning the same PRD out again (a replay) gives
    the same tasks."""
    return [
        NodeTask(
            id=uuid.uuid5(prd.id, f"task/{index}"),
            correlation_id=prd.correlation_id,
            prd_id=prd.prd_id,
            service_name=prd.service_name,
            title=prd.title,
            prd_description=prd.description,
            node_index=index,
            node_count=len(prd.nodes),
            node=node,
            prd_nodes=[n.name for n in prd.nodes],
            submitted_at=prd.occurred_at,
        )
        for index, node in enumerate(prd.nodes)
    ]


def task_partition(task: NodeTask, partitions: int) -> int:
    """Spread a PRD's nodes over partitions (the key stays the correlation id, as the contract
    says) so several workers render one PRD's nodes side by side."""
    base = zlib.crc32(task.correlation_id.bytes)
    return (base + task.node_index) % partitions
