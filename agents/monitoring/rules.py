"""Alert rules from YAML: each seed rule is a warning/critical pair over a windowed metric.

    rules:
      - name: cache_hit_rate_low
        metric: template_cache_hit_rate   # metric name in the windows
        stat: avg                         # count sum min max avg increase (max-min) p50 p95 p99
        op: "<"                           # > >= < <=
        warning: 0.8
        critical: 0.5
        for_s: 60                         # how long the breach must last before firing
        keep_firing_for_s: 0              # stay firing this long after it clears
        identify_by: [worker]             # labels of the series that tell alerts apart
        escalate_after_s: [600, 1800]     # unacknowledged firing alert: level 1, 2, ...
        annotations: {summary: "..."}
    grouping: {group_by: [rule], group_wait_s: 10, group_interval_s: 60, repeat_interval_s: 3600}
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from schemas.errors import OmnistreamError

OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
STATS = ("count", "sum", "min", "max", "avg", "increase", "p50", "p95", "p99")
DEFAULT_RULES = Path(__file__).with_name("rules.yaml")


class RuleError(OmnistreamError, ValueError):
    """The rules file is not valid: says which rule and what is wrong."""


@dataclass(frozen=True)
class Rule:
    name: str
    metric: str
    stat: str
    op: str
    severity: str
    threshold: float
    for_s: float = 0.0
    keep_firing_for_s: float = 0.0
    identify_by: tuple[str, ...] = ()
    escalate_after_s: tuple[float, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)

    def breached(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)


@dataclass(frozen=True)
class Grouping:
    group_by: tuple[str, ...] = ("rule",)
    group_wait_s: float = 10.0
    group_interval_s: float = 60.0
    repeat_interval_s: float = 3600.0


def parse(doc: dict[str, Any]) -> tuple[list[Rule], Grouping]:
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        raise RuleError("the rules file needs a top-level `rules:` list")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, raw in enumerate(doc["rules"]):
        where = f"rule {i + 1} ({raw.get('name', '?') if isinstance(raw, dict) else '?'})"
        if not isinstance(raw, dict):
            raise RuleError(f"{where}: must be a mapping")
        missing = [k for k in ("name", "metric", "op") if k not in raw]
        if missing:
            raise RuleError(f"{where}: missing {', '.join(missing)}")
        if raw["name"] in seen:
            raise RuleError(f"{where}: duplicate name")
        seen.add(raw["name"])
        if raw["op"] not in OPS:
            raise RuleError(f"{where}: op must be one of {', '.join(OPS)}")
        stat = raw.get("stat", "avg")
        if stat not in STATS:
            raise RuleError(f"{where}: stat must be one of {', '.join(STATS)}")
        levels = [(sev, raw[sev]) for sev in ("warning", "critical") if raw.get(sev) is not None]
        if not levels:
            raise RuleError(f"{where}: needs a warning and/or critical threshold")
        for sev, threshold in levels:
            if not isinstance(threshold, int | float):
                raise RuleError(f"{where}: {sev} threshold must be a number")
            rules.append(Rule(
                name=raw["name"], metric=raw["metric"], stat=stat, op=raw["op"], severity=sev,
                threshold=float(threshold), for_s=float(raw.get("for_s", 0)),
                keep_firing_for_s=float(raw.get("keep_firing_for_s", 0)),
                identify_by=tuple(raw.get("identify_by", ())),
                escalate_after_s=tuple(float(x) for x in raw.get("escalate_after_s", ())),
                annotations={k: str(v) for k, v in (raw.get("annotations") or {}).items()}))
    g = doc.get("grouping") or {}
    grouping = Grouping(tuple(g.get("group_by", ("rule",))), float(g.get("group_wait_s", 10)),
                        float(g.get("group_interval_s", 60)), float(g.get("repeat_interval_s", 3600)))
    return rules, grouping


def load(path: Path | str | None = None) -> tuple[list[Rule], Grouping]:
    path = Path(path) if path else DEFAULT_RULES
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RuleError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise RuleError(f"{path}: not valid YAML: {exc}") from None
    return parse(doc)
