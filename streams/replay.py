"""`omnistream replay`: rebuild the mixin models from the retained codegen.results topic.

Reads the topic in a consumer group of its own (nothing is committed, so the workers' group and
any later replay are untouched) from the beginning or from a point in time up to the end
offsets seen at start, trains fresh models one event at a time (progress bar: events/s, ETA),
scores the models in use on the same events (prediction only) beside the new ones, and then
swaps each new model in: a signed install message goes through the learner's inbox, where the
worker owning that node type catches the model up on events that arrived after the replay
stopped reading, gives it the next model_version and snapshots it. Until then nothing changes;
a replay that fails or is interrupted sends nothing.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import TypeAdapter, ValidationError
from tqdm import tqdm

from agents.learning import snapshot
from agents.learning.model import MixinModel, Progressive
from agents.learning.registry import ModelRegistry
from schemas.codec import MAX_VALUE_BYTES
from schemas.events import GenerationResultFields
from schemas.topics import CODEGEN_RESULTS
from streams import tables
from streams.client import OmnistreamClient
from streams.config import Settings, model_key
from streams.replica import read_all, topic_partitions


class ReplayError(Exception):
    """The replay cannot run as asked (unknown topic, nothing to read); nothing was changed."""


@dataclass
class NodeReport:
    node_type: str
    events: int = 0
    old: Progressive = field(default_factory=Progressive)
    new: MixinModel | None = None
    old_version: int = 0
    new_version: int | None = None


@dataclass
class ReplayReport:
    events: int = 0
    invalid: int = 0
    duplicates: int = 0  # results sent twice (same id), learnt once
    seconds: float = 0.0
    nodes: dict[str, NodeReport] = field(default_factory=dict)
    swapped: bool = False

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for nt, r in sorted(self.nodes.items()):
            new = r.new.progressive if r.new else Progressive()
            out.append({"node_type": nt, "events": r.events,
                        "old_accuracy": round(r.old.accuracy, 4) if r.old.n else None,
                        "old_log_loss": round(r.old.log_loss, 4) if r.old.n else None,
                        "new_accuracy": round(new.accuracy, 4), "new_log_loss": round(new.log_loss, 4),
                        "old_version": r.old_version, "new_version": r.new_version})
        return out


async def current_models(settings: Settings, key: bytes) -> ModelRegistry:
    registry = ModelRegistry(key)
    await read_all(settings.kafka_bootstrap, tables.changelog_topic(settings.app_id, tables.MODEL_TABLE),
                   lambda k, v, p, o: registry.apply(k, v), security=settings.kafka_security)
    return registry


async def _partitions(settings: Settings, topic: str) -> list[TopicPartition]:
    tps = await topic_partitions(settings.kafka_bootstrap, topic, settings.kafka_security)
    if not tps:
        raise ReplayError(f"topic {topic} does not exist on {settings.kafka_bootstrap}")
    return tps


async def replay(settings: Settings, topic: str, since: datetime | None = None, swap: bool = True,
                 wait_s: float = 60.0, progress: bool = True, out: Any = sys.stderr) -> ReplayReport:
    if topic != CODEGEN_RESULTS.name:
        raise ReplayError(f"replay rebuilds the mixin models from {CODEGEN_RESULTS.name}; "
                          f"{topic} trains no model")
    key = model_key()
    if swap:  # the swap goes through the workers' inbox: refuse before any work if none ran
        try:
            await _partitions(settings, tables.results_inbox(settings.app_id))
        except ReplayError:
            raise ReplayError(f"no worker of app {settings.app_id!r} has run on this cluster yet "
                              "(its inbox topic is missing): start `omnistream worker` first, "
                              "or pass --no-swap") from None
    old = await current_models(settings, key)
    tps = await _partitions(settings, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                group_id=f"{settings.app_id}-replay-{uuid.uuid4().hex[:8]}",
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                **settings.kafka_security)
    await consumer.start()
    report = ReplayReport()
    trained_through: dict[int, int] = {}
    try:
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        if since is None:
            start = await consumer.beginning_offsets(tps)
        else:
            found = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
            start = {tp: (found[tp].offset if found.get(tp) else end[tp]) for tp in tps}
        for tp in tps:
            consumer.seek(tp, start[tp])
        remaining = {tp for tp in tps if start[tp] < end[tp]}
        total = sum(end[tp] - start[tp] for tp in tps)
        trained_through = {tp.partition: end[tp] for tp in tps}
        started = time.perf_counter()
        bar = tqdm(total=total, unit="ev", unit_scale=True, file=out, disable=not progress,
                   desc=f"replay {topic}", dynamic_ncols=True)
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=2000)
            for tp, records in batches.items():
                for rec in records:
                    if rec.offset >= end[tp]:
                        break
                    report.events += 1
                    _learn(report, old, rec.value)
                bar.update(sum(1 for r in records if r.offset < end[tp]))
                if records and records[-1].offset + 1 >= end[tp]:
                    remaining.discard(tp)
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        bar.close()
        report.seconds = time.perf_counter() - started
    finally:
        await consumer.stop()
    if report.events == 0:
        raise ReplayError(f"nothing to replay on {topic} in that range; nothing changed")
    if swap:
        await _install(settings, key, report, trained_through)
        await _await_swap(settings, key, report, wait_s)
    return report


_RESULT = TypeAdapter(GenerationResultFields)


def _learn(report: ReplayReport, old: ModelRegistry, raw: bytes) -> None:
    try:  # a dict with GenerationResult's checks: no model (and no envelope) made per record
        result = _RESULT.validate_json(raw) if raw is not None and len(raw) <= MAX_VALUE_BYTES else None
    except ValidationError:
        result = None
    if result is None:
        report.invalid += 1  # the workers sent it to the dead-letter topic; so does replay: skip
        return
    node_type, mixins, success = result["node_type"], result["mixins"], result["success"]
    node = report.nodes.get(node_type)
    if node is None:
        node = report.nodes[node_type] = NodeReport(node_type)
        node.new = MixinModel(node_type)
        current = old.models.get(node_type)
        node.old_version = current.version if current else 0
    result_id = result.get("id")
    if result_id is not None and node.new.seen_result(result_id):
        report.duplicates += 1  # the same result sent twice (its producer crashed): learnt once
        return
    node.events += 1
    current = old.models.get(node_type)
    if current is not None:
        node.old.update(current.predict_proba(mixins), success)
    node.new.learn_one(mixins, success)


async def _install(settings: Settings, key: bytes, report: ReplayReport,
                   trained_through: dict[int, int]) -> None:
    inbox = tables.results_inbox(settings.app_id)
    async with OmnistreamClient(settings=settings) as client:
        for nt, node in sorted(report.nodes.items()):
            model = node.new
            model.version = node.old_version + 1
            model.find_conflicts()
            head = snapshot.SnapshotHeader(nt, model.version, model.updates, time.time())
            await client.publish_raw(inbox, snapshot.dumps(model, head, key), key=nt.encode(), headers={
                tables.KIND_HEADER: b"install",
                tables.TRAINED_HEADER: orjson.dumps({str(p): o for p, o in trained_through.items()})})


async def _await_swap(settings: Settings, key: bytes, report: ReplayReport, wait_s: float) -> None:
    """Wait until the workers' changelog shows each new model (a version above the old one)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        models = await current_models(settings, key)
        for nt, node in report.nodes.items():
            m = models.models.get(nt)
            if m is not None and m.version > node.old_version:
                node.new_version = m.version
        if all(n.new_version is not None for n in report.nodes.values()):
            report.swapped = True
            return
        await asyncio.sleep(1.0)
