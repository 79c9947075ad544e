"""A small Python client: publish events and subscribe to generated code.

    async with OmnistreamClient() as client:
        cid = await client.publish_prd(prd)
        async for node in client.generated(correlation_id=cid, count=3, timeout=60):
            ...
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.stats import RecentIds
from schemas import topics as spec
from schemas.codec import DecodeError, decode, encode, metric_records
from schemas.events import Envelope, GeneratedNode, MetricEvent, PrdCompleted, PrdSubmitted
from streams.config import Settings
from streams.runtime import tracing
from streams.runtime.replica import topic_partitions
from streams.runtime.topics import ensure_topics, idempotent_producer

M = TypeVar("M", bound=Envelope)


class OmnistreamClient:
    def __init__(self, bootstrap: str | None = None, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        self.bootstrap = bootstrap or self.settings.kafka_bootstrap
        self._producer: AIOKafkaProducer | None = None
        self._entered = False

    async def __aenter__(self) -> OmnistreamClient:
        await ensure_topics(self.bootstrap, partitions=self.settings.partitions, not_mine_ok=True,
                            replication=self.settings.replication_factor, **self.settings.kafka_security)
        self._entered = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._producer is not None:
            await self._producer.stop()
            tracing.flush()  # this client's spans leave before a CLI command exits

    async def _producing(self) -> AIOKafkaProducer:
        """The producer, started on first use: a principal that may only read (a secure stack's
        `reader`) is refused a producer id, so a client that only subscribes never asks."""
        assert self._entered, "use `async with OmnistreamClient()`"
        if self._producer is None:
            tracing.configure("omnistream-client")  # on by OTEL_* settings, or the host's SDK
            producer = idempotent_producer(self.bootstrap, **self.settings.kafka_security)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def publish(self, topic: spec.TopicSpec, event: Envelope, key: str | None = None) -> None:
        producer = await self._producing()
        if key is None:
            key = str(getattr(event, topic.key, "") or "") or None
        headers = {"correlation_id": str(event.correlation_id).encode()}
        with tracing.sending(topic.name, headers, key.encode() if key else None) as traced:
            tracing.annotate(tracing.current_span(), correlation_id=event.correlation_id)
            await producer.send_and_wait(topic.name, encode(event), key=key.encode() if key else None,
                                         headers=list((traced or {}).items()))

    async def publish_raw(self, topic: str, value: bytes, key: bytes | None = None,
                          headers: dict[str, bytes] | None = None) -> None:
        """Send bytes as they are (what a non-Python publisher would send); no validation."""
        producer = await self._producing()
        with tracing.sending(topic, headers, key) as traced:
            await producer.send_and_wait(topic, value, key=key, headers=list((traced or {}).items()) or None)

    async def publish_prd(self, prd: PrdSubmitted) -> uuid.UUID:
        await self.publish(spec.PRD_REQUESTS, prd, key=prd.prd_id)
        return prd.correlation_id

    async def publish_metrics(self, samples: Iterable[MetricEvent]) -> int:
        """Send metric samples as batched records (one per metric name, at most 10,000 samples
        and 1 MiB each); returns how many records were sent."""
        producer = await self._producing()
        sent = []
        for key, value in metric_records(samples):
            with tracing.sending(spec.METRICS_EVENTS.name, None, key) as headers:
                sent.append(await producer.send(spec.METRICS_EVENTS.name, value, key=key,
                                                headers=list(headers.items()) if headers else None))
        await asyncio.gather(*sent)  # every record acknowledged by the broker
        return len(sent)

    async def subscribe(self, topic: spec.TopicSpec, model: type[M], *,
                        correlation_ids: set[str] | None = None, count: int | None = None,
                        timeout: float | None = None, from_beginning: bool = True,
                        to_end: bool = False) -> AsyncIterator[M]:
        """Yield decoded values (optionally of some correlation ids) until count or timeout;
        with `to_end`, also stop once everything the topic held when we started has been read.
        Outputs are at-least-once with deterministic ids: a value whose id was already yielded
        (a worker sent it again after a crash) is dropped here."""
        consumer = AIOKafkaConsumer(
            *(() if to_end else (topic.name,)), bootstrap_servers=self.bootstrap, group_id=None,
            auto_offset_reset="earliest" if from_beginning else "latest",
            enable_auto_commit=False, **self.settings.kafka_security)
        await consumer.start()
        seen = 0
        seen_ids = RecentIds()
        deadline = None if timeout is None else time.monotonic() + timeout
        end: dict[TopicPartition, int] | None = None
        try:
            if to_end:  # an explicit assignment, so positions exist from the start
                tps = await topic_partitions(self.bootstrap, topic.name, self.settings.kafka_security)
                consumer.assign(tps)
                await (consumer.seek_to_beginning if from_beginning else consumer.seek_to_end)(*tps)
                end = await consumer.end_offsets(tps)
            while count is None or seen < count:
                if end is not None and all([await consumer.position(tp) >= off for tp, off in end.items()]):
                    return
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                batch = await consumer.getmany(timeout_ms=int(min(left or 1.0, 1.0) * 1000))
                for records in batch.values():
                    for record in records:
                        try:
                            value = decode(model, record.value)
                        except DecodeError:
                            continue
                        if correlation_ids and str(value.correlation_id) not in correlation_ids:
                            continue
                        # Ids are a function of the input: two apps (consumer groups) reading the
                        # same PRD produce the same ids, so the producing app is part of the key.
                        worker = getattr(value, "worker", None) or ""
                        if seen_ids.seen((value.id, worker.split("@", 1)[0])):
                            continue
                        yield value
                        seen += 1
                        if count is not None and seen >= count:
                            return
        finally:
            await consumer.stop()

    def generated(self, **kw) -> AsyncIterator[GeneratedNode]:
        return self.subscribe(spec.CODEGEN_GENERATED, GeneratedNode, **kw)

    def completed(self, **kw) -> AsyncIterator[PrdCompleted]:
        return self.subscribe(spec.CODEGEN_COMPLETED, PrdCompleted, **kw)

