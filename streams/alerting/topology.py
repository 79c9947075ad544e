"""Alert evaluation on the stream: closed metric windows and alert commands → alert lifecycle.

Everything the engine needs goes through one internal topic under one key ("engine"), so one
worker owns all alert state at a time, in the changelog-backed `alert-state` table: its
pending/for timers, groups, silences and escalations survive a rebalance or a restart. Inputs:
closed windows (from metrics-aggregator), commands (alerts.commands, via alert-commands-intake)
and a tick every OMNISTREAM_ALERT_TICK_S. Outputs: `Alert` events on the `alerts` topic (key =
fingerprint), rows in the `alerts` table (upsert by alert id), and group notifications to the
channels: the log always, and a webhook (HTTP POST, JSON, retries with backoff, timeout) when
OMNISTREAM_ALERT_WEBHOOK_URL is set.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from faust.types import StreamT
from prometheus_client import Counter

from agents.monitoring import alertmanager
from agents.monitoring.alerting import AlertEngine, AlertEngineState, Change, new_state
from agents.monitoring.rules import load
from agents.monitoring.windows import Aggregate
from schemas.codec import encode
from schemas.events import Alert, AlertCommand
from streams.alerting.evaluation import Evaluation
from streams.alerting.notify import post_webhook
from streams.monitoring.topology import WINDOW_LISTENERS
from streams.runtime import tables, tracing
from streams.runtime.app import alerts, alerts_commands, app, settings
from streams.runtime.dlq import CORRELATION_HEADER
from streams.runtime.faust import Record
from streams.runtime.processing import (
    held,
    run_checkpoints,
    run_intake,
    source_headers,
    table_put,
)
from streams.runtime.sink import PgBatchSink
from streams.runtime.tables import KIND_HEADER, ControlKind

log = logging.getLogger(__name__)

ENGINE_KEY = "engine"
TICK_S = settings.alert_tick_s
WEBHOOK_URL = settings.alert_webhook_url.get_secret_value() if settings.alert_webhook_url else None
WEBHOOK_TIMEOUT_S = settings.alert_webhook_timeout_s
WEBHOOK_RETRIES = settings.alert_webhook_retries
STALE_S = settings.alert_stale_s

# Loaded from the rules file by `start()` when the worker starts (a bad file stops the start).
_engine: AlertEngine | None = None


def start() -> None:
    global _engine
    rules, grouping = load(settings.alert_rules)
    _engine = AlertEngine(rules, grouping, stale_s=STALE_S, stale_windows=settings.alert_stale_windows)


def engine() -> AlertEngine:
    if _engine is None:
        raise RuntimeError("streams.alerting.topology.start() has not run: the alert rules are not loaded")
    return _engine

ALERT_CHANGES = Counter("omnistream_alert_changes_total", "Alert state changes",
                        ["rule", "severity", "state"])
NOTIFICATIONS = Counter("omnistream_alert_notifications_total", "Group notifications", ["channel", "outcome"])

alert_inbox = app.topic(tables.alert_inbox(settings.app_id), key_type=bytes, value_type=bytes,
                        partitions=1, internal=True, value_serializer="raw", key_serializer="raw")
alert_table = app.Table(tables.ALERT_TABLE, default=None, partitions=1, key_type=str)  # JSON


def window_every(size: float) -> float:
    """How often a series' windows of this size close: a tumbling window's size, a hopping
    window's step (a 300 s window every 60 s). Staleness counts missed windows at that pace."""
    hopping, step = settings.metric_hopping_window_s, settings.metric_hopping_step_s
    return min(size, step) if hopping > 0 and size == hopping else size


async def window_closed(agg: Aggregate) -> None:
    """Told by the metrics aggregator of each closed window; sends on those whose metric has rules."""
    if agg.name not in engine().by_metric:
        return
    row = agg.row()
    stats = {"count": row["sample_count"], "sum": row["value_sum"], "min": row["value_min"],
             "max": row["value_max"], "p50": row["p50"], "p95": row["p95"], "p99": row["p99"]}
    await tracing.send(alert_inbox, key=ENGINE_KEY.encode(), value=orjson.dumps({
        "metric": agg.name, "stats": stats, "labels": agg.labels, "start": agg.start, "end": agg.end,
        "every": window_every(agg.end - agg.start)}),
        headers={KIND_HEADER: ControlKind.WINDOW.header, CORRELATION_HEADER: b""})


WINDOW_LISTENERS.append(window_closed)


@app.agent(alerts_commands, name="alert-commands-intake")
async def alert_commands_intake(stream: StreamT) -> None:
    async def handle(cmd: AlertCommand, event: Record) -> None:
        await tracing.send(alert_inbox, key=ENGINE_KEY.encode(), value=encode(cmd), headers={
            KIND_HEADER: ControlKind.COMMAND.header, CORRELATION_HEADER: str(cmd.correlation_id).encode(),
            **source_headers(event)})

    await run_intake(stream, AlertCommand, "alert-commands-intake", handle)


