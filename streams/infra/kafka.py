"""A local Apache Kafka cluster on loopback: KRaft, one or more combined broker+controller nodes.

One node keeps its files in the folder it is given; a cluster of n nodes keeps node i in
`<folder>/node-<i>`, all formatted with the cluster id in `<folder>/cluster_id` and voting in
one static controller quorum, so a node started again on its own folder rejoins by itself.

Jars come from Maven Central once (mvn dependency:copy-dependencies on kafka-pom.xml) into the
cache folder; every later start is offline.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from streams.infra.errors import InfraError
from streams.infra.proc import pid_alive, run, tail, write_private

if TYPE_CHECKING:
    from streams.infra.secure import Secrets

KAFKA_VERSION = "4.1.1"
T = TypeVar("T")


def _resource(name: str) -> Path:
    return Path(str(resources.files("streams.infra").joinpath(name)))


def ensure_jars(cache: Path, progress=print) -> Path:
    """Return the lib folder with the broker's jars, fetching them on first use."""
    lib = cache / f"kafka-{KAFKA_VERSION}" / "lib"
    if (lib / ".complete").exists():
        return lib
    if shutil.which("java") is None:
        raise InfraError(
            "Java 17 or newer is needed to run the local Kafka broker: install it "
            "(apt-get install -y openjdk-17-jre-headless) or set KAFKA_BOOTSTRAP_SERVERS",
            "java -version",
        )
    if shutil.which("mvn") is None:
        raise InfraError(
            "Maven is needed once to fetch the Kafka jars: install it (apt-get install -y maven) "
            "or set KAFKA_BOOTSTRAP_SERVERS",
            "mvn -v",
        )
    progress(f"fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central (first run only)")
    staging = lib.with_name("lib.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    cmd = [
        "mvn", "-B", "-q", "-f", str(_resource("kafka-pom.xml")),
        "dependency:copy-dependencies", "-DincludeScope=runtime",
        f"-Dkafka.version={KAFKA_VERSION}", f"-DoutputDirectory={staging}",
    ]
    run(cmd, "fetching the Kafka jars from Maven Central")
    if not list(staging.glob("kafka_2.13-*.jar")):
        raise InfraError("the Kafka jar fetch finished but no kafka_2.13 jar arrived", " ".join(cmd))
    shutil.rmtree(lib, ignore_errors=True)
    staging.rename(lib)
    (lib / ".complete").write_text(KAFKA_VERSION)
    return lib


def _cluster_id() -> str:
    """22 base64url characters; never starting with '-', which the tool's parser takes for a flag."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def write_config(folder: Path, port: int, controller_port: int, node_id: int = 1,
                 voters: str | None = None, replicas: int = 1, secured: Secrets | None = None) -> Path:
    """server.properties for one node. `voters` names every node's controller (`id@host:port,…`);
    `replicas`: the replication factor of the broker's own topics (group offsets, transactions)
    and of topics created without one, with min.insync.replicas one less (at least 1);
    `secured`: TLS, SCRAM logins and ACLs (streams/infra/secure.py). The file holds the
    brokers' own password then: readable by its owner only."""
    data = folder / "data"
    min_isr = str(max(1, replicas - 1))
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": voters or f"{node_id}@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data),
        "num.partitions": "4",
        "default.replication.factor": str(replicas),
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": str(replicas),
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": min_isr,
        "group.initial.rebalance.delay.ms": "0",
        "log.cleaner.dedupe.buffer.size": "16777216",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "auto.create.topics.enable": "true",
        "delete.topic.enable": "true",
    }
    if replicas > 1:
        # A node back from a crash catches up and takes its leaderships back (the default
        # 5 min check would leave one node leading everything for the rest of a test).
        props["leader.imbalance.check.interval.seconds"] = "10"
        # A SIGKILLed node loses its leaderships when the controller fences it: after 9 s of
        # missed heartbeats by default, all of which producers of its partitions wait.
        props["broker.session.timeout.ms"] = "4000"
        props["broker.heartbeat.interval.ms"] = "1000"
    if secured is not None:
        props.update(secured.server_properties(port, controller_port))
    path = folder / "server.properties"
    write_private(path, "".join(f"{k}={_escaped(v)}\n" for k, v in props.items()))
    return path


