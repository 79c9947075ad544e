"""What a node's operations are, for the templates: typed contracts, rule bodies, scaffolds.

An operation declared with input/output fields gets one frozen dataclass per side, checked at
the operation's entry (and by MixinValidation before anything runs), and a JSON Schema per
side in the package. An operation with a rule (compute and reducer nodes: `schemas.events`
parses the rule) gets a body the templates write from the rule's checked structure, and a test
whose expectations are computed here, by `expected()`, independently of the generated code.
Every other operation is a scaffold: its body raises `ScaffoldOperation` (a
`NotImplementedError`) naming the operation and its contract, and its generated test is a
strict xfail, so it turns red the day someone writes the body without updating the test.

No PRD text becomes code here: names are identifiers checked by the schema (and again by the
`ident` filter), types come from a closed set, numbers are parsed by pydantic, and everything
else reaches the templates as data rendered by `pyliteral` (repr of str/int/float/bool/None,
Decimal, datetime, and lists/dicts of them).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from schemas.events import OperationRule, OperationSpec, PrdNode, field_base

PY_TYPES = {"str": "str", "int": "int", "float": "float", "bool": "bool", "decimal": "Decimal",
            "datetime": "datetime"}
JSON_TYPES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "decimal": {"type": ["string", "integer", "number"], "pattern": r"^-?[0-9]+(\.[0-9]+)?$",
                "description": "a decimal number; as a string to keep every digit"},
    "datetime": {"type": "string", "format": "date-time"},
}
# Three samples of each scalar type: the generated tests' inputs (chosen so that sum,
# subtract, min, max and last all give different answers, and a sign flipped shows).
SAMPLES: dict[str, list[Any]] = {
    "str": ["k1", "k2", "k1"], "int": [5, 7, 3], "float": [5.5, 7.25, 3.0],
    "bool": [True, False, True],
    "decimal": [Decimal("5.25"), Decimal("7.10"), Decimal("3.05")],
    "datetime": [dt.datetime(2026, 1, 1, 9, 30, tzinfo=dt.UTC), dt.datetime(2026, 1, 2, 10, 0, tzinfo=dt.UTC),
                 dt.datetime(2026, 1, 3, 11, 15, tzinfo=dt.UTC)],
}


# The output field a compute rule fills (not `sum`/`min`/`max`: those would shadow builtins).
RESULT_NAME = {"sum": "total", "min": "minimum", "max": "maximum", "last": "last", "ratio": "ratio",
               "threshold": "passed"}


def pascal(snake_name: str) -> str:
    return "".join(part.capitalize() for part in snake_name.split("_"))


@dataclass(frozen=True)
class FieldPlan:
    name: str
    type: str  # as declared: "decimal", "list[int]", "optional[str]"
    required: bool
    description: str | None

    @property
    def base(self) -> str:
        return field_base(self.type)[0]

    @property
    def wrapper(self) -> str | None:
        return field_base(self.type)[1]

    @property
    def annotation(self) -> str:
        base = PY_TYPES[self.base]
        if self.wrapper == "list":
            return f"tuple[{base}, ...]"
        if self.wrapper == "optional" or not self.required:
            return f"{base} | None"
        return base

    def json_schema(self) -> dict[str, Any]:
        item = dict(JSON_TYPES[self.base])
        if self.wrapper == "list":
            schema: dict[str, Any] = {"type": "array", "items": item}
        elif self.wrapper == "optional":
            schema = {"anyOf": [item, {"type": "null"}]}
        else:
            schema = item
        if self.description:
            schema = {**schema, "description": self.description}
        return schema

    def sample(self, i: int, shift: int = 0) -> Any:
        """The i-th sample of this field (`shift`: the field's place, so that two fields of one
        type differ and a swapped pair shows)."""
        values = SAMPLES[self.base]
        if self.wrapper == "list":
            return [values[(i + shift + j) % 3] for j in range(2 + i % 2)]
        return values[(i + shift) % 3]


def _fields(declared: dict[str, Any]) -> list[FieldPlan]:
    plans = [FieldPlan(name, f.type, f.required, f.description) for name, f in declared.items()]
    return sorted(plans, key=lambda p: not p.required)  # dataclass: defaults (None) come last


@dataclass(frozen=True)
class OperationPlan:
    name: str
    node_type: str
    description: str | None = None
    inputs: list[FieldPlan] = field(default_factory=list)
    outputs: list[FieldPlan] = field(default_factory=list)
    rule: OperationRule | None = None
    declared: bool = False  # given as a declaration (its input is checked), not a bare name

    @property
    def scaffold(self) -> bool:
        return self.rule is None

    @property
    def input_class(self) -> str:
        return f"{pascal(self.name)}Input"

    @property
    def output_class(self) -> str:
        return f"{pascal(self.name)}Output"

    @property
    def has_input(self) -> bool:
        return self.declared

    @property
    def has_output(self) -> bool:
        return bool(self.outputs)

    def signature(self) -> str:
        """The declared contract in one line: `refund(amount: decimal, customer_id: str) -> (…)`."""
        if not self.declared:
            return f"{self.name}(payload: dict) -> dict"
        args = ", ".join(f"{f.name}: {f.type}{'' if f.required else '?'}" for f in self.inputs)
        outs = ", ".join(f"{f.name}: {f.type}" for f in self.outputs) or "dict"
        return f"{self.name}({args}) -> ({outs})" if self.outputs else f"{self.name}({args}) -> dict"

    def doc(self) -> str:
        what = {"effect": "Effect operation", "compute": "Compute operation",
                "reducer": "Reducer step", "orchestrator": "Workflow step"}[self.node_type]
        head = f"{what} {self.signature()}"
        if self.rule is not None:
            head += f": {self.rule.text()} (declared rule)."
        else:
            head += (": a scaffold (no rule declared). Write its body, then turn its test from a "
                     "strict xfail into a real one.")
        return f"{head}\n\n{self.description}" if self.description else head

    # ------------------------------------------------------------ rule bodies
    def result_name(self) -> str:
        assert self.rule is not None
        return RESULT_NAME[self.rule.kind]

    def state_key(self) -> str:
        """Where a reducer rule keeps its running value in the state (sum and subtract of one
        field share it: a balance; count is per operation)."""
        rule = self.rule
        assert rule is not None and self.node_type == "reducer"
        if rule.kind == "count":
            head = f"{self.name}_count"
        elif rule.kind in ("sum", "subtract"):
            head = f"{rule.field}_total" if rule.per is None else str(rule.field)
        else:
            head = f"{rule.field}_{rule.kind}"
        return f"{head}_by_{rule.per}" if rule.per is not None else head

    def result_type(self) -> str:
        """The type (declared set) a compute rule's result has."""
        rule = self.rule
        assert rule is not None
        by_name = {f.name: f for f in self.inputs}
        if rule.kind == "threshold":
            return "bool"
        if rule.kind == "ratio":
            both = {by_name[str(rule.field)].base, by_name[str(rule.by)].base}
            return "decimal" if both == {"decimal"} or both == {"decimal", "int"} else "float"
        return by_name[str(rule.field)].base

    def sample_payloads(self) -> list[dict[str, Any]]:
        """Three valid inputs (every field, optional ones too)."""
        return [{f.name: f.sample(i, j) for j, f in enumerate(self.inputs)} for i in range(3)]

    def expected(self) -> tuple[Any, Any]:
        return expected(self)

    def contract_sides(self) -> list[tuple[str, list[FieldPlan], str]]:
        """(side, fields, class name) of each contract this operation declares."""
        sides = [("input", self.inputs, self.input_class)] if self.has_input else []
        if self.has_output:
            sides.append(("output", self.outputs, self.output_class))
        return sides

    def fields_literal(self, side: str) -> str:
        fields = self.inputs if side == "input" else self.outputs
        return pyliteral({f.name: (f.type, f.required) for f in fields})

    def sample_payload(self) -> dict[str, Any]:
        return self.sample_payloads()[0] if self.declared else {"order": 7}


