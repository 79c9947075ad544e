"""Which failures are the input's fault and which are worth retrying.

In the spirit of aiokafka's `errors.py`: every error the pipeline raises on purpose carries a
`retriable` flag, and `is_retriable()` classifies the ones libraries raise. The processing path
(streams.processing) retries a retriable failure with backoff and keeps the event; only input
that can never succeed (it does not decode, or the domain refuses it, or PostgreSQL refuses the
row) goes to the dead-letter topic.
"""

from __future__ import annotations

import asyncio

import asyncpg


class OmnistreamError(Exception):
    """Base of the errors the pipeline raises on purpose."""

    retriable = False


class RetriableError(OmnistreamError):
    """Not the input's fault (a broker, database or network hiccup): try the same event again."""

    retriable = True


class InputRefused(OmnistreamError):
    """The event can never succeed as it is; it belongs in the dead-letter topic."""

    retriable = False

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


# PostgreSQL refusing a value is the row's fault; every other database error (connection lost,
# deadlock, serialization failure, a table missing until a migration runs) is the database's.
PG_ROW_REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


def is_retriable(exc: BaseException) -> bool:
    """True when the failure is not the input's fault and the same work may succeed later."""
    if isinstance(exc, OmnistreamError):
        return exc.retriable
    if isinstance(exc, PG_ROW_REFUSED):
        return False
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return True
    try:
        from aiokafka.errors import KafkaError
    except ImportError:  # pragma: no cover - aiokafka is a dependency
        KafkaError = ()  # noqa: N806
    if isinstance(exc, KafkaError):
        return True  # a record that is too large is refused before sending, as input
    return isinstance(exc, OSError | ConnectionError | asyncio.TimeoutError | TimeoutError)


class Backoff:
    """Capped exponential backoff: 0.1 s, 0.2 s, … up to `cap_s`."""

    def __init__(self, first_s: float = 0.1, cap_s: float = 5.0):
        self.first_s, self.cap_s = first_s, cap_s
        self.delay = first_s
        self.attempts = 0

    async def wait(self) -> None:
        self.attempts += 1
        await asyncio.sleep(self.delay)
        self.delay = min(self.cap_s, self.delay * 2)
