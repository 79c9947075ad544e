"""One batch of the alert inbox applied to the alert engine's state, without Faust: the state,
the engine and the clock are given (tests/unit/test_evaluation.py).

Records at or below the state's `inbox_offset` are already in it (a replay after a crash skips
them); a closed window sent twice is observed once; commands are applied once by their source
offset.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from agents.monitoring.alerting import AlertEngine, AlertEngineState, Change
from agents.monitoring.windows import labels_hash
from schemas.events import AlertCommand
from streams.runtime.dlq import send_to_dlq
from streams.runtime.errors import InputRefused
from streams.runtime.faust import Record
from streams.runtime.processing import Applied, control_kind, handle_event, origin
from streams.runtime.tables import ControlKind


def _window_seen(state: AlertEngineState, w: dict[str, Any]) -> bool:
    """A closed window sent again (its aggregator replayed after a crash) is observed once."""
    seen = state.windows_seen
    key = f"{w['metric']}|{labels_hash(w['labels'])}|{w['end'] - w.get('start', w['end']):g}"
    if w["end"] <= seen.get(key, float("-inf")):
        return True
    seen[key] = w["end"]
    return False


class Evaluation:
    """One batch of the alert inbox applied to the engine state.

    The engine's clock is the inbox records' timestamps (never going back), so the state after
    a record is a function of the records before it: a replay after a crash rebuilds the same
    alerts with the same ids. Records at or below `inbox_offset` are already in the state."""

    def __init__(self, state: AlertEngineState, engine: AlertEngine,
                 clock: Callable[[], float] = time.time):
        self.state, self.engine, self.clock = state, engine, clock
        self.changes: list[Change] = []

    async def apply(self, event: Record) -> None:
        state, offset = self.state, event.message.offset
        if offset <= state.inbox_offset:
            return
        stamp = event.message.timestamp if event.message.timestamp and event.message.timestamp > 0 \
            else self.clock()
        now = state.clock = max(state.clock, stamp)
        state.inbox_offset = offset
        kind = control_kind(event)
        if kind is ControlKind.COMMAND:
            await handle_event(event, AlertCommand, "alert-evaluator", self.on_command)
        elif kind is ControlKind.WINDOW:
            try:
                w = orjson.loads(event.value or b"{}")
                if not _window_seen(state, w):
                    # The pace its windows close at (a hopping window's step), not their length.
                    window_s = float(w.get("every") or float(w["end"]) - float(w.get("start", w["end"])))
                    self.changes += self.engine.observe(state, w["metric"], w["stats"], w["labels"], now,
                                                        window_s=window_s or None, window_end=float(w["end"]))
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                await send_to_dlq(event, "schema", f"not a closed window: {exc}", "alert-evaluator")
        elif kind is ControlKind.TICK:
            self.changes += self.engine.tick(state, now)

    async def on_command(self, cmd: AlertCommand, event: Record) -> None:
        applied = self.state.applied
        where, offset = origin(event)
        if Applied.seen(applied, where, offset):
            return
        Applied.mark(applied, where, offset)
        try:
            self.changes += self.engine.command(self.state, cmd.action, cmd.alert_id, self.state.clock,
                                           by=cmd.by, duration_s=cmd.duration_s)
        except (KeyError, ValueError) as exc:
            raise InputRefused("alert_command_refused", str(exc)) from None
