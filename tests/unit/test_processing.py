"""Pure pieces of the checkpointed path: offsets in state, series records, deterministic ids,
error classification, capped dead letters. (The crash tests prove the whole with SIGKILL.)"""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass, field

import asyncpg
import orjson
import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)

from agents.codegen.fanout import fan_out
from agents.codegen.pool import PoolBroken
from agents.monitoring.alerting import alert_id
from agents.monitoring.windows import Windows, WindowSpec, series_key
from schemas.codec import decode, encode
from schemas.events import DeadLetter, MetricEvent, PrdSubmitted
from streams.runtime.dlq import EMBED_BYTES, dead_letter
from streams.runtime.errors import InputRefused, is_fatal, is_retriable, refusal
from streams.runtime.processing import Applied, record_defaults, record_id


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    timestamp: float
    key: bytes | None = None
    value: bytes | None = None


@dataclass
class Event:
    message: Message
    headers: list = field(default_factory=list)

    @property
    def value(self) -> bytes | None:
        return self.message.value


def test_applied_offsets_skip_what_a_record_already_holds():
    applied: dict[str, int] = {}
    assert not Applied.seen(applied, "metrics.events:0", 0)
    Applied.mark(applied, "metrics.events:0", 41)
    assert Applied.seen(applied, "metrics.events:0", 41) and Applied.seen(applied, "metrics.events:0", 7)
    assert not Applied.seen(applied, "metrics.events:0", 42)
    assert not Applied.seen(applied, "metrics.events:1", 3)  # each source partition on its own
    Applied.mark(applied, "metrics.events:0", 10)  # never goes back
    assert applied == {"metrics.events:0": 41}


def test_a_replayed_record_is_the_same_event():
    raw = orjson.dumps({"name": "m", "value": 1.0, "metric_type": "gauge"})
    event = Event(Message("metrics.events", 2, 1234, 1_790_000_000.5, b"m", raw))
    first = decode(MetricEvent, raw, defaults=record_defaults(event))
    again = decode(MetricEvent, raw, defaults=record_defaults(event))
    assert first.id == again.id == record_id("metrics.events", 2, 1234)
    assert first.occurred_at.timestamp() == 1_790_000_000.5  # the record's timestamp
    other = decode(MetricEvent, raw, defaults=record_defaults(
        Event(Message("metrics.events", 2, 1235, 1_790_000_000.5, b"m", raw))))
    assert other.id != first.id
    given = MetricEvent(name="m", value=1.0, metric_type="gauge")
    assert decode(MetricEvent, encode(given), defaults=record_defaults(event)).id == given.id


def test_fan_out_and_alert_ids_are_deterministic():
    prd = PrdSubmitted(title="T", service_name="svc", nodes=[
        {"node_type": "effect", "name": "A"}, {"node_type": "compute", "name": "B"}])
    assert [t.id for t in fan_out(prd)] == [t.id for t in fan_out(prd)]
    assert len({t.id for t in fan_out(prd)}) == 2
    assert alert_id("fp", 12.5) == alert_id("fp", 12.5) != alert_id("fp", 13.0)


def test_window_series_record_round_trips_offsets_watermark_and_closed_windows():
    w = Windows([WindowSpec(10)], lateness_s=2)
    for i in range(30):
        w.add("m", "gauge", {"s": "a"}, float(i), 100 + i)
    series = series_key("m", {"s": "a"})
    w.applied[series] = {"metrics.events:0": 29}
    for key in w.due():
        w.pop(key)
    record = w.dump_series(series)
    restored = Windows([WindowSpec(10)], lateness_s=2)
    assert restored.load_series(record) == series
    assert restored.applied[series] == {"metrics.events:0": 29}
    assert restored.watermarks[series] == w.watermarks[series]
    assert {k: a.count for k, a in restored.open.items()} == {k: a.count for k, a in w.open.items()}
    # A replayed sample for a window already closed (written) is late, not a new partial row.
    late = restored.late
    assert restored.add("m", "gauge", {"s": "a"}, 1.0, 101) == 0 and restored.late == late + 1
    assert restored.dump_series(series) == record  # the late sample changed nothing


