"""`omnistream infra up | down | status | env`: find or start Kafka and PostgreSQL, idempotently.

Discovery order for each service: the service this stack started earlier, while the
environment variable names it or nothing (started again on its port when it has gone) → the
environment variable (used when it answers; when it names a free loopback port, the local
service is started there) → one already answering on the default local port → start one.
The state file records what the stack started (pid, port, data folder); a pid counts as
the stack's only while its command line still names that folder, so `infra down` never
signals a process that merely reused the number.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
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
from streams.infra import kafka, postgres, secure
from streams.infra.errors import InfraError
from streams.infra.proc import free_port, pid_alive, port_is_free, runs, stop_pid, write_private

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
    """Atomically, readable by its owner only (0600): it names where the services listen."""
    write_private(state_file(), orjson.dumps(state, option=orjson.OPT_INDENT_2))


def _kafka_host_port(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    first = first.split("://", 1)[-1]
    host, _, port = first.rpartition(":")
    return host or "127.0.0.1", int(port or 9092)


def _pg_host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5432


def _same_place(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Two addresses of the same local service (127.0.0.1 and localhost are one host)."""
    host_a, host_b = ("127.0.0.1" if h in LOOPBACK else h for h in (a[0], b[0]))
    return host_a == host_b and a[1] == b[1]


def ours(svc: dict) -> bool:
    """True when `svc` (a state entry) was started by this stack and its process still runs:
    the recorded pid is alive and its command line names the stack's data folder. A cluster
    entry is ours while any of its nodes is."""
    if svc.get("nodes"):
        return any(ours(node) for node in svc["nodes"])
    return bool(svc.get("started") and svc.get("folder") and runs(svc.get("pid"), svc["folder"]))


def kafka_nodes(svc: dict) -> list[dict]:
    """The nodes of a Kafka state entry: a cluster's list, or the single broker as node 1."""
    if svc.get("nodes"):
        return svc["nodes"]
    if svc.get("started"):
        return [{"node_id": 1, "pid": svc.get("pid"), "port": svc.get("port"),
                 "controller_port": svc.get("controller_port"), "folder": svc.get("folder"),
                 "started": True}]
    return []


def _previous(state: dict, name: str, env: str | None, address: Callable[[str], tuple[str, int]],
              where: str) -> dict:
    """The entry this stack recorded for `name`, when the environment still points at it (or
    at nothing): an environment variable that names exactly what the stack started (as
    `eval "$(omnistream infra env)"` exports) does not take that ownership away. An entry the
    environment moved away from is kept in `state["retired"]` while it runs, so that `infra
    down` still stops it."""
    previous = state.get(name, {})
    if not previous.get("started"):
        return {}
    if env is None or _same_place(address(env), address(previous[where])):
        return previous
    if ours(previous):
        state.setdefault("retired", []).append({"service": name, **previous})
    return {}


def _secured(entry: dict) -> secure.Secrets | None:
    """The secrets of a secure stack's Kafka entry (None for a plain one)."""
    if not entry.get("secure"):
        return None
    made = secure.load(Path(entry["folder"]) / secure.FOLDER)
    if made is None:
        raise InfraError(f"the secure Kafka of this stack lost its secrets folder "
                         f"({Path(entry['folder']) / secure.FOLDER}): run `omnistream infra down`, "
                         "then up again")
    return made


def _security(entry: dict) -> dict:
    """The stack's own client settings for its Kafka (the brokers' principal when secure)."""
    made = _secured(entry)
    return made.client_kwargs() if made is not None else {}


def _grant(entry: dict, progress: Progress) -> None:
    """The ACLs of every role on a secure stack; the worker's for the app id in the environment
    as well as those granted before (recorded in the entry)."""
    made = _secured(entry)
    if made is None:
        return
    from streams.config import Settings

    apps = sorted({*entry.get("worker_apps", []), Settings.from_env(local_stack=False).app_id})
    n = asyncio.run(secure.apply_acls(entry["bootstrap"], made, tuple(apps)))
    entry["worker_apps"] = apps
    progress(f"kafka: {n} ACLs in place (roles {', '.join(secure.ROLES)}; worker app ids {', '.join(apps)})")


