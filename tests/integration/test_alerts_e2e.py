"""Alerts end to end: metric samples → windows → rules → alerts topic, PostgreSQL, webhook."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest
from aiohttp import web

from agents.monitoring.alerting import fingerprint
from schemas.events import Alert, MetricEvent
from schemas.topics import ALERTS, METRICS_EVENTS
from streams.infra.proc import free_port
from streams.interfaces.client import OmnistreamClient
from tests.conftest import OMNISTREAM, pg_fetch, start_worker, stop_worker
from tests.faults import kill9

pytestmark = pytest.mark.slow


class Hook:
    """A webhook receiver on loopback: what the alert channel POSTs."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.port = free_port()

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            self.received.append(await request.json())
            return web.Response(text="ok")

        application = web.Application()
        application.router.add_post("/hook", handle)
        self.runner = web.AppRunner(application)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def reasons(self, rule: str) -> list[str]:
        return [n["reason"] for n in self.received if any(a["rule"] == rule for a in n["alerts"])]


async def _samples(client: OmnistreamClient, name: str, value: float, seconds: float, svc: str) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await client.publish(METRICS_EVENTS, MetricEvent(name=name, value=value, metric_type="gauge",
                                                         labels={"svc": svc}))
        await asyncio.sleep(0.2)


async def _alert_events(client: OmnistreamClient, fp: str, timeout: float, until=None) -> list[Alert]:
    out: list[Alert] = []
    async for a in client.subscribe(ALERTS, Alert, timeout=timeout):
        if a.fingerprint == fp:
            out.append(a)
            if until and until(out):
                break
    return out


def _worker_env(rules: Path, **extra: str) -> dict[str, str]:
    """A worker that starts at the end, closes 2 s windows quickly and ticks its alerts every second."""
    return {"OMNISTREAM_AUTO_OFFSET_RESET": "latest", "OMNISTREAM_METRIC_WINDOW_S": "2",
            "OMNISTREAM_METRIC_HOPPING_WINDOW_S": "0", "OMNISTREAM_METRIC_LATENESS_S": "0.5",
            "OMNISTREAM_ALERT_TICK_S": "1", "OMNISTREAM_ALERT_RULES": str(rules), **extra}


