"""The dead-letter path every agent uses.

A dead letter carries where the record came from (topic, partition, offset), why it failed and
a copy of the record capped so that the letter always fits the broker's message limit: values
up to `EMBED_BYTES` are embedded whole, larger ones by their first `EMBED_BYTES` with their
size and SHA-256 (`truncated: true`). Its id is derived from the source coordinates, so
dead-lettering the same record again (a replay after a crash) is the same event. Sending it is
retried until the broker takes it: dead-lettering never fails an agent.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import uuid
from typing import Any

from schemas.codec import encode
from schemas.events import DeadLetter
from streams.runtime import tracing
from streams.runtime.errors import retrying
from streams.runtime.faust import Record
from streams.runtime.metrics import DLQ_EVENTS

log = logging.getLogger(__name__)
CORRELATION_HEADER = "correlation_id"
EMBED_BYTES = 256 * 1024           # copy of the bad value kept in the letter (base64 → ~342 KiB)
DEAD_LETTER_NS = uuid.UUID("6c1f3a52-8d0e-4b7a-9f1e-2a5c4d3b7e90")


def header(event: Record, name: str) -> str | None:
    for key, value in event.headers or ():
        if key == name and value is not None:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return None


def _correlation(correlation_id: str | None) -> dict[str, Any]:
    return {"correlation_id": correlation_id} if correlation_id else {}


def correlation_headers(correlation_id: object) -> dict[str, bytes]:
    return {CORRELATION_HEADER: str(correlation_id).encode()}


def valid_uuid(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def dead_letter_id(topic: str, partition: int, offset: int, sample_index: int | None = None) -> uuid.UUID:
    part = "" if sample_index is None else f"/{sample_index}"
    return uuid.uuid5(DEAD_LETTER_NS, f"{topic}/{partition}/{offset}{part}")


def dead_letter(topic: str, partition: int, offset: int, key: bytes | None, raw: bytes | None,
                reason: str, error: str, agent: str, correlation_id: str | None = None,
                sample_index: int | None = None) -> DeadLetter:
    """The letter for one record, or for one sample of a batched record (`raw` is then that
    sample). Pure: the tests build letters of hostile records with it."""
    raw = raw if isinstance(raw, bytes) else (raw or b"")
    kept = raw[:EMBED_BYTES]
    try:
        text = kept.decode("utf-8") if len(raw) <= EMBED_BYTES else None
    except UnicodeDecodeError:
        text = None
    return DeadLetter(
        id=dead_letter_id(topic, partition, offset, sample_index), sample_index=sample_index,
        topic=topic, partition=partition, offset=offset,
        key=key.decode("utf-8", "replace")[:1000] if isinstance(key, bytes) else key,
        value=text, value_b64=base64.b64encode(kept).decode(), value_size=len(raw),
        value_sha256=hashlib.sha256(raw).hexdigest(), truncated=len(raw) > EMBED_BYTES,
        error_type=reason[:200], error=error[:4000], agent=agent,
        **_correlation(correlation_id),
    )


async def send_to_dlq(event: Record, reason: str, error: str, agent: str, *,
                      sample: bytes | None = None, sample_index: int | None = None) -> None:
    """Dead-letter the record behind `event` (or its sample `sample_index`, whose bytes are
    `sample`); retried (with backoff) until the broker has it."""
    from streams.runtime.app import dlq

    msg = event.message
    raw = sample if sample_index is not None else (msg.value if isinstance(msg.value, bytes) else None)
    letter = dead_letter(msg.topic, msg.partition, msg.offset, msg.key, raw, reason, error, agent,
                         valid_uuid(header(event, CORRELATION_HEADER)), sample_index)
    value = encode(letter)
    headers = {**correlation_headers(letter.correlation_id), "dlq.reason": reason[:200].encode(),
               "dlq.topic": msg.topic.encode()}
    # Whatever the broker says, the letter is not the input's to lose: retry until it is sent.
    with tracing.sending(dlq.get_topic_name(), headers) as traced:
        await retrying(f"dead letter for {msg.topic}/{msg.partition}@{msg.offset}",
                       retry_if=lambda _exc: True, log=log)(
            dlq.send, key=msg.key if isinstance(msg.key, bytes) else None, value=value,
            headers=traced)
    DLQ_EVENTS.labels(msg.topic, reason).inc()
    log.warning("event sent to dead-letter topic", extra={"metadata": {
        "topic": msg.topic, "partition": msg.partition, "offset": msg.offset,
        "reason": reason, "error": error[:500]}})
