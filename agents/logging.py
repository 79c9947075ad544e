"""Structured JSON logging through the standard `logging` machinery.

One JSON object per line: timestamp, level, logger, message, correlation_id, component,
metadata. The correlation id and component live in contextvars, so every line logged while an
event is handled carries its id, across `await`s, without passing it around.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import re
import traceback
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

correlation_id_var: ContextVar[str | None] = ContextVar("correlation_id", default=None)
component_var: ContextVar[str | None] = ContextVar("component", default=None)


@contextlib.contextmanager
def log_context(correlation_id: object | None = None, component: str | None = None) -> Iterator[None]:
    """Tag every log line in this block (sync or async code alike)."""
    tokens = []
    if correlation_id is not None:
        tokens.append((correlation_id_var, correlation_id_var.set(str(correlation_id))))
    if component is not None:
        tokens.append((component_var, component_var.set(component)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


_SECRETS: set[str] = set()
# user:password@ in any URL (a DATABASE_URL in an error message, a broker URL)
_URL_PASSWORD = re.compile(r"(://[^:/@\s\"']+):[^@\s\"']+@")


def redact_secrets(*values: str | None) -> None:
    """Never print these values again: every log line and every `redacted` text shows `***`
    in their place (as written and as JSON escapes them)."""
    for value in values:
        if value and len(value) >= 4:
            _SECRETS.add(value)
            _SECRETS.add(orjson.dumps(value).decode()[1:-1])


def redacted(text: str) -> str:
    """`text` with every registered secret and any URL's password replaced by `***`."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return _URL_PASSWORD.sub(r"\1:***@", text)


# (trace id, span id) of the current span, or None; set by streams.runtime.tracing when traces
# are on (the domain layer knows no tracing library).
TRACE_IDS: Callable[[], tuple[str, str] | None] | None = None


class JsonFormatter(logging.Formatter):
    """Formats a LogRecord as one JSON line; `extra={"metadata": {...}}` adds structured data."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "correlation_id": getattr(record, "correlation_id", None) or correlation_id_var.get(),
            "component": getattr(record, "component", None) or component_var.get(),
            "metadata": getattr(record, "metadata", None) or {},
        }
        ids = TRACE_IDS() if TRACE_IDS is not None else None
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return redacted(orjson.dumps(entry, default=str).decode())


def handlers_for(log_file: str | None, max_bytes: int = 100 * 2**20, backups: int = 5) -> list:
    stream = logging.StreamHandler()
    stream.setFormatter(JsonFormatter())
    out: list[logging.Handler] = [stream]
    if log_file:
        rotating = logging.handlers.RotatingFileHandler(log_file, maxBytes=max_bytes,
                                                        backupCount=backups, encoding="utf-8")
        rotating.setFormatter(JsonFormatter())
        out.append(rotating)
    return out


def logging_config(level: str = "INFO", log_file: str | os.PathLike[str] | None = None) -> dict:
    """A dictConfig for the root logger (handed to the Faust worker, which applies it)."""
    handlers: dict = {
        "stderr": {"class": "logging.StreamHandler", "formatter": "json",
                   "stream": "ext://sys.stderr"},
    }
    if log_file:
        handlers["file"] = {
            "class": "logging.handlers.RotatingFileHandler", "formatter": "json",
            "filename": log_file, "maxBytes": 100 * 2**20, "backupCount": 5, "encoding": "utf-8",
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": handlers,
        "root": {"level": level, "handlers": list(handlers)},
        "loggers": {"aiokafka": {"level": "WARNING"}, "faust": {"level": "WARNING"},
                    "mode": {"level": "WARNING"}},
    }


def configure(level: str = "INFO", log_file: str | None = None) -> None:
    import logging.config

    logging.config.dictConfig(logging_config(level, log_file))
