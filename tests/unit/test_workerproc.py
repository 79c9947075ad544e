"""Waiting for a worker's /health: why it is not healthy yet, and patience while it catches up."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
import time

import pytest

from streams.infra.workerproc import unhealthy_reasons, wait_healthy


def test_unhealthy_reasons_name_what_is_wrong():
    assert unhealthy_reasons(None) == "its web server does not answer yet"
    report = {"kafka": {"ok": True}, "postgres": {"ok": False}, "ready": False,
              "agents": {"codegen": "running", "metrics-aggregator": "crashed"}, "consumer_lag": 25_000}
    assert unhealthy_reasons(report) == ("PostgreSQL unreachable; partitions being assigned or tables "
                                         "recovering; agents not running: metrics-aggregator; "
                                         "25,000 events behind")
    assert unhealthy_reasons({"kafka": {"ok": True}, "ready": True, "consumer_lag": 0}) == "starting"


class _Health(http.server.BaseHTTPRequestHandler):
    """503 with a lag that falls by `step` per request, then 200."""
    lag, step = 0, 0

    def do_GET(self):  # noqa: N802 (http.server's name)
        cls = type(self)
        cls.lag = max(0, cls.lag - cls.step)
        status = 200 if cls.lag == 0 else 503
        body = json.dumps({"kafka": {"ok": True}, "postgres": {"ok": True}, "ready": True,
                           "agents": {"a": "running"}, "consumer_lag": cls.lag}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proc = subprocess.Popen(["sleep", "120"])
    yield server.server_address[1], proc
    proc.kill()
    server.shutdown()


def test_a_worker_catching_up_gets_more_time_than_the_timeout(health_server):
    port, proc = health_server
    _Health.lag, _Health.step = 4_000, 1_000   # ~4 polls of 0.5 s: longer than the 1 s timeout
    said: list[str] = []
    started = time.monotonic()
    wait_healthy(port, proc, timeout=1, progress=said.append)
    assert time.monotonic() - started > 1


def test_a_stuck_worker_times_out_with_the_reason(health_server):
    port, proc = health_server
    _Health.lag, _Health.step = 50_000, 0      # never falls
    with pytest.raises(SystemExit, match="50,000 events behind"):
        wait_healthy(port, proc, timeout=2)
