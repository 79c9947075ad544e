"""One assembler batch, without Kafka: a dict for the table, lists for the outputs."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest

from agents.codegen.fanout import fan_out
from schemas.events import GeneratedNode, PrdCompleted, PrdSubmitted
from streams.codegen.assembly import Assembly
from tests.unit.test_codegen import _node

PRD = {"prd_id": "orders-1", "title": "Orders", "service_name": "orders", "nodes": [
    {"name": "LoadOrder", "node_type": "effect", "operations": ["load"]},
    {"name": "PriceOrder", "node_type": "compute", "operations": ["price"]},
    {"name": "ShipOrder", "node_type": "orchestrator", "operations": ["ship"]}]}


def _event(key: str, partition: int = 2, value: bytes = b"") -> SimpleNamespace:
    return SimpleNamespace(key=key.encode(), value=value,
                           message=SimpleNamespace(topic="codegen.generated", partition=partition))


class Outputs:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.published: list[PrdCompleted] = []
        self.rekeyed: list[str] = []

    async def publish(self, done: PrdCompleted) -> None:
        self.log.append(f"publish {done.status}")
        self.published.append(done)

    async def rekey(self, cid: str, node: GeneratedNode) -> None:
        self.rekeyed.append(node.node_name)


class DictStore:  # the assembly table as a dict, its writes logged beside the outputs
    def __init__(self, table: dict, out: Outputs) -> None:
        self.table, self.out, self.holding = table, out, True

    def get(self, key: str) -> dict | None:
        return self.table.get(key)

    def put(self, partition: int, key: str, value: dict) -> None:
        self.out.log.append(f"put {partition}")
        self.table[key] = value

    def delete(self, partition: int, key: str) -> None:
        self.out.log.append(f"delete {partition}")
        self.table.pop(key, None)

    def held(self, topic: str, partition: int) -> bool:
        return self.holding


def _batch(table: dict, out: Outputs, now: float = 1000.0) -> Assembly:
    return Assembly(DictStore(table, out), deadline_s=60, worker="w1", outputs=out, clock=lambda: now)


async def _finish(batch: Assembly, table: dict, out: Outputs, held: bool = True) -> None:
    """The end of a checkpoint: flush (publish), then save (the states)."""
    batch.store.holding = held  # type: ignore[attr-defined]
    await batch.flush()
    batch.save()


async def test_completion_is_published_before_the_state_saying_done_is_written():
    tasks = fan_out(PrdSubmitted.model_validate(PRD))
    cid = str(tasks[0].correlation_id)
    table: dict = {}
    out = Outputs()
    batch = _batch(table, out)
    for t in tasks:
        await batch.on_node(_node(t), _event(cid))
        await batch.on_node(_node(t), _event(cid))  # redelivered: overwrites itself
    await _finish(batch, table, out)
    assert out.log == ["publish complete", "put 2"]
    assert table[cid]["done"] is True and table[cid]["version"] == 1
    assert [n.node_name for n in out.published[0].nodes] == [t.node.name for t in tasks]

    replay = _batch(table, out)  # the batch again after a crash: nothing new
    for t in tasks:
        await replay.on_node(_node(t), _event(cid))
    await _finish(replay, table, out)
    assert len(out.published) == 1


async def test_a_failing_publish_writes_no_state_and_the_replay_sends_the_same_completion():
    tasks = fan_out(PrdSubmitted.model_validate(PRD))
    cid = str(tasks[0].correlation_id)
    table: dict = {}
    out = Outputs()

    async def broken(done: PrdCompleted) -> None:
        raise ConnectionError("broker away")

    batch = Assembly(DictStore(table, out), 60, "w1", SimpleNamespace(rekey=out.rekey, publish=broken),
                     clock=lambda: 1000.0)
    for t in tasks:
        await batch.on_node(_node(t), _event(cid))
    with pytest.raises(ConnectionError):
        await _finish(batch, table, out)
    assert table == {}
    again = _batch(table, out, now=1001.0)
    for t in tasks:
        await again.on_node(_node(t), _event(cid))
    await _finish(again, table, out)
    assert len(out.published) == 1 and str(out.published[0].correlation_id) == cid


async def test_nodes_under_another_key_are_rekeyed_and_overdue_prds_time_out_by_the_clock():
    tasks = fan_out(PrdSubmitted.model_validate(PRD))
    cid = str(tasks[0].correlation_id)
    table: dict = {}
    out = Outputs()
    batch = _batch(table, out)
    await batch.on_node(_node(tasks[0]), _event("someone-else"))
    await batch.on_node(_node(tasks[1], success=False), _event(cid))
    await _finish(batch, table, out)
    assert out.rekeyed == [tasks[0].node.name] and out.published == []

    tick = _event(cid, value=orjson.dumps({"action": "expire"}))
    early = _batch(table, out, now=1030.0)
    early.on_tick(tick)
    await _finish(early, table, out)
    assert out.published == []
    late = _batch(table, out, now=1061.0)
    late.on_tick(tick)
    await _finish(late, table, out)
    done = out.published[0]
    assert done.status == "timed_out" and done.failed == [tasks[1].node.name]
    assert set(done.missing) == {tasks[0].node.name, tasks[2].node.name}

    purge = _batch(table, out, now=5000.0)
    purge.on_tick(_event(cid, value=orjson.dumps({"action": "purge"})))
    await _finish(purge, table, out, held=False)
    assert cid in table  # revoked meanwhile: left to the new owner
    purge2 = _batch(table, out, now=5000.0)
    purge2.on_tick(_event(cid, value=orjson.dumps({"action": "purge"})))
    await _finish(purge2, table, out)
    assert cid not in table