async def test_alert_lifecycle_ack_and_silence(services, migrated_db, tmp_path):
    tag = uuid.uuid4().hex[:6]
    lat, err, queue = f"t{tag}_latency", f"t{tag}_errors", f"t{tag}_queue"
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"""
grouping: {{group_by: [rule], group_wait_s: 0, group_interval_s: 1, repeat_interval_s: 3600}}
rules:
  - {{name: latency_{tag}, metric: {lat}, stat: max, op: ">", critical: 100, for_s: 4, identify_by: [svc]}}
  - {{name: errors_{tag}, metric: {err}, stat: max, op: ">", critical: 1, escalate_after_s: [5, 10],
      identify_by: [svc]}}
  - {{name: queue_{tag}, metric: {queue}, stat: max, op: ">", critical: 1, escalate_after_s: [6],
      identify_by: [svc]}}
""")
    hook = Hook()
    await hook.start()
    worker = start_worker(services, migrated_db, f"omnistream-alerts-{tag}", "a", _worker_env(
        rules, OMNISTREAM_ALERT_WEBHOOK_URL=f"http://127.0.0.1:{hook.port}/hook"))
    env = services.env(DATABASE_URL=migrated_db, OMNISTREAM_APP_ID=f"omnistream-alerts-{tag}")
    try:
        await asyncio.sleep(3)
        async with OmnistreamClient(services.bootstrap) as client:
            # 1. Breach for ~10 s (longer than for_s = 4), then recover.
            await _samples(client, lat, 150.0, 10, "api")
            await _samples(client, lat, 10.0, 8, "api")
            fp = fingerprint(f"latency_{tag}", "critical", {"svc": "api"})
            events = await _alert_events(client, fp, 20, until=lambda xs: xs[-1].state == "resolved")
            assert [e.state for e in events] == ["firing", "resolved"]
            assert events[0].value > 100 and events[1].ended_at > events[0].started_at
            assert hook.reasons(f"latency_{tag}") == ["new", "changed"]

            # 2. An ack stops the escalation chain.
            feeder = asyncio.ensure_future(_samples(client, err, 5.0, 25, "api"))
            efp = fingerprint(f"errors_{tag}", "critical", {"svc": "api"})
            firing = await _alert_events(client, efp, 20, until=lambda xs: True)
            alert_id = firing[0].annotations["alert_id"]
            # The table shows the id's first characters: a unique prefix is enough.
            ack = subprocess.run([OMNISTREAM, "alerts", "ack", alert_id[:8], "--by", "oncall"], env=env,
                                 capture_output=True, text=True, timeout=60)
            assert ack.returncode == 0 and ack.stdout.split()[-1] == alert_id, ack.stderr
            # 3. A silence mutes: no escalation notification although one is due at 6 s.
            qfeeder = asyncio.ensure_future(_samples(client, queue, 5.0, 15, "api"))
            qfp = fingerprint(f"queue_{tag}", "critical", {"svc": "api"})
            qfiring = await _alert_events(client, qfp, 20, until=lambda xs: True)
            silence = subprocess.run([OMNISTREAM, "alerts", "silence", qfp, "--duration", "600"], env=env,
                                     capture_output=True, text=True, timeout=60)
            assert silence.returncode == 0, silence.stderr
            await asyncio.gather(feeder, qfeeder)
            errors = await _alert_events(client, efp, 5)
            queued = await _alert_events(client, qfp, 5)
        assert "acknowledged" in [e.state for e in errors]
        acked_at = next(i for i, e in enumerate(errors) if e.state == "acknowledged")
        assert all(e.escalation_level == errors[acked_at].escalation_level for e in errors[acked_at:])
        assert errors[acked_at].annotations.get("acked_by") == "oncall"
        assert errors[acked_at].escalation_level < 2  # the 10 s level never came
        assert qfiring[0].state == "firing" and "silenced" in [e.state for e in queued]
        assert "escalated" not in hook.reasons(f"queue_{tag}")

        rows = await pg_fetch(migrated_db, "SELECT rule_name, state, acknowledged_by, resolved_at "
                                           "FROM alerts WHERE fingerprint = $1", fp)
        assert len(rows) == 1 and rows[0]["state"] == "resolved" and rows[0]["resolved_at"] is not None

        listed = subprocess.run([OMNISTREAM, "alerts", "--json"], env=env, capture_output=True, text=True,
                                timeout=60)
        assert listed.returncode == 0
        mine = [orjson.loads(line) for line in listed.stdout.splitlines() if fp in line]
        assert [m["state"] for m in mine] == ["firing", "resolved"]
        shown = subprocess.run([OMNISTREAM, "alerts"], env=env, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and shown.stdout.split()[:3] == ["ID", "STATE", "SEVERITY"]
        rows = shown.stdout.splitlines()[1:]
        latency = next(r for r in rows if f" latency_{tag} " in r)
        assert "resolved (recovered)" in latency and " svc=api " in latency
        assert next(r for r in rows if f" errors_{tag} " in r).endswith("oncall")
        assert "\033[" not in shown.stdout  # no colour when not on a terminal
        bad = subprocess.run([OMNISTREAM, "alerts", "ack"], env=env, capture_output=True, text=True)
        assert bad.returncode == 1 and "needs the alert id" in bad.stderr
    finally:
        stop_worker(worker)
        await hook.runner.cleanup()


async def test_alert_state_and_escalation_timer_survive_a_worker_restart(services, migrated_db, tmp_path):
    """The alert-state table is changelogged: a new worker goes on with the same alert (no second
    'firing'), and an escalation that fell due while no worker ran is still sent, once."""
    tag = uuid.uuid4().hex[:6]
    metric = f"t{tag}_depth"
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"""
grouping: {{group_by: [rule], group_wait_s: 0, group_interval_s: 1, repeat_interval_s: 3600}}
rules:
  - {{name: depth_{tag}, metric: {metric}, stat: max, op: ">", critical: 1, escalate_after_s: [20],
      identify_by: [svc]}}
""")
    app_id = f"omnistream-restart-{tag}"
    # Two-second windows would make the series stale during the restart (the default two
    # windows = 4 s): this test is about the state surviving it, so staleness waits a minute.
    worker_env = _worker_env(rules, OMNISTREAM_ALERT_STALE_WINDOWS="30")
    fp = fingerprint(f"depth_{tag}", "critical", {"svc": "db"})
    worker = start_worker(services, migrated_db, app_id, "first", worker_env)
    try:
        await asyncio.sleep(3)
        async with OmnistreamClient(services.bootstrap) as client:
            feeder = asyncio.ensure_future(_samples(client, metric, 5.0, 6, "db"))
            firing = await _alert_events(client, fp, 30, until=lambda xs: True)
            await feeder
            assert firing[0].state == "firing" and firing[0].escalation_level == 0
            alert_id = firing[0].annotations["alert_id"]

            stop_worker(worker)   # a restart: the new worker must pick the state up from the changelog
            worker = start_worker(services, migrated_db, app_id, "second", worker_env)
            await _samples(client, metric, 5.0, 4, "db")        # still breaching
            escalated = await _alert_events(client, fp, 40, until=lambda xs: xs[-1].escalation_level >= 1)
            await _samples(client, metric, 0.0, 6, "db")        # recovered
            events = await _alert_events(client, fp, 30, until=lambda xs: xs[-1].state == "resolved")
    finally:
        stop_worker(worker)

    assert escalated[-1].escalation_level == 1
    # At-least-once may repeat an event; a repeat carries the same event id.
    distinct = {e.id: e for e in events}.values()
    assert {e.annotations["alert_id"] for e in distinct} == {alert_id}
    assert sorted((e.state, e.escalation_level) for e in distinct) == [
        ("firing", 0), ("firing", 1), ("resolved", 1)]
    rows = await pg_fetch(migrated_db, "SELECT id::text, state, escalation_level FROM alerts "
                                       "WHERE fingerprint = $1", fp)
    assert [tuple(r) for r in rows] == [(alert_id, "resolved", 1)]


