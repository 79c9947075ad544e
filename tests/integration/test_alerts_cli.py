"""`omnistream alerts` as people and machines read it, against the session's broker: a table
by default, JSON lines with --json, colour only on a terminal, one line per change with
--follow."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import subprocess
import time
import uuid
from datetime import UTC, datetime

import orjson

from schemas.events import Alert
from schemas.topics import ALERTS
from streams.interfaces.client import OmnistreamClient
from tests.conftest import OMNISTREAM


def _alert(rule: str, state: str, aid: str, acked_by: str | None = None, **extra) -> Alert:
    return Alert(fingerprint=uuid.uuid5(uuid.NAMESPACE_DNS, aid).hex * 2, rule=rule, severity="critical",
                 state=state, value=97.0, threshold=90, labels={"host": "db1"},
                 annotations={"alert_id": aid, **({"acked_by": acked_by} if acked_by else {})},
                 started_at=datetime.now(UTC), **extra)


def _publish(bootstrap: str, *alerts: Alert) -> None:
    async def go() -> None:
        async with OmnistreamClient(bootstrap) as client:
            for a in alerts:
                await client.publish(ALERTS, a, key=a.fingerprint)
    asyncio.run(go())


def _read_until(fd: int, want: str, timeout: float = 60) -> str:
    """Bytes from fd (a pipe or a terminal) until `want` shows up; returns all read."""
    out, deadline = b"", time.monotonic() + timeout
    while want.encode() not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the terminal closed
                break
            if not chunk:
                break
            out += chunk
    return out.decode(errors="replace")


def test_table_json_and_open(services):
    tag = uuid.uuid4().hex[:8]
    gone, hot = str(uuid.uuid4()), str(uuid.uuid4())
    _publish(services.bootstrap, _alert(f"gone_{tag}", "firing", gone),
             _alert(f"gone_{tag}", "resolved", gone, resolved_reason="recovered", ended_at=datetime.now(UTC)),
             _alert(f"hot_{tag}", "firing", hot))
    env = services.env()
    table = subprocess.run([OMNISTREAM, "alerts"], env=env, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("ID ") and "VALUE/THRESHOLD" in lines[0]
    mine = [line for line in lines if tag in line]
    assert len(mine) == 2  # one row per alert, not one per event
    assert any(r.startswith(hot[:8]) and " firing " in r and "97/90" in r and "host=db1" in r for r in mine)
    assert any(r.startswith(gone[:8]) and "resolved (recovered)" in r for r in mine)
    assert "\033[" not in table.stdout

    opened = subprocess.run([OMNISTREAM, "alerts", "--open"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert [line[:8] for line in opened.stdout.splitlines() if tag in line] == [hot[:8]]

    as_json = subprocess.run([OMNISTREAM, "alerts", "--json"], env=env, capture_output=True, text=True,
                             timeout=60)
    events = [orjson.loads(line) for line in as_json.stdout.splitlines() if tag in line]
    # Every event, each alert's in order (one alert is one key: one partition).
    assert [e["state"] for e in events if e["rule"] == f"gone_{tag}"] == ["firing", "resolved"]
    assert [e["state"] for e in events if e["rule"] == f"hot_{tag}"] == ["firing"]


def test_follow_prints_one_line_per_change_and_colours_a_terminal(services):
    tag = uuid.uuid4().hex[:8]
    aid = str(uuid.uuid4())
    _publish(services.bootstrap, _alert(f"follow_{tag}", "firing", aid))
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([OMNISTREAM, "alerts", "--follow"], env={**services.env(), "TERM": "xterm"},
                            stdout=secondary, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(secondary)
    try:
        first = _read_until(primary, f"follow_{tag}")
        assert f"follow_{tag}" in first, first[-2000:]
        assert "\033[31mfiring" in first  # a terminal: coloured
        _publish(services.bootstrap, _alert(f"follow_{tag}", "acknowledged", aid, acked_by="oncall"))
        later = _read_until(primary, "acked_by=oncall")
        changes = [line for line in later.splitlines() if f"follow_{tag}" in line]
        assert len(changes) == 1 and "acknowledged" in changes[0], later[-2000:]
        assert aid[:8] in changes[0] and "esc=0" in changes[0]
    finally:
        proc.kill()
        proc.wait()
        os.close(primary)
