"""A local PostgreSQL cluster from Debian's packages, run as the unprivileged `postgres` user.

It asks for passwords (initdb with scram-sha-256): the `postgres` superuser's and the login
role's (`omnistream`: owns the database, may create databases, is no superuser, so it cannot
run shell commands through `COPY … PROGRAM`) are generated at the first start and kept in
`<folder>/credentials.json`, readable by its owner only. A data folder made before that (with
`trust`) keeps working as it was.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson

from streams.infra.errors import InfraError
from streams.infra.proc import run, tail, write_private

DB_NAME = "omnistream"
LOGIN_ROLE = "omnistream"
CREDENTIALS = "credentials.json"


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


def _check_reachable(path: Path) -> None:
    """The postgres user must reach the data folder through every parent; nothing outside the
    stack's home is made more open for it: a parent it cannot enter is an error to fix."""
    entry = pwd.getpwnam("postgres")
    for parent in path.parents:
        if parent == Path("/"):
            break
        st = parent.stat()
        mine = st.st_uid == entry.pw_uid and st.st_mode & 0o100
        ours = st.st_gid == entry.pw_gid and st.st_mode & 0o010
        if not (mine or ours or st.st_mode & 0o001):
            raise InfraError(
                f"the postgres user cannot reach {path}: {parent} is not searchable by others; "
                "set OMNISTREAM_HOME to a folder it can reach (e.g. under /tmp), or `chmod o+x` "
                f"{parent} yourself")


def credentials(folder: Path) -> dict[str, str] | None:
    """The passwords this cluster was made with (None: an older `trust` cluster)."""
    path = folder / CREDENTIALS
    return orjson.loads(path.read_bytes()) if path.exists() else None


def _new_credentials(folder: Path) -> dict[str, str]:
    creds = {"superuser": secrets.token_urlsafe(24), "role": LOGIN_ROLE,
             "password": secrets.token_urlsafe(24)}
    write_private(folder / CREDENTIALS, orjson.dumps(creds))
    return creds


def _with_login(user: str, password: str | None, port: int, database: str) -> str:
    auth = f"{user}:{password}" if password else user
    return f"postgresql://{auth}@127.0.0.1:{port}/{database}"


def admin_url(folder: Path, port: int, database: str = "postgres") -> str:
    creds = credentials(folder)
    return _with_login("postgres", creds["superuser"] if creds else None, port, database)


def login_url(folder: Path, port: int, database: str = DB_NAME) -> str:
    """The URL the worker connects with: the login role and its password (an older `trust`
    cluster: the superuser, as it was made)."""
    creds = credentials(folder)
    if creds is None:
        return _with_login("postgres", None, port, database)
    return _with_login(creds["role"], creds["password"], port, database)


def without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{netloc}"))


async def provision(folder: Path, port: int, database: str) -> None:
    """The login role (created, or its password set again) and `database` owned by it."""
    import asyncpg

    creds = credentials(folder)
    if creds is None:
        await ensure_database(admin_url(folder, port, database))
        return
    conn = await asyncpg.connect(admin_url(folder, port), timeout=10)
    try:
        role, password = creds["role"], creds["password"]
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
        verb = "ALTER" if exists else "CREATE"
        # Identifiers and the password are ours (token_urlsafe: letters, digits, - and _).
        await conn.execute(f"{verb} ROLE \"{role}\" LOGIN NOSUPERUSER NOCREATEROLE CREATEDB "
                           f"PASSWORD '{password}'")
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            await conn.execute(f'CREATE DATABASE "{database}" OWNER "{role}"')
        else:
            await conn.execute(f'ALTER DATABASE "{database}" OWNER TO "{role}"')
    finally:
        await conn.close()


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
    if not (data / "PG_VERSION").exists():
        shutil.rmtree(data, ignore_errors=True)
        creds = _new_credentials(folder)
        pwfile = folder / "initdb.pw"
        write_private(pwfile, creds["superuser"] + "\n")
        if os.geteuid() == 0:
            _check_reachable(folder)
            _chown_tree(folder, "postgres")
        try:
            run(_as_owner([str(bindir / "initdb"), "-D", str(data), "--auth=scram-sha-256",
                           f"--pwfile={pwfile}", "-U", "postgres", "-E", "UTF8", "--no-instructions"]),
                "initializing the PostgreSQL data folder (initdb)")
        finally:
            pwfile.unlink(missing_ok=True)
    elif os.geteuid() == 0:
        _check_reachable(folder)
        _chown_tree(folder, "postgres")
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
    raise InfraError(f"PostgreSQL at {without_password(url)} did not answer SELECT 1 within {timeout:.0f}s")
