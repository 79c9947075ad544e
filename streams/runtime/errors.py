"""Which failures are the input's fault and which are worth retrying.

In the spirit of aiokafka's `errors.py`: every error the pipeline raises on purpose carries a
`retriable` flag, and `is_retriable()` classifies the ones libraries raise. The processing path
(streams.runtime.processing) retries a retriable failure with backoff and keeps the event; only input
that can never succeed (it does not decode, or the domain refuses it, or PostgreSQL refuses the
row) goes to the dead-letter topic. A failure that is the deployment's (`is_fatal`: Kafka refused
the principal or the protocol) is neither: the worker stops with one line naming it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg
from aiokafka.errors import (
    AuthenticationFailedError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnknownTopicOrPartitionError,
    UnsupportedSaslMechanismError,
    UnsupportedVersionError,
)
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never, wait_exponential

from schemas.errors import InputRefused, OmnistreamError

__all__ = ["FATAL_KAFKA", "PG_ROW_REFUSED", "InputRefused", "OmnistreamError", "is_fatal",
           "is_retriable", "refusal", "retrying"]


# PostgreSQL refusing a value is the row's fault; every other database error (connection lost,
# deadlock, serialization failure, a table missing until a migration runs) is the database's.
PG_ROW_REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


# Kafka refusing this deployment (who it is, what it may do, what the broker speaks, a topic it
# does not have): no retry and no dead letter makes it pass; the worker stops with one line
# saying so. aiokafka flags a missing topic retriable and retries it itself while a leader
# moves or a new topic's metadata spreads; one that still reaches us is missing.
FATAL_KAFKA = (TopicAuthorizationFailedError, GroupAuthorizationFailedError,
               ClusterAuthorizationFailedError, TransactionalIdAuthorizationFailed,
               SaslAuthenticationFailed, AuthenticationFailedError, UnsupportedSaslMechanismError,
               UnsupportedVersionError, UnknownTopicOrPartitionError)


def is_fatal(exc: BaseException) -> bool:
    """True when the failure is the deployment's (Kafka refused the principal or the protocol):
    neither the input's fault (no dead letter) nor one that passes with time (no retry)."""
    return isinstance(exc, FATAL_KAFKA)


_REFUSED_WHAT = {TopicAuthorizationFailedError: "topic", GroupAuthorizationFailedError: "consumer group",
                 TransactionalIdAuthorizationFailed: "transactional id"}


def refusal(exc: BaseException, principal: str | None) -> str:
    """One line for a fatal Kafka failure: who was refused what. A principal that may write no
    topic at all is refused a producer id, which Kafka reports as a refusal of the cluster."""
    who = f"principal {principal!r}" if principal else "an anonymous client"
    name = exc.args[0] if exc.args and isinstance(exc.args[0], str) else None
    what = _REFUSED_WHAT.get(type(exc))
    if what is not None and name:
        return (f"Kafka refused {who} the {what} {name!r} ({type(exc).__name__}): grant it an ACL "
                "or use another principal")
    if isinstance(exc, ClusterAuthorizationFailedError):
        return (f"Kafka refused {who} on the cluster ({type(exc).__name__}): it may not do this here "
                "(a producer needs Write on some topic; creating topics needs Create)")
    if isinstance(exc, UnknownTopicOrPartitionError):
        named = f": {name}" if name else ""
        return (f"Kafka has no such topic or partition for {who} ({type(exc).__name__}{named}): "
                "the worker creates its topics at start when its principal may (check "
                "KAFKA_BOOTSTRAP_SERVERS and OMNISTREAM_APP_ID), or an operator creates them")
    if isinstance(exc, SaslAuthenticationFailed | AuthenticationFailedError):
        return f"Kafka did not let {who} log in ({type(exc).__name__}): check KAFKA_SASL_USERNAME/PASSWORD"
    return f"Kafka refused {who}: {type(exc).__name__}: {exc}"


def is_retriable(exc: BaseException) -> bool:
    """True when the failure is not the input's fault and the same work may succeed later."""
    if isinstance(exc, OmnistreamError):
        return exc.retriable
    if isinstance(exc, PG_ROW_REFUSED):
        return False
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return True
    if isinstance(exc, KafkaError):
        # A refusal of the deployment (FATAL_KAFKA) is final, whatever aiokafka's flag says (it
        # calls a missing topic retriable). The rest pass with time: flagged retriable (a
        # leader moving, a coordinator loading) or not (a request that timed out, an error
        # aiokafka raises without a flag: a broker away for now). A record that is too large is
        # refused before sending, as input.
        return not is_fatal(exc)
    if getattr(exc, "retriable", False) is True:  # errors of libraries that say so
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
