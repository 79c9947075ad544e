"""What the benchmarks share: where results are written, and a throwaway stack to run on."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import orjson

RESULTS = Path(__file__).parent / "results"


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "postgres_durability": os.environ.get("OMNISTREAM_PG_DURABILITY", "full")},
            **data}
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    return path


def isolated_stack():
    """A throwaway Kafka + PostgreSQL on free ports: load runs never touch the user's topics
    (every consumer group would otherwise have to work through the benchmark's PRDs)."""
    import contextlib
    import shutil
    import tempfile

    from streams.infra import stack
    from streams.infra.proc import free_port

    @contextlib.contextmanager
    def cm():
        home = Path(tempfile.mkdtemp(prefix="omnistream-bench-", dir="/tmp"))
        home.chmod(0o755)
        saved = {k: os.environ.get(k) for k in ("OMNISTREAM_HOME", "KAFKA_BOOTSTRAP_SERVERS",
                                                 "DATABASE_URL", "OMNISTREAM_PG_DURABILITY")}
        # Durable like a production database: every commit is flushed to disk.
        os.environ.update(OMNISTREAM_HOME=str(home), OMNISTREAM_PG_DURABILITY="full",
                          KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
                          DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/omnistream")
        try:
            stack.up(progress=lambda m: print(f"  {m}"))
            import asyncio

            from streams.config import Settings
            from streams.infra.migrate import migrate

            # The stack's login role and password (the URL above names none).
            asyncio.run(migrate(Settings.from_env().database_url, progress=lambda _: None))
            yield
        finally:
            stack.down(progress=lambda _: None)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            shutil.rmtree(home, ignore_errors=True)

    return cm()
