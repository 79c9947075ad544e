"""orjson encoding and decoding of event values, with errors a user can read."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from schemas.errors import OmnistreamError

M = TypeVar("M", bound=BaseModel)
MAX_VALUE_BYTES = 1_000_000


class DecodeError(OmnistreamError, ValueError):
    """The bytes are not a valid value for the topic; `kind` says which check failed."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


def encode(event: BaseModel) -> bytes:
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True))


def describe(exc: ValidationError, limit: int = 3) -> str:
    """One line: the first few failing fields and why."""
    parts = []
    for err in exc.errors()[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "value"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


Defaults = Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None
# The envelope fields an intake derives from the record when the publisher left them out.
DERIVED_FIELDS = frozenset({"id", "occurred_at", "correlation_id"})


@functools.cache
def _field_names(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(model.model_fields)


@functools.cache
def _derived(model: type[BaseModel]) -> frozenset[str]:
    return _field_names(model) & DERIVED_FIELDS


def decode(model: type[M], raw: bytes | str | None, defaults: Defaults = None) -> M:
    """Parse JSON bytes into `model`; `defaults` fill fields the publisher left out (a callable
    gives the DERIVED_FIELDS, and is only called when one of them is missing: deriving them
    costs more than the decode)."""
    if raw is None:
        raise DecodeError("empty", "empty value (tombstone)")
    if isinstance(raw, str):
        raw = raw.encode()
    if len(raw) > MAX_VALUE_BYTES:
        raise DecodeError("oversized", f"value is {len(raw)} bytes, limit {MAX_VALUE_BYTES}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("invalid_json", f"not valid JSON: {exc}") from None
    return validate(model, data, defaults)


def validate(model: type[M], data: object, defaults: Defaults = None) -> M:
    if not isinstance(data, dict):
        raise DecodeError("schema", f"expected a JSON object, got {type(data).__name__}")
    if callable(defaults):
        defaults = None if _derived(model) <= data.keys() else defaults()
    if defaults:
        fields = _field_names(model)
        data = {**{k: v for k, v in defaults.items() if k in fields}, **data}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise DecodeError("schema", f"invalid {model.__name__}: {describe(exc)}") from None


def metric_records(samples: Iterable[BaseModel], max_samples: int = 10_000,
                   max_bytes: int = MAX_VALUE_BYTES) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) records for `metrics.events`: the samples grouped by metric name into
    `{"samples": [...]}` batches of at most `max_samples` samples and `max_bytes` bytes, keyed by
    the name; a group of one is sent as the sample itself."""
    groups: dict[str, list[bytes]] = {}
    for sample in samples:
        # only what the sample was given: the envelope the intake derives from the record
        # (id, correlation id, time) need not travel with every sample
        body = orjson.dumps(sample.model_dump(mode="json", exclude_unset=True, exclude_none=True))
        groups.setdefault(sample.name, []).append(body)  # type: ignore[attr-defined]
    head, tail = b'{"samples":[', b"]}"
    for name, parts in groups.items():
        chunk: list[bytes] = []
        size = len(head) + len(tail)
        for part in parts:
            if chunk and (len(chunk) >= max_samples or size + len(part) + 1 > max_bytes):
                yield name.encode(), head + b",".join(chunk) + tail
                chunk, size = [], len(head) + len(tail)
            chunk.append(part)
            size += len(part) + 1
        if len(chunk) == 1 and len(parts) == 1:
            yield name.encode(), chunk[0]
        else:
            yield name.encode(), head + b",".join(chunk) + tail