def _up_kafka(state: dict, progress: Progress, brokers: int | None = None, secured: bool = False) -> dict:
    entry = _kafka_entry(state, progress, brokers, secured)
    if entry.get("started"):
        _grant(entry, progress)
    return entry


def _kafka_entry(state: dict, progress: Progress, brokers: int | None, secured: bool) -> dict:
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    folder = omnistream_home() / "kafka"
    previous = _previous(state, "kafka", env, _kafka_host_port, "bootstrap")
    recorded = len(previous["nodes"]) if previous.get("nodes") else (1 if previous else 0)
    if previous and brokers is not None and brokers != recorded:
        raise InfraError(
            f"this stack runs a Kafka of {recorded} node(s), not {brokers}: run `omnistream infra "
            f"down` first (its data goes with it), then `omnistream infra up --brokers {brokers}`")
    if previous and secured and not previous.get("secure"):
        raise InfraError("this stack runs a Kafka without TLS and logins: run `omnistream infra down` "
                         "first (its data goes with it), then `omnistream infra up --secure`")
    if previous.get("nodes"):
        return _up_cluster(previous, folder, progress)
    if previous and ours(previous):
        if asyncio.run(kafka.probe(previous["bootstrap"], **_security(previous))):
            progress(f"kafka: already running (pid {previous['pid']}, {previous['bootstrap']})")
        else:
            kafka.wait_ready(previous["bootstrap"], previous["pid"], folder, **_security(previous))
        return previous
    if previous and port_is_free(previous["port"]):
        # Started by this stack and gone since (stopped or crashed): back on the same port, so
        # every client configured for it keeps working.
        progress(f"kafka: the broker this stack started (pid {previous['pid']}) is gone: "
                 "starting it again")
        port = previous["port"]
    elif env and secured:
        raise InfraError(f"--secure starts a local Kafka of its own, and KAFKA_BOOTSTRAP_SERVERS={env} "
                         "names another: unset it (or secure that cluster yourself)")
    elif env:
        from streams.config import Settings

        if asyncio.run(kafka.probe(env, **Settings.from_env(local_stack=False).kafka_security)):
            return {"source": "env", "bootstrap": env, "started": False}
        host, port = _kafka_host_port(env)
        if host not in LOOPBACK or not port_is_free(port) or (brokers or 1) > 1:
            raise InfraError(f"KAFKA_BOOTSTRAP_SERVERS={env} does not answer a metadata request")
        progress(f"KAFKA_BOOTSTRAP_SERVERS={env} is not running: starting a local broker there")
    elif (brokers or 1) > 1:
        nodes = [{"node_id": i, "port": free_port(), "controller_port": free_port(),
                  "folder": str(folder / f"node-{i}"), "started": True}
                 for i in range(1, (brokers or 1) + 1)]
        (folder / "cluster_id").unlink(missing_ok=True)  # a new cluster: new id, fresh data
        return _up_cluster({"source": "started", "started": True, "nodes": nodes, "secure": secured,
                            "folder": str(folder), "version": kafka.KAFKA_VERSION}, folder, progress)
    elif not secured and asyncio.run(kafka.probe(DEFAULT_BOOTSTRAP)):
        progress(f"kafka: using the broker already answering at {DEFAULT_BOOTSTRAP}")
        return {"source": "local", "bootstrap": DEFAULT_BOOTSTRAP, "started": False}
    else:
        port = 9092 if port_is_free(9092) else free_port()
    controller = free_port()
    started = time.monotonic()
    secrets = _new_secrets(folder, secured or bool(previous.get("secure")))
    pid = kafka.start(folder, cache_dir(), port, controller, progress, secured=secrets)
    bootstrap = f"127.0.0.1:{port}"
    kafka.wait_ready(bootstrap, pid, folder, **(secrets.client_kwargs() if secrets else {}))
    progress(f"kafka: started {kafka.KAFKA_VERSION} (pid {pid}, {bootstrap}"
             f"{', TLS + SCRAM + ACLs' if secrets else ''}) in {time.monotonic() - started:.1f}s")
    return {"source": "started", "bootstrap": bootstrap, "started": True, "pid": pid,
            "port": port, "controller_port": controller, "version": kafka.KAFKA_VERSION,
            "folder": str(folder), "secure": secrets is not None,
            "worker_apps": previous.get("worker_apps", [])}


