"""One batch of the PRD assembler, a checkpoint (streams.runtime.processing.Checkpoint)
without Faust: it reads and writes the assembly table through the store it is given, re-keys
nodes and publishes completions through its outputs, and reads time from its clock
(tests/unit/test_assembly.py).

Adding a node is idempotent (a node overwrites itself by name) and a completed PRD is marked
done, so a replayed event changes nothing; a completion sent again after a crash carries the
same event id (assembler.completion_id). `flush` publishes the completions and `save` writes
the states after, so a crash in between replays the batch: the same completion again (the
same id), never a state that says "done" for a completion nobody saw.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson

from agents.codegen import assembler
from agents.codegen.assembler import AssemblyState
from agents.logging import log_context
from schemas.events import GeneratedNode, PrdCompleted
from streams.runtime import tracing
from streams.runtime.emit import emitter
from streams.runtime.faust import Record
from streams.runtime.processing import control_kind, handle_event
from streams.runtime.tables import ControlKind

log = logging.getLogger(__name__)


class Outputs(Protocol):
    async def rekey(self, cid: str, node: GeneratedNode) -> None:
        """Send a node on to the inbox partition of its correlation id."""

    async def publish(self, done: PrdCompleted) -> None:
        """Send a completion to `codegen.completed`."""


class Store(Protocol):  # streams.runtime.processing.TableStore, or a test's dict
    def get(self, key: Any) -> Any: ...
    def put(self, partition: int, key: Any, value: Any) -> None: ...
    def delete(self, partition: int, key: Any) -> None: ...
    def held(self, topic: str, partition: int) -> bool: ...


class Assembly:
    def __init__(self, store: Store, deadline_s: float, worker: str, outputs: Outputs,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.deadline_s, self.worker = store, deadline_s, worker
        self.outputs, self.clock = outputs, clock
        self.changed: dict[str, tuple[str, int, AssemblyState | None]] = {}  # cid → (topic, partition, state)
        self.completed: list[tuple[PrdCompleted, dict[str, bytes]]] = []  # (completion, its trace)

    def state(self, cid: str) -> AssemblyState | None:
        if cid in self.changed:
            return self.changed[cid][2]
        return AssemblyState.load(self.store.get(cid))

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
        with tracing.span("assemble PRD", **{"omnistream.prd_id": done.prd_id,
                                             "omnistream.status": done.status,
                                             "omnistream.correlation_id": cid,
                                             "omnistream.nodes": done.node_count}):
            self.completed.append((done, tracing.carrier()))  # sent in `flush`, in this trace
        return assembler.mark_done(state, now)

    async def on_node(self, node: GeneratedNode, event: Record) -> None:
        cid = str(node.correlation_id)
        if event.key != cid.encode():  # repartition: state must live on the correlation id's partition
            await self.outputs.rekey(cid, node)
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

    async def apply(self, events: Sequence[Record]) -> None:
        for event in events:
            if control_kind(event) is ControlKind.TICK:
                self.on_tick(event)
            else:
                await handle_event(event, GeneratedNode, "prd-assembler", self.on_node)

    async def flush(self) -> None:
        """Publish the completions (before any state saying "done" is written)."""
        for done, trace in self.completed:
            with tracing.resumed(trace):
                await self.outputs.publish(done)

    def save(self) -> None:
        """Write the changed states of the partitions still held (a revoked one's new owner
        replays these events)."""
        for cid, (topic, partition, state) in self.changed.items():
            if not self.store.held(topic, partition):
                continue
            if state is None:
                self.store.delete(partition, cid)
            else:
                self.store.put(partition, cid, state.dump())
