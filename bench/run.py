"""`omnistream bench [--quick]`: run the benchmarks, print tables, write bench/results/*.json."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import orjson

RESULTS = Path(__file__).parent / "results"


def _write(name: str, data: dict) -> Path:
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


def main(quick: bool = False, only: str | None = None, minutes: float = 30) -> int:
    from bench import learning, metrics, pipeline, template_cache

    if only == "soak":
        from bench import soak

        print(f"== soak: {minutes:g} minutes of mixed load (RSS, open windows, table sizes, lag)")
        with isolated_stack():
            result = soak.run(minutes)
        print(f"  RSS at minutes 1/10/30: {result['rss_mib_at']}")
        print(f"  -> {_write('soak', result)}")
        return 0

    if only in (None, "cache"):
        print("== template cache (5)")
        tc = template_cache.run(quick)
        print(f"  cache hit            {tc['cache_hit_us']:8.2f} µs  ({tc['lookups_per_s']:,.0f} lookups/s)")
        print(f"  jinja2's own cache   {tc['jinja2_cache_hit_us']:8.2f} µs  "
              f"(ours {tc['vs_jinja2_cache']:.1f}x "
              f"as fast; {tc['jinja2_cache_hit_no_reload_us']:.2f} µs with auto_reload=False: "
              f"ours {tc['vs_jinja2_cache_no_reload']:.1f}x)")
        print(f"  render, cached       {tc['render_cached_us']:8.2f} µs")
        print(f"  render, uncached     {tc['render_uncached_us']:8.2f} µs  "
              f"(cached is {tc['speedup_cached_vs_uncached']:.1f}x faster)")
        print(f"  one node generated   {tc['node_generate_ms']:8.3f} ms")
        print(f"  -> {_write('template_cache', tc)}")
    if only in (None, "pipeline", "learning", "learner", "metrics"):
        print("  starting a throwaway Kafka + PostgreSQL for the load runs")
        with isolated_stack():
            if only in (None, "pipeline"):
                print("== PRD -> codegen.completed latency (2), floor = bare aiokafka relay, 3 hops")
                pl = pipeline.run(quick)
                print(f"  max sustained with the pool: {pl['max_sustained_prd_per_s']} PRD/s")
                print(f"  -> {_write('pipeline', pl)}")
            if only in (None, "metrics"):
                print("== metrics ingest (1, 6): ours beside Quix Streams on the same single and batched "
                      "records, bare consumer, faust, one INSERT each; sink (3) beside raw COPY")
                mt = metrics.run(quick)
                metrics.print_report(mt)
                print(f"  -> {_write('metrics', mt)}")
            if only in (None, "learner"):
                import asyncio

                from bench import learner_e2e

                print("== learner end to end (6): codegen.results -> results-intake -> mixin-learner")
                le = asyncio.run(learner_e2e.run(10_000 if quick else 30_000))
                learner_e2e.print_report(le)
                print(f"  -> {_write('learner', le)}")
            if only in (None, "learning"):
                print("== mixin model (4): drifting synthetic stream, baseline = LEARNING.md's best")
                lr = learning.run(quick)
                learning.print_report(lr)
                print(f"  -> {_write('learning', lr)}")
    if only in (None, "scaleout"):
        from bench import scaleout

        print("== scale-out (8): 1, 2, 3 workers of one app on 12 partitions (a stack of its own: "
              "the topics are made with 12)")
        with isolated_stack():
            so = scaleout.run(quick)
        scaleout.print_report(so)
        print(f"  -> {_write('scaleout', so)}")
    return 0
