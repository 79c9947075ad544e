"""Event models: round-trips (hypothesis), rejections, envelope defaults, exported schemas."""

from __future__ import annotations

import keyword
import uuid
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import export
from schemas.codec import DecodeError, decode, encode
from schemas.events import (
    MIXIN_CATALOGUE,
    Alert,
    AlertCommand,
    GenerationResult,
    MetricEvent,
    NodeTask,
    PatternFeedback,
    PrdSubmitted,
)

RESERVED = set(keyword.kwlist) | {"None", "True", "False", "self", "cls"}
pascal = st.from_regex(r"\A[A-Z][a-z][A-Za-z0-9]{0,20}\Z").filter(
    lambda s: s not in RESERVED and not s.startswith("Mixin"))
snake = st.from_regex(r"\A[a-z][a-z0-9_]{0,20}\Z").filter(lambda s: s not in RESERVED and s not in {
    "match", "case", "type", "print", "exec", "eval", "compile", "open", "input", "super", "object"})
text = st.text(max_size=300)
node = st.fixed_dictionaries(
    {"node_type": st.sampled_from(["effect", "compute", "reducer", "orchestrator"]), "name": pascal},
    optional={"mixins": st.lists(st.sampled_from(MIXIN_CATALOGUE), max_size=6, unique=True),
              "description": text,
              "operations": st.lists(snake, max_size=5, unique=True)})
prd = st.fixed_dictionaries(
    {"title": st.text(min_size=1, max_size=200), "service_name": snake,
     "nodes": st.lists(node, min_size=1, max_size=16, unique_by=lambda n: n["name"])},
    optional={"description": st.text(max_size=2000)})


@given(prd)
@settings(max_examples=150, deadline=None)
def test_prd_round_trip(data):
    event = decode(PrdSubmitted, orjson.dumps(data))
    again = decode(PrdSubmitted, encode(event))
    assert again == event
    assert again.title == data["title"] and len(again.nodes) == len(data["nodes"])


@given(st.builds(
    MetricEvent,
    name=st.from_regex(r"\A[a-z_][a-z0-9_]{0,30}\Z"),
    value=st.floats(allow_nan=False, allow_infinity=False),
    metric_type=st.sampled_from(["counter", "gauge", "histogram"]),
    labels=st.dictionaries(st.from_regex(r"\A[a-z_][a-z0-9_]{0,10}\Z"), st.text(max_size=20), max_size=5),
))
def test_metric_round_trip(event):
    assert decode(MetricEvent, encode(event)) == event


@given(st.builds(
    PatternFeedback,
    pattern_name=st.text(min_size=1, max_size=50),
    feedback_type=st.sampled_from(["true_positive", "false_positive", "false_negative", "user_override"]),
    user_weight=st.floats(0, 1),
))
def test_feedback_round_trip(event):
    assert decode(PatternFeedback, encode(event)) == event


def test_envelope_filled_on_intake_and_kept_when_given():
    bare = decode(GenerationResult, b'{"node_type":"effect","mixins":["MixinFoo"],"success":true}')
    assert bare.schema_version == 1 and bare.source == "pipeline"
    assert isinstance(bare.id, uuid.UUID) and bare.occurred_at.tzinfo is not None
    cid = uuid.uuid4()
    given_env = decode(GenerationResult, orjson.dumps({
        "id": str(cid), "correlation_id": str(cid), "schema_version": 2,
        "occurred_at": "2026-01-02T03:04:05+02:00",
        "node_type": "reducer", "mixins": ["MixinRetry"], "success": False, "source": "jenkins"}))
    assert given_env.correlation_id == cid and given_env.schema_version == 2
    assert given_env.occurred_at == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)
    # The header's correlation id is used when the body has none.
    header_cid = uuid.uuid4()
    filled = decode(GenerationResult, b'{"node_type":"effect","mixins":["MixinX"],"success":true}',
                    defaults={"correlation_id": str(header_cid)})
    assert filled.correlation_id == header_cid


