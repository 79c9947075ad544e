"""`omnistream alerts` for people: the alerts topic folded into one row per alert, or one line
per change with --follow. Pure formatting (the clock and the colour choice are given), so the
layout is unit-tested; the CLI reads the topic and prints what this returns."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from schemas.errors import OmnistreamError
from schemas.events import Alert

COLUMNS = ("ID", "STATE", "SEVERITY", "RULE", "LABELS", "SINCE", "VALUE/THRESHOLD", "ESC", "ACKED BY")
SHORT_ID = 8  # characters of the alert id shown; `alerts ack` takes any unique prefix

_RESET = "\033[0m"
_STATE_COLOUR = {"firing": "\033[31m", "pending": "\033[33m", "acknowledged": "\033[36m",
                 "silenced": "\033[90m", "resolved": "\033[32m"}
_SEVERITY_COLOUR = {"critical": "\033[1;31m", "warning": "\033[33m", "info": "\033[36m"}
# Open alerts first, the loudest on top.
_STATE_ORDER = {"firing": 0, "pending": 1, "acknowledged": 2, "silenced": 3, "resolved": 4}
_SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def alert_id(alert: Alert) -> str:
    """The id that `alerts ack|resolve|silence` takes (the fingerprint for old events)."""
    return alert.annotations.get("alert_id") or alert.fingerprint


def latest(alerts: Iterable[Alert]) -> list[Alert]:
    """The last event of each alert (by id, in topic order), open ones first, then by severity
    and start time."""
    last: dict[str, Alert] = {}
    for alert in alerts:
        last[alert_id(alert)] = alert
    return sorted(last.values(), key=lambda a: (_STATE_ORDER.get(a.state, 9),
                                                 _SEVERITY_ORDER.get(a.severity, 9), a.started_at))


def age(seconds: float) -> str:
    """A duration as people read it: 42s, 7m12s, 3h05m, 2d04h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _number(x: float | int | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _labels(alert: Alert) -> str:
    """The labels, without the two that repeat the RULE and SEVERITY columns."""
    shown = {k: v for k, v in alert.labels.items()
             if not (k == "rule" and v == alert.rule) and not (k == "severity" and v == alert.severity)}
    return ",".join(f"{k}={v}" for k, v in sorted(shown.items())) or "-"


def _state(alert: Alert) -> str:
    if alert.state == "resolved" and alert.resolved_reason:
        return f"resolved ({alert.resolved_reason})"
    return alert.state


def cells(alert: Alert, now: datetime) -> list[str]:
    """One alert as the table's cells, in COLUMNS order."""
    since = alert.ended_at if alert.state == "resolved" and alert.ended_at else alert.started_at
    return [alert_id(alert)[:SHORT_ID], _state(alert), alert.severity, alert.rule, _labels(alert),
            age((now - since).total_seconds()) + " ago",
            f"{_number(alert.value)}/{_number(alert.threshold)}", str(alert.escalation_level),
            alert.annotations.get("acked_by") or "-"]


def _paint(text: str, alert: Alert, column: int) -> str:
    colour = (_STATE_COLOUR.get(alert.state) if column == 1
              else _SEVERITY_COLOUR.get(alert.severity) if column == 2 else None)
    return f"{colour}{text}{_RESET}" if colour else text


def _render(rows: list[list[str]], alerts: list[Alert | None], colour: bool) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    out = []
    for row, alert in zip(rows, alerts, strict=True):
        parts = []
        for i, cell in enumerate(row):
            padded = cell if i == len(row) - 1 else cell.ljust(widths[i])
            parts.append(_paint(padded, alert, i) if colour and alert is not None else padded)
        out.append("  ".join(parts).rstrip())
    return out


def table(alerts: Iterable[Alert], now: datetime, colour: bool = False) -> str:
    """The latest state of every alert as an aligned table with a header ("no alerts" when
    there are none). Colour (ANSI) only when asked: the CLI asks on a terminal."""
    rows = latest(alerts)
    if not rows:
        return "no alerts"
    body: list[list[str]] = [list(COLUMNS)] + [cells(a, now) for a in rows]
    return "\n".join(_render(body, [None, *rows], colour))


def change_line(alert: Alert, now: datetime, colour: bool = False) -> str:
    """One change (an event of the alerts topic) as one line: when it happened, then the same
    cells as a table row, as `key=value` where a column could be empty."""
    at = (alert.ended_at if alert.state == "resolved" and alert.ended_at else alert.occurred_at)
    c = cells(alert, now)
    state, severity = c[1], c[2]
    if colour:
        state, severity = _paint(state, alert, 1), _paint(severity, alert, 2)
    return (f"{at.astimezone().strftime('%Y-%m-%d %H:%M:%S')}  {c[0]}  {state}  {severity}  {c[3]}"
            f"  {c[4]}  value/threshold={c[6]}  esc={c[7]}  acked_by={c[8]}")


@dataclass(frozen=True)
class Ambiguous(OmnistreamError):
    prefix: str
    matches: tuple[str, ...]


def resolve_id(prefix: str, alerts: Iterable[Alert]) -> str:
    """The full alert id (or fingerprint) that `prefix` starts; the prefix itself when no
    alert seen matches (the worker answers for ids the topic no longer holds). Raises
    Ambiguous when two alerts match."""
    seen = list(alerts)
    found = {alert_id(a) for a in seen if alert_id(a).startswith(prefix)} \
        or {a.fingerprint for a in seen if a.fingerprint.startswith(prefix)}
    if len(found) > 1:
        raise Ambiguous(prefix, tuple(sorted(found)))
    return found.pop() if found else prefix
