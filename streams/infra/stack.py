"""`omnistream infra up | down | status | env`: find or start Kafka and PostgreSQL, idempotently.

Discovery order for each service: the environment variable (used when it answers; when it
names a free loopback port, the local service is started there) → a service this stack started
earlier → one already answering on the default local port → start one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from streams.config import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_DATABASE_URL,
    cache_dir,
    omnistream_home,
    state_file,
)
from streams.config import read_state as _read_state
from streams.infra import kafka, postgres
from streams.infra.errors import InfraError
from streams.infra.proc import free_port, pid_alive, port_is_free, stop_pid

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
Progress = Callable[[str], None]


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    home = omnistream_home()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _write_state(state: dict) -> None:
    path = state_file()
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(state, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def _kafka_host_port(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    first = first.split("://", 1)[-1]
    host, _, port = first.rpartition(":")
    return host or "127.0.0.1", int(port or 9092)


def _up_kafka(state: dict, progress: Progress) -> dict:
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    folder = omnistream_home() / "kafka"
    previous = state.get("kafka", {})
    if env:
        if asyncio.run(kafka.probe(env)):
            return {"source": "env", "bootstrap": env, "started": False}
        host, port = _kafka_host_port(env)
        if host not in LOOPBACK or not port_is_free(port):
            raise InfraError(f"KAFKA_BOOTSTRAP_SERVERS={env} does not answer a metadata request")
        progress(f"KAFKA_BOOTSTRAP_SERVERS={env} is not running: starting a local broker there")
    elif previous.get("started") and pid_alive(previous.get("pid")):
        if asyncio.run(kafka.probe(previous["bootstrap"])):
            progress(f"kafka: already running (pid {previous['pid']}, {previous['bootstrap']})")
            return previous
        kafka.wait_ready(previous["bootstrap"], previous["pid"], folder)
        return previous
    elif asyncio.run(kafka.probe(DEFAULT_BOOTSTRAP)):
        progress(f"kafka: using the broker already answering at {DEFAULT_BOOTSTRAP}")
        return {"source": "local", "bootstrap": DEFAULT_BOOTSTRAP, "started": False}
    else:
        port = 9092 if port_is_free(9092) else free_port()
    controller = free_port()
    started = time.monotonic()
    pid = kafka.start(folder, cache_dir(), port, controller, progress)
    bootstrap = f"127.0.0.1:{port}"
    kafka.wait_ready(bootstrap, pid, folder)
    progress(f"kafka: started {kafka.KAFKA_VERSION} (pid {pid}, {bootstrap}) "
             f"in {time.monotonic() - started:.1f}s")
    return {"source": "started", "bootstrap": bootstrap, "started": True, "pid": pid,
            "port": port, "controller_port": controller, "version": kafka.KAFKA_VERSION,
            "folder": str(folder)}


def _up_postgres(state: dict, progress: Progress) -> dict:
    env = os.environ.get("DATABASE_URL")
    folder = omnistream_home() / "postgres"
    previous = state.get("postgres", {})
    if env:
        version = asyncio.run(postgres.probe(env))
        if version:
            return {"source": "env", "url": env, "started": False, "version": version}
        parts = urlsplit(env)
        base_ok = asyncio.run(postgres.probe(env.rsplit("/", 1)[0] + "/postgres"))
        if base_ok:  # the server answers, only the database is missing
            asyncio.run(postgres.ensure_database(env))
            return {"source": "env", "url": env, "started": False, "version": base_ok}
        if parts.hostname not in LOOPBACK or not port_is_free(parts.port or 5432):
            raise InfraError(f"DATABASE_URL={env} does not answer SELECT 1")
        progress(f"DATABASE_URL={env} is not running: starting a local PostgreSQL there")
        port, url = parts.port or 5432, env
    elif previous.get("started") and pid_alive(previous.get("pid")):
        progress(f"postgres: already running (pid {previous['pid']}, port {previous['port']})")
        postgres.wait_ready(previous["url"])
        return previous
    elif asyncio.run(postgres.probe(DEFAULT_DATABASE_URL)):
        progress("postgres: using the server already answering at 127.0.0.1:5432")
        return {"source": "local", "url": DEFAULT_DATABASE_URL, "started": False}
    else:
        port = 5432 if port_is_free(5432) else free_port()
        url = postgres.url_for(port)
    started = time.monotonic()
    pid = postgres.start(folder, port, progress)
    version = postgres.wait_ready(url.rsplit("/", 1)[0] + "/postgres")
    asyncio.run(postgres.ensure_database(url))
    progress(f"postgres: started {version} (pid {pid}, port {port}) "
             f"in {time.monotonic() - started:.1f}s")
    return {"source": "started", "url": url, "started": True, "pid": pid, "port": port,
            "version": version, "folder": str(folder)}


def up(progress: Progress = print) -> dict:
    with _locked():
        state = _read_state()
        state["kafka"] = _up_kafka(state, progress)
        _write_state(state)
        state["postgres"] = _up_postgres(state, progress)
        _write_state(state)
        return state


def down(progress: Progress = print) -> dict:
    """Stop what this stack started; leave services it only found alone."""
    with _locked():
        state = _read_state()
        pg = state.get("postgres", {})
        if pg.get("started"):
            postgres.stop(Path(pg["folder"]))
            stop_pid(pg.get("pid", 0))
            progress(f"postgres: stopped (pid {pg.get('pid')})")
        kf = state.get("kafka", {})
        if kf.get("started"):
            stop_pid(kf.get("pid", 0))
            progress(f"kafka: stopped (pid {kf.get('pid')})")
        for name, svc in (("kafka", kf), ("postgres", pg)):
            if svc and not svc.get("started"):
                progress(f"{name}: left running (not started by omnistream)")
        _write_state({})
        return state


def status() -> dict:
    """What runs: per service its source, pid, alive, address, version and whether it answers."""
    from streams.config import Settings

    settings = Settings.from_env()
    state = _read_state()
    kf, pg = state.get("kafka", {}), state.get("postgres", {})
    pg_version = asyncio.run(postgres.probe(settings.database_url))
    return {
        "kafka": {
            "bootstrap": settings.kafka_bootstrap,
            "source": kf.get("source", "env" if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else "default"),
            "pid": kf.get("pid"),
            "pid_alive": pid_alive(kf.get("pid")) if kf.get("pid") else None,
            "version": kf.get("version"),
            "answering": asyncio.run(kafka.probe(settings.kafka_bootstrap)),
        },
        "postgres": {
            "url": settings.database_url,
            "source": pg.get("source", "env" if os.environ.get("DATABASE_URL") else "default"),
            "pid": pg.get("pid"),
            "pid_alive": pid_alive(pg.get("pid")) if pg.get("pid") else None,
            "version": pg_version or pg.get("version"),
            "answering": pg_version is not None,
        },
    }


def env_lines() -> list[str]:
    from streams.config import Settings

    settings = Settings.from_env()
    return [
        f"export KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap}",
        f"export DATABASE_URL={settings.database_url}",
    ]
