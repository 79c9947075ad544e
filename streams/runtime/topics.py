"""Topic creation with the partition counts of schemas/topics.py (before anything produces)."""

from __future__ import annotations

import logging

from schemas.topics import ALL, TopicSpec

log = logging.getLogger(__name__)


async def ensure_topics(bootstrap: str, specs: tuple[TopicSpec, ...] = ALL, partitions: int | None = None,
                        replication: int = 1, **security) -> list[str]:
    """Create the missing topics; return the names created. Existing topics are left alone."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        new = [NewTopic(s.name, num_partitions=partitions or s.partitions,
                        replication_factor=replication) for s in missing]
        try:
            await admin.create_topics(new)
        except TopicAlreadyExistsError:
            pass  # another worker created it first
        created = [s.name for s in missing]
        await _until_served(bootstrap, {t.name: t.num_partitions for t in new}, security)
        log.info("created topics", extra={"metadata": {"topics": created}})
        return created
    finally:
        await admin.close()


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