def plan(node: PrdNode, default: list[str]) -> list[OperationPlan]:
    """The node's operations as the templates need them (`default`: the names a node declared
    with no operation gets)."""
    if not node.operations:
        return [OperationPlan(name, node.node_type) for name in default]
    plans = []
    for op in node.operations:
        if isinstance(op, str):
            plans.append(OperationPlan(op, node.node_type))
            continue
        plans.append(_declared(node.node_type, op))
    return plans


def _declared(node_type: str, op: OperationSpec) -> OperationPlan:
    base = OperationPlan(op.name, node_type, op.description, _fields(dict(op.input)),
                         _fields(dict(op.output)), op.rule, declared=True)
    if op.rule is None or node_type != "compute":
        return base
    kind = op.rule.kind
    result = RESULT_NAME[kind]
    outputs = [FieldPlan(result, base.result_type(), True, f"{op.rule.text()}")]
    if kind == "threshold":
        outputs.append(FieldPlan("value", _field(base, op.rule.field).type, True, "the value compared"))
    return OperationPlan(op.name, node_type, op.description, base.inputs, outputs, op.rule, True)


def _field(plan_: OperationPlan, name: str | None) -> FieldPlan:
    return next(f for f in plan_.inputs if f.name == name)


def json_schemas(plans: list[OperationPlan], node_name: str) -> dict[str, dict[str, Any]]:
    """File name → JSON Schema of each declared input and output."""
    out: dict[str, dict[str, Any]] = {}
    for p in plans:
        for side, fields, title in p.contract_sides():
            out[f"{p.name}_{side}.json"] = {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": f"{node_name}.{title}",
                "description": f"The {side} of {node_name}.{p.name}: {p.signature()}",
                "type": "object",
                "properties": {f.name: f.json_schema() for f in fields},
                "required": [f.name for f in fields if f.required],
                "additionalProperties": False,
            }
    return out


