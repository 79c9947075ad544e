"""The topics a deployment uses: created before anything produces, replicated, and checked.

Every topic the worker uses is created here (public, inboxes, table changelogs, dead letters),
with the deployment's partition count, a replication factor (default: min(3, brokers in the
cluster)) and `min.insync.replicas` one less (at least 1): with acks=all and idempotent
producers, a write is acknowledged once two of three replicas hold it, so one broker can die
at any instant without losing an acknowledged record, and the cluster still takes writes.
Existing topics are never altered; `check` says what differs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer

from schemas.topics import ALL, TopicSpec

log = logging.getLogger(__name__)

MAX_REPLICATION = 3


@dataclass(frozen=True)
class TopicInfo:
    partitions: int
    replicas: int  # the smallest replica count of its partitions


@dataclass
class TopicCheck:
    """What `check` found: topics replicated less than asked (name → replicas) and topics
    with another partition count than asked (name → partitions)."""

    replication: int
    under_replicated: dict[str, int] = field(default_factory=dict)
    partitions_differ: dict[str, int] = field(default_factory=dict)


STARTUP_CHECK: TopicCheck | None = None  # what the worker found at start (/health shows it)


def idempotent_producer(bootstrap: str, **security: object) -> AIOKafkaProducer:
    """A producer for clients outside the worker (the Python client, replay's install): acks
    from every in-sync replica, idempotent (a batch sent again to a new leader is kept once)."""
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                            **security)


def min_insync(replication: int) -> int:
    return max(1, replication - 1)


async def replication_for(bootstrap: str, asked: int | None, **security) -> int:
    """The replication factor to create topics with: what was asked, else min(3, brokers)."""
    from streams.infra.kafka import brokers

    if asked:
        return asked
    return min(MAX_REPLICATION, max(1, len(await brokers(bootstrap, **security))))


async def describe(bootstrap: str, **security) -> dict[str, TopicInfo]:
    """Every topic's partition count and (smallest) replica count."""
    from streams.infra.kafka import admin_call

    described = await admin_call(bootstrap, lambda admin: admin.describe_topics(), **security)
    return {t["topic"]: TopicInfo(len(t["partitions"]), min(len(p["replicas"]) for p in t["partitions"]))
            for t in described if t["error_code"] == 0 and t["partitions"]}


async def check(bootstrap: str, specs: tuple[TopicSpec, ...], replication: int,
                **security) -> TopicCheck:
    """Compare the existing topics among `specs` with their asked partitions and `replication`."""
    found = await describe(bootstrap, **security)
    report = TopicCheck(replication)
    for spec in specs:
        info = found.get(spec.name)
        if info is None:
            continue
        if info.replicas < replication:
            report.under_replicated[spec.name] = info.replicas
        if info.partitions != spec.partitions:
            report.partitions_differ[spec.name] = info.partitions
    return report


async def ensure_topics(bootstrap: str, specs: tuple[TopicSpec, ...] = ALL, partitions: int | None = None,
                        replication: int | None = None, not_mine_ok: bool = False, **security) -> list[str]:
    """Create the missing topics; return the names created. Existing topics are left alone.
    `replication` None: min(3, brokers in the cluster). `not_mine_ok`: a topic this principal
    may not create (or not even see: a secure cluster lists only those it may use) is left to
    whoever may (a publisher's client), not an error."""
    from aiokafka.admin import NewTopic
    from aiokafka.errors import (
        ClusterAuthorizationFailedError,
        TopicAlreadyExistsError,
        TopicAuthorizationFailedError,
        for_code,
    )

    from streams.infra.kafka import admin_call

    existing = set(await admin_call(bootstrap, lambda admin: admin.list_topics(), **security))
    missing = [s for s in specs if s.name not in existing]
    if not missing:
        return []
    rf = await replication_for(bootstrap, replication, **security)
    new = [NewTopic(s.name, num_partitions=partitions or s.partitions, replication_factor=rf,
                    topic_configs={"min.insync.replicas": str(min_insync(rf)),
                                   **({"cleanup.policy": "compact"} if s.compacted else {})})
           for s in missing]
    response = await admin_call(bootstrap, lambda admin: admin.create_topics(new), **security)
    refused, not_mine = {}, set()
    for name, code, *rest in response.topic_errors:
        error = for_code(code)
        if not_mine_ok and error in (TopicAuthorizationFailedError, ClusterAuthorizationFailedError):
            not_mine.add(name)
        elif code and error is not TopicAlreadyExistsError:  # another worker created it first
            refused[name] = f"{error.__name__}: {rest[0] if rest and rest[0] else error.description}"
    if refused:
        raise RuntimeError(f"the cluster refused to create topics (replication {rf}, "
                           f"partitions {partitions or 'as specified'}): {refused}")
    created = [s.name for s in missing if s.name not in not_mine]
    if not created:
        return []
    await _until_served(bootstrap, {t.name: t.num_partitions for t in new if t.name in created}, security)
    log.info("created topics", extra={"metadata": {"topics": created, "replication": rf}})
    return created


async def _until_served(bootstrap: str, partitions_of: dict[str, int], security: dict) -> None:
    """A new topic's partitions take a moment to get a serving leader; clients that use them at
    once log NotLeaderForPartition while they retry. Asking for their end offsets waits (with
    aiokafka's quiet retries) until every partition answers."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **security)
    await consumer.start()
    try:
        await consumer.end_offsets([TopicPartition(name, p) for name, n in partitions_of.items()
                                    for p in range(n)])
    except Exception:  # best effort: the clients retry on their own
        log.debug("new topics not confirmed served", exc_info=True)
    finally:
        await consumer.stop()