def _new_secrets(folder: Path, secured: bool) -> secure.Secrets | None:
    """The secure stack's secrets (made on its first start, kept after), or None."""
    return secure.ensure(folder / secure.FOLDER) if secured else None


def _up_cluster(entry: dict, folder: Path, progress: Progress) -> dict:
    """Start every node of `entry` that is not running (same id, ports and data as before),
    then wait until each answers: a node serves only once a majority of the quorum runs, so
    they are all launched first."""
    nodes = entry["nodes"]
    secrets = _new_secrets(folder, bool(entry.get("secure")))
    voters = kafka.voters_of(nodes)
    replicas = min(3, len(nodes))
    started = time.monotonic()
    launched = []
    for node in nodes:
        if ours(node):
            continue
        for port in (node["port"], node["controller_port"]):
            if not port_is_free(port):
                raise InfraError(f"kafka node {node['node_id']}: port {port} is taken by another "
                                 "process; free it or run `omnistream infra down`")
        if node.get("pid"):
            progress(f"kafka: node {node['node_id']} (pid {node['pid']}) is gone: starting it again")
        node["pid"] = kafka.start(Path(node["folder"]), cache_dir(), node["port"],
                                  node["controller_port"], progress, node_id=node["node_id"],
                                  voters=voters, replicas=replicas,
                                  cluster_id_file=folder / "cluster_id", secured=secrets)
        launched.append(node["node_id"])
    for node in nodes:
        kafka.wait_ready(f"127.0.0.1:{node['port']}", node["pid"], Path(node["folder"]),
                         **(secrets.client_kwargs() if secrets else {}))
    entry["bootstrap"] = ",".join(f"127.0.0.1:{n['port']}" for n in nodes)
    if launched:
        progress(f"kafka: started node(s) {', '.join(map(str, launched))} of {len(nodes)} "
                 f"({kafka.KAFKA_VERSION}, {entry['bootstrap']}) in {time.monotonic() - started:.1f}s")
    else:
        progress(f"kafka: all {len(nodes)} nodes already running ({entry['bootstrap']})")
    return entry


def _database_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or postgres.DB_NAME