async def test_an_alertmanager_format_notification_reaches_a_loopback_receiver(services, migrated_db,
                                                                                 tmp_path):
    tag = uuid.uuid4().hex[:6]
    metric, rule = f"t{tag}_depth", f"depth_{tag}"
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"""
grouping: {{group_by: [rule], group_wait_s: 0, group_interval_s: 1, repeat_interval_s: 3600}}
rules:
  - {{name: {rule}, metric: {metric}, stat: max, op: ">", critical: 10, for_s: 0, identify_by: [svc],
      annotations: {{runbook: "https://runbooks.example/depth"}}}}
""")
    hook = Hook()
    await hook.start()
    worker = start_worker(services, migrated_db, f"omnistream-am-{tag}", "a", _worker_env(
        rules, OMNISTREAM_ALERT_WEBHOOK_URL=f"http://127.0.0.1:{hook.port}/hook",
        OMNISTREAM_ALERT_WEBHOOK_FORMAT="alertmanager", OMNISTREAM_ALERT_RECEIVER="team-pager",
        OMNISTREAM_EXTERNAL_URL="http://dash.example/dashboard"))
    try:
        await asyncio.sleep(3)
        async with OmnistreamClient(services.bootstrap) as client:
            await _samples(client, metric, 50.0, 8, "api")
        for _ in range(60):
            if hook.received:
                break
            await asyncio.sleep(0.5)
        assert hook.received, "no notification reached the receiver in 30 s"
        body = hook.received[0]
        assert {"version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels",
                "commonLabels", "commonAnnotations", "externalURL", "alerts"} <= set(body)
        assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "team-pager"
        assert body["groupLabels"] == {"alertname": rule}
        assert body["externalURL"] == "http://dash.example/dashboard"
        assert body["commonLabels"]["alertname"] == rule and body["commonLabels"]["svc"] == "api"
        alert = body["alerts"][0]
        assert {"status", "labels", "annotations", "startsAt", "endsAt", "fingerprint"} <= set(alert)
        assert alert["annotations"]["runbook"] == "https://runbooks.example/depth"
        assert alert["endsAt"] == "0001-01-01T00:00:00Z" and alert["startsAt"].endswith("Z")
        assert len(alert["fingerprint"]) == 16
    finally:
        stop_worker(worker)
        await hook.runner.cleanup()


