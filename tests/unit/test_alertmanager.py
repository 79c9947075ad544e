"""Our group notifications in Alertmanager's webhook format (version 4)."""

from __future__ import annotations

import re
from datetime import datetime

from agents.monitoring.alerting import AlertEngine, new_state
from agents.monitoring.alertmanager import ZERO_TIME, webhook_payload
from agents.monitoring.rules import Grouping, parse

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
TOP = {"version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels", "commonLabels",
       "commonAnnotations", "externalURL", "alerts"}
ALERT = {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}


def _notifications() -> list[dict]:
    rules, _ = parse({"rules": [{"name": "latency_high", "metric": "lat", "stat": "max", "op": ">",
                                 "critical": 300, "for_s": 0, "identify_by": ["node"],
                                 "annotations": {"runbook": "https://runbooks/latency"}}]})
    engine = AlertEngine(rules, Grouping(group_by=("rule",), group_wait_s=0, group_interval_s=1,
                                         repeat_interval_s=600), stale_s=900)
    state, out = new_state(), []
    stats = {"count": 1, "sum": 412.0, "min": 412.0, "max": 412.0}
    for node in ("api", "db"):
        out += engine.observe(state, "lat", stats, {"node": node}, 100.0)
    out += engine.tick(state, 101.0)
    calm = {"count": 1, "sum": 10.0, "min": 10.0, "max": 10.0}
    out += engine.observe(state, "lat", calm, {"node": "api"}, 200.0)
    out += engine.tick(state, 202.0)
    return [c.payload for c in out if c.kind == "notification"]


def test_the_payload_has_every_field_alertmanager_receivers_read():
    first, second = _notifications()[:2]
    body = webhook_payload(first, "oncall", "http://dash.example/dashboard")
    assert set(body) == TOP and body["version"] == "4" and body["receiver"] == "oncall"
    assert body["status"] == "firing" and body["truncatedAlerts"] == 0
    assert body["groupLabels"] == {"alertname": "latency_high"}
    assert body["groupKey"] == '{}:{alertname="latency_high"}'
    assert body["commonLabels"] == {"alertname": "latency_high", "severity": "critical"}
    assert body["commonAnnotations"]["runbook"] == "https://runbooks/latency"
    assert body["externalURL"] == "http://dash.example/dashboard"
    assert len(body["alerts"]) == 2
    for alert in body["alerts"]:
        assert set(alert) == ALERT and alert["status"] == "firing"
        assert alert["labels"]["alertname"] == "latency_high" and alert["labels"]["node"] in ("api", "db")
        assert all(isinstance(v, str) for v in {**alert["labels"], **alert["annotations"]}.values())
        assert RFC3339.match(alert["startsAt"]) and alert["endsAt"] == ZERO_TIME
        assert re.fullmatch(r"[0-9a-f]{16}", alert["fingerprint"])
        assert datetime.fromisoformat(alert["startsAt"].replace("Z", "+00:00")).timestamp() == 100.0

    resolved = webhook_payload(second, "oncall", "http://dash.example/dashboard")
    api = next(a for a in resolved["alerts"] if a["labels"]["node"] == "api")
    assert api["status"] == "resolved" and RFC3339.match(api["endsAt"]) and api["endsAt"] != ZERO_TIME
    assert resolved["status"] == "firing"  # db still fires: the group is firing
