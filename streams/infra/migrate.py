"""Apply `migrations/NNN_name.sql` once each, in order, each in its own transaction.

A session-level advisory lock serialises concurrent runs (two workers starting at once); each
applied file's SHA-256 is recorded and a changed file is refused before anything is applied.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from schemas.errors import OmnistreamError
from streams.config import Settings, repo_root

ADVISORY_LOCK_KEY = 0x6F6D6E69  # "omni"
_NAME = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")


class MigrationError(OmnistreamError, RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def migrations_dir() -> Path:
    configured = Settings.from_env(local_stack=False).migrations_dir
    if configured is not None:
        return configured
    root = repo_root()
    if root is None:
        raise MigrationError("cannot find migrations/: set OMNISTREAM_MIGRATIONS_DIR")
    return root / "migrations"


def discover(folder: Path) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNN_snake_case.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a number in {folder}")
    return sorted(found, key=lambda m: m.version)


async def migrate(dsn: str, folder: Path | None = None, progress=print) -> list[Migration]:
    """Apply pending migrations; return the ones applied now (empty when up to date)."""
    wanted = discover(folder or migrations_dir())
    conn = await asyncpg.connect(dsn, timeout=15)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    INTEGER PRIMARY KEY,
                       name       TEXT NOT NULL,
                       checksum   CHAR(64) NOT NULL,
                       applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
            )
            applied = {r["version"]: r for r in await conn.fetch("SELECT * FROM schema_migrations")}
            for m in wanted:
                row = applied.get(m.version)
                if row is not None and row["checksum"] != m.checksum:
                    raise MigrationError(
                        f"migration {m.path.name} was changed after it was applied "
                        f"(recorded sha256 {row['checksum'][:12]}…, file {m.checksum[:12]}…): "
                        "add a new migration instead of editing an applied one"
                    )
            done: list[Migration] = []
            for m in wanted:
                if m.version in applied:
                    continue
                async with conn.transaction():
                    try:
                        await conn.execute(m.sql)
                    except asyncpg.PostgresError as exc:
                        raise MigrationError(f"{m.path.name} failed: {exc}") from exc
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1,$2,$3)",
                        m.version, m.name, m.checksum,
                    )
                progress(f"applied {m.path.name}")
                done.append(m)
            if not done:
                progress(f"database is up to date ({len(wanted)} migrations)")
            return done
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
    finally:
        await conn.close()
