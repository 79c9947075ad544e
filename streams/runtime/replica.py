"""A replicated view of a compacted changelog: every worker reads all of its partitions.

This is what a Faust GlobalTable promises; it is built directly on aiokafka because GlobalTable
is known not to keep every instance in sync when several workers run (faust-streaming #283).
No consumer group: each reader assigns itself every partition and reads from the beginning,
so each worker (and a CLI that wants the current models) sees every record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)

Apply = Callable[[bytes | None, bytes | None, int, int], Any]


async def topic_partitions(bootstrap: str, topic: str, security: dict | None = None) -> list[TopicPartition]:
    """The topic's partitions, or [] when it does not exist. Asks for every topic's metadata and
    filters here: asking for one topic by name may auto-create it (with the wrong partition
    count) on brokers that allow auto-creation."""
    from streams.infra.kafka import admin_call

    for t in await admin_call(bootstrap, lambda admin: admin.describe_topics(), **(security or {})):
        if t["topic"] == topic and t["error_code"] == 0 and t["partitions"]:
            return [TopicPartition(topic, p["partition"])
                    for p in sorted(t["partitions"], key=lambda p: p["partition"])]
    return []


class ChangelogReplica:
    def __init__(self, bootstrap: str, topic: str, apply: Apply, *, security: dict | None = None,
                 poll_ms: int = 500, wait_for_topic: bool = True):
        self.bootstrap, self.topic, self.apply = bootstrap, topic, apply
        self.security = security or {}
        self.poll_ms = poll_ms
        self.wait_for_topic = wait_for_topic
        self.ready = asyncio.Event()  # set once everything present at start has been applied
        self.records = 0
        self._task: asyncio.Task | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> ChangelogReplica:
        self._task = asyncio.ensure_future(self.run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _partitions(self) -> list[TopicPartition]:
        while True:  # the changelog appears when its table first starts: wait for it
            tps = await topic_partitions(self.bootstrap, self.topic, self.security)
            if tps or not self.wait_for_topic:
                return tps
            await asyncio.sleep(1.0)

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    **self.security)
        self._consumer = consumer
        await consumer.start()
        try:
            tps = await self._partitions()
            if not tps:  # nothing written yet, and the caller does not want to wait for it
                self.ready.set()
                return
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            remaining = {tp: off for tp, off in end.items() if off > 0}
            if not remaining:
                self.ready.set()
            while True:
                batches = await consumer.getmany(timeout_ms=self.poll_ms, max_records=1000)
                for tp, records in batches.items():
                    for rec in records:
                        self.records += 1
                        try:
                            result = self.apply(rec.key, rec.value, rec.partition, rec.offset)
                            if asyncio.iscoroutine(result):
                                await result
                        except Exception:  # one bad record must not stop the replica
                            log.exception("replica could not apply a record", extra={"metadata": {
                                "topic": self.topic, "partition": rec.partition, "offset": rec.offset}})
                    if tp in remaining and records and records[-1].offset + 1 >= remaining[tp]:
                        del remaining[tp]
                if not self.ready.is_set():
                    for tp in list(remaining):
                        if await consumer.position(tp) >= remaining[tp]:
                            del remaining[tp]
                    if not remaining:
                        self.ready.set()
        finally:
            await consumer.stop()


async def read_all(bootstrap: str, topic: str, apply: Apply, *, security: dict | None = None,
                   timeout: float = 30.0) -> int:
    """Apply every record the changelog holds now, then stop (for CLI commands)."""
    replica = ChangelogReplica(bootstrap, topic, apply, security=security, poll_ms=200,
                               wait_for_topic=False)
    await replica.start()
    try:
        task = replica._task
        assert task is not None, "started above"
        done, _ = await asyncio.wait([asyncio.ensure_future(replica.ready.wait()), task],
                                     timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        failure = task.exception() if task in done else None
        if failure is not None:
            raise failure
        if not replica.ready.is_set():
            raise TimeoutError(f"could not read {topic} within {timeout:.0f}s")
        return replica.records
    finally:
        await replica.stop()
