"""Real services for the suite: one Kafka broker and one PostgreSQL per test session.

Discovery: KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL from the environment; else testcontainers
when a Docker engine answers; else the project's own launcher on free ports in a throwaway
folder. A service that cannot start fails the session loudly; nothing is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import orjson
import pytest

from streams.infra.proc import free_port

ROOT = Path(__file__).resolve().parents[1]
OMNISTREAM = str(Path(sys.executable).parent / "omnistream")


@dataclass
class Services:
    bootstrap: str
    database_url: str
    home: Path
    how: str

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                "DATABASE_URL": self.database_url, "OMNISTREAM_HOME": str(self.home), **extra}


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def make_home(prefix: str) -> Path:
    # Under /tmp with 0755 so the unprivileged postgres user can reach its data folder.
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    home.chmod(0o755)
    return home


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    home = make_home("omnistream-test-")
    env_bootstrap, env_db = os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), os.environ.get("DATABASE_URL")
    if env_bootstrap and env_db:
        yield Services(env_bootstrap, env_db, home, "environment")
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as kc, \
                PostgresContainer("postgres:16", driver=None) as pc:
            yield Services(kc.get_bootstrap_server(), pc.get_connection_url(), home, "testcontainers")
        return
    # A throwaway cluster: no fsync (tests prove behaviour, not survival of an OS crash).
    env = {"OMNISTREAM_HOME": str(home), "OMNISTREAM_PG_DURABILITY": "off",
           "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
           "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/omnistream"}
    proc = subprocess.run([OMNISTREAM, "infra", "up"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"could not start Kafka/PostgreSQL for the tests:\n{proc.stdout}\n{proc.stderr}",
                    pytrace=False)
    # The stack's PostgreSQL asks for a password: its login role's URL, as `infra env` exports it.
    exported = subprocess.run([OMNISTREAM, "infra", "env"], env={**os.environ, **env},
                              capture_output=True, text=True, timeout=60).stdout
    database_url = next(line.split("=", 1)[1] for line in exported.splitlines()
                        if line.startswith("export DATABASE_URL="))
    try:
        yield Services(env["KAFKA_BOOTSTRAP_SERVERS"], database_url, home, "launcher")
    finally:
        subprocess.run([OMNISTREAM, "infra", "down"], env={**os.environ, **env},
                       capture_output=True, timeout=120)
        if os.environ.get("OMNISTREAM_TEST_KEEP_HOME"):  # debugging: keep the workers' logs
            print(f"test home kept: {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


async def pg_fetch(db: str, sql: str, *args: object) -> list:
    """One query on a connection of its own, for tests that only look at what was written."""
    conn = await asyncpg.connect(db)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def pg_fetchval(db: str, sql: str, *args: object) -> object:
    rows = await pg_fetch(db, sql, *args)
    return rows[0][0] if rows else None


async def _admin(base_url: str, sql: str) -> None:
    admin = await asyncpg.connect(base_url)
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


async def _create_db(base_url: str, name: str) -> str:
    await _admin(base_url, f'CREATE DATABASE "{name}"')
    return base_url.rsplit("/", 1)[0] + f"/{name}"


async def _drop_db(base_url: str, name: str, attempts: int = 20) -> None:
    """Drop a test's database. FORCE ends the sessions the test left; it refuses when an
    autovacuum worker is on the database (a process of no role, which the suite's login, not a
    superuser, may not signal), and a plain DROP stops autovacuum itself but fails while a
    session is left: so one, then the other, until the database is gone."""
    for _ in range(attempts):
        try:
            await _admin(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except asyncpg.InsufficientPrivilegeError:
            try:
                await _admin(base_url, f'DROP DATABASE IF EXISTS "{name}"')
                return
            except asyncpg.ObjectInUseError:
                await asyncio.sleep(0.5)
    raise AssertionError(f"test database {name} could not be dropped after {attempts} attempts")


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """The test's randomness (kill instants, pauses), seeded: `OMNISTREAM_TEST_SEED` replays a
    run; the seed is printed, so a failing test shows it under "Captured stdout setup"."""
    seed = int(os.environ.get("OMNISTREAM_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"[seed] {request.node.name}: OMNISTREAM_TEST_SEED={seed}")
    request.node.user_properties.append(("seed", seed))
    return random.Random(seed)


@pytest.fixture
def fresh_db(services: Services) -> Iterator[str]:
    """An empty database of its own for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = asyncio.run(_create_db(services.database_url, name))
    yield url
    asyncio.run(_drop_db(services.database_url, name))


@pytest.fixture
def migrated_db(fresh_db: str) -> str:
    from streams.infra.migrate import migrate

    asyncio.run(migrate(fresh_db, progress=lambda _: None))
    return fresh_db


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> int:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            last = exc.code
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s (last status {last})")


