"""The root of every error omnistream raises on purpose, in the lowest floor so every layer can
use it (in the spirit of aiokafka's errors: each carries a `retriable` flag).

`retriable`: the failure is not the input's fault and the same work may succeed later (a pool
process died, a service hiccuped); the processing path retries it with backoff. Otherwise the
error is final: bad input (`InputRefused`, which goes to the dead-letter topic), a refused
snapshot, a configuration or usage mistake. `streams.runtime.errors.is_retriable` also
classifies what libraries raise (Kafka, PostgreSQL, the network).
"""

from __future__ import annotations


class OmnistreamError(Exception):
    """Base of the errors the pipeline raises on purpose."""

    retriable = False


class InputRefused(OmnistreamError):
    """The event can never succeed as it is; it belongs in the dead-letter topic."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)
