"""Event models for every topic (pydantic v2). No I/O here.

Every value carries the envelope (`id`, `schema_version`, `correlation_id`, `occurred_at`);
outside publishers may omit it and it is filled in on intake. Scalars are strict (no "1" → 1),
strings and lists are bounded, unknown fields are rejected.
"""

from __future__ import annotations

import keyword
import math
from datetime import UTC, datetime
from typing import Annotated, Literal, Required
from uuid import UUID, uuid4

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from schemas.nodes import shadowed_member, snake

NodeType = Literal["effect", "compute", "reducer", "orchestrator"]
NODE_TYPES: tuple[str, ...] = ("effect", "compute", "reducer", "orchestrator")

MIXIN_CATALOGUE: tuple[str, ...] = (
    "MixinRetry", "MixinCircuitBreaker", "MixinCaching", "MixinLogging", "MixinMetrics",
    "MixinTracing", "MixinValidation", "MixinSerialization", "MixinEventBus", "MixinHealthCheck",
    "MixinRateLimit", "MixinTimeout", "MixinTransaction", "MixinIdempotency", "MixinAuth",
    "MixinBatching", "MixinStreaming", "MixinPersistence", "MixinScheduling",
    "MixinNotification", "MixinAudit", "MixinEncryption", "MixinCompression", "MixinConfig",
)

# Words a generated module defines or imports itself: a PRD name equal to one would shadow it.
_RESERVED = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | {
    "None", "True", "False", "self", "cls", "object", "type", "print", "exec", "eval",
    "compile", "open", "input", "super", "Any", "Node", "NodeBase",
}


