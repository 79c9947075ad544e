"""Run `omnistream worker` as a child process and wait for its /health (demo, bench)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path


def spawn_worker(port: int, log: Path, **env: str) -> subprocess.Popen:
    full_env = {**os.environ, "OMNISTREAM_WEB_PORT": str(port), "OMNISTREAM_LOG_FILE": str(log), **env}
    exe = Path(sys.executable).parent / "omnistream"
    return subprocess.Popen([str(exe), "worker"], env=full_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 120,
                 progress: Callable[[str], object] | None = None) -> None:
    """Wait for /health to answer 200. A worker that is up but still working through a backlog
    (lag falling) keeps the wait going past `timeout`; `progress` hears why it is not yet
    healthy every few seconds."""
    deadline = time.monotonic() + timeout
    least_lag: int | None = None
    report: dict | None = None
    said_at = time.monotonic()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"omnistream: the worker exited ({proc.returncode}); see its log")
        report = None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as exc:  # 503: the body says what is not healthy yet
            with contextlib.suppress(ValueError):
                report = json.loads(exc.read())
        except OSError:
            pass
        lag = report.get("consumer_lag") if report else None
        if report and report.get("ready") and isinstance(lag, int):
            if least_lag is not None and lag < least_lag:  # catching up: give it more time
                deadline = max(deadline, time.monotonic() + 30)
            least_lag = lag if least_lag is None else min(least_lag, lag)
        if progress is not None and time.monotonic() - said_at >= 5:
            progress(f"waiting for the worker: {unhealthy_reasons(report)}")
            said_at = time.monotonic()
        time.sleep(0.5)
    raise SystemExit("omnistream: the worker did not become healthy in time"
                     + (f" ({unhealthy_reasons(report)})" if report else ""))


def unhealthy_reasons(report: dict | None) -> str:
    """One line from a /health body: what keeps it from answering 200."""
    if not report:
        return "its web server does not answer yet"
    reasons = []
    if not report.get("kafka", {}).get("ok", True):
        reasons.append("Kafka unreachable")
    if not report.get("postgres", {}).get("ok", True):
        reasons.append("PostgreSQL unreachable")
    if not report.get("ready", True):
        reasons.append("partitions being assigned or tables recovering")
    stopped = [name for name, state in report.get("agents", {}).items() if state != "running"]
    if stopped:
        reasons.append("agents not running: " + ", ".join(sorted(stopped)))
    lag = report.get("consumer_lag")
    if isinstance(lag, int) and lag > 0:
        reasons.append(f"{lag:,} events behind")
    return "; ".join(reasons) or "starting"


def stop_worker(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