ALERT_COLUMNS = ("id", "fingerprint", "rule_name", "severity", "state", "value", "threshold", "labels",
                 "annotations", "escalation_level", "started_at", "acknowledged_at", "acknowledged_by",
                 "resolved_at", "resolved_reason")
_ALERT_UPSERT = ("ON CONFLICT (id) DO UPDATE SET "
                 + ", ".join(f"{c} = EXCLUDED.{c}" for c in ALERT_COLUMNS[4:]))
_sink: PgBatchSink | None = None


def _ts(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def _ts_required(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def to_event(a: dict[str, Any]) -> Alert:
    # The event id is fixed per (alert, state, escalation level): a re-sent change is the same event.
    eid = uuid.uuid5(uuid.NAMESPACE_URL, f"{a['id']}/{a['state']}/{a['escalation_level']}")
    return Alert(id=eid, fingerprint=a["fingerprint"], rule=a["rule"], severity=a["severity"],
                 state=a["state"], value=a["value"], threshold=a["threshold"], labels=a["labels"],
                 annotations={**a["annotations"], "alert_id": a["id"],
                              **({"acked_by": a["acked_by"]} if a.get("acked_by") else {})},
                 started_at=_ts_required(a["started_at"] or a["active_since"]), ended_at=_ts(a["ended_at"]),
                 escalation_level=min(a["escalation_level"], 10),
                 resolved_reason=a.get("resolved_reason") if a["state"] == "resolved" else None)


def _row(a: dict[str, Any]) -> tuple:
    started = _ts(a["started_at"] or a["active_since"])
    return (uuid.UUID(a["id"]), a["fingerprint"], a["rule"], a["severity"], a["state"], a["value"],
            a["threshold"], orjson.dumps(a["labels"]).decode(), orjson.dumps(a["annotations"]).decode(),
            a["escalation_level"], started, _ts(a.get("acked_at")), a.get("acked_by"), _ts(a["ended_at"]),
            a.get("resolved_reason") if a["state"] == "resolved" else None)


async def _publish(changes: list[Change]) -> None:
    for change in changes:
        if change.kind == "alert":
            a = change.payload
            ALERT_CHANGES.labels(a["rule"], a["severity"], a["state"]).inc()
            await tracing.send(alerts, key=a["fingerprint"].encode(), value=encode(to_event(a)))
            if _sink is not None:
                _sink.add_nowait(_row(a))
            log.warning("alert %s", a["state"], extra={"metadata": {
                "rule": a["rule"], "severity": a["severity"], "value": a["value"],
                "labels": a["labels"], "escalation_level": a["escalation_level"]}})
        else:
            log.warning("alert notification", extra={"metadata": change.payload})
            NOTIFICATIONS.labels("log", "sent").inc()
            if WEBHOOK_URL:
                asyncio.ensure_future(post_webhook(WEBHOOK_URL, _webhook_body(change.payload),
                                                   WEBHOOK_RETRIES, WEBHOOK_TIMEOUT_S, NOTIFICATIONS))


EXTERNAL_URL = settings.external_url or f"http://{settings.web_host}:{settings.web_port}/dashboard"


def _webhook_body(notification: dict[str, Any]) -> dict[str, Any]:
    """The notification in the configured format (OMNISTREAM_ALERT_WEBHOOK_FORMAT)."""
    if settings.alert_webhook_format == "alertmanager":
        return alertmanager.webhook_payload(notification, settings.alert_receiver, EXTERNAL_URL)
    return notification


def _state() -> AlertEngineState:
    return AlertEngineState.load(alert_table.get(ENGINE_KEY)) or new_state()


@app.agent(alert_inbox, name="alert-evaluator")
async def alert_evaluator(stream: StreamT) -> None:
    global _sink
    sink = _sink = await PgBatchSink(settings.database_url, "alerts", ALERT_COLUMNS,
                                     on_conflict=_ALERT_UPSERT, dedupe_key=lambda row: row[0],
                                     max_ms=500, source_topic="alerts").start()
    try:
        await run_checkpoints(stream, "alert-evaluator", lambda: _EvaluatorCheckpoint(sink))
    finally:
        await sink.stop()


class _EvaluatorCheckpoint:
    """A batch of the alert inbox (streams.runtime.processing.Checkpoint): the alert changes are
    published and their rows in PostgreSQL before the engine state that made them is saved."""

    def __init__(self, sink: PgBatchSink) -> None:
        self.evaluation, self.sink = Evaluation(_state(), engine()), sink

    async def apply(self, events: Sequence[Any]) -> None:
        for event in events:
            await self.evaluation.apply(event)

    async def flush(self) -> None:
        await _publish(self.evaluation.changes)
        await self.sink.flush()

    def save(self) -> None:
        if held(alert_inbox.get_topic_name(), 0):
            table_put(alert_table, 0, ENGINE_KEY, self.evaluation.state.dump())


@app.timer(interval=TICK_S)
async def alert_ticks() -> None:
    await tracing.send(alert_inbox, key=ENGINE_KEY.encode(), value=b"{}",
                           headers={KIND_HEADER: ControlKind.TICK.header, CORRELATION_HEADER: b""})