def _not_reserved(value: str) -> str:
    if value in _RESERVED or value.startswith("_") or value.startswith("Mixin"):
        raise ValueError(f"{value!r} is a reserved word and cannot name generated code")
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Text = Annotated[str, StringConstraints(strict=True, max_length=2000)]
LongText = Annotated[str, StringConstraints(strict=True, max_length=20000)]
Title = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=200)]
PascalIdent = Annotated[
    str,
    StringConstraints(strict=True, pattern=r"^[A-Z][A-Za-z0-9]{0,63}$"),
    AfterValidator(_not_reserved),
]
SnakeIdent = Annotated[
    str,
    StringConstraints(strict=True, pattern=r"^[a-z][a-z0-9_]{0,63}$"),
    AfterValidator(_not_reserved),
]
MixinName = Annotated[str, StringConstraints(strict=True, pattern=r"^Mixin[A-Z][A-Za-z0-9]{0,58}$")]
PrdId = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
Score = Annotated[StrictFloat | StrictInt, Field(ge=0, le=1)]
Millis = Annotated[StrictFloat | StrictInt, Field(ge=0, le=86_400_000)]
Name = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=200)]
Labels = Annotated[
    dict[Annotated[str, StringConstraints(strict=True, pattern=r"^[a-zA-Z_][a-zA-Z0-9_]{0,99}$")],
         Annotated[str, StringConstraints(strict=True, max_length=500)]],
    Field(max_length=32),
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class Envelope(Model):
    id: UUID = Field(default_factory=uuid4)
    schema_version: StrictInt = Field(default=1, ge=1, le=1000)
    correlation_id: UUID = Field(default_factory=uuid4)
    occurred_at: AwareDatetime = Field(default_factory=utcnow)

    @field_validator("occurred_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)


# ---------------------------------------------------------------- PRDs and codegen


class PrdNode(Model):
    node_type: NodeType
    name: PascalIdent
    mixins: Annotated[list[MixinName], Field(max_length=24)] = Field(default_factory=list)
    description: Text | None = None
    operations: Annotated[list[SnakeIdent], Field(max_length=32)] = Field(default_factory=list)

    @field_validator("mixins", "operations")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("must not repeat a name")
        return value

    @model_validator(mode="after")
    def _operations_keep_the_node_whole(self) -> PrdNode:
        for operation in self.operations:
            owner = shadowed_member(operation, self.mixins)
            if owner is not None:
                raise ValueError(f"operation {operation!r} of node {self.name} would shadow "
                                 f"{owner}.{operation}; rename the operation")
        return self


class PrdSubmitted(Envelope):
    prd_id: PrdId = Field(default_factory=lambda: f"prd-{uuid4().hex[:12]}")
    title: Title
    description: LongText = ""
    service_name: SnakeIdent
    nodes: Annotated[list[PrdNode], Field(min_length=1, max_length=16)]

    @model_validator(mode="after")
    def _unique_node_names(self) -> PrdSubmitted:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique within a PRD")
        snakes: dict[str, str] = {}
        for node in self.nodes:  # folders, loggers and settings prefixes use the snake form
            other = snakes.setdefault(snake(node.name), node.name)
            if other != node.name:
                raise ValueError(f"nodes {other} and {node.name} are both {snake(node.name)!r} "
                                 f"in file and logger names; rename one")
        return self


class NodeTask(Envelope):
    prd_id: PrdId
    service_name: SnakeIdent
    title: Title
    prd_description: LongText = ""
    node_index: StrictInt = Field(ge=0, lt=16)
    node_count: StrictInt = Field(ge=1, le=16)
    node: PrdNode
    prd_nodes: Annotated[list[PascalIdent], Field(max_length=16)] = Field(default_factory=list)
    submitted_at: AwareDatetime | None = None


class GeneratedFile(Model):
    path: Annotated[str, StringConstraints(strict=True, pattern=r"^[a-z0-9_]+(/[a-z0-9_]+)*\.py$",
                                           max_length=300)]
    content: Annotated[str, StringConstraints(strict=True, max_length=1_000_000)]
    sha256: Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9a-f]{64}$")]


class PatternFinding(Model):
    pattern_name: Name
    message: Text
    line: StrictInt = Field(ge=0)
    confidence: Score
    severity: Literal["info", "warning", "error"] = "warning"
    file: str | None = None


class MixinConflict(Model):
    pair: Annotated[list[MixinName], Field(min_length=2, max_length=2)]
    p_pair: Score
    p_a: Score
    p_b: Score
    pair_weight: StrictFloat | StrictInt
    observations: StrictInt = Field(ge=0)
    context: Annotated[list[MixinName], Field(max_length=4)] = Field(default_factory=list)


class Compatibility(Model):
    """What the mixin model says about a node's combination when it was generated."""
    score: Score
    confidence: Score
    evidence: StrictInt = Field(ge=0)
    conflicts: Annotated[list[MixinConflict], Field(max_length=300)] = Field(default_factory=list)
    unseen_mixins: Annotated[list[MixinName], Field(max_length=32)] = Field(default_factory=list)
    risky: StrictBool
    model_version: StrictInt = Field(ge=0)
    updates: StrictInt = Field(ge=0)


class GeneratedNode(Envelope):
    prd_id: PrdId
    service_name: SnakeIdent
    node_type: NodeType
    node_name: PascalIdent
    node_index: StrictInt = Field(ge=0, lt=16)
    node_count: StrictInt = Field(ge=1, le=16)
    mixins: Annotated[list[MixinName], Field(max_length=24)]
    files: Annotated[list[GeneratedFile], Field(max_length=16)]
    findings: Annotated[list[PatternFinding], Field(max_length=500)] = Field(default_factory=list)
    quality_score: Score
    duration_ms: Millis
    success: StrictBool = True
    failure_reason: Text | None = None
    worker: Name | None = None
    prd_nodes: Annotated[list[PascalIdent], Field(max_length=16)] = Field(default_factory=list)
    submitted_at: AwareDatetime | None = None
    cache_hits: StrictInt = Field(default=0, ge=0)
    cache_misses: StrictInt = Field(default=0, ge=0)
    compatibility: Compatibility | None = None
    fanned_out_at: AwareDatetime | None = None  # when its task was made (the PRD's fan-out)


CompletionStatus = Literal["complete", "partial", "failed", "timed_out"]


class CompletedNode(Model):
    node_name: PascalIdent
    node_type: NodeType
    success: StrictBool
    failure_reason: Text | None = None
    files: Annotated[list[str], Field(max_length=16)] = Field(default_factory=list)
    quality_score: Score | None = None


class PrdCompleted(Envelope):
    prd_id: PrdId
    service_name: SnakeIdent
    status: CompletionStatus
    node_count: StrictInt = Field(ge=1, le=16)
    nodes: Annotated[list[CompletedNode], Field(max_length=16)]
    missing: Annotated[list[PascalIdent], Field(max_length=16)] = Field(default_factory=list)
    failed: Annotated[list[PascalIdent], Field(max_length=16)] = Field(default_factory=list)
    duration_ms: Millis
    worker: Name | None = None
    # sum of the nodes' generation times / wall time from fan-out to completion (> 1: the
    # nodes were generated side by side)
    parallel_speedup: Annotated[StrictFloat | StrictInt, Field(ge=0, le=1000)] | None = None


class GenerationResult(Envelope):
    node_type: NodeType
    mixins: Annotated[list[MixinName], Field(max_length=32)]
    success: StrictBool
    failure_reason: Text | None = None
    source: Name = "pipeline"
    duration_ms: Millis | None = None


@with_config(ConfigDict(extra="forbid"))
class GenerationResultFields(TypedDict, total=False):
    """`GenerationResult` as a plain dict: the same fields and checks (tests/unit/test_schemas.py
    holds them together), for replay to read a topic without building a model per record."""

    node_type: Required[NodeType]
    mixins: Required[Annotated[list[MixinName], Field(max_length=32)]]
    success: Required[StrictBool]
    failure_reason: Text | None
    source: Name
    duration_ms: Millis | None
    id: UUID
    schema_version: Annotated[StrictInt, Field(ge=1, le=1000)]
    correlation_id: UUID
    occurred_at: AwareDatetime


class PredictRequest(Model):
    """One question to the mixin model (GET/POST /api/predict, `omnistream predict`)."""
    node_type: NodeType
    mixins: Annotated[list[MixinName], Field(max_length=32)]


# ---------------------------------------------------------------- feedback, metrics, alerts

FeedbackType = Literal["true_positive", "false_positive", "false_negative", "user_override"]


class PatternFeedback(Envelope):
    pattern_name: Name
    feedback_type: FeedbackType
    user_weight: Score = 1.0
    is_correct: StrictBool | None = None
    confidence: Score | None = None
    comment: Text | None = None
    source: Name | None = None  # who sent it: each source's influence on a pattern is bounded


MetricName = Annotated[str, StringConstraints(strict=True, pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]{0,199}$")]
FiniteNumber = Annotated[StrictFloat | StrictInt, AfterValidator(_finite)]
MetricType = Literal["counter", "gauge", "histogram"]


class MetricEvent(Envelope):
    name: MetricName
    value: FiniteNumber
    metric_type: MetricType
    labels: Labels = Field(default_factory=dict)


MAX_BATCH_SAMPLES = 10_000


class MetricBatch(Model):
    """Many samples in one `metrics.events` record (at most 10,000 and 1 MiB; keyed by the
    metric name when they all share it). Each sample is checked alone: a bad one is
    dead-lettered by itself and the rest land."""

    samples: Annotated[list[MetricSample], Field(min_length=1, max_length=MAX_BATCH_SAMPLES)]


class MetricSample(Model):
    """A `MetricEvent` as it travels in a `MetricBatch`: the same fields and checks, its
    envelope optional (the intake derives what is left out from the record, per sample)."""

    name: MetricName
    value: FiniteNumber
    metric_type: MetricType
    labels: Labels = Field(default_factory=dict)
    id: UUID | None = None
    schema_version: StrictInt | None = Field(default=None, ge=1, le=1000)
    correlation_id: UUID | None = None
    occurred_at: AwareDatetime | None = None


@with_config(ConfigDict(extra="forbid"))
class MetricSampleFields(TypedDict, total=False):
    """`MetricSample` as a plain dict: the same fields and checks (tests/unit/test_schemas.py holds
    them together), validated a batch at a time without building a model per sample."""

    name: Required[MetricName]
    value: Required[FiniteNumber]
    metric_type: Required[MetricType]
    labels: Labels
    id: UUID | None
    schema_version: Annotated[StrictInt, Field(ge=1, le=1000)] | None
    correlation_id: UUID | None
    occurred_at: AwareDatetime | None


@with_config(ConfigDict(extra="forbid"))
class MetricBatchFields(TypedDict):
    samples: Annotated[list[MetricSampleFields], Field(min_length=1, max_length=MAX_BATCH_SAMPLES)]


class MetricRecord(RootModel[MetricEvent | MetricBatch]):
    """What a `metrics.events` record holds: one sample, or a batch of them."""


MetricBatch.model_rebuild()

Severity = Literal["info", "warning", "critical"]


class Alert(Envelope):
    fingerprint: Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9a-f]{64}$")]
    rule: Name
    severity: Severity
    state: Literal["pending", "firing", "acknowledged", "silenced", "resolved"]
    value: Annotated[StrictFloat | StrictInt, AfterValidator(_finite)] | None = None
    threshold: StrictFloat | StrictInt | None = None
    labels: Labels = Field(default_factory=dict)
    annotations: Labels = Field(default_factory=dict)
    started_at: AwareDatetime
    ended_at: AwareDatetime | None = None
    escalation_level: StrictInt = Field(default=0, ge=0, le=10)
    # Why a resolved alert resolved: its series recovered, went stale (stopped reporting), or a
    # command resolved it. None while it is not resolved (and in events from before this field).
    resolved_reason: Literal["recovered", "stale", "manual"] | None = None


class AlertCommand(Envelope):
    alert_id: Name
    action: Literal["ack", "resolve", "silence"]
    by: Name | None = None
    duration_s: StrictInt | None = Field(default=None, ge=1, le=30 * 86400)
    comment: Text | None = None


class DeadLetter(Envelope):
    """A value that could not be handled, with where it came from and why."""

    topic: Name
    partition: StrictInt = Field(ge=0)
    offset: StrictInt = Field(ge=0)
    key: str | None = None
    value: str | None = Field(default=None, description="original value as UTF-8 text, if it is")
    value_b64: str = Field(description="original value bytes (the first 256 KiB when truncated), base64")
    value_size: StrictInt | None = Field(default=None, ge=0, description="size of the original value")
    value_sha256: str | None = Field(default=None, description="SHA-256 of the whole original value")
    truncated: StrictBool = False
    error_type: Name
    error: Annotated[str, StringConstraints(max_length=4000)]
    agent: Name | None = None
    sample_index: StrictInt | None = Field(
        default=None, ge=0, description="which sample of a batched record (the value is that sample)")

