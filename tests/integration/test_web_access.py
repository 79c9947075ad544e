"""Who may use a worker's web port: loopback by default, a bearer token when opened wider."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import orjson
import pytest

from streams.infra.proc import free_port
from tests.conftest import OMNISTREAM, start_worker, stop_worker

TOKEN = "t0k3n-" + uuid.uuid4().hex


def listening(port: int) -> set[str]:
    """The local addresses a socket listens on at `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for name, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) != port or fields[3] != "0A":  # 0A: LISTEN
                continue
            if width == 8:
                found.add(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
            else:
                found.add("::" if set(address) == {"0"} else address)
    return found


def status_of(url: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> int:
    req = urllib.request.Request(url, headers=headers or {}, data=body,
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_default_worker_listens_on_loopback_only_and_serves_no_faust_views(worker):
    assert listening(worker.port) == {"127.0.0.1"}
    for path in ("/table/", "/router/", "/graph/", "/stats/"):
        assert status_of(f"{worker.base}{path}") == 404, path
    assert status_of(f"{worker.base}/api/models") == 200  # loopback: no token asked


def test_opening_the_port_without_a_token_is_refused_in_one_line(services):
    proc = subprocess.run([OMNISTREAM, "worker"], env=services.env(
        OMNISTREAM_WEB_HOST="0.0.0.0", OMNISTREAM_WEB_PORT=str(free_port()),
        OMNISTREAM_APP_ID=f"open-{uuid.uuid4().hex[:6]}"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "OMNISTREAM_WEB_TOKEN" in lines[0], proc.stderr


@pytest.fixture(scope="module")
def open_worker(services, pipeline_db):
    w = start_worker(services, pipeline_db, f"omnistream-open-{uuid.uuid4().hex[:6]}",
                     extra_env={"OMNISTREAM_WEB_HOST": "0.0.0.0", "OMNISTREAM_WEB_TOKEN": TOKEN})
    yield w
    stop_worker(w)


def test_an_opened_port_asks_for_the_token_except_on_health_and_metrics(open_worker):
    base = open_worker.base
    assert listening(open_worker.port) == {"0.0.0.0"}
    assert status_of(f"{base}/health") in (200, 503) and status_of(f"{base}/metrics") == 200
    for path in ("/api/models", "/api/patterns", "/api/dashboard", "/dashboard",
                 "/api/predict?node_type=effect&mixins=MixinRetry"):
        assert status_of(f"{base}{path}") == 401, path
        assert status_of(f"{base}{path}", {"Authorization": "Bearer wrong-" + TOKEN}) == 401, path
    assert status_of(f"{base}/api/models", {"Authorization": f"Bearer {TOKEN}"}) == 200
    # A browser opens the dashboard once with ?token=; its cookie carries it from then on.
    with urllib.request.urlopen(f"{base}/dashboard?token={TOKEN}", timeout=10) as resp:
        cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert status_of(f"{base}/api/models", {"Cookie": cookie.split(";")[0]}) == 200


def test_predict_bounds_its_body_and_its_batch(open_worker):
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    url = f"{open_worker.base}/api/predict"
    one = {"node_type": "effect", "mixins": ["MixinRetry"]}
    assert status_of(url, auth, orjson.dumps([one] * 1000)) == 200
    assert status_of(url, auth, orjson.dumps([one] * 1001)) == 400
    assert status_of(url, auth, b"[" + b" " * (2 << 20) + b"]") == 413  # over the 1 MiB body bound