def test_errors_say_whether_to_retry():
    assert is_retriable(PoolBroken("a pool process died")) and not is_retriable(InputRefused("r", "x"))
    assert is_retriable(KafkaConnectionError()) and is_retriable(NotLeaderForPartitionError())
    assert is_retriable(ConnectionRefusedError()) and is_retriable(TimeoutError())
    assert is_retriable(asyncpg.DeadlockDetectedError("deadlock"))
    assert is_retriable(asyncpg.SerializationError("serialization"))
    assert is_retriable(asyncpg.UndefinedTableError("missing"))
    assert not is_retriable(asyncpg.CheckViolationError("check"))
    assert not is_retriable(asyncpg.InvalidTextRepresentationError("bad"))
    assert not is_retriable(ValueError("a bug or bad input"))
    # aiokafka flags a missing topic retriable; one that reaches us is the deployment's, like a
    # refused authorisation: neither retried nor dead-lettered
    assert UnknownTopicOrPartitionError.retriable and not is_retriable(UnknownTopicOrPartitionError())
    assert is_fatal(UnknownTopicOrPartitionError()) and not is_retriable(TopicAuthorizationFailedError("t"))
    assert "no such topic" in refusal(UnknownTopicOrPartitionError("metrics.events"), "worker")


def test_a_dead_letter_for_a_record_near_the_limit_still_fits():
    raw = b'{"a": "' + b"x" * 1_040_000 + b'"}'
    letter = dead_letter("prd.requests", 1, 99, None, raw, "oversized", "too big", "prd-fanout")
    body = encode(letter)
    assert len(body) < 500_000 and letter.truncated and letter.value is None
    assert letter.value_size == len(raw) and letter.value_sha256 == hashlib.sha256(raw).hexdigest()
    assert base64.b64decode(letter.value_b64) == raw[:EMBED_BYTES]
    assert letter.id == dead_letter("prd.requests", 1, 99, None, raw, "x", "y", "z").id
    small = dead_letter("prd.requests", 1, 100, b"k", b"[1]", "schema", "array", "prd-fanout")
    assert small.value == "[1]" and not small.truncated and small.id != letter.id
    assert DeadLetter.model_validate(orjson.loads(body)) == letter
    garbage = dead_letter("metrics.events", 0, 1, None, b"\xff\xfe", "invalid_json", "x", "a")
    assert garbage.value is None and base64.b64decode(garbage.value_b64) == b"\xff\xfe"
    assert isinstance(garbage.id, uuid.UUID)


def test_ordered_acks_ack_a_partition_in_offset_order_whatever_order_events_finish():
    from types import SimpleNamespace

    from streams.runtime.processing import OrderedAcks

    acked: list[tuple[str, int]] = []

    def event(tp: str, offset: int) -> SimpleNamespace:
        return SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset))

    acks = OrderedAcks(lambda ev: acked.append((ev.message.tp, ev.message.offset)))
    a0, a1, a2 = (acks.started(event("a", o)) for o in (0, 1, 2))
    b0 = acks.started(event("b", 0))
    acks.done(a2)
    acks.done(a1)
    assert acked == []  # offset 0 of partition a is still in hand
    acks.done(b0)
    assert acked == [("b", 0)]  # another partition is not held up
    acks.done(a0)
    assert acked == [("b", 0), ("a", 0), ("a", 1), ("a", 2)]


def test_control_kinds_are_honoured_on_internal_topics_only():
    from types import SimpleNamespace

    from streams.runtime.app import settings
    from streams.runtime.processing import control_kind
    from streams.runtime.tables import KIND_HEADER, ControlKind

    def event(topic: str, kind: bytes | None) -> SimpleNamespace:
        headers = [(KIND_HEADER, kind)] if kind is not None else []  # as Kafka gives them
        return SimpleNamespace(message=SimpleNamespace(topic=topic), headers=headers)

    inbox = f"{settings.app_id}-alert-engine"
    assert control_kind(event(inbox, ControlKind.TICK.header)) is ControlKind.TICK
    assert control_kind(event(inbox, b"install")) is ControlKind.INSTALL
    assert control_kind(event(inbox, b"format-disk")) is None  # unknown: data
    assert control_kind(event(inbox, None)) is None
    assert control_kind(event("codegen.results", b"install")) is None  # outside: always data
    assert {k.value for k in ControlKind} == {"result", "install", "node", "sample", "window", "command",
                                              "tick"}