VALID = {"title": "T", "service_name": "svc",
         "nodes": [{"node_type": "effect", "name": "Writer", "mixins": ["MixinRetry"]}]}


def _with(**changes):
    data = orjson.loads(orjson.dumps(VALID))
    data.update(changes)
    return data


def _node(**changes):
    return _with(nodes=[{**VALID["nodes"][0], **changes}])


@pytest.mark.parametrize("data,fragment", [
    (_with(extra_field=1), "Extra inputs are not permitted"),
    (_with(title=5), "title"),
    (_with(title=""), "title"),
    (_with(title="x" * 201), "title"),
    (_with(nodes=[]), "nodes"),
    (_with(nodes=[{**VALID["nodes"][0], "name": f"N{i}"} for i in range(17)]), "nodes"),
    (_with(service_name="Not-Snake"), "service_name"),
    (_with(service_name="import"), "reserved"),
    (_node(node_type="widget"), "node_type"),
    (_node(name="lowercase"), "name"),
    (_node(name="None"), "reserved"),
    (_node(name="Evil__import__"), "name"),
    (_node(name="A" * 65), "name"),
    (_node(name="Bad\u2028Name"), "name"),
    (_node(mixins=["Retry"]), "mixins"),
    (_node(mixins=["MixinRetry", "MixinRetry"]), "repeat"),
    (_node(operations=["__init__"]), "operations"),
    (_node(operations=["class"]), "reserved"),
    (_with(nodes=[VALID["nodes"][0], VALID["nodes"][0]]), "unique"),
    (_with(schema_version="1"), "schema_version"),
    (_with(occurred_at="2026-01-01T00:00:00"), "occurred_at"),
    (_with(correlation_id="not-a-uuid"), "correlation_id"),
])
def test_prd_rejections(data, fragment):
    with pytest.raises(DecodeError) as info:
        decode(PrdSubmitted, orjson.dumps(data))
    assert info.value.kind == "schema"
    assert fragment in str(info.value)


@pytest.mark.parametrize("raw,kind", [
    (b"not json", "invalid_json"),
    (b"\xff\xfe\x00", "invalid_json"),
    (b"[1,2]", "schema"),
    (b"null", "schema"),
    (b'{"title": "' + b"x" * 1_000_001 + b'"}', "oversized"),
])
def test_undecodable_bytes(raw, kind):
    with pytest.raises(DecodeError) as info:
        decode(PrdSubmitted, raw)
    assert info.value.kind == kind


@pytest.mark.parametrize("model,data", [
    (MetricEvent, b'{"name": "x", "value": 1e999, "metric_type": "gauge"}'),
    (MetricEvent, {"name": "x", "value": True, "metric_type": "gauge"}),
    (MetricEvent, {"name": "bad name", "value": 1, "metric_type": "gauge"}),
    (MetricEvent, {"name": "x", "value": 1, "metric_type": "summary"}),
    (PatternFeedback, {"pattern_name": "p", "feedback_type": "true_positive", "user_weight": 1.5}),
    (PatternFeedback, {"pattern_name": "p", "feedback_type": "meh"}),
    (GenerationResult, {"node_type": "effect", "mixins": [f"MixinN{i}" for i in range(33)],
                        "success": True}),
    (GenerationResult, {"node_type": "effect", "mixins": ["MixinA"], "success": "yes"}),
    (AlertCommand, {"alert_id": "a", "action": "delete"}),
    (Alert, {"fingerprint": "short", "rule": "r", "severity": "warning", "state": "firing",
             "started_at": "2026-01-01T00:00:00Z"}),
])
def test_other_rejections(model, data):
    with pytest.raises(DecodeError):
        decode(model, data if isinstance(data, bytes) else orjson.dumps(data))


def test_node_task_is_strict_about_indexes():
    with pytest.raises(DecodeError):
        decode(NodeTask, orjson.dumps({"prd_id": "p", "service_name": "s", "title": "t",
                                       "node_index": 16, "node_count": 1, "node": VALID["nodes"][0]}))


