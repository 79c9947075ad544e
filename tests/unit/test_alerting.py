"""The alert lifecycle (pure): rules, for/keep_firing, groups, silences, inhibition, ack, escalation."""

from __future__ import annotations

import pytest

from agents.monitoring.alerting import AlertEngine, fingerprint, new_state
from agents.monitoring.rules import Grouping, RuleError, load, parse

RULES = {"rules": [{
    "name": "latency_high", "metric": "lat_ms", "stat": "p95", "op": ">", "warning": 200,
    "critical": 300, "for_s": 60, "identify_by": ["node"], "escalate_after_s": [120, 300]}]}
GROUPING = Grouping(group_by=("rule",), group_wait_s=10, group_interval_s=30, repeat_interval_s=600)


def _engine(**changes) -> AlertEngine:
    doc = {"rules": [{**RULES["rules"][0], **changes}]}
    rules, _ = parse(doc)
    return AlertEngine(rules, GROUPING, stale_s=900)


def _window(p95: float) -> dict:
    return {"count": 10, "sum": 10 * p95, "min": 0.0, "max": p95, "p50": p95 / 2, "p95": p95, "p99": p95}


def _run(engine, state, series, t0=0.0, step=60.0, node="a"):
    """Feed one closed window per step and tick after each; return every change."""
    out = []
    for i, p95 in enumerate(series):
        now = t0 + i * step
        out += engine.observe(state, "lat_ms", _window(p95), {"node": node, "worker": "w1"}, now)
        out += engine.tick(state, now + 15)  # past group_wait
    return out


def _alerts(changes, severity=None):
    return [c.payload for c in changes if c.kind == "alert"
            and (severity is None or c.payload["severity"] == severity)]


def test_breach_longer_than_for_gives_exactly_one_firing_and_one_resolved():
    engine, state = _engine(escalate_after_s=[]), new_state()
    changes = _run(engine, state, [250, 250, 250, 250, 100, 100])
    warning = _alerts(changes, "warning")
    assert [a["state"] for a in warning] == ["firing", "resolved"]
    assert warning[0]["fingerprint"] == fingerprint("latency_high", "warning", {"node": "a"})
    assert warning[0]["started_at"] == 60.0  # breach seen at 0, lasted for_s at 60
    notes = [c.payload for c in changes if c.kind == "notification"]
    assert [n["reason"] for n in notes] == ["new", "changed"]
    assert notes[-1]["alerts"][0]["state"] == "resolved"
    assert state.alerts == {}  # resolved and told: gone


def test_short_breach_stays_pending_and_says_nothing():
    engine, state = _engine(), new_state()
    assert _run(engine, state, [250, 100, 250, 100], step=50) == []


def test_keep_firing_for_bridges_a_gap():
    engine, state = _engine(keep_firing_for_s=120, escalate_after_s=[]), new_state()
    changes = _run(engine, state, [250, 250, 100, 250, 100, 100, 100])
    assert [a["state"] for a in _alerts(changes, "warning")] == ["firing", "resolved"]


def test_critical_inhibits_its_warning_and_groups_wait_interval_and_repeat():
    engine, state = _engine(escalate_after_s=[]), new_state()
    changes = _run(engine, state, [350, 350, 350])
    notes = [c.payload for c in changes if c.kind == "notification"]
    assert notes and all(a["severity"] == "critical" for n in notes for a in n["alerts"])
    # Unchanged firing group: told again only after repeat_interval.
    later = engine.tick(state, 200.0) + engine.tick(state, 130.0 + 600)
    assert [c.payload["reason"] for c in later if c.kind == "notification"] == ["repeat"]


