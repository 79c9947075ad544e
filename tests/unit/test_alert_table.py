"""The `omnistream alerts` table and change lines, from Alert events (no Kafka)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from schemas.events import Alert
from streams.interfaces import alert_table

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _alert(rule: str, state: str, *, severity: str = "warning", started: float = 300,
           alert_id: str | None = None, **extra) -> Alert:
    aid = alert_id or str(uuid.uuid5(uuid.NAMESPACE_DNS, rule))
    return Alert(fingerprint=f"{abs(hash(aid)):064x}"[-64:], rule=rule, severity=severity, state=state,
                 value=extra.pop("value", 12.5), threshold=extra.pop("threshold", 10),
                 labels=extra.pop("labels", {"svc": "api"}),
                 annotations={"alert_id": aid, **extra.pop("annotations", {})},
                 started_at=NOW - timedelta(seconds=started), occurred_at=NOW - timedelta(seconds=5), **extra)


def test_table_shows_the_latest_state_of_each_alert_loudest_first():
    events = [_alert("disk_full", "firing"), _alert("cpu_hot", "firing", severity="critical", started=4000),
              _alert("disk_full", "acknowledged", annotations={"acked_by": "oncall"}),
              _alert("queue_lag", "resolved", resolved_reason="stale", ended_at=NOW - timedelta(seconds=42))]
    lines = alert_table.table(events, NOW).splitlines()
    assert lines[0].split() == ["ID", "STATE", "SEVERITY", "RULE", "LABELS", "SINCE", "VALUE/THRESHOLD",
                                "ESC", "ACKED", "BY"]
    assert len(lines) == 4  # one row per alert, not per event
    cpu, disk, queue = lines[1:]
    assert cpu.split()[1:7] == ["firing", "critical", "cpu_hot", "svc=api", "1h06m", "ago"]
    assert "12.5/10" in cpu and cpu.endswith("-")
    assert disk.split()[1] == "acknowledged" and disk.endswith("oncall")
    assert "resolved (stale)" in queue and "42s ago" in queue
    # Columns line up: every row starts its STATE cell where the header does.
    at = lines[0].index("STATE")
    assert all(line[at - 2:at] == "  " and line[at] != " " for line in lines)
    assert "\033[" not in "\n".join(lines)


def test_colour_only_when_asked():
    events = [_alert("cpu_hot", "firing", severity="critical")]
    plain, coloured = alert_table.table(events, NOW), alert_table.table(events, NOW, colour=True)
    assert "\033[31mfiring" in coloured and "\033[1;31mcritical" in coloured
    assert coloured.replace("\033[31m", "").replace("\033[1;31m", "").replace("\033[0m", "") == plain
    assert alert_table.table([], NOW) == "no alerts"


def test_one_line_per_change():
    line = alert_table.change_line(_alert("cpu_hot", "firing", labels={
        "svc": "api", "zone": "a", "rule": "cpu_hot", "severity": "warning"}), NOW)  # columns already
    assert line.split()[2:6] == [alert_table.alert_id(_alert("cpu_hot", "firing"))[:8], "firing", "warning",
                                 "cpu_hot"]
    assert " svc=api,zone=a " in line and "value/threshold=12.5/10" in line and "esc=0" in line
    assert "\n" not in line


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59, "59s"), (61, "1m01s"), (3600, "1h00m"),
                                               (90061, "1d01h")])
def test_age(seconds, text):
    assert alert_table.age(seconds) == text


def test_a_unique_prefix_names_the_alert():
    a = _alert("one", "firing", alert_id="aaaa1111-0000-0000-0000-000000000000")
    b = _alert("two", "firing", alert_id="aaaa2222-0000-0000-0000-000000000000")
    assert alert_table.resolve_id("aaaa1", [a, b]) == "aaaa1111-0000-0000-0000-000000000000"
    assert alert_table.resolve_id("zzzz", [a, b]) == "zzzz"
    with pytest.raises(alert_table.Ambiguous) as err:
        alert_table.resolve_id("aaaa", [a, b])
    assert len(err.value.matches) == 2
