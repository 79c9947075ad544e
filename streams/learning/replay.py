"""`omnistream replay`: rebuild the mixin models from the retained codegen.results topic.

Reads the topic with a consumer outside any group (it assigns the partitions itself and commits
nothing, so the workers' group is untouched, and a fresh cluster need not set up a group
coordinator first) from the beginning or from a point in time up to the end offsets seen at
start. Each fetch is decoded in one parse and learnt into a fresh shared model by one compiled
loop that learns the results in order, in a process of its own while the next fetch is read
(training.py; progress bar: events/s, ETA); the models in use are scored on the same events
(prediction only) beside the new one (agents/learning/trainer.py). Then it swaps the new
shared model in: a signed install message goes through the learner's inbox, where the worker
owning the model catches it up on events that arrived after the replay stopped reading, gives
it the next model_version and snapshots it. Until then nothing changes; a replay that fails or
is interrupted sends nothing.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from tqdm import tqdm

from agents.learning import snapshot
from agents.learning.hierarchy import HierarchicalModel
from agents.learning.registry import SHARED, ModelRegistry
from schemas.errors import OmnistreamError
from schemas.topics import CODEGEN_RESULTS
from streams.config import Settings, model_key
from streams.learning.training import ChildTraining, InProcessTraining, short_lived_garbage, training
from streams.runtime import tables, tracing
from streams.runtime.replica import read_all, topic_partitions
from streams.runtime.tables import ControlKind
from streams.runtime.topics import idempotent_producer

if TYPE_CHECKING:  # the trainer compiles its loops (numba): imported when a replay runs
    from agents.learning.trainer import NodeReport


class ReplayError(OmnistreamError):
    """The replay cannot run as asked (unknown topic, nothing to read); nothing was changed."""


@dataclass
class ReplayReport:
    events: int = 0
    invalid: int = 0
    duplicates: int = 0  # results sent twice (same id), learnt once
    seconds: float = 0.0
    nodes: dict[str, NodeReport] = field(default_factory=dict)
    model: HierarchicalModel | None = None  # the new shared model
    old_version: int = 0                    # of the shared model in use (0: none yet)
    swapped: bool = False

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for nt, r in sorted(self.nodes.items()):
            new = r.new
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


async def _read(settings: Settings, topic: str, tps: list[TopicPartition], since: datetime | None,
                learner: InProcessTraining | ChildTraining, progress: bool,
                out: Any) -> tuple[ReplayReport, dict[int, int]]:
    """Read the partitions up to the end offsets seen at start, each fetch handed to `learner`
    in order; returns the report and the offsets trained through, per partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                **settings.kafka_security)
    await consumer.start()
    report = ReplayReport()
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
        bar = tqdm(total=sum(end[tp] - start[tp] for tp in tps), unit="ev", unit_scale=True, file=out,
                   disable=not progress, desc=f"replay {topic}", dynamic_ncols=True)
        started = time.perf_counter()
        with short_lived_garbage():
            while remaining:
                batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=2000)
                for tp, records in batches.items():
                    stop = end[tp]
                    if records and records[-1].offset >= stop:
                        records = [r for r in records if r.offset < stop]
                    await learner.learn([r.value for r in records])
                    report.events += len(records)
                    bar.update(len(records))
                    if records and records[-1].offset + 1 >= stop:
                        remaining.discard(tp)
                for tp in list(remaining):
                    if await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
            trained = await learner.finish()
        bar.close()
        report.seconds = time.perf_counter() - started
    finally:
        await consumer.stop()
    report.invalid, report.duplicates, report.nodes = trained.invalid, trained.duplicates, trained.nodes
    report.model, report.old_version = trained.model, trained.old_version
    return report, {tp.partition: end[tp] for tp in tps}


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
    learner = training()  # a process of its own starts importing while the models load
    try:
        old = await current_models(settings, key)
        tps = await _partitions(settings, topic)
        await learner.start(old.models)
        report, trained_through = await _read(settings, topic, tps, since, learner, progress, out)
    finally:
        learner.close()
    if report.events == 0:
        raise ReplayError(f"nothing to replay on {topic} in that range; nothing changed")
    if swap:
        await _install(settings, key, report, trained_through)
        await _await_swap(settings, key, report, wait_s)
    return report


async def _install(settings: Settings, key: bytes, report: ReplayReport,
                   trained_through: dict[int, int]) -> None:
    inbox = tables.results_inbox(settings.app_id)
    model = report.model
    assert model is not None
    model.version = report.old_version + 1
    model.find_all_conflicts()
    head = snapshot.SnapshotHeader(SHARED, model.version, model.updates, time.time(),
                                   replaces=report.old_version)
    tracing.configure("omnistream-replay")  # on by OTEL_* settings
    producer = idempotent_producer(settings.kafka_bootstrap, **settings.kafka_security)
    await producer.start()
    headers = {tables.KIND_HEADER: ControlKind.INSTALL.header,
               tables.TRAINED_HEADER: orjson.dumps({str(p): o for p, o in trained_through.items()})}
    try:
        with tracing.sending(inbox, headers, SHARED.encode()) as traced:
            await producer.send_and_wait(inbox, snapshot.dumps(model, head, key), key=SHARED.encode(),
                                         headers=list((traced or {}).items()))
    finally:
        await producer.stop()
        tracing.flush()


async def _await_swap(settings: Settings, key: bytes, report: ReplayReport, wait_s: float) -> None:
    """Wait until the workers' changelog shows each new model (a version above the old one)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        shared = (await current_models(settings, key)).shared
        if shared is not None and shared.version > report.old_version:
            for node in report.nodes.values():
                node.new_version = shared.version
            report.swapped = True
            return
        await asyncio.sleep(1.0)
