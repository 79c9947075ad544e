"""A group notification in Prometheus Alertmanager's webhook format (version 4), so receivers
that already sit behind Alertmanager (chat, paging, ticketing bridges) take ours unchanged.

Mapping: the rule is `alertname`, the severity and the rule's identifying labels are labels;
the value, threshold and the rule's annotations are annotations (Alertmanager's are strings);
`startsAt`/`endsAt` are RFC 3339 (a firing alert ends at Alertmanager's zero time); the
fingerprint is the first 16 hex digits of ours, as Alertmanager's are 16. Pure: no I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "not ended"


def _rfc3339(ts: float | None) -> str:
    if ts is None:
        return ZERO_TIME
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _labels(alert: dict[str, Any]) -> dict[str, str]:
    extra = {k: str(v) for k, v in alert["labels"].items() if k not in ("rule", "severity")}
    return {"alertname": alert["rule"], "severity": alert["severity"], **extra}


def _annotations(alert: dict[str, Any]) -> dict[str, str]:
    out = {k: str(v) for k, v in (alert.get("annotations") or {}).items()}
    out.setdefault("summary", f"{alert['rule']} ({alert['severity']}): value {alert['value']:g}, "
                              f"threshold {alert['threshold']:g}")
    out.update(value=f"{alert['value']:g}", threshold=f"{alert['threshold']:g}",
               alert_id=str(alert["id"]), escalation_level=str(alert.get("escalation_level", 0)))
    return out


def _common(dicts: list[dict[str, str]]) -> dict[str, str]:
    if not dicts:
        return {}
    first = dicts[0]
    return {k: v for k, v in first.items() if all(d.get(k) == v for d in dicts[1:])}


def webhook_payload(notification: dict[str, Any], receiver: str, external_url: str,
                    generator_url: str | None = None) -> dict[str, Any]:
    """Alertmanager's webhook body for one of our group notifications."""
    alerts = []
    for a in notification["alerts"]:
        status = "resolved" if a["state"] == "resolved" else "firing"
        alerts.append({
            "status": status, "labels": _labels(a), "annotations": _annotations(a),
            "startsAt": _rfc3339(a.get("started_at")),
            "endsAt": _rfc3339(a.get("ended_at")) if status == "resolved" else ZERO_TIME,
            "generatorURL": generator_url or external_url, "fingerprint": a["fingerprint"][:16]})
    group_labels = {("alertname" if k == "rule" else k): str(v)
                    for k, v in (notification.get("group_labels") or {}).items()}
    return {
        "version": "4",
        "groupKey": "{}:{" + ",".join(f'{k}="{v}"' for k, v in sorted(group_labels.items())) + "}",
        "truncatedAlerts": 0,
        "status": "firing" if any(x["status"] == "firing" for x in alerts) else "resolved",
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": _common([x["labels"] for x in alerts]),
        "commonAnnotations": _common([x["annotations"] for x in alerts]),
        "externalURL": external_url,
        "alerts": alerts,
    }
