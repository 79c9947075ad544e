"""The alert lifecycle, after Prometheus rules + Alertmanager, plus acknowledgement and escalation.

- Each (rule, severity, identifying labels) is one alert, named by a fingerprint (SHA-256 of
  those, never of the value). inactive → pending when a closed window breaches the threshold →
  firing once the breach has lasted `for_s` → resolved when a window no longer breaches (after
  `keep_firing_for_s`; `resolved_reason` recovered), when the series misses `stale_windows` of
  its windows (a worker that left, a metric no longer sent; `stale`; `stale_s` when its window
  length is unknown), or by a command (`manual`). A pending alert whose series goes stale is
  dropped: it never fired, so nobody is told.
- Notifications go out per group (`group_by` labels): the first after `group_wait_s`, changes
  after `group_interval_s`, an unchanged firing group again after `repeat_interval_s`, and a
  resolve notification once. Silenced and inhibited alerts (a firing critical inhibits the
  warning of the same rule and labels) are not notified.
- Acknowledgement is a suppression tied to the fingerprint that ends when the alert resolves; it
  cancels the escalation chain (levels after `escalate_after_s` of unacknowledged firing).
- All state is one JSON-able dict, so it lives in a changelogged table and timers survive a
  rebalance: `observe()` and `command()` change it, `tick(now)` runs the timers.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ConfigDict, Field

from agents.monitoring.rules import Grouping, Rule
from schemas.state import VersionedState


def fingerprint(rule: str, severity: str, labels: dict[str, str]) -> str:
    return hashlib.sha256(orjson.dumps({"rule": rule, "severity": severity, "labels": labels},
                                       option=orjson.OPT_SORT_KEYS)).hexdigest()


ALERT_NS = uuid.UUID("9a4e2c71-5b3d-4f8e-a1c6-7d2b0e9f3a58")


def alert_id(fp: str, active_since: float) -> str:
    """Deterministic: the same input (with the same clock, which the stream takes from its
    records) gives the same alert, so a replay after a crash does not make a second one."""
    return str(uuid.uuid5(ALERT_NS, f"{fp}/{active_since!r}"))


@dataclass
class Change:
    """Something to publish: an alert that changed state, or a group notification."""
    kind: str            # "alert" | "notification"
    payload: dict[str, Any]


class AlertEngineState(VersionedState):
    """Everything the engine knows, one record in the alert table: alerts by fingerprint,
    notification groups, silences, and the bookkeeping that makes a replay exact (the engine's
    clock, the last inbox offset applied, commands' source offsets, closed windows seen)."""

    model_config = ConfigDict(extra="forbid")

    alerts: dict[str, dict[str, Any]] = Field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = Field(default_factory=dict)
    silences: dict[str, dict[str, Any]] = Field(default_factory=dict)
    clock: float = 0.0             # newest inbox record time: the engine's now
    inbox_offset: int = -1         # the inbox records at or below it are in this state
    applied: dict[str, int] = Field(default_factory=dict)        # alerts.commands offsets
    windows_seen: dict[str, float] = Field(default_factory=dict)  # newest window end per series


def new_state() -> AlertEngineState:
    return AlertEngineState()


def stat_value(stats: dict[str, float | None], stat: str) -> float | None:
    if stat == "avg":
        total, count = stats.get("sum"), stats.get("count")
        return total / count if total is not None and count else None
    if stat == "increase":
        high, low = stats.get("max"), stats.get("min")
        return high - low if high is not None and low is not None else None
    return stats.get(stat)


class AlertEngine:
    def __init__(self, rules: list[Rule], grouping: Grouping, stale_s: float = 600.0,
                 stale_windows: int = 2):
        # A series is stale once it missed `stale_windows` of its windows (its window length
        # is known from the windows observed), or after `stale_s` when it is not.
        self.rules, self.grouping, self.stale_s = rules, grouping, stale_s
        self.stale_windows = stale_windows
        self.by_metric: dict[str, list[Rule]] = {}
        for r in rules:
            self.by_metric.setdefault(r.metric, []).append(r)
        self.rule_for = {(r.name, r.severity): r for r in rules}

    # ------------------------------------------------------------------ inputs

    def observe(self, state: AlertEngineState, metric: str, stats: dict[str, float | None],
                labels: dict[str, str], now: float, window_s: float | None = None,
                window_end: float | None = None) -> list[Change]:
        """One closed window of `metric` for a series with `labels`, ending at `window_end`
        (event time). The series counts as seen at its window's end, not when the window
        arrived (lateness and idle time close it later): a silent series is then stale
        `stale_windows` windows after its last window, at most one more after its last sample.
        A window that arrives more than one window after its end (a backfill) counts as seen
        one window before it arrived, so old data does not make a fresh alert stale at once."""
        changes: list[Change] = []
        seen = now if window_end is None or not window_s else min(now, max(window_end, now - window_s))
        for rule in self.by_metric.get(metric, []):
            value = stat_value(stats, rule.stat)
            if value is None:
                continue
            ident = {k: labels[k] for k in rule.identify_by if k in labels}
            fp = fingerprint(rule.name, rule.severity, ident)
            alert = state.alerts.get(fp)
            if rule.breached(value):
                if alert is None or alert["state"] == "resolved":
                    alert = state.alerts[fp] = {
                        "id": alert_id(fp, now), "fingerprint": fp, "rule": rule.name,
                        "severity": rule.severity, "state": "pending", "value": value,
                        "threshold": rule.threshold, "labels": {"rule": rule.name, "severity": rule.severity,
                                                                **ident},
                        "annotations": dict(rule.annotations), "active_since": now, "started_at": None,
                        "last_breach": now, "last_seen": now, "ended_at": None, "escalation_level": 0,
                        "acked_by": None, "silenced": False, "notified": False}
                alert.update(value=value, last_breach=now, last_seen=seen)
                if window_s:
                    alert["window_s"] = window_s
                if alert["state"] == "pending" and now - alert["active_since"] >= rule.for_s:
                    alert["state"], alert["started_at"] = "firing", now
                    changes.append(self._changed(state, alert, now))
            elif alert is not None and alert["state"] != "resolved":
                alert.update(value=value, last_seen=seen)
                if window_s:
                    alert["window_s"] = window_s
                if alert["state"] == "pending":
                    del state.alerts[fp]  # never fired: nothing to tell anyone
                elif now - alert["last_breach"] >= rule.keep_firing_for_s:
                    changes.append(self._resolve(state, alert, now, reason="recovered"))
        return changes

    def command(self, state: AlertEngineState, action: str, target: str, now: float, by: str | None = None,
                duration_s: float | None = None) -> list[Change]:
        """ack / resolve / silence one alert, by alert id or fingerprint."""
        alert = next((a for a in state.alerts.values()
                      if target in (a["id"], a["fingerprint"]) and a["state"] != "resolved"), None)
        if alert is None:
            raise KeyError(f"no open alert with id or fingerprint {target!r}")
        if action == "ack":
            if alert["state"] == "pending":
                raise ValueError("a pending alert cannot be acknowledged yet")
            alert["state"], alert["acked_by"], alert["acked_at"] = "acknowledged", by, now
            return [self._changed(state, alert, now)]
        if action == "resolve":
            return [self._resolve(state, alert, now, by=by, reason="manual")]
        if action == "silence":
            sid = str(uuid.uuid5(ALERT_NS, f"silence/{target}/{now!r}"))
            matchers = {k: re.escape(v) for k, v in alert["labels"].items()}
            state.silences[sid] = {"id": sid, "matchers": matchers,
                                      "ends_at": now + (duration_s or 3600), "by": by}
            return self._apply_silences(state, now)
        raise ValueError(f"unknown action {action!r}")

    # ------------------------------------------------------------------ timers

    def tick(self, state: AlertEngineState, now: float) -> list[Change]:
        changes: list[Change] = []
        for sid in [s for s, v in state.silences.items() if v["ends_at"] <= now]:
            del state.silences[sid]
        changes += self._apply_silences(state, now)
        for alert in list(state.alerts.values()):
            if alert["state"] in ("firing", "acknowledged", "silenced") \
                    and now - alert["last_seen"] >= self._stale_after(alert):
                changes.append(self._resolve(state, alert, now, reason="stale"))  # stopped reporting
            elif alert["state"] == "pending" and now - alert["last_seen"] >= self._stale_after(alert):
                del state.alerts[alert["fingerprint"]]
            elif alert["state"] == "firing" and not alert["silenced"]:
                rule = self.rule_for.get((alert["rule"], alert["severity"]))
                level = alert["escalation_level"]
                if rule and level < len(rule.escalate_after_s) \
                        and now - alert["started_at"] >= rule.escalate_after_s[level]:
                    alert["escalation_level"] = level + 1
                    changes.append(self._changed(state, alert, now))
                    changes.append(Change("notification", self._notification(
                        [alert], f"{alert['rule']}", "escalated", now)))
        changes += self._notify_groups(state, now)
        for fp in [fp for fp, a in state.alerts.items() if a["state"] == "resolved" and a["notified"]]:
            del state.alerts[fp]
        return changes

    # ------------------------------------------------------------------ helpers

    def _changed(self, state: AlertEngineState, alert: dict, now: float) -> Change:
        key = self._group_key(alert)
        group = state.groups.setdefault(key, {"first_seen": now, "last_notified": None,
                                                 "last_digest": None})
        group.setdefault("first_seen", now)
        return Change("alert", dict(alert))

    def _stale_after(self, alert: dict) -> float:
        window_s = alert.get("window_s")
        return self.stale_windows * window_s if window_s else self.stale_s

    def _resolve(self, state: AlertEngineState, alert: dict, now: float, by: str | None = None,
                 reason: str = "recovered") -> Change:
        alert.update(state="resolved", ended_at=now, resolved_by=by, resolved_reason=reason)
        return self._changed(state, alert, now)

    def _inhibited(self, state: AlertEngineState, alert: dict) -> bool:
        if alert["severity"] != "warning":
            return False
        ident = {k: v for k, v in alert["labels"].items() if k not in ("rule", "severity")}
        critical = state.alerts.get(fingerprint(alert["rule"], "critical", ident))
        return critical is not None and critical["state"] in ("firing", "acknowledged")

    def _apply_silences(self, state: AlertEngineState, now: float) -> list[Change]:
        changes = []
        for alert in state.alerts.values():
            if alert["state"] == "resolved":
                continue
            silenced = any(all(re.fullmatch(p, alert["labels"].get(k, "")) for k, p in s["matchers"].items())
                           for s in state.silences.values())
            if silenced != alert["silenced"]:
                alert["silenced"] = silenced
                view = dict(alert)
                if silenced:
                    view["state"] = "silenced"
                changes.append(Change("alert", view))
        return changes

    def _group_key(self, alert: dict) -> str:
        return "|".join(f"{k}={alert['labels'].get(k, '')}" for k in self.grouping.group_by)

    def _notification(self, alerts: list[dict], group: str, reason: str, now: float) -> dict:
        group_labels = {k: alerts[0]["labels"].get(k, "") for k in self.grouping.group_by} if alerts else {}
        return {"group": group, "reason": reason, "at": now, "group_labels": group_labels,
                "alerts": [{k: a.get(k) for k in ("id", "fingerprint", "rule", "severity", "state", "value",
                                                  "threshold", "labels", "annotations", "started_at",
                                                  "ended_at", "escalation_level")} for a in alerts]}

    def _notify_groups(self, state: AlertEngineState, now: float) -> list[Change]:
        g = self.grouping
        members: dict[str, list[dict]] = {}
        for alert in state.alerts.values():
            if alert["state"] == "pending":
                continue
            members.setdefault(self._group_key(alert), []).append(alert)
        changes = []
        for key, alerts in members.items():
            group = state.groups.setdefault(key, {"first_seen": now, "last_notified": None,
                                                     "last_digest": None})
            visible = [a for a in alerts if not a["silenced"] and not self._inhibited(state, a)
                       and a["state"] in ("firing", "resolved")]
            for a in alerts:
                if a not in visible and a["state"] == "resolved":
                    a["notified"] = True  # nobody was told it fired: nobody needs the resolve
            if not visible:
                continue
            digest = hashlib.sha256(orjson.dumps(
                sorted((a["fingerprint"], a["state"]) for a in visible))).hexdigest()
            last = group["last_notified"]
            if last is None:
                due, reason = now - group["first_seen"] >= g.group_wait_s, "new"
            elif digest != group["last_digest"]:
                due, reason = now - last >= g.group_interval_s, "changed"
            else:
                due = any(a["state"] == "firing" for a in visible) and now - last >= g.repeat_interval_s
                reason = "repeat"
            if not due:
                continue
            group.update(last_notified=now, last_digest=digest)
            for a in visible:
                a["notified"] = True
            changes.append(Change("notification", self._notification(visible, key, reason, now)))
        for key in [k for k in state.groups if k not in members]:
            del state.groups[key]
        return changes
