"""Topic names, key fields and value models: the contract outside clients rely on."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from schemas import events as ev


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    model: type[BaseModel] | None = None  # None: an internal topic (inbox, changelog)
    partitions: int = 4  # the default of OMNISTREAM_PARTITIONS; a deployment's count rules
    compacted: bool = False


PRD_REQUESTS = TopicSpec("prd.requests", "prd_id", ev.PrdSubmitted)
CODEGEN_TASKS = TopicSpec("codegen.tasks", "correlation_id", ev.NodeTask)
CODEGEN_GENERATED = TopicSpec("codegen.generated", "correlation_id", ev.GeneratedNode)
CODEGEN_COMPLETED = TopicSpec("codegen.completed", "correlation_id", ev.PrdCompleted)
CODEGEN_RESULTS = TopicSpec("codegen.results", "node_type", ev.GenerationResult)
PATTERN_FEEDBACK = TopicSpec("pattern.feedback", "pattern_name", ev.PatternFeedback)
METRICS_EVENTS = TopicSpec("metrics.events", "name", ev.MetricRecord)
ALERTS = TopicSpec("alerts", "fingerprint", ev.Alert)
ALERTS_COMMANDS = TopicSpec("alerts.commands", "alert_id", ev.AlertCommand)
DLQ = TopicSpec("omnistream.dlq", "original key", ev.DeadLetter)

ALL: tuple[TopicSpec, ...] = (
    PRD_REQUESTS, CODEGEN_TASKS, CODEGEN_GENERATED, CODEGEN_COMPLETED, CODEGEN_RESULTS,
    PATTERN_FEEDBACK, METRICS_EVENTS, ALERTS, ALERTS_COMMANDS, DLQ,
)
BY_NAME = {t.name: t for t in ALL}
