"""Faust agents. Each stays thin: decode (streams.dlq), call the domain code in agents/, send."""

from __future__ import annotations

import logging
from typing import Any

from agents.codegen.fanout import fan_out, task_partition
from schemas.codec import encode
from schemas.events import PrdSubmitted
from schemas.topics import CODEGEN_TASKS
from streams.app import app, codegen_tasks, prd_requests
from streams.dlq import correlation_headers, run_intake

log = logging.getLogger(__name__)


@app.agent(prd_requests, name="prd-fanout")
async def prd_fanout(stream: Any) -> None:
    async def handle(prd: PrdSubmitted, event: Any) -> None:
        tasks = fan_out(prd)
        for task in tasks:
            await codegen_tasks.send(
                key=str(task.correlation_id).encode(), value=encode(task),
                partition=task_partition(task, CODEGEN_TASKS.partitions),
                headers=correlation_headers(task.correlation_id))
        log.info("PRD fanned out", extra={"metadata": {"prd_id": prd.prd_id, "nodes": len(tasks)}})

    await run_intake(stream, PrdSubmitted, "prd-fanout", handle)