def _up_postgres(state: dict, progress: Progress) -> dict:
    """As `_up_kafka`; a server this stack starts asks for passwords (see infra/postgres.py):
    the state records its URL without one, `infra env` exports it with the login role's."""
    env = os.environ.get("DATABASE_URL")
    shown = postgres.without_password(env) if env else None
    folder = omnistream_home() / "postgres"
    previous = _previous(state, "postgres", env, _pg_host_port, "url")
    if previous and ours(previous):
        progress(f"postgres: already running (pid {previous['pid']}, port {previous['port']})")
        home = Path(previous["folder"])
        postgres.wait_ready(postgres.admin_url(home, previous["port"]))
        if env:  # the same server, maybe another database
            asyncio.run(postgres.provision(home, previous["port"], _database_of(env)))
        return previous
    if previous and port_is_free(previous["port"]):
        progress(f"postgres: the server this stack started (pid {previous['pid']}) is gone: "
                 "starting it again")
        port, database = previous["port"], _database_of(env or previous["url"])
    elif env:
        version = asyncio.run(postgres.probe(env))
        if version:
            return {"source": "env", "url": shown, "started": False, "version": version}
        parts = urlsplit(env)
        base_ok = asyncio.run(postgres.probe(env.rsplit("/", 1)[0] + "/postgres"))
        if base_ok:  # the server answers, only the database is missing
            asyncio.run(postgres.ensure_database(env))
            return {"source": "env", "url": shown, "started": False, "version": base_ok}
        if parts.hostname not in LOOPBACK or not port_is_free(parts.port or 5432):
            raise InfraError(f"DATABASE_URL={shown} does not answer SELECT 1")
        progress(f"DATABASE_URL={shown} is not running: starting a local PostgreSQL there")
        port, database = parts.port or 5432, _database_of(env)
    elif asyncio.run(postgres.probe(DEFAULT_DATABASE_URL)):
        progress("postgres: using the server already answering at 127.0.0.1:5432")
        return {"source": "local", "url": DEFAULT_DATABASE_URL, "started": False}
    else:
        port, database = (5432 if port_is_free(5432) else free_port()), postgres.DB_NAME
    started = time.monotonic()
    pid = postgres.start(folder, port, progress)
    version = postgres.wait_ready(postgres.admin_url(folder, port))
    asyncio.run(postgres.provision(folder, port, database))
    progress(f"postgres: started {version} (pid {pid}, port {port}) "
             f"in {time.monotonic() - started:.1f}s")
    url = postgres.without_password(postgres.login_url(folder, port, database))
    return {"source": "started", "url": url, "started": True, "pid": pid, "port": port,
            "version": version, "folder": str(folder)}


def up(progress: Progress = print, brokers: int | None = None, secured: bool = False) -> dict:
    """Find or start both services; the state file is written after each, so a failure of
    the second keeps the record of the first. `brokers`: the size of the local Kafka cluster
    to start (default: what this stack runs, else one broker); `secured`: start it with TLS,
    SCRAM logins and ACLs per role (streams/infra/secure.py; kept once started so)."""
    with _locked():
        state = _read_state()
        state["kafka"] = _up_kafka(state, progress, brokers, secured)
        _write_state(state)
        state["postgres"] = _up_postgres(state, progress)
        _write_state(state)
        return state


def _stop(name: str, svc: dict, progress: Progress) -> None:
    if not svc.get("started"):
        if svc:
            progress(f"{name}: left running (not started by omnistream)")
        return
    if not ours(svc):
        alive = pid_alive(svc.get("pid"))
        progress(f"{name}: pid {svc.get('pid')} " + (
            "now belongs to another process: not stopped" if alive else "had already stopped"))
        return
    if name == "postgres":
        postgres.stop(Path(svc["folder"]))
    if svc.get("nodes"):
        # All at once: the last nodes of a cluster stopped one by one wait for a quorum that
        # has gone before their shutdown times out.
        running = [node for node in svc["nodes"] if ours(node)]
        with ThreadPoolExecutor(max(1, len(running))) as pool:
            list(pool.map(lambda node: stop_pid(node["pid"]), running))
        for node in running:
            progress(f"{name}: node {node['node_id']} stopped (pid {node['pid']})")
        return
    stop_pid(svc["pid"])
    progress(f"{name}: stopped (pid {svc['pid']})")


def down(progress: Progress = print) -> dict:
    """Stop what this stack started (checked by pid and command line); leave services it only
    found alone."""
    with _locked():
        state = _read_state()
        _stop("postgres", state.get("postgres", {}), progress)
        _stop("kafka", state.get("kafka", {}), progress)
        for svc in state.get("retired", []):
            _stop(svc["service"], svc, progress)
        _write_state({})
        return state


def _owner(svc: dict, env_var: str) -> str:
    """Who runs the service: `omnistream` (this stack started it and its pid is still that
    process), `environment` (named by the variable), `local` (found on the default port)."""
    if svc.get("started"):
        return "omnistream" if ours(svc) else "omnistream (gone)"
    return {"env": "environment", "local": "local"}.get(
        svc.get("source", ""), "environment" if os.environ.get(env_var) else "default")