async def test_the_alerts_of_a_worker_killed_resolve_as_stale(services, migrated_db, tmp_path):
    """Each worker reports its own gauges (label `worker`); a rule fires for each of them. One
    worker is SIGKILLed (maybe holding the alert engine's partition: the other takes it over
    from the changelog): its series goes silent and its alert resolves as stale after five of
    its 2 s windows (five, not the default two, so a busy CI machine's pauses do not count),
    while the other worker's alert is still firing."""
    tag = uuid.uuid4().hex[:6]
    app_id, rule = f"omnistream-stale-{tag}", f"alive_{tag}"
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"""
grouping: {{group_by: [rule], group_wait_s: 0, group_interval_s: 1, repeat_interval_s: 3600}}
rules:
  - {{name: {rule}, metric: omnistream_consumer_lag, stat: max, op: ">=", critical: 0, for_s: 0,
      identify_by: [worker]}}
""")
    env = _worker_env(rules, OMNISTREAM_METRIC_COLLECT_S="1", OMNISTREAM_METRIC_EMIT_S="0.5",
                      OMNISTREAM_ALERT_STALE_WINDOWS="5", OMNISTREAM_SESSION_TIMEOUT_S="10")
    stays = start_worker(services, migrated_db, app_id, "stays", env)
    leaves = start_worker(services, migrated_db, app_id, "leaves", env)
    fp_stays = fingerprint(rule, "critical", {"worker": f"{app_id}:{stays.proc.pid}"})
    fp_leaves = fingerprint(rule, "critical", {"worker": f"{app_id}:{leaves.proc.pid}"})
    try:
        async with OmnistreamClient(services.bootstrap) as client:
            last: dict[str, Alert] = {}
            async for a in client.subscribe(ALERTS, Alert, timeout=90):
                if a.fingerprint in (fp_stays, fp_leaves):
                    last[a.fingerprint] = a
                if len(last) == 2 and all(x.state == "firing" for x in last.values()):
                    break
            assert len(last) == 2 and all(x.state == "firing" for x in last.values()), last
            leaving_id = last[fp_leaves].annotations["alert_id"]
            kill9(leaves)
            left_at = time.monotonic()
            resolved: Alert | None = None
            async for a in client.subscribe(ALERTS, Alert, timeout=90):
                if a.fingerprint == fp_stays:
                    last[fp_stays] = a
                if a.fingerprint == fp_leaves and a.state == "resolved" \
                        and a.annotations.get("alert_id") == leaving_id:
                    resolved = a
                    break
            took = time.monotonic() - left_at
        assert resolved is not None and resolved.resolved_reason == "stale", resolved
        print(f"[stale] a SIGKILLed worker's alert resolved stale {took:.1f} s after the kill")
        assert took < 80  # five 2 s windows, a takeover (10 s session) and a tick; not the 600 s fallback
        assert last[fp_stays].state == "firing"  # the worker that stays still fires
        query = "SELECT state, resolved_reason FROM alerts WHERE id = $1::uuid"
        rows = await pg_fetch(migrated_db, query, leaving_id)
        for _ in range(20):
            if rows and rows[0]["state"] == "resolved":
                break
            await asyncio.sleep(0.5)
            rows = await pg_fetch(migrated_db, query, leaving_id)
        assert [(r["state"], r["resolved_reason"]) for r in rows] == [("resolved", "stale")]
    finally:
        stop_worker(stays)
        stop_worker(leaves)