def test_json_schema_exports_are_fresh():
    assert export.stale() == [], "run: python -m schemas.export"


def test_json_schema_export_matches_models():
    schema = orjson.loads((export.JSON_DIR / "prd.requests.schema.json").read_bytes())
    assert schema["x-topic"] == "prd.requests"
    assert set(schema["required"]) == {"title", "service_name", "nodes"}
    assert schema["additionalProperties"] is False


def accepts(check) -> bool:
    """True when `check()` validates, False when it raises a pydantic ValidationError."""
    from pydantic import ValidationError

    try:
        check()
        return True
    except ValidationError:
        return False


@pytest.mark.parametrize("sample", [
    {"name": "ok", "value": 1, "metric_type": "gauge"},
    {"name": "ok", "value": 1.5, "metric_type": "histogram", "labels": {"a": "b"},
     "occurred_at": "2026-01-01T00:00:00Z", "id": "6c1f3a52-8d0e-4b7a-9f1e-2a5c4d3b7e90"},
    {"name": "ok", "value": "1", "metric_type": "gauge"},
    {"name": "ok", "value": 1, "metric_type": "summary"},
    {"name": "9bad", "value": 1, "metric_type": "gauge"},
    {"name": "ok", "value": 1, "metric_type": "gauge", "extra": 1},
    {"name": "ok", "value": 1, "metric_type": "gauge", "labels": {"a": 1}},
    {"name": "ok", "value": 1, "metric_type": "gauge", "occurred_at": "2026-01-01T00:00:00"},
    {"name": "ok", "value": 1, "metric_type": "gauge", "schema_version": 0},
    {"value": 1, "metric_type": "gauge"},
])
def test_batched_samples_are_held_to_the_same_checks_as_a_metric_event(sample):
    """The worker validates a batch as plain dicts (MetricSampleFields); a sample must pass
    exactly when MetricSample, and MetricEvent, would take it."""
    import orjson
    from pydantic import TypeAdapter

    from schemas.events import MetricEvent, MetricSample, MetricSampleFields

    as_model = accepts(lambda: MetricSample.model_validate(sample))
    as_fields = accepts(lambda: TypeAdapter(MetricSampleFields).validate_json(orjson.dumps(sample)))
    as_event = accepts(lambda: MetricEvent.model_validate(sample))
    assert as_model == as_fields == as_event


@pytest.mark.parametrize("result", [
    {"node_type": "effect", "mixins": ["MixinRetry"], "success": True},
    {"node_type": "compute", "mixins": [], "success": False, "failure_reason": "x", "source": "ci",
     "duration_ms": 12.5, "id": "6c1f3a52-8d0e-4b7a-9f1e-2a5c4d3b7e90", "schema_version": 1,
     "occurred_at": "2026-01-01T00:00:00+02:00"},
    {"node_type": "effect", "mixins": ["MixinRetry"], "success": 1},
    {"node_type": "daemon", "mixins": [], "success": True},
    {"node_type": "effect", "mixins": ["retry"], "success": True},
    {"node_type": "effect", "mixins": ["MixinA"] * 33, "success": True},
    {"node_type": "effect", "mixins": [], "success": True, "extra": 1},
    {"node_type": "effect", "mixins": [], "success": True, "occurred_at": "2026-01-01T00:00:00"},
    {"node_type": "effect", "mixins": [], "success": True, "duration_ms": -1},
    {"mixins": [], "success": True},
])
def test_replayed_results_are_held_to_the_same_checks_as_a_generation_result(result):
    """Replay reads results as plain dicts (GenerationResultFields); one must pass exactly when
    GenerationResult would take it."""
    import orjson
    from pydantic import TypeAdapter

    from schemas.events import GenerationResult, GenerationResultFields

    assert accepts(lambda: GenerationResult.model_validate(result)) == accepts(
        lambda: TypeAdapter(GenerationResultFields).validate_json(orjson.dumps(result)))
