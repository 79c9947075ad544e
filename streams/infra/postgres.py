"""A local PostgreSQL cluster from Debian's packages, run as the unprivileged `postgres` user."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import time
from pathlib import Path

from streams.infra.errors import InfraError
from streams.infra.proc import run, tail

DB_NAME = "omnistream"


def find_bin_dir() -> Path | None:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
        reverse=True,
    )
    return candidates[0].parent if candidates else None


def ensure_binaries(progress=print) -> Path:
    found = find_bin_dir()
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise InfraError(
            "PostgreSQL server binaries are missing: install them (apt-get install -y postgresql) "
            "or set DATABASE_URL",
            "ls /usr/lib/postgresql/*/bin/pg_ctl",
        )
    progress("installing PostgreSQL from Debian's packages (first run only)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], "apt-get update", env=env)
    run(["apt-get", "install", "-y", "-qq", "postgresql"], "installing postgresql", env=env)
    found = find_bin_dir()
    if not found:
        raise InfraError("postgresql installed but no pg_ctl found under /usr/lib/postgresql")
    return found


def _as_owner(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; CI runs as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for p in [path, *path.rglob("*")]:
        os.chown(p, entry.pw_uid, entry.pw_gid)


def _make_traversable(path: Path) -> None:
    """The postgres user must reach the data folder through every parent (pytest's are 0700)."""
    for parent in path.parents:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if mode & 0o001 == 0 and os.geteuid() == 0:
            os.chmod(parent, mode | 0o001)


def durability() -> str:
    """`full` (default): every commit is flushed to disk, as in production. `off`: no fsync, for
    throwaway clusters (the test suite) where an OS crash may lose the data without harm."""
    from streams.config import Settings

    return Settings.from_env(local_stack=False).pg_durability


def start(folder: Path, port: int, progress=print) -> int:
    """initdb (once) and start a cluster on 127.0.0.1:port; return the postmaster pid."""
    bindir = ensure_binaries(progress)
    data = folder / "data"
    sock = folder / "socket"
    folder.mkdir(parents=True, exist_ok=True)
    sock.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        _make_traversable(folder)
        _chown_tree(folder, "postgres")
    if not (data / "PG_VERSION").exists():
        shutil.rmtree(data, ignore_errors=True)
        run(_as_owner([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                       "-E", "UTF8", "--no-instructions"]),
            "initializing the PostgreSQL data folder (initdb)")
    log = folder / "postgres.log"
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c max_connections=200"
    if durability() == "off":
        opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    try:
        run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log),
                       "-w", "-t", "60", "start"]), "starting PostgreSQL (pg_ctl start)")
    except InfraError as exc:
        raise InfraError(str(exc), detail=tail(log)) from None
    pid_file = data / "postmaster.pid"
    return int(pid_file.read_text().splitlines()[0])


def stop(folder: Path) -> None:
    bindir = find_bin_dir()
    data = folder / "data"
    if bindir and (data / "postmaster.pid").exists():
        run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            "stopping PostgreSQL (pg_ctl stop)")


def url_for(port: int, database: str = DB_NAME) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"


async def probe(url: str, timeout: float = 3.0) -> str | None:
    """The server version when `SELECT 1` works at url, else None."""
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=timeout)
    except Exception:
        return None
    try:
        await conn.fetchval("SELECT 1")
        return await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()


async def ensure_database(url: str) -> None:
    """Create the database named in url when the server has none by that name."""
    import asyncpg

    base, _, name = url.rpartition("/")
    name = name.split("?")[0] or DB_NAME
    conn = await asyncpg.connect(f"{base}/postgres", timeout=10)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def wait_ready(url: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        version = asyncio.run(probe(url))
        if version:
            return version
        time.sleep(0.2)
    raise InfraError(f"PostgreSQL at {url} did not answer SELECT 1 within {timeout:.0f}s")
