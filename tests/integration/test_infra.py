"""`omnistream infra` lifecycle against a stack of its own (not the session's)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time

import asyncpg
import orjson
import pytest

from streams.infra.proc import free_port, pid_alive
from tests.conftest import OMNISTREAM, make_home


def _cli(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([OMNISTREAM, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


async def _pg_settings(url: str, *names: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [await conn.fetchval(f"SHOW {name}") for name in names]
    finally:
        await conn.close()


def test_pg_durability_setting_is_checked(monkeypatch):
    from streams.config import ConfigError
    from streams.infra import postgres

    monkeypatch.delenv("OMNISTREAM_PG_DURABILITY", raising=False)
    assert postgres.durability() == "full"
    monkeypatch.setenv("OMNISTREAM_PG_DURABILITY", "off")
    assert postgres.durability() == "off"
    monkeypatch.setenv("OMNISTREAM_PG_DURABILITY", "fast")
    with pytest.raises(ConfigError, match="^OMNISTREAM_PG_DURABILITY: Input should be 'full' or 'off'"):
        postgres.durability()


def test_up_twice_status_env_down():
    home = make_home("omnistream-infra-")
    kport, pport = free_port(), free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "OMNISTREAM_PG_DURABILITY"},
           "OMNISTREAM_HOME": str(home),
           "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kport}",
           "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{pport}/omnistream"}
    try:
        first = _cli(env, "infra", "up")
        assert first.returncode == 0, first.stderr
        assert "kafka: started" in first.stdout and "postgres: started" in first.stdout

        status = orjson.loads(_cli(env, "infra", "status", "--json").stdout)
        assert status["kafka"]["answering"] and status["postgres"]["answering"]
        kpid, ppid = status["kafka"]["pid"], status["postgres"]["pid"]
        assert pid_alive(kpid) and pid_alive(ppid)
        assert status["kafka"]["version"] == "4.1.1"
        assert status["postgres"]["version"].startswith("1")
        exported = dict(line.removeprefix("export ").split("=", 1)
                        for line in _cli(env, "infra", "env").stdout.splitlines())
        login = exported["DATABASE_URL"]
        # The stack users get is durable by default (the suite's own cluster opts out).
        settings = asyncio.run(_pg_settings(login, "fsync", "synchronous_commit"))
        assert settings == ["on", "on"]
        # It asks for a password; the worker's role owns the database but is no superuser.
        assert login.startswith("postgresql://omnistream:")
        assert login.endswith(f"@127.0.0.1:{pport}/omnistream")
        password = login.split(":")[2].split("@")[0]
        for nobody in (f"postgresql://postgres@127.0.0.1:{pport}/omnistream",
                       f"postgresql://omnistream@127.0.0.1:{pport}/omnistream"):
            with pytest.raises(Exception, match="password"):
                asyncio.run(_pg_settings(nobody, "server_version"))
        assert asyncio.run(_pg_settings(login, "is_superuser")) == ["off"]
        for private in (home / "state.json", home / "postgres" / "credentials.json"):
            assert private.stat().st_mode & 0o077 == 0, private
        assert password not in (home / "state.json").read_text()
        shown = _cli(env, "infra", "status")
        assert password not in shown.stdout and "omnistream:***@" in shown.stdout

        # Idempotent: the second `up` finds both services and starts nothing new.
        env_no_vars = {k: v for k, v in env.items()
                       if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")}
        second = _cli(env_no_vars, "infra", "up")
        assert second.returncode == 0, second.stderr
        assert "already running" in second.stdout and "started" not in second.stdout.replace(
            "already running", "")
        again = orjson.loads(_cli(env_no_vars, "infra", "status", "--json").stdout)
        assert (again["kafka"]["pid"], again["postgres"]["pid"]) == (kpid, ppid)

        # The stack runs one broker: asking for three is refused with what to do.
        bigger = _cli(env_no_vars, "infra", "up", "--brokers", "3")
        assert bigger.returncode == 2 and "infra down" in bigger.stderr, bigger.stderr
        assert status["kafka"]["nodes"] == [{"node_id": 1, "pid": kpid, "alive": True,
                                             "address": f"127.0.0.1:{kport}"}]
        assert status["kafka"]["under_replicated"] == {}

        lines = _cli(env_no_vars, "infra", "env").stdout.splitlines()
        assert f"export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{kport}" in lines
        assert f"export DATABASE_URL={login}" in lines

        down = _cli(env_no_vars, "infra", "down")
        assert down.returncode == 0, down.stderr
        assert not pid_alive(kpid) and not pid_alive(ppid)
        after = _cli(env, "infra", "status")
        assert after.returncode == 3 and "DOWN" in after.stdout
    finally:
        _cli(env, "infra", "down")
        shutil.rmtree(home, ignore_errors=True)


def test_missing_java_is_one_clear_sentence(tmp_path):
    """With no cached jars and no java on PATH: a sentence and the command, no traceback."""
    home = make_home("omnistream-nojava-")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    env = {"PATH": str(bindir), "HOME": str(tmp_path), "OMNISTREAM_HOME": str(home),
           "OMNISTREAM_CACHE_DIR": str(tmp_path / "cache"),
           "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    proc = _cli(env, "infra", "up", timeout=60)
    shutil.rmtree(home, ignore_errors=True)
    assert proc.returncode == 2
    assert "Java 17 or newer is needed" in proc.stderr
    assert "command: java -version" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_port_taken_by_something_else_is_refused():
    """A configured address where something that is not Kafka listens: refused, not replaced."""
    home = make_home("omnistream-taken-")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = {**os.environ, "OMNISTREAM_HOME": str(home),
               "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}
        proc = _cli(env, "infra", "up", timeout=60)
    shutil.rmtree(home, ignore_errors=True)
    assert proc.returncode == 2
    assert f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port} does not answer a metadata request" in proc.stderr


def test_cluster_ids_never_look_like_a_flag():
    from streams.infra.kafka import _cluster_id

    ids = [_cluster_id() for _ in range(2000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def _stack_env(home) -> dict:
    """The environment of a shell that ran `eval "$(omnistream infra env)"` for this stack."""
    return {**{k: v for k, v in os.environ.items() if k != "OMNISTREAM_PG_DURABILITY"},
            "OMNISTREAM_HOME": str(home), "OMNISTREAM_PG_DURABILITY": "off",
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/omnistream"}


def test_partial_restart_keeps_what_the_stack_started():
    """Kafka crashes (SIGKILL) in a shell whose variables name the stack itself: `infra up`
    starts Kafka again on the same address and still owns PostgreSQL; `down` stops both."""
    home = make_home("omnistream-partial-")
    env = _stack_env(home)
    try:
        assert _cli(env, "infra", "up").returncode == 0
        before = orjson.loads(_cli(env, "infra", "status", "--json").stdout)
        kpid, ppid = before["kafka"]["pid"], before["postgres"]["pid"]
        assert before["kafka"]["owner"] == before["postgres"]["owner"] == "omnistream"
        os.kill(kpid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while pid_alive(kpid) and time.monotonic() < deadline:
            time.sleep(0.1)
        gone = orjson.loads(_cli(env, "infra", "status", "--json").stdout)
        assert gone["kafka"]["owner"] == "omnistream (gone)" and not gone["kafka"]["answering"]
        assert "pid=" in _cli(env, "infra", "status").stdout

        again = _cli(env, "infra", "up")
        assert again.returncode == 0, again.stderr
        assert "kafka: the broker this stack started" in again.stdout
        assert f"postgres: already running (pid {ppid}" in again.stdout
        after = orjson.loads(_cli(env, "infra", "status", "--json").stdout)
        assert after["kafka"]["bootstrap"] == env["KAFKA_BOOTSTRAP_SERVERS"] and after["kafka"]["answering"]
        assert after["kafka"]["pid"] != kpid and after["kafka"]["pid_is_ours"]
        assert (after["postgres"]["pid"], after["postgres"]["owner"], after["postgres"]["source"]) == (
            ppid, "omnistream", "started")
        text = _cli(env, "infra", "status").stdout
        assert text.count("owner=omnistream ") == 2, text

        down = _cli(env, "infra", "down")
        assert down.returncode == 0, down.stderr
        assert not pid_alive(after["kafka"]["pid"]) and not pid_alive(ppid)
    finally:
        _cli(env, "infra", "down")
        shutil.rmtree(home, ignore_errors=True)


def test_a_reused_pid_is_never_stopped():
    """The state names a pid that another process holds now (its command line does not name
    the stack's folder): status says so and `down` leaves that process alone."""
    home = make_home("omnistream-reused-")
    stranger = subprocess.Popen(["sleep", "300"])
    try:
        state = {"postgres": {"source": "started", "started": True, "pid": stranger.pid,
                              "port": free_port(), "url": "postgresql://postgres@127.0.0.1:1/x",
                              "folder": str(home / "postgres")},
                 "kafka": {"source": "started", "started": True, "pid": 2 ** 22 + 7, "port": 1,
                           "bootstrap": "127.0.0.1:1", "folder": str(home / "kafka")}}
        (home / "state.json").write_bytes(orjson.dumps(state))
        env = {**os.environ, "OMNISTREAM_HOME": str(home)}
        env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        env.pop("DATABASE_URL", None)
        from streams.infra import stack

        assert not stack.ours(state["postgres"]) and not stack.ours(state["kafka"])
        down = _cli(env, "infra", "down", timeout=60)
        assert down.returncode == 0, down.stderr
        assert f"postgres: pid {stranger.pid} now belongs to another process: not stopped" in down.stdout
        assert "kafka: pid 4194311 had already stopped" in down.stdout
        assert stranger.poll() is None  # still running
    finally:
        stranger.kill()
        stranger.wait()
        shutil.rmtree(home, ignore_errors=True)


def test_a_changed_partition_count_is_refused_at_start(services):
    """The session's public topics have 4 partitions: a worker asked for 6 stops before it
    creates or joins anything, with one line naming the setting and the topics."""
    from streams.runtime.topics import describe, ensure_topics

    asyncio.run(ensure_topics(services.bootstrap))
    app_id = f"refused-{os.getpid()}-{int(time.time())}"
    proc = subprocess.run([OMNISTREAM, "worker"], env=services.env(
        OMNISTREAM_APP_ID=app_id, OMNISTREAM_PARTITIONS="6", OMNISTREAM_WEB_PORT=str(free_port())),
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "OMNISTREAM_PARTITIONS=6" in lines[0] and "with 4" in lines[0]
    assert "new OMNISTREAM_APP_ID" in lines[0]
    assert not [t for t in asyncio.run(describe(services.bootstrap)) if t.startswith(f"{app_id}-")]
