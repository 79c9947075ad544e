"""`omnistream replay`: rebuild the mixin models from the retained codegen.results topic.

Reads the topic with a consumer outside any group (it assigns the partitions itself and commits
nothing, so the workers' group is untouched, and a fresh cluster need not set up a group
coordinator first) from the beginning or from a point in time up to the end offsets seen at
start. It decodes each fetch in one parse and learns a fresh shared model from it in one
compiled loop that learns the results in order (progress bar: events/s, ETA), and scores the
models in use on the same events (prediction only) beside the new one
(agents/learning/trainer.py). Then it swaps the new shared model in: a signed install message
goes through the learner's inbox, where the worker owning the model catches it up on events
that arrived after the replay stopped reading, gives it the next model_version and snapshots
it. Until then nothing changes; a replay that fails or is interrupted sends nothing.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import TypeAdapter, ValidationError
from tqdm import tqdm

from agents.learning import snapshot
from agents.learning.hierarchy import HierarchicalModel
from agents.learning.registry import SHARED, ModelRegistry
from agents.learning.results import Results
from schemas.codec import MAX_VALUE_BYTES
from schemas.events import GenerationResultFields
from schemas.topics import CODEGEN_RESULTS
from streams.config import Settings, model_key
from streams.interfaces.client import OmnistreamClient
from streams.runtime import tables
from streams.runtime.replica import read_all, topic_partitions
from streams.runtime.tables import ControlKind

if TYPE_CHECKING:  # the trainer compiles its loops (numba): imported when a replay runs
    from agents.learning.trainer import NodeReport


class ReplayError(Exception):
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
                                group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                **settings.kafka_security)
    await consumer.start()
    from agents.learning.trainer import Trainer

    report = ReplayReport()
    trained_through: dict[int, int] = {}
    trainer = Trainer(old.models)
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
        bar = tqdm(total=total, unit="ev", unit_scale=True, file=out, disable=not progress,
                   desc=f"replay {topic}", dynamic_ncols=True)
        started = time.perf_counter()
        with _short_lived_garbage():
            while remaining:
                batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=2000)
                for tp, records in batches.items():
                    stop = end[tp]
                    if records and records[-1].offset >= stop:
                        records = [r for r in records if r.offset < stop]
                    results = decode_results([r.value for r in records])
                    report.events += len(records)
                    report.invalid += len(records) - len(results)
                    trainer.learn(results)
                    bar.update(len(records))
                    if records and records[-1].offset + 1 >= stop:
                        remaining.discard(tp)
                for tp in list(remaining):
                    if await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
        bar.close()
        report.seconds = time.perf_counter() - started
        report.nodes, report.duplicates = trainer.nodes, trainer.duplicates
        report.model, report.old_version = trainer.finish(), trainer.old_version
    finally:
        await consumer.stop()
    if report.events == 0:
        raise ReplayError(f"nothing to replay on {topic} in that range; nothing changed")
    if swap:
        await _install(settings, key, report, trained_through)
        await _await_swap(settings, key, report, wait_s)
    return report


@contextmanager
def _short_lived_garbage() -> Iterator[None]:
    """Replay makes about ten objects per record (parsed fields, ids, lists) that reference
    counting frees, and every few hundred of them Python's cycle collector ran; its older
    generations walked the models' and the consumer's long-lived objects again each time. Those
    are frozen (left out of collections) while the replay reads: 50-74k -> 88-129k results/s
    on the bench's 50,000 results (raising the youngest generation's threshold as well gained
    nothing more)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


_RESULT = TypeAdapter(GenerationResultFields)
_RESULTS = TypeAdapter(list[GenerationResultFields])


def _columns(fields: list[GenerationResultFields]) -> Results:
    return Results([f["node_type"] for f in fields], [f["mixins"] for f in fields],
                   [f["success"] for f in fields],
                   [None if (i := f.get("id")) is None else i.int >> 64 for f in fields])


def decode_results(values: list[bytes | None]) -> Results:
    """The values that are results (with GenerationResult's checks, no model or envelope built
    per record), in order; the others are left out: the workers dead-lettered them. One parse
    for the whole fetch; only a fetch holding a bad record is parsed again one by one."""
    if all(v is not None and len(v) <= MAX_VALUE_BYTES for v in values):
        try:
            return _columns(_RESULTS.validate_json(b"[" + b",".join(values) + b"]"))  # type: ignore[arg-type]
        except ValidationError:
            pass
    valid: list[GenerationResultFields] = []
    for raw in values:
        if raw is None or len(raw) > MAX_VALUE_BYTES:
            continue
        try:
            valid.append(_RESULT.validate_json(raw))
        except ValidationError:
            continue
    return _columns(valid)


async def _install(settings: Settings, key: bytes, report: ReplayReport,
                   trained_through: dict[int, int]) -> None:
    inbox = tables.results_inbox(settings.app_id)
    model = report.model
    assert model is not None
    model.version = report.old_version + 1
    model.find_all_conflicts()
    head = snapshot.SnapshotHeader(SHARED, model.version, model.updates, time.time())
    async with OmnistreamClient(settings=settings) as client:
        await client.publish_raw(inbox, snapshot.dumps(model, head, key), key=SHARED.encode(), headers={
            tables.KIND_HEADER: ControlKind.INSTALL.header,
            tables.TRAINED_HEADER: orjson.dumps({str(p): o for p, o in trained_through.items()})})


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