def _escaped(value: str) -> str:
    """A value as java.util.Properties reads it back (backslashes are escapes there)."""
    return value.replace("\\", "\\\\")


def voters_of(nodes: list[dict]) -> str:
    """The static quorum of a cluster's nodes (`node_id`, `controller_port` each)."""
    return ",".join(f"{n['node_id']}@127.0.0.1:{n['controller_port']}" for n in nodes)


def start(folder: Path, cache: Path, port: int, controller_port: int, progress=print, *,
          node_id: int = 1, voters: str | None = None, replicas: int = 1,
          cluster_id_file: Path | None = None, secured: Secrets | None = None) -> int:
    """Format (once) and launch one node detached; return its pid. Readiness is checked apart
    (a node of a cluster answers only once a majority of the quorum runs). `secured`: the
    principals' SCRAM credentials are stored when the folder is formatted."""
    lib = ensure_jars(cache, progress)
    folder.mkdir(parents=True, exist_ok=True)
    config = write_config(folder, port, controller_port, node_id, voters, replicas, secured)
    data = folder / "data"
    id_file = cluster_id_file or folder / "cluster_id"
    meta = data / "meta.properties"
    cluster_id = id_file.read_text().strip() if id_file.exists() else None
    # A data folder formatted for another cluster id refuses to start: reset it.
    if meta.exists() and (cluster_id is None or f"cluster.id={cluster_id}" not in meta.read_text()):
        shutil.rmtree(data)
    if cluster_id is None:
        cluster_id = _cluster_id()
        id_file.write_text(cluster_id)
    classpath = f"{lib}/*"
    run(
        ["java", "-cp", classpath, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
         "-c", str(config), "--ignore-formatted", *(secured.scram_args() if secured else [])],
        "formatting the Kafka data folder",
        secrets=tuple(secured.passwords.values()) if secured else (),
    )
    log = open(folder / "kafka.log", "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        ["java", "-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
         f"-Dlog4j2.configurationFile={_resource('log4j2.properties')}",
         "-cp", classpath, "kafka.Kafka", str(config)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, cwd=folder,
    )
    log.close()
    return proc.pid


async def probe(bootstrap: str, timeout: float = 3.0, **security) -> bool:
    """True when a Kafka broker answers a metadata request at `bootstrap`."""
    from aiokafka import AIOKafkaClient

    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000),
                            **security)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        return True
    except Exception:
        return False
    finally:
        await client.close()
        quiet.setLevel(level)


async def admin_call(bootstrap: str, call: Callable[[Any], Awaitable[T]], *, timeout: float = 30.0,
                     **security) -> T:
    """`call(admin)` on an admin client of the cluster behind `bootstrap`, tried again on
    retriable errors for up to `timeout` s: aiokafka's admin sends each request to a random
    broker it knows, which on a cluster may be one that has just died."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await call(admin)
            except KafkaError as exc:
                if not exc.retriable or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)
    finally:
        await admin.close()


async def brokers(bootstrap: str, **security) -> list[dict]:
    """The brokers of the cluster behind `bootstrap`: node_id, host, port each."""
    cluster = await admin_call(bootstrap, lambda admin: admin.describe_cluster(), **security)
    return sorted(cluster["brokers"], key=lambda b: b["node_id"])


def wait_ready(bootstrap: str, pid: int | None, folder: Path | None, timeout: float = 90.0,
               **security) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(probe(bootstrap, timeout=2.0, **security)):
            return
        if pid is not None and not pid_alive(pid):
            log = folder / "kafka.log" if folder else None
            raise InfraError(
                f"the local Kafka broker exited during start-up; see {log}",
                detail=tail(log) if log else None,
            )
        time.sleep(0.3)
    raise InfraError(f"Kafka at {bootstrap} did not answer a metadata request within {timeout:.0f}s")


