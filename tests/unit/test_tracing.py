"""OpenTelemetry traces: off by default and free (no header, no span); on, a record's
traceparent is continued by the span that handles it and carried on by what it sends."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest
from faust.types import TP
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from agents.logging import JsonFormatter
from streams.runtime import tracing
from streams.runtime.faust.lanes import Record

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01".encode()

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def traced() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory, for one test (the SDK's provider is set once per process)."""
    if tracing._provider is None:
        assert tracing.configure("omnistream-test", consumer_group="app-1", env={}, exporter=_EXPORTER)
    tracing.ENABLED = True
    _EXPORTER.clear()
    try:
        yield _EXPORTER
    finally:
        tracing.ENABLED = False


def _record(headers: list[tuple[str, bytes]]) -> Record:
    return Record(TP("prd.requests", 2), 41, 1_700_000_000.0, b"prd-1", b"{}", headers)


def test_off_by_default_and_then_nothing_is_added():
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"})
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                               "OTEL_TRACES_EXPORTER": "none"})
    assert not tracing.ENABLED
    headers = {"correlation_id": b"x"}
    with tracing.sending("codegen.tasks", headers) as sent:
        assert sent is headers  # the very mapping: no copy, no traceparent
    with tracing.processing(_record([("traceparent", TRACEPARENT)]), "prd-fanout") as span:
        assert span is None
    assert tracing.carrier() == {} and tracing.current_ids() is None


def test_a_handled_record_continues_its_trace_and_what_it_sends_carries_it(traced):
    with tracing.processing(_record([("traceparent", TRACEPARENT)]), "prd-fanout") as span:
        tracing.annotate(span, correlation_id="cid-1")
        with tracing.sending("codegen.tasks", {"correlation_id": b"cid-1"}, key=b"k", partition=3) as sent:
            assert sent is not None
            traceparent = sent["traceparent"].decode()
        tracing.timed_spans([("render", 1_000, 2_000), ("compile and detect", 2_000, 3_500)])
        with tracing.span("assemble PRD"):
            later = tracing.carrier()
    with tracing.resumed(later), tracing.sending("codegen.completed", None) as done:
        assert done is not None and done["traceparent"].decode().split("-")[1] == TRACE_ID
    spans = {s.name: s for s in traced.get_finished_spans()}
    consumer = spans["process prd.requests"]
    assert consumer.kind is SpanKind.CONSUMER
    assert format(consumer.context.trace_id, "032x") == TRACE_ID
    assert consumer.parent is not None and format(consumer.parent.span_id, "016x") == PARENT_ID
    attrs = consumer.attributes
    assert attrs["messaging.system"] == "kafka" and attrs["messaging.destination.name"] == "prd.requests"
    assert attrs["messaging.destination.partition.id"] == "2" and attrs["messaging.kafka.offset"] == 41
    assert attrs["messaging.consumer.group.name"] == "app-1"
    assert attrs["omnistream.correlation_id"] == "cid-1"
    producer = spans["send codegen.tasks"]
    assert producer.kind is SpanKind.PRODUCER and producer.parent.span_id == consumer.context.span_id
    assert traceparent == f"00-{TRACE_ID}-{format(producer.context.span_id, '016x')}-01"
    for name in ("render", "compile and detect", "assemble PRD"):
        assert spans[name].parent.span_id == consumer.context.span_id, name
    assert (spans["render"].start_time, spans["render"].end_time) == (1_000, 2_000)
    assert spans["send codegen.completed"].parent.span_id == spans["assemble PRD"].context.span_id


def test_log_lines_carry_the_trace_and_span_ids_while_a_span_is_current(traced):
    formatter = JsonFormatter()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "handled", None, None)
    assert "trace_id" not in orjson.loads(formatter.format(record))
    with tracing.processing(_record([("traceparent", TRACEPARENT)]), "prd-fanout") as span:
        line = orjson.loads(formatter.format(record))
    assert line["trace_id"] == TRACE_ID and line["span_id"] == format(span.get_span_context().span_id, "016x")


def test_a_record_without_a_traceparent_starts_a_trace_and_bad_headers_do_not_break_it(traced):
    for headers in ([], [("traceparent", b"garbage")], [("traceparent", b"\xff\xfe")]):
        with tracing.processing(_record(headers), "prd-fanout") as span:
            assert span.get_span_context().is_valid
    roots = [s for s in traced.get_finished_spans() if s.parent is None]
    assert len(roots) == 3 and len({s.context.trace_id for s in roots}) == 3
