"""One batch of the PRD assembler, without Faust: it reads and writes the assembly table
through what it is given, re-keys nodes and publishes completions through callbacks, and
reads time from its clock (tests/unit/test_assembly.py).

Adding a node is idempotent (a node overwrites itself by name) and a completed PRD is marked
done, so a replayed event changes nothing; a completion sent again after a crash carries the
same event id (assembler.completion_id). `finish` publishes the completions first and writes
the states after, so a crash in between replays the batch: the same completion again (the
same id), never a state that says "done" for a completion nobody saw.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping

import orjson

from agents.codegen import assembler
from agents.codegen.assembler import AssemblyState
from agents.logging import log_context
from schemas.events import GeneratedNode, PrdCompleted
from streams.runtime.emit import emitter
from streams.runtime.faust import Record

log = logging.getLogger(__name__)


class Assembly:
    def __init__(self, table: Mapping[str, dict], deadline_s: float, worker: str,
                 rekey: Callable[[str, GeneratedNode], Awaitable[None]],
                 publish: Callable[[PrdCompleted], Awaitable[None]],
                 clock: Callable[[], float] = time.time) -> None:
        self.table, self.deadline_s, self.worker = table, deadline_s, worker
        self.rekey, self.publish, self.clock = rekey, publish, clock
        self.changed: dict[str, tuple[str, int, AssemblyState | None]] = {}  # cid → (topic, partition, state)
        self.completed: list[PrdCompleted] = []

    def state(self, cid: str) -> AssemblyState | None:
        if cid in self.changed:
            return self.changed[cid][2]
        return AssemblyState.load(self.table.get(cid))

    def put(self, event: Record, cid: str, state: AssemblyState | None) -> None:
        self.changed[cid] = (event.message.topic, event.message.partition, state)

    def _complete(self, cid: str, state: AssemblyState, timed_out: bool) -> AssemblyState:
        now = self.clock()
        done = assembler.completed_event(state, cid, now, self.worker, timed_out=timed_out)
        emitter.emit("prd_completion_ms", done.duration_ms, "histogram", status=done.status)
        if done.parallel_speedup is not None and not timed_out:
            emitter.emit("parallel_speedup", done.parallel_speedup, node_count=str(done.node_count))
        log.info("PRD completed", extra={"metadata": {
            "prd_id": done.prd_id, "status": done.status, "missing": done.missing,
            "failed": done.failed, "ms": done.duration_ms}})
        self.completed.append(done)
        return assembler.mark_done(state, now)

    async def on_node(self, node: GeneratedNode, event: Record) -> None:
        cid = str(node.correlation_id)
        if event.key != cid.encode():  # repartition: state must live on the correlation id's partition
            await self.rekey(cid, node)
            return
        state = assembler.add_node(self.state(cid), node, self.clock(), self.deadline_s)
        if assembler.is_complete(state):
            state = self._complete(cid, state, timed_out=False)
        self.put(event, cid, state)

    def on_tick(self, event: Record) -> None:
        cid = (event.key or b"").decode("utf-8", "replace")
        state = self.state(cid)
        if state is None:
            return
        action = orjson.loads(event.value or b"{}").get("action")
        with log_context(correlation_id=cid, component="prd-assembler"):
            if action == "expire" and assembler.is_overdue(state, self.clock()):
                self.put(event, cid, self._complete(cid, state, timed_out=True))
            elif action == "purge" and state.done:
                self.put(event, cid, None)

    async def finish(self, put: Callable[[int, str, dict], None], delete: Callable[[int, str], None],
                     held: Callable[[str, int], bool]) -> None:
        """Publish the completions, then write the changed states of the partitions still held
        (a revoked one's new owner replays these events)."""
        for done in self.completed:
            await self.publish(done)
        for cid, (topic, partition, state) in self.changed.items():
            if not held(topic, partition):
                continue
            if state is None:
                delete(partition, cid)
            else:
                put(partition, cid, state.dump())
