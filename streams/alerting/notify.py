"""Alert notification channels that leave the process: the webhook (JSON POST)."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import aiohttp
import orjson
from prometheus_client import Counter

log = logging.getLogger(__name__)


async def post_webhook(url: str, payload: dict, retries: int = 3, timeout_s: float = 5.0,
                       counter: Counter | None = None, backoff_s: float = 0.5) -> bool:
    """POST one notification; retried with backoff on errors and 5xx, never blocks the agent."""
    delay = backoff_s
    body = orjson.dumps(payload)
    for attempt in range(retries + 1):
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http, \
                    http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                if resp.status < 500:
                    if counter is not None:
                        counter.labels("webhook", "sent" if resp.status < 400 else "refused").inc()
                    return resp.status < 400
        except (TimeoutError, aiohttp.ClientError) as exc:
            # The host only: such URLs often carry a token in their path or query.
            log.warning("alert webhook failed", extra={"metadata": {
                "host": urlsplit(url).hostname, "attempt": attempt + 1, "error": str(exc)}})
        if attempt < retries:
            await asyncio.sleep(delay)
            delay *= 2
    if counter is not None:
        counter.labels("webhook", "failed").inc()
    return False
