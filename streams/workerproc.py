"""Run `omnistream worker` as a child process and wait for its /health (demo, bench)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def spawn_worker(port: int, log: Path, **env: str) -> subprocess.Popen:
    full_env = {**os.environ, "OMNISTREAM_WEB_PORT": str(port), "OMNISTREAM_LOG_FILE": str(log), **env}
    exe = Path(sys.executable).parent / "omnistream"
    return subprocess.Popen([str(exe), "worker"], env=full_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"omnistream: the worker exited ({proc.returncode}); see its log")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("omnistream: the worker did not become healthy in time")


def stop_worker(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