def test_ack_stops_escalation_and_silence_mutes():
    engine, state = _engine(), new_state()
    _run(engine, state, [250, 250])
    fp = fingerprint("latency_high", "warning", {"node": "a"})
    escalated = engine.tick(state, 60 + 121)
    assert state.alerts[fp]["escalation_level"] == 1
    assert any(c.kind == "notification" and c.payload["reason"] == "escalated" for c in escalated)
    acked = engine.command(state, "ack", state.alerts[fp]["id"], 200.0, by="ops")
    assert acked[0].payload["state"] == "acknowledged" and acked[0].payload["acked_by"] == "ops"
    assert not [c for c in engine.tick(state, 60 + 301) if c.payload.get("reason") == "escalated"]
    assert state.alerts[fp]["escalation_level"] == 1

    engine2, state2 = _engine(), new_state()
    _run(engine2, state2, [250, 250], node="b")
    fp2 = fingerprint("latency_high", "warning", {"node": "b"})
    silenced = engine2.command(state2, "silence", fp2, 100.0, by="ops", duration_s=1000)
    assert silenced[0].payload["state"] == "silenced"
    quiet = _run(engine2, state2, [250, 250, 250], t0=120, node="b") + engine2.tick(state2, 1000)
    assert not [c for c in quiet if c.kind == "notification"]  # no repeat, no escalation
    back = engine2.tick(state2, 1101.0)  # silence over
    assert any(c.kind == "alert" and c.payload["state"] == "firing" for c in back)


def test_manual_resolve_and_unknown_targets():
    engine, state = _engine(), new_state()
    _run(engine, state, [250, 250])
    fp = fingerprint("latency_high", "warning", {"node": "a"})
    done = engine.command(state, "resolve", fp, 130.0, by="ops")
    assert done[0].payload["state"] == "resolved"
    with pytest.raises(KeyError):
        engine.command(state, "ack", "nope", 131.0)


def test_series_that_stops_reporting_resolves_as_stale():
    engine, state = _engine(), new_state()
    _run(engine, state, [250, 250])
    changes = engine.tick(state, 60 + 901)
    assert [a["state"] for a in _alerts(changes)] == ["resolved"]


def test_rules_file_errors_are_clear_and_the_default_file_loads():
    with pytest.raises(RuleError, match="op must be one of"):
        parse({"rules": [{"name": "x", "metric": "m", "op": "!=", "warning": 1}]})
    with pytest.raises(RuleError, match="needs a warning"):
        parse({"rules": [{"name": "x", "metric": "m", "op": ">"}]})
    with pytest.raises(RuleError, match="duplicate"):
        parse({"rules": [{"name": "x", "metric": "m", "op": ">", "warning": 1}] * 2})
    rules, grouping = load()
    names = {r.name for r in rules}
    assert {"template_load_time_high", "cache_hit_rate_low", "parallel_speedup_low",
            "generation_time_high", "mixin_accuracy_low", "pattern_precision_low",
            "event_latency_high", "event_success_rate_low", "quality_score_low",
            "consumer_lag_high", "dead_letters_rising", "sink_backlog_high"} == names
    assert all({r.severity for r in rules if r.name == n} == {"warning", "critical"} for n in names)


# ------------------------------------------------------------------ webhook channel (loopback HTTP)

async def _receiver(statuses: list[int], delay_s: float = 0.0):
    from aiohttp import web

    from streams.infra.proc import free_port

    got: list[dict] = []

    async def handle(request):
        got.append(await request.json())
        if delay_s:
            import asyncio

            await asyncio.sleep(delay_s)
        return web.Response(status=statuses[min(len(got), len(statuses)) - 1])

    application = web.Application()
    application.router.add_post("/hook", handle)
    runner = web.AppRunner(application)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/hook", got


async def test_webhook_retries_server_errors_then_delivers():
    from streams.alerting.notify import post_webhook

    runner, url, got = await _receiver([500, 503, 200])
    try:
        assert await post_webhook(url, {"reason": "new"}, retries=3, backoff_s=0.05)
        assert len(got) == 3 and got[-1] == {"reason": "new"}
    finally:
        await runner.cleanup()


async def test_webhook_gives_up_on_timeouts_and_does_not_retry_a_refusal():
    from streams.alerting.notify import post_webhook

    runner, url, got = await _receiver([200], delay_s=2.0)
    try:
        started = __import__("time").monotonic()
        assert not await post_webhook(url, {"reason": "new"}, retries=1, timeout_s=0.3, backoff_s=0.05)
        assert len(got) == 2 and __import__("time").monotonic() - started < 2.0
    finally:
        await runner.cleanup()
    runner, url, got = await _receiver([404])
    try:
        assert not await post_webhook(url, {"reason": "new"}, retries=3, backoff_s=0.05)
        assert len(got) == 1  # a 4xx is the receiver's answer, not a glitch: no retry
    finally:
        await runner.cleanup()