def test_kafka_refusing_the_deployment_is_neither_retried_nor_dead_lettered():
    from aiokafka.errors import KafkaTimeoutError, TopicAuthorizationFailedError

    from streams.runtime.errors import is_fatal

    refused = TopicAuthorizationFailedError()
    assert not is_retriable(refused) and is_fatal(refused)
    assert is_retriable(KafkaTimeoutError()) and not is_fatal(KafkaTimeoutError())  # a broker away


def test_every_error_raised_on_purpose_says_whether_to_retry():
    """One tree: each error class of the project is an OmnistreamError with its flag."""
    import importlib
    import inspect

    from schemas.errors import OmnistreamError

    modules = ["schemas.codec", "schemas.state", "agents.monitoring.rules", "agents.codegen.pool",
               "agents.codegen.render", "agents.codegen.validate", "agents.learning.snapshot",
               "streams.config", "streams.interfaces.cli", "streams.interfaces.output",
               "streams.interfaces.alert_table", "streams.infra.errors", "streams.infra.migrate",
               "streams.learning.replay", "streams.learning.training"]
    found = {name: cls for m in modules
             for name, cls in inspect.getmembers(importlib.import_module(m), inspect.isclass)
             if issubclass(cls, Exception) and cls.__module__ == m}
    assert len(found) >= 15
    assert [name for name, cls in found.items() if not issubclass(cls, OmnistreamError)] == []
    assert [name for name, cls in found.items() if cls.retriable] == ["PoolBroken"]


async def test_a_handler_refused_by_kafka_stops_the_worker_and_dead_letters_nothing(monkeypatch):
    from aiokafka.errors import TopicAuthorizationFailedError
    from faust.types import TP

    from streams.runtime import processing
    from streams.runtime.faust.lanes import to_records

    @dataclass
    class Fetched:
        offset: int = 7
        timestamp: int | None = 1_790_000_000_000
        key: bytes | None = b"k"
        value: bytes | None = b"{}"
        headers: list = field(default_factory=list)

    letters: list[str] = []
    stops: list[str] = []

    async def decoded(event, model, agent):
        return object()

    async def dead_letter_spy(event, reason, message, agent, **kwargs):
        letters.append(reason)

    def stop_spy(agent, events, why):
        stops.append(why)
        raise SystemExit(70)

    monkeypatch.setattr(processing, "decode_event", decoded)
    monkeypatch.setattr(processing, "send_to_dlq", dead_letter_spy)
    monkeypatch.setattr(processing, "_stop_hard", stop_spy)
    record = to_records(TP("codegen.tasks", 0), [Fetched()])[0]

    async def refused(value, event):
        raise TopicAuthorizationFailedError("codegen.generated")

    monkeypatch.setenv("KAFKA_SASL_USERNAME", "reader")
    with pytest.raises(SystemExit):
        await processing.handle_event(record, object, "agent", refused)
    assert letters == [] and stops == [
        "Kafka refused principal 'reader' the topic 'codegen.generated' (TopicAuthorizationFailedError): "
        "grant it an ACL or use another principal"]

    async def buggy(value, event):
        raise ValueError("a bug")

    assert not await processing.handle_event(record, object, "agent", buggy)
    assert letters == ["handler_error"]  # a bug, not the deployment: dead-lettered, worker goes on


def test_a_refusal_by_kafka_is_one_line_naming_the_principal_and_what_was_refused():
    from aiokafka.errors import (
        ClusterAuthorizationFailedError,
        GroupAuthorizationFailedError,
        SaslAuthenticationFailed,
        TopicAuthorizationFailedError,
    )

    from streams.runtime.errors import is_fatal, is_retriable, refusal

    topic = TopicAuthorizationFailedError("alerts.commands")
    assert refusal(topic, "publisher").startswith(
        "Kafka refused principal 'publisher' the topic 'alerts.commands' (TopicAuthorizationFailedError)")
    assert "consumer group 'omnistream'" in refusal(GroupAuthorizationFailedError("omnistream"), "reader")
    assert refusal(ClusterAuthorizationFailedError(), "reader").startswith(
        "Kafka refused principal 'reader' on the cluster")
    assert "did not let an anonymous client log in" in refusal(SaslAuthenticationFailed(), None)
    for exc in (topic, ClusterAuthorizationFailedError(), SaslAuthenticationFailed()):
        assert is_fatal(exc) and not is_retriable(exc) and "\n" not in refusal(exc, "x")
