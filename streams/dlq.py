"""The dead-letter path every agent uses, and the intake loop that routes bad events there.

`run_intake` decodes each event into its model (filling the envelope from the Kafka header
when the publisher left it out), sets the log context, calls the handler, and sends anything
that fails to decode or to handle to `omnistream.dlq` with topic, partition, offset and reason.
The agent never stops on a bad event.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from agents.logging import log_context
from schemas.codec import DecodeError, decode, encode
from schemas.events import DeadLetter
from streams.metrics import DLQ_EVENTS, EVENTS_PROCESSED, HANDLE_SECONDS

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
CORRELATION_HEADER = "correlation_id"


def header(event: Any, name: str) -> str | None:
    headers = event.headers or {}
    items = headers.items() if isinstance(headers, dict) else headers
    for key, value in items:
        if key == name and value is not None:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return None


def correlation_headers(correlation_id: object) -> dict[str, bytes]:
    return {CORRELATION_HEADER: str(correlation_id).encode()}


def _valid_uuid(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


async def send_to_dlq(event: Any, reason: str, error: str, agent: str) -> None:
    from streams.app import dlq

    msg = event.message
    raw: bytes = msg.value if isinstance(msg.value, bytes) else (msg.value or b"")
    key = msg.key.decode("utf-8", "replace") if isinstance(msg.key, bytes) else msg.key
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    cid = _valid_uuid(header(event, CORRELATION_HEADER))
    letter = DeadLetter(
        topic=msg.topic, partition=msg.partition, offset=msg.offset, key=key,
        value=text if text is not None and len(text) < 100_000 else None,
        value_b64=base64.b64encode(raw).decode(), error_type=reason, error=error[:4000],
        agent=agent, **({"correlation_id": cid} if cid else {}),
    )
    await dlq.send(key=msg.key, value=encode(letter), headers={
        **correlation_headers(letter.correlation_id),
        "dlq.reason": reason.encode(), "dlq.topic": msg.topic.encode(),
    })
    DLQ_EVENTS.labels(msg.topic, reason).inc()
    log.warning("event sent to dead-letter topic", extra={"metadata": {
        "topic": msg.topic, "partition": msg.partition, "offset": msg.offset,
        "reason": reason, "error": error[:500]}})


Handler = Callable[[M, Any], Awaitable[None]]
LAST_EVENT: dict[str, float] = {}  # agent → wall time of the last event it took (for /health)


async def handle_event(event: Any, model: type[M], agent: str, handler: Handler) -> bool:
    """Decode and handle one event; route failures to the DLQ. True when it was handled."""
    header_cid = _valid_uuid(header(event, CORRELATION_HEADER))
    started = time.perf_counter()
    LAST_EVENT[agent] = time.time()
    with log_context(correlation_id=header_cid, component=agent):
        try:
            value = decode(model, event.value,
                           defaults={"correlation_id": header_cid} if header_cid else None)
        except DecodeError as exc:
            EVENTS_PROCESSED.labels(agent, "invalid").inc()
            await send_to_dlq(event, exc.kind, str(exc), agent)
            return False
        with log_context(correlation_id=getattr(value, "correlation_id", header_cid)):
            try:
                await handler(value, event)
            except Exception as exc:  # a handler bug must not stop the agent
                log.exception("handler failed")
                EVENTS_PROCESSED.labels(agent, "error").inc()
                await send_to_dlq(event, "handler_error", f"{type(exc).__name__}: {exc}", agent)
                return False
    EVENTS_PROCESSED.labels(agent, "ok").inc()
    HANDLE_SECONDS.labels(agent).observe(time.perf_counter() - started)
    return True


async def run_intake(stream: Any, model: type[M], agent: str, handler: Handler) -> None:
    async for event in stream.events():
        await handle_event(event, model, agent, handler)