# ---------------------------------------------------------------- expectations (the oracle)


def expected(p: OperationPlan) -> tuple[Any, Any]:
    """(input the generated test gives, result it must see), computed from the rule here and
    not by the generated code: a reducer folds three events from an empty state; a compute
    operation maps one payload."""
    rule = p.rule
    assert rule is not None
    if p.node_type == "reducer":
        events = p.sample_payloads()
        return events, _fold(p, rule, events)
    payload = p.sample_payloads()[1]
    return payload, _compute(p, rule, payload)


def _fold(p: OperationPlan, rule: OperationRule, events: list[dict[str, Any]]) -> dict[str, Any]:
    key_name = p.state_key()
    grouped: dict[Any, Any] = {}
    for event in events:
        group = event[rule.per] if rule.per is not None else None
        value: Any = event[rule.field] if rule.field is not None else None
        had = group in grouped
        current: Any = grouped.get(group)
        if rule.kind == "count":
            grouped[group] = (current or 0) + 1
        elif rule.kind == "sum":
            grouped[group] = (current if had else 0) + value
        elif rule.kind == "subtract":
            grouped[group] = (current if had else 0) - value
        elif rule.kind == "min":
            grouped[group] = value if not had else min(current, value)
        elif rule.kind == "max":
            grouped[group] = value if not had else max(current, value)
        else:  # last
            grouped[group] = value
    return {key_name: grouped[None] if rule.per is None else grouped}


def _compute(p: OperationPlan, rule: OperationRule, payload: dict[str, Any]) -> dict[str, Any]:
    value = payload[str(rule.field)]
    if rule.kind == "ratio":
        by = payload[str(rule.by)]
        ratio = (Decimal(value) / Decimal(by)) if p.result_type() == "decimal" else float(value) / float(by)
        return {"ratio": ratio}
    if rule.kind == "threshold":
        limit = rule.limit
        passed = {">": value > limit, ">=": value >= limit, "<": value < limit, "<=": value <= limit}
        return {"passed": passed[str(rule.compare)], "value": value}
    if rule.kind == "sum":
        start: Any = {"decimal": Decimal(0), "float": 0.0}.get(p.result_type(), 0)
        return {"total": sum(value, start)}
    if rule.kind == "min":
        return {"minimum": min(value)}
    if rule.kind == "max":
        return {"maximum": max(value)}
    return {"last": value[-1]}


def test_values_hold(plans: list[OperationPlan], kind: type) -> bool:
    """Whether the generated tests' literals (sample inputs, expected results) hold a value of
    `kind` (so the test module imports it)."""
    def holds(value: Any) -> bool:
        if isinstance(value, kind):
            return True
        if isinstance(value, dict):
            return any(holds(k) or holds(v) for k, v in value.items())
        if isinstance(value, list | tuple):
            return any(holds(v) for v in value)
        return False

    return any(holds(p.sample_payload()) or (not p.scaffold and holds(p.expected())) for p in plans)


def pyliteral(value: Any) -> str:
    """A Python expression for a value built here (never PRD text as code): repr of the
    literal kinds, Decimal(...) and datetime(...) spelled out, containers recursively."""
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value)
    if isinstance(value, Decimal):
        return f"Decimal({str(value)!r})"
    if isinstance(value, dt.datetime):
        return f"datetime.fromisoformat({value.isoformat()!r})"
    if isinstance(value, list | tuple):
        inner = ", ".join(pyliteral(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{pyliteral(k)}: {pyliteral(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no literal for {type(value).__name__}")
