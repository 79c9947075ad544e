"""Which failures are the input's fault and which are worth retrying.

In the spirit of aiokafka's `errors.py`: every error the pipeline raises on purpose carries a
`retriable` flag, and `is_retriable()` classifies the ones libraries raise. The processing path
(streams.runtime.processing) retries a retriable failure with backoff and keeps the event; only input
that can never succeed (it does not decode, or the domain refuses it, or PostgreSQL refuses the
row) goes to the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never, wait_exponential


class OmnistreamError(Exception):
    """Base of the errors the pipeline raises on purpose."""

    retriable = False


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
    if getattr(exc, "retriable", False) is True:  # errors of the domain layer that say so
        return True
    return isinstance(exc, OSError | ConnectionError | asyncio.TimeoutError | TimeoutError)


def retrying(what: str, *, retry_if: Callable[[BaseException], bool] = is_retriable,
             cap_s: float = 5.0, on_retry: Callable[[BaseException], None] | None = None,
             log: logging.Logger | None = None) -> AsyncRetrying:
    """The one retry policy (tenacity): capped exponential backoff 0.1 s, 0.2 s, … `cap_s`,
    forever, for failures `retry_if` accepts; anything else is raised at once.

    Use as `await retrying("what", ...)(fn, *args)` or `async for attempt in retrying(...)`.
    `on_retry(exc)` runs before each wait (e.g. to drop a broken connection pool); every retry
    is logged as a warning with the error and the attempt number.
    """
    logger = log or logging.getLogger("omnistream.retry")

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if exc is None:
            return
        if on_retry is not None:
            on_retry(exc)
        logger.warning("%s failed, retrying", what, extra={"metadata": {
            "error": f"{type(exc).__name__}: {exc}"[:500], "attempt": state.attempt_number,
            "retry_in_s": round(state.upcoming_sleep, 3)}})

    return AsyncRetrying(retry=retry_if_exception(retry_if), stop=stop_never, reraise=True,
                         wait=wait_exponential(multiplier=0.1, exp_base=2, max=cap_s),
                         before_sleep=before_sleep)