async def test_a_silent_outside_series_resolves_stale_within_three_of_its_windows(services, migrated_db,
                                                                                   tmp_path):
    """A series published from outside (raw JSON by a bare producer, a `worker` label of its own,
    no worker of ours behind it) breaches a rule, then stops. Its alert resolves as `stale` within
    three of its 5 s windows after its last sample (the issue-25 report: 13 minutes), on the
    engine's own clock, whatever else flows."""
    from aiokafka import AIOKafkaProducer

    tag = uuid.uuid4().hex[:6]
    metric, rule, window = f"outside_{tag}", f"outside_low_{tag}", 5.0
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"""
grouping: {{group_by: [rule], group_wait_s: 0, group_interval_s: 1, repeat_interval_s: 3600}}
rules:
  - {{name: {rule}, metric: {metric}, stat: avg, op: "<", critical: 0.6, for_s: 0, identify_by: [worker]}}
""")
    env = _worker_env(rules, OMNISTREAM_METRIC_WINDOW_S=str(window), OMNISTREAM_METRIC_IDLE_CLOSE_S="2")
    worker = start_worker(services, migrated_db, f"omnistream-outside-{tag}", "w", env)
    fp = fingerprint(rule, "critical", {"worker": f"outside-{tag}"})
    producer = AIOKafkaProducer(bootstrap_servers=services.bootstrap)
    await producer.start()
    firing = asyncio.Event()
    last_sample = 0.0

    async def publish() -> None:
        nonlocal last_sample
        while not firing.is_set():
            sample = {"name": metric, "value": 0.3, "metric_type": "gauge",
                      "labels": {"worker": f"outside-{tag}"},
                      "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}
            await producer.send_and_wait(METRICS_EVENTS.name, orjson.dumps(sample), key=metric.encode())
            last_sample = time.time()
            await asyncio.sleep(0.25)

    try:
        publishing = asyncio.ensure_future(publish())
        async with OmnistreamClient(services.bootstrap) as client:
            async for a in client.subscribe(ALERTS, Alert, timeout=90):
                if a.fingerprint == fp and a.state == "firing":
                    firing.set()
                    break
            assert firing.is_set(), "the outside series never fired"
            await publishing
            resolved: Alert | None = None
            async for a in client.subscribe(ALERTS, Alert, timeout=60):
                if a.fingerprint == fp and a.state == "resolved":
                    resolved = a
                    break
            took = time.time() - last_sample
        assert resolved is not None and resolved.resolved_reason == "stale", resolved
        print(f"[stale] outside series resolved stale {took:.1f} s after its last sample "
              f"({took / window:.2f} windows of {window:g} s)")
        # three windows, plus the alert timer's tick (1 s) and a second for the records' trip
        assert took <= 3 * window + 2, f"{took:.1f} s"
    finally:
        firing.set()
        await producer.stop()
        stop_worker(worker)


async def test_no_secret_is_printed_in_logs_or_cli_output(services, migrated_db, tmp_path):
    """Known secret values everywhere a secret goes (webhook URL with a token in its path, a
    database password, the model key, the web token); an alert makes the webhook fail again and
    again; every log line of the worker and everything the CLI prints is scanned for them."""
    tag = uuid.uuid4().hex[:6]
    # The session's PostgreSQL asks for a password: the one in the database URL is real.
    secrets = {"hook": f"hooktoken{tag}", "db": urlsplit(migrated_db).password or "",
               "model": f"modelkey{tag}x" * 2, "web": f"webtoken{tag}" * 2}
    assert len(secrets["db"]) >= 16
    metric, rule = f"t{tag}_secret", f"secret_{tag}"
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"""
grouping: {{group_by: [rule], group_wait_s: 0, group_interval_s: 1, repeat_interval_s: 3600}}
rules:
  - {{name: {rule}, metric: {metric}, stat: max, op: ">", critical: 10, for_s: 0, identify_by: [svc]}}
""")
    db = migrated_db
    secret_env = {"OMNISTREAM_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/hook/{secrets['hook']}",
                  "OMNISTREAM_MODEL_KEY": secrets["model"], "OMNISTREAM_WEB_TOKEN": secrets["web"]}
    worker = start_worker(services, db, f"omnistream-secret-{tag}", "s", _worker_env(rules, **secret_env))
    try:
        async with OmnistreamClient(services.bootstrap) as client:
            await _samples(client, metric, 50.0, 6, "api")
        for _ in range(60):
            if any("alert webhook failed" in line for line in worker.log_lines()):
                break
            await asyncio.sleep(0.5)
        env = services.env(DATABASE_URL=db, **secret_env)
        outputs = [subprocess.run([OMNISTREAM, *args], env=env, capture_output=True, text=True, timeout=120)
                   for args in (["infra", "status"], ["infra", "status", "--json"])]
        # A database that does not answer: the error line names its URL (a home of its own, so
        # the session's stack record is not touched).
        unreachable = env | {"OMNISTREAM_HOME": str(tmp_path),
                             "DATABASE_URL": f"postgresql://postgres:{secrets['db']}@192.0.2.1:5432/x"}
        outputs.append(subprocess.run([OMNISTREAM, "infra", "up"], env=unreachable, capture_output=True,
                                      text=True, timeout=120))
    finally:
        stop_worker(worker)
    lines = worker.log_lines()
    assert any("alert webhook failed" in line for line in lines), "the webhook never failed: nothing scanned"
    assert outputs[2].returncode == 2 and "postgres@192.0.2.1" in outputs[2].stderr, outputs[2].stderr
    printed = lines + [o.stdout + o.stderr for o in outputs]
    for name, value in secrets.items():
        leaks = [text[:200] for text in printed if value in text]
        assert not leaks, f"the {name} secret was printed: {leaks[:3]}"
