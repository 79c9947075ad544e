"""Event models for every topic (pydantic v2). No I/O here.

Every value carries the envelope (`id`, `schema_version`, `correlation_id`, `occurred_at`);
outside publishers may omit it and it is filled in on intake. Scalars are strict (no "1" → 1),
strings and lists are bounded, unknown fields are rejected.
"""

from __future__ import annotations

import keyword
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Literal, Required
from uuid import UUID, uuid4

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    Tag,
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


# ---------------------------------------------------------------- declared operations
#
# An operation may be a bare name (its body is a scaffold for a developer to fill in) or a
# declaration: typed input and output fields, and for compute and reducer nodes a rule from a
# small vocabulary that the generator writes the body and the test of. A rule is parsed into
# `OperationRule` here and never evaluated as text.

SCALAR_TYPES: tuple[str, ...] = ("str", "int", "float", "bool", "decimal", "datetime")
NUMERIC_TYPES = frozenset({"int", "float", "decimal"})
_SCALAR = "(str|int|float|bool|decimal|datetime)"
_FIELD_TYPE = re.compile(rf"^({_SCALAR}|(list|optional)\[{_SCALAR}\])$")


def _known_type(value: str) -> str:
    if not _FIELD_TYPE.match(value):
        raise ValueError(f"unknown type {value[:40]!r}: a field's type is one of {', '.join(SCALAR_TYPES)}, "
                         "or list[...] / optional[...] of one")
    return value


FieldTypeName = Annotated[str, StringConstraints(strict=True, max_length=40), AfterValidator(_known_type)]
# Members of a generated contract class: a field of that name would replace one.
CONTRACT_MEMBERS = frozenset({"from_payload", "to_dict", "fields", "schema", "name"})

AGGREGATES = ("sum", "count", "min", "max", "last", "subtract")
RULE_KINDS = (*AGGREGATES, "ratio", "threshold")
RULES_BY_NODE_TYPE: dict[str, frozenset[str]] = {
    "reducer": frozenset(AGGREGATES),  # folded per key into the running state
    "compute": frozenset({"sum", "min", "max", "last", "ratio", "threshold"}),  # one payload
}
RULE_GRAMMAR = ("sum|min|max|last|subtract <field> [per <key>], count [per <key>], "
                "ratio <field> / <field>, threshold <field> >|>=|<|<= <number>")
_RULE_FORMS = (
    (re.compile(r"^(sum|min|max|last|subtract)\s+([a-z][a-z0-9_]*)(?:\s+per\s+([a-z][a-z0-9_]*))?$"),
     lambda m: {"kind": m[1], "field": m[2], "per": m[3]}),
    (re.compile(r"^count(?:\s+per\s+([a-z][a-z0-9_]*))?$"), lambda m: {"kind": "count", "per": m[1]}),
    (re.compile(r"^ratio\s+([a-z][a-z0-9_]*)\s*/\s*([a-z][a-z0-9_]*)$"),
     lambda m: {"kind": "ratio", "field": m[1], "by": m[2]}),
    (re.compile(r"^threshold\s+([a-z][a-z0-9_]*)\s*(>=|<=|>|<)\s*(-?[0-9]{1,15}(?:\.[0-9]{1,15})?)$"),
     lambda m: {"kind": "threshold", "field": m[1], "compare": m[2], "limit": float(m[3])}),
)


def parse_rule(text: str) -> dict[str, object]:
    """A rule written as text ("subtract amount per customer_id") as the fields of an
    `OperationRule`; anything outside the grammar is refused with the grammar named."""
    words = " ".join(text.split())
    for pattern, fields in _RULE_FORMS:
        match = pattern.match(words)
        if match:
            return {k: v for k, v in fields(match).items() if v is not None}
    raise ValueError(f"unknown rule {text[:80]!r}: a rule is one of {RULE_GRAMMAR}")


def field_base(type_name: str) -> tuple[str, str | None]:
    """"list[decimal]" → ("decimal", "list"); "int" → ("int", None)."""
    if "[" in type_name:
        wrapper, _, rest = type_name.partition("[")
        return rest.rstrip("]"), wrapper
    return type_name, None


