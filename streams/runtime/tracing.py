"""One trace per PRD across every hop, in OpenTelemetry's terms; off by default, free when off.

On when the standard settings ask for it: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, or `OTEL_TRACES_EXPORTER` names an exporter
(`otlp`, `console`); `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` keeps it off. The
SDK reads the rest itself: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER`(`_ARG`), `OTEL_EXPORTER_OTLP_*` (spans leave over OTLP/HTTP protobuf),
`OTEL_BSP_*` (the batch span processor).

What it records, with OpenTelemetry's messaging conventions (system `kafka`, destination,
partition, offset, consumer group):
- a PRODUCER span per record omnistream sends (`send <topic>`), whose W3C `traceparent` (and
  `tracestate`) go in the record's headers, as opentelemetry-instrumentation-aiokafka writes
  them: a consumer of ours or anyone's continues the trace;
- a CONSUMER span per record an agent handles (`process <topic>`), child of the context in the
  record's headers (a PRD published by a traced service continues that service's trace), with
  the correlation id (the public handle) as `omnistream.correlation_id`;
- the code-generation pool's work (render, compile, detectors), as child spans timed in the
  pool's process; the assembly of a PRD; each sink flush, with its row count.

When off, every function here returns at its first line: no span, no header, no clock read.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

ENABLED = False
_tracer: Any = None
_provider: Any = None
_propagator: Any = None
_group: str | None = None  # the consumer group (the app id) for messaging attributes

TRACE_HEADERS = ("traceparent", "tracestate")


def wanted(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard OTEL_* settings ask for traces."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure(default_service: str, consumer_group: str | None = None,
              env: Mapping[str, str] = os.environ, exporter: Any = None) -> bool:
    """Set the SDK up from the environment (idempotent); True when traces are on. `exporter`:
    a SpanExporter to use instead of the configured one (tests: an in-memory exporter)."""
    global ENABLED, _tracer, _provider, _propagator, _group
    if ENABLED:
        return True
    if exporter is None and not wanted(env) and not _sdk_set_up_by_the_host():
        return False
    from opentelemetry import propagate, trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if exporter is None and _sdk_set_up_by_the_host():  # a traced service using our client
        _tracer = trace.get_tracer("omnistream")
        _propagator = propagate.get_global_textmap()
        _group = consumer_group
        ENABLED = True
        return True

    resource = Resource.create({} if env.get("OTEL_SERVICE_NAME") else {"service.name": default_service})
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider, _tracer = provider, provider.get_tracer("omnistream")
    _propagator = propagate.get_global_textmap()
    _group = consumer_group
    ENABLED = True
    _install_log_ids()
    log.info("tracing on", extra={"metadata": {
        "service": resource.attributes.get("service.name"),
        "endpoint": env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")}})
    return True


def _sdk_set_up_by_the_host() -> bool:
    """True when the process already set an OpenTelemetry SDK up (its own spans and exporter):
    the client then joins it rather than setting up another."""
    import sys

    if "opentelemetry.sdk.trace" not in sys.modules:
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    return isinstance(trace.get_tracer_provider(), TracerProvider) and _provider is None


def flush() -> None:
    """Export what is buffered (a client closing, a CLI command ending)."""
    if _provider is not None:
        _provider.force_flush()


def shutdown() -> None:
    """Export what is buffered and stop (a CLI command's spans before it exits)."""
    global ENABLED
    if _provider is not None:
        _provider.shutdown()
    ENABLED = False


def _install_log_ids() -> None:
    """JSON log lines carry trace_id and span_id while a span is current (agents.logging asks)."""
    from agents import logging as agent_logging

    agent_logging.TRACE_IDS = current_ids


def current_ids() -> tuple[str, str] | None:
    if not ENABLED:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


# ---------------------------------------------------------------- headers


class _HeaderGetter:
    """Reads a record's headers (a list of (str, bytes), as aiokafka gives them)."""

    @staticmethod
    def get(carrier: Sequence[tuple[str, bytes]], key: str) -> list[str] | None:
        found = [v.decode("latin-1") for k, v in carrier if k == key and v is not None]
        return found or None

    @staticmethod
    def keys(carrier: Sequence[tuple[str, bytes]]) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _HeaderGetter()


def _extract(headers: Sequence[tuple[str, bytes]] | None) -> Any:
    return _propagator.extract(list(headers or ()), getter=_GETTER)


def _inject(headers: dict[str, bytes]) -> dict[str, bytes]:
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    for key in TRACE_HEADERS:
        if key in carrier:
            headers[key] = carrier[key].encode("latin-1")
    return headers


def _messaging(topic: str, operation: str, partition: int | None = None, offset: int | None = None,
               key: bytes | None = None) -> dict[str, Any]:
    attributes: dict[str, Any] = {"messaging.system": "kafka", "messaging.destination.name": topic,
                                  "messaging.operation.type": operation,
                                  "messaging.operation.name": "send" if operation == "send" else operation}
    if partition is not None:
        attributes["messaging.destination.partition.id"] = str(partition)
    if offset is not None:
        attributes["messaging.kafka.offset"] = offset
    if key is not None:
        attributes["messaging.kafka.message.key"] = key.decode("utf-8", "replace")[:200]
    if operation == "process" and _group:
        attributes["messaging.consumer.group.name"] = _group
    return attributes


# ---------------------------------------------------------------- spans


class _Given:
    """What `sending`/`processing` return when tracing is off: enters as the value given, with
    no generator frame behind it (a handled record pays one attribute read and this)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __enter__(self) -> Any:
        return self.value

    def __exit__(self, *exc: object) -> None:
        return None


_NOTHING = _Given(None)


def sending(topic: str, headers: Mapping[str, bytes] | None, key: bytes | None = None,
            partition: int | None = None) -> contextlib.AbstractContextManager[Mapping[str, bytes] | None]:
    """A PRODUCER span around one send; enters as the headers with its traceparent added (the
    headers as given when tracing is off)."""
    if not ENABLED:
        return _Given(headers)
    return _sending(topic, headers, key, partition)


@contextlib.contextmanager
def _sending(topic: str, headers: Mapping[str, bytes] | None, key: bytes | None,
             partition: int | None) -> Iterator[Mapping[str, bytes] | None]:
    from opentelemetry.trace import SpanKind

    with _tracer.start_as_current_span(f"send {topic}", kind=SpanKind.PRODUCER,
                                       attributes=_messaging(topic, "send", partition, key=key)):
        yield _inject(dict(headers or {}))


def processing(record: Any, agent: str) -> contextlib.AbstractContextManager[Any]:
    """A CONSUMER span for one record an agent handles, child of the context its headers carry;
    enters as the span (None when off)."""
    if not ENABLED:
        return _NOTHING
    return _processing(record, agent)


@contextlib.contextmanager
def _processing(record: Any, agent: str) -> Iterator[Any]:
    from opentelemetry.trace import SpanKind

    attributes = _messaging(record.topic, "process", record.partition, record.offset, record.key)
    attributes["omnistream.agent"] = agent
    with _tracer.start_as_current_span(f"process {record.topic}", context=_extract(record.headers),
                                       kind=SpanKind.CONSUMER, attributes=attributes) as span:
        yield span


async def send(topic: Any, *, key: bytes | None = None, value: bytes | None = None,
               headers: Mapping[str, bytes] | None = None, partition: int | None = None) -> Any:
    """`topic.send(...)` of a faust topic, in a PRODUCER span whose traceparent the record
    carries (the timers' records: window ticks, alert engine input, metric samples)."""
    with sending(topic.get_topic_name(), headers, key, partition) as traced:
        return await topic.send(key=key, value=value, headers=traced, partition=partition)


def current_span() -> Any:
    """The current span (None when off)."""
    if not ENABLED:
        return None
    from opentelemetry import trace

    return trace.get_current_span()


def annotate(span: Any, **attributes: Any) -> None:
    """Set attributes on a span from `processing` (nothing when off)."""
    if span is not None:
        span.set_attributes({f"omnistream.{k}": str(v) for k, v in attributes.items() if v is not None})


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """An internal span under the current one (a PRD's assembly, a sink's flush); enters as
    the span (None when off)."""
    if not ENABLED:
        return _NOTHING
    return _tracer.start_as_current_span(name, attributes=attributes)


def timed_spans(phases: Sequence[tuple[str, int, int]], **attributes: Any) -> None:
    """Child spans of the current span for work timed elsewhere (the code-generation pool's
    processes): (name, start ns, end ns) on the wall clock both processes share."""
    if not ENABLED or not phases:
        return
    for name, start_ns, end_ns in phases:
        child = _tracer.start_span(name, start_time=start_ns, attributes=attributes)
        child.end(end_time=end_ns)


def carrier() -> dict[str, bytes]:
    """The current context as record headers (empty when off or no span is current): for
    output sent later than the work it came from (the assembler's completions)."""
    if not ENABLED:
        return {}
    return _inject({})


def resumed(headers: Mapping[str, bytes] | None) -> contextlib.AbstractContextManager[None]:
    """Make the context of `carrier()` current again."""
    if not ENABLED or not headers:
        return _NOTHING
    return _resumed(headers)


@contextlib.contextmanager
def _resumed(headers: Mapping[str, bytes]) -> Iterator[None]:
    from opentelemetry import context as otel_context

    token = otel_context.attach(_extract(list(headers.items())))
    try:
        yield
    finally:
        otel_context.detach(token)