def status() -> dict:
    """What runs: per service its owner and source, pid (and whether that pid is still the
    process the stack started), address, version and whether it answers."""
    from streams.config import Settings

    settings = Settings.from_env()
    state = _read_state()
    kf, pg = state.get("kafka", {}), state.get("postgres", {})
    pg_version = asyncio.run(postgres.probe(settings.database_url))
    answering = asyncio.run(kafka.probe(settings.kafka_bootstrap, **settings.kafka_security))
    return {
        "kafka": {
            "bootstrap": settings.kafka_bootstrap,
            "owner": _owner(kf, "KAFKA_BOOTSTRAP_SERVERS"),
            "source": kf.get("source", "env" if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else "default"),
            "pid": kf.get("pid"),
            "pid_alive": pid_alive(kf.get("pid")) if kf.get("pid") else None,
            "pid_is_ours": ours(kf) if kf.get("pid") else None,
            "version": kf.get("version"),
            "answering": answering,
            "nodes": _node_report(kf, settings.kafka_bootstrap if answering else None),
            "under_replicated": (asyncio.run(_under_replicated(settings)) if answering else None),
        },
        "postgres": {
            "url": settings.database_url,
            "owner": _owner(pg, "DATABASE_URL"),
            "source": pg.get("source", "env" if os.environ.get("DATABASE_URL") else "default"),
            "pid": pg.get("pid"),
            "pid_alive": pid_alive(pg.get("pid")) if pg.get("pid") else None,
            "pid_is_ours": ours(pg) if pg.get("pid") else None,
            "version": pg_version or pg.get("version"),
            "answering": pg_version is not None,
        },
    }


def _node_report(svc: dict, bootstrap: str | None) -> list[dict]:
    """The Kafka nodes: the ones this stack started (pid, and whether it still runs), else
    the brokers the cluster names (no pid: not ours)."""
    nodes = kafka_nodes(svc)
    if nodes:
        return [{"node_id": n["node_id"], "pid": n.get("pid"), "address": f"127.0.0.1:{n['port']}",
                 "alive": ours(n)} for n in nodes]
    if bootstrap is None:
        return []
    from streams.config import Settings

    return [{"node_id": b["node_id"], "pid": None, "address": f"{b['host']}:{b['port']}", "alive": True}
            for b in asyncio.run(kafka.brokers(bootstrap, **Settings.from_env().kafka_security))]


async def _under_replicated(settings: Any) -> dict[str, int]:
    """Topics of this deployment (the public ones and the app's own) with fewer replicas than
    its replication factor asks."""
    from streams.runtime import topics

    security = settings.kafka_security
    rf = await topics.replication_for(settings.kafka_bootstrap, settings.replication_factor, **security)
    prefix = f"{settings.app_id}-"
    public = {t.name for t in topics.ALL}
    return {name: info.replicas
            for name, info in (await topics.describe(settings.kafka_bootstrap, **security)).items()
            if (name in public or name.startswith(prefix)) and info.replicas < rf}


def env_lines(role: str | None = None) -> list[str]:
    """`export` lines for a shell: the broker and database, and on a secure stack the client
    settings of `role` (default `worker`)."""
    import shlex

    from streams.config import Settings

    settings = Settings.from_env()
    kf = _read_state().get("kafka", {})
    made = _secured(kf) if kf.get("bootstrap") == settings.kafka_bootstrap else None
    if made is None and role is not None:
        raise InfraError("`--as` names a principal of a secure stack, and this stack's Kafka has none "
                         "(`omnistream infra up --secure` starts one)")
    values = {"KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap, "DATABASE_URL": settings.database_url,
              **(made.client_env(role or "worker") if made is not None else {})}
    return [f"export {name}={shlex.quote(value)}" for name, value in values.items()]