class OperationField(Model):
    type: FieldTypeName
    required: StrictBool = True
    description: Text | None = None


def _field_shorthand(value: object) -> object:
    """`{"amount": "decimal"}` is `{"amount": {"type": "decimal"}}`."""
    if isinstance(value, dict):
        return {k: {"type": v} if isinstance(v, str) else v for k, v in value.items()}
    return value


OperationFields = Annotated[dict[SnakeIdent, OperationField], Field(max_length=32),
                            BeforeValidator(_field_shorthand)]


class OperationRule(Model):
    kind: Literal["sum", "count", "min", "max", "last", "subtract", "ratio", "threshold"]
    field: SnakeIdent | None = None  # the input field it reads (count: none)
    per: SnakeIdent | None = None  # the input field it groups by (reducers)
    by: SnakeIdent | None = None  # ratio: the denominator
    compare: Literal[">", ">=", "<", "<="] | None = None  # threshold
    limit: Annotated[StrictFloat | StrictInt, AfterValidator(_finite)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: object) -> object:
        return parse_rule(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _complete(self) -> OperationRule:
        if self.kind != "count" and self.field is None:
            raise ValueError(f"rule {self.kind} needs a field")
        if (self.kind == "ratio") != (self.by is not None):
            raise ValueError("a ratio, and only a ratio, names a denominator (by)")
        if (self.kind == "threshold") != (self.compare is not None and self.limit is not None):
            raise ValueError("a threshold, and only a threshold, has a comparison and a limit")
        return self

    def text(self) -> str:
        """The rule as the grammar writes it (for docstrings and reports)."""
        if self.kind == "ratio":
            return f"ratio {self.field} / {self.by}"
        if self.kind == "threshold":
            return f"threshold {self.field} {self.compare} {self.limit}"
        head = "count" if self.kind == "count" else f"{self.kind} {self.field}"
        return f"{head} per {self.per}" if self.per else head


class OperationSpec(Model):
    name: SnakeIdent
    description: Text | None = None
    input: OperationFields = Field(default_factory=dict)
    output: OperationFields = Field(default_factory=dict)
    rule: OperationRule | None = None

    @model_validator(mode="after")
    def _fields_fit_the_rule(self) -> OperationSpec:
        for field_name in (*self.input, *self.output):
            if field_name in CONTRACT_MEMBERS:
                raise ValueError(f"field {field_name!r} of operation {self.name} would replace the "
                                 "contract's own member; rename it")
        rule = self.rule
        if rule is None:
            return self
        if self.output:
            raise ValueError(f"operation {self.name}: a rule's output is the rule's own; declare "
                             "no output beside a rule")
        for role, name in (("field", rule.field), ("per", rule.per), ("by", rule.by)):
            if name is None:
                continue
            declared = self.input.get(name)
            if declared is None:
                raise ValueError(f"operation {self.name}: rule {rule.text()!r} reads {name!r}, "
                                 "which its input does not declare")
            base, wrapper = field_base(declared.type)
            if not declared.required or wrapper == "optional":
                raise ValueError(f"operation {self.name}: rule {rule.text()!r} reads {name!r}, which "
                                 "must then be required (not optional)")
            if role == "per" and (wrapper is not None or base not in ("str", "int", "bool")
                                  or not declared.required):
                raise ValueError(f"operation {self.name}: the key {name!r} must be a required "
                                 "str, int or bool")
            if role in ("field", "by") and rule.kind not in ("last", "count") and base not in NUMERIC_TYPES:
                raise ValueError(f"operation {self.name}: rule {rule.kind} needs a number, and "
                                 f"{name!r} is {declared.type}")
        return self


def operation_name(operation: str | OperationSpec) -> str:
    return operation if isinstance(operation, str) else operation.name


def _operation_form(value: object) -> str:
    return "name" if isinstance(value, str) else "declaration"


# A bare name or a declaration, told apart by the value's kind: an error names the one form.
Operation = Annotated[Annotated[SnakeIdent, Tag("name")] | Annotated[OperationSpec, Tag("declaration")],
                      Discriminator(_operation_form)]


class PrdNode(Model):
    node_type: NodeType
    name: PascalIdent
    mixins: Annotated[list[MixinName], Field(max_length=24)] = Field(default_factory=list)
    description: Text | None = None
    operations: Annotated[list[Operation], Field(max_length=32)] = Field(default_factory=list)

    @field_validator("mixins", "operations")
    @classmethod
    def _unique(cls, value: list[str | OperationSpec]) -> list[str | OperationSpec]:
        names = [operation_name(v) for v in value]
        if len(set(names)) != len(names):
            raise ValueError("must not repeat a name")
        return value

    @property
    def operation_names(self) -> list[str]:
        return [operation_name(op) for op in self.operations]

    @model_validator(mode="after")
    def _operations_keep_the_node_whole(self) -> PrdNode:
        for operation in self.operations:
            name = operation_name(operation)
            owner = shadowed_member(name, self.mixins)
            if owner is not None:
                raise ValueError(f"operation {name!r} of node {self.name} would shadow "
                                 f"{owner}.{name}; rename the operation")
            if isinstance(operation, str) or operation.rule is None:
                continue
            rule = operation.rule
            allowed = RULES_BY_NODE_TYPE.get(self.node_type, frozenset())
            if rule.kind not in allowed:
                raise ValueError(f"operation {name!r} of node {self.name}: rule {rule.kind} does not "
                                 f"fit a node of type {self.node_type}, whose rules are: "
                                 f"{', '.join(sorted(allowed)) or 'none (its operations are scaffolds)'}")
            if self.node_type == "compute":
                _compute_rule_fits(name, operation)
        return self


def _compute_rule_fits(name: str, operation: OperationSpec) -> None:
    """A compute operation sees one payload: its aggregates read a list field, and it groups by
    nothing (a reducer keeps per-key state across events)."""
    rule = operation.rule
    assert rule is not None
    if rule.per is not None:
        raise ValueError(f"operation {name!r}: a compute rule groups by nothing (`per` is a "
                         "reducer's: it keeps state per key)")
    if rule.kind in ("sum", "min", "max", "last"):
        declared = operation.input.get(rule.field) if rule.field else None
        if declared is None or field_base(declared.type)[1] != "list":
            raise ValueError(f"operation {name!r}: a compute {rule.kind} reads a list field "
                             f"(e.g. {rule.kind} amounts, with amounts: list[decimal])")
    elif rule.field is not None and field_base(operation.input[rule.field].type)[1] is not None:
        raise ValueError(f"operation {name!r}: rule {rule.kind} reads single numbers")


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
    path: Annotated[str, StringConstraints(strict=True, pattern=r"^[a-z0-9_]+(/[a-z0-9_]+)*\.(py|json)$",
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
    # P(the pair fails beyond its members' own rates), from the aged evidence
    posterior: Score | None = None


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
    operations: Annotated[list[SnakeIdent], Field(max_length=32)] = Field(default_factory=list)
    # operations whose body is a scaffold for a developer to write (no rule declared for it)
    scaffold_operations: Annotated[list[SnakeIdent], Field(max_length=32)] = Field(default_factory=list)


CompletionStatus = Literal["complete", "partial", "failed", "timed_out"]


class CompletedNode(Model):
    node_name: PascalIdent
    node_type: NodeType
    success: StrictBool
    failure_reason: Text | None = None
    files: Annotated[list[str], Field(max_length=16)] = Field(default_factory=list)
    quality_score: Score | None = None
    operations: Annotated[list[SnakeIdent], Field(max_length=32)] = Field(default_factory=list)
    # operations whose body is a scaffold for a developer to write (no rule declared for it)
    scaffold_operations: Annotated[list[SnakeIdent], Field(max_length=32)] = Field(default_factory=list)


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
    # operations whose body is a scaffold for a developer to write (no rule declared for it)
    scaffold_operations: Annotated[list[SnakeIdent], Field(max_length=32)] = Field(default_factory=list)


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
    scaffold_operations: Annotated[list[SnakeIdent], Field(max_length=32)]
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