def test_a_series_that_stops_reporting_resolves_as_stale_after_two_of_its_windows():
    engine = _engine(escalate_after_s=[])
    state = new_state()
    labels = {"node": "gone", "worker": "w9"}
    for i in range(4):  # 60 s windows: firing after for_s = 60
        engine.observe(state, "lat_ms", _window(500.0), labels, i * 60.0, window_s=60.0)
        engine.tick(state, i * 60.0 + 15)
    assert {a["state"] for a in state.alerts.values()} == {"firing"}  # warning and critical
    assert {a["window_s"] for a in state.alerts.values()} == {60.0}
    last = 180.0
    assert _alerts(engine.tick(state, last + 119)) == []  # one window missed: not yet
    resolved = _alerts(engine.tick(state, last + 120))
    assert sorted((a["severity"], a["state"], a["resolved_reason"]) for a in resolved) == [
        ("critical", "resolved", "stale"), ("warning", "resolved", "stale")]


def test_staleness_counts_from_the_last_window_end_not_from_its_late_arrival():
    """A window is closed after its end (lateness, idle time): counted from its arrival, a silent
    series went stale up to 3.5 windows after its last sample. From its end: at most 3. A
    backfilled window (arriving long after its end) counts as seen one window before it arrived."""
    engine = _engine(escalate_after_s=[])
    state = new_state()
    labels = {"node": "late", "worker": "w1"}
    for end in (60.0, 120.0, 180.0, 240.0):  # each arrives 35 s after its end (lateness + idle)
        engine.observe(state, "lat_ms", _window(500.0), labels, end + 35, window_s=60.0, window_end=end)
        engine.tick(state, end + 36)
    assert {a["state"] for a in state.alerts.values()} == {"firing"}
    assert _alerts(engine.tick(state, 240.0 + 119)) == []
    assert {a["resolved_reason"] for a in _alerts(engine.tick(state, 240.0 + 120))} == {"stale"}

    backfill = new_state()
    for now, end in ((10_000.0, 60.0), (10_060.0, 120.0)):  # old samples published today
        engine.observe(backfill, "lat_ms", _window(500.0), {"node": "old"}, now, window_s=60.0,
                       window_end=end)
    assert {a["state"] for a in backfill.alerts.values()} == {"firing"}
    assert _alerts(engine.tick(backfill, 10_060.0)) == []  # not stale on arrival
    assert _alerts(engine.tick(backfill, 10_119.0)) == []
    assert {a["resolved_reason"] for a in _alerts(engine.tick(backfill, 10_120.0))} == {"stale"}


def test_recovered_manual_and_stale_are_told_apart_and_a_stale_pending_alert_is_dropped():
    engine = _engine(escalate_after_s=[], for_s=0)
    state = new_state()
    changes = engine.observe(state, "lat_ms", _window(500.0), {"node": "a"}, 0.0, window_s=60.0)
    changes += engine.observe(state, "lat_ms", _window(10.0), {"node": "a"}, 60.0, window_s=60.0)
    assert {a["resolved_reason"] for a in _alerts(changes) if a["state"] == "resolved"} == {"recovered"}
    engine.observe(state, "lat_ms", _window(500.0), {"node": "b"}, 120.0, window_s=60.0)
    (fp,) = [f for f, a in state.alerts.items() if a["state"] == "firing" and a["severity"] == "critical"]
    manual = engine.command(state, "resolve", fp, 130.0, by="ops")
    assert [a["resolved_reason"] for a in _alerts(manual)] == ["manual"]

    slow = _engine(escalate_after_s=[], for_s=600)
    pending_state = new_state()
    slow.observe(pending_state, "lat_ms", _window(500.0), {"node": "c"}, 0.0, window_s=60.0)
    assert {a["state"] for a in pending_state.alerts.values()} == {"pending"}
    assert _alerts(slow.tick(pending_state, 121.0)) == [] and pending_state.alerts == {}