@dataclass
class Worker:
    proc: subprocess.Popen
    port: int
    log_file: Path
    app_id: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_lines(self) -> list[str]:
        return self.log_file.read_text().splitlines() if self.log_file.exists() else []

    @property
    def stderr_file(self) -> Path:
        """What the process wrote outside the log: a traceback printed before (or instead of)
        logging it, an interpreter abort."""
        return self.log_file.with_suffix(".stderr")

    def exit_report(self) -> str | None:
        """None while running; else the exit code with the ends of its log and stderr."""
        if self.proc.poll() is None:
            return None
        err = self.stderr_file.read_text(errors="replace").splitlines() if self.stderr_file.exists() else []
        return (f"worker {self.log_file.name} exited with {self.proc.returncode}\n--- log:\n"
                + "\n".join(self.log_lines()[-40:]) + "\n--- stderr:\n" + "\n".join(err[-30:]))


def assert_running(*workers: Worker | None) -> None:
    """Every worker still runs; the first that does not fails the test with why."""
    for worker in workers:
        if worker is not None and (report := worker.exit_report()):
            raise AssertionError(report)


def popen_worker(env: dict[str, str], log_file: Path) -> subprocess.Popen:
    """`omnistream worker` in a session of its own (so SIGKILL takes all of it), its stderr
    appended to the file beside its log (`Worker.stderr_file`, kept across restarts)."""
    with log_file.with_suffix(".stderr").open("ab") as stderr:
        return subprocess.Popen([OMNISTREAM, "worker"], env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)


def start_worker(services: Services, migrated: str, app_id: str, tag: str = "w",
                 extra_env: dict[str, str] | None = None) -> Worker:
    port = free_port()
    log_file = services.home / f"{app_id}-{tag}.log"
    env = services.env(DATABASE_URL=migrated, OMNISTREAM_WEB_PORT=str(port),
                       OMNISTREAM_APP_ID=app_id, OMNISTREAM_LOG_FILE=str(log_file),
                       OMNISTREAM_LOG_LEVEL="INFO", **(extra_env or {}))
    worker = Worker(popen_worker(env, log_file), port, log_file, app_id)
    try:
        wait_http(f"{worker.base}/health", 120, worker.proc)
    except Exception as exc:
        stop_worker(worker)
        tail = "\n".join(worker.log_lines()[-30:])
        raise RuntimeError(f"worker did not become healthy:\n{tail}") from exc
    return worker


def stop_worker(worker: Worker) -> None:
    if worker.proc.poll() is None:
        worker.proc.terminate()
        try:
            worker.proc.wait(30)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait()


def http_json(url: str, body: object = None, timeout: float = 10, any_status: bool = False) -> object:
    """GET (or POST `body`) and parse JSON; `any_status`: also parse a 4xx/5xx answer's body
    (/health answers 503 while a rebalance runs)."""
    data = None if body is None else orjson.dumps(body)
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if not any_status:
            raise
        return orjson.loads(exc.read())


async def wait_split(workers: list[Worker], topic: str, partitions: int, timeout: float = 90) -> None:
    """Until the rebalance has given each worker part of `topic` and all of it is held."""
    deadline = time.monotonic() + timeout
    held: list[list[int]] = []
    while time.monotonic() < deadline:
        held = [http_json(f"{w.base}/health", any_status=True)["assignment"].get(topic, [])
                for w in workers]
        if all(held) and sorted(p for parts in held for p in parts) == list(range(partitions)):
            return
        await asyncio.sleep(0.5)
    pytest.fail(f"{topic} was not split between the workers: {held}")


@pytest.fixture(scope="session")
def pipeline_db(services: Services) -> Iterator[str]:
    from streams.infra.migrate import migrate

    name = f"pipeline_{uuid.uuid4().hex[:8]}"
    url = asyncio.run(_create_db(services.database_url, name))
    asyncio.run(migrate(url, progress=lambda _: None))
    yield url
    with contextlib.suppress(Exception):
        asyncio.run(_drop_db(services.database_url, name))


SESSION_WORKERS: list[Worker] = []  # the `worker` fixture's, while it runs


@pytest.fixture(scope="session")
def worker(services: Services, pipeline_db: str) -> Iterator[Worker]:
    """One worker with every agent, shared by the pipeline tests (they filter by correlation id)."""
    w = start_worker(services, pipeline_db, f"omnistream-test-{uuid.uuid4().hex[:6]}")
    SESSION_WORKERS.append(w)
    yield w
    SESSION_WORKERS.remove(w)
    stop_worker(w)


@contextlib.contextmanager
def session_workers_paused() -> Iterator[None]:
    """SIGSTOP the shared `worker` (and its code-generation processes) for a test that needs its
    own worker to be the only deployment reading the public topics: two app ids both fan a PRD
    out (a kcat record gets the same correlation id in each, from its offset), and each
    assembler takes whichever deployment's nodes come first. SIGCONT after; its group rebalances
    and it carries on."""
    paused = [w for w in SESSION_WORKERS if w.proc.poll() is None]
    for w in paused:
        os.killpg(w.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for w in paused:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.proc.pid, signal.SIGCONT)
