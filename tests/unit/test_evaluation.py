"""One alert-inbox batch, without Kafka: the engine's clock is the records' time (faust gives
seconds), a replayed record or window is applied once."""

from __future__ import annotations

import orjson
from faust.types import TP

from agents.monitoring.alerting import AlertEngine, new_state
from agents.monitoring.rules import Grouping, parse
from streams.alerting.evaluation import Evaluation
from streams.runtime.app import settings
from streams.runtime.faust import Record
from streams.runtime.tables import KIND_HEADER, ControlKind

RULE = {"name": "latency_high", "metric": "lat_ms", "stat": "p95", "op": ">", "warning": 200,
        "for_s": 0, "identify_by": ["node"]}
INBOX = f"{settings.app_id}-alert-engine"


def _engine() -> AlertEngine:
    rules, _ = parse({"rules": [RULE]})
    return AlertEngine(rules, Grouping(group_by=("rule",), group_wait_s=0, group_interval_s=30,
                                       repeat_interval_s=600), stale_s=900)


def _window(offset: int, stamp: float, p95: float, end: float, size: float = 60,
            every: float | None = None) -> Record:
    value = orjson.dumps({"metric": "lat_ms", "labels": {"node": "a"}, "start": end - size, "end": end,
                          "stats": {"count": 5, "sum": 5 * p95, "min": 1.0, "max": p95, "p50": p95,
                                    "p95": p95, "p99": p95}, **({"every": every} if every else {})})
    return Record(TP(INBOX, 0), offset, stamp, b"engine", value, [(KIND_HEADER, ControlKind.WINDOW.header)])


def _tick(offset: int, stamp: float) -> Record:
    return Record(TP(INBOX, 0), offset, stamp, b"engine", b"{}", [(KIND_HEADER, ControlKind.TICK.header)])


async def test_the_clock_is_the_records_time_and_replayed_records_are_skipped():
    engine, state = _engine(), new_state()
    batch = Evaluation(state, engine, clock=lambda: 9e9)  # the wall clock is not used
    await batch.apply(_window(0, 100.0, 500.0, end=60.0))
    await batch.apply(_tick(1, 90.0))  # an older timestamp: the clock never goes back
    assert state.clock == 100.0 and state.inbox_offset == 1
    alerts = [c.payload for c in batch.changes if c.kind == "alert"]
    assert [a["state"] for a in alerts] == ["firing"] and alerts[0]["value"] == 500.0

    replay = Evaluation(state, engine)  # the same records again after a crash
    await replay.apply(_window(0, 100.0, 500.0, end=60.0))
    await replay.apply(_tick(1, 90.0))
    assert replay.changes == [] and len(state.alerts) == 1


async def test_a_window_sent_twice_under_new_offsets_is_observed_once():
    engine, state = _engine(), new_state()
    batch = Evaluation(state, engine)
    await batch.apply(_window(0, 100.0, 500.0, end=60.0))
    seen = len(batch.changes)
    await batch.apply(_window(5, 101.0, 10.0, end=60.0))  # its aggregator replayed: same window
    assert len(batch.changes) == seen and next(iter(state.alerts.values()))["value"] == 500.0
    await batch.apply(_window(6, 161.0, 10.0, end=120.0))  # the next window is new
    assert state.windows_seen and max(state.windows_seen.values()) == 120.0


async def test_a_silent_series_of_hopping_windows_goes_stale_after_missing_two_steps_not_two_lengths():
    """A 300 s window closes every 60 s: a series that stopped is stale after two missed steps
    (with the 300 s length it kept firing ten minutes, the issue-25 report)."""
    from streams.alerting.topology import window_every

    assert window_every(settings.metric_hopping_window_s) == settings.metric_hopping_step_s
    assert window_every(settings.metric_window_s) == settings.metric_window_s
    engine, state = _engine(), new_state()
    batch = Evaluation(state, engine)
    await batch.apply(_window(0, 1000.0, 500.0, end=960.0, size=300, every=60))
    assert [a["state"] for a in state.alerts.values()] == ["firing"]
    # Counted from the window's end (960), not from when it arrived (1000): two steps = 1080.
    await batch.apply(_tick(1, 1079.0))
    assert [a["state"] for a in state.alerts.values()] == ["firing"]  # one step and a bit missed
    await batch.apply(_tick(2, 1080.0))
    resolved = [c.payload for c in batch.changes if c.kind == "alert" and c.payload["state"] == "resolved"]
    assert [a["resolved_reason"] for a in resolved] == ["stale"]
