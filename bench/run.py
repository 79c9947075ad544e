"""`omnistream bench [--quick]`: run the benchmarks, print tables, write bench/results/*.json."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import orjson

RESULTS = Path(__file__).parent / "results"


def _write(name: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
            **data}
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    return path


def main(quick: bool = False, only: str | None = None) -> int:
    from bench import pipeline, template_cache

    if only in (None, "cache"):
        print("== template cache (5)")
        tc = template_cache.run(quick)
        print(f"  cache hit            {tc['cache_hit_us']:8.2f} µs  ({tc['lookups_per_s']:,.0f} lookups/s)")
        print(f"  render, cached       {tc['render_cached_us']:8.2f} µs")
        print(f"  render, uncached     {tc['render_uncached_us']:8.2f} µs  "
              f"(cached is {tc['speedup_cached_vs_uncached']:.1f}x faster)")
        print(f"  one node generated   {tc['node_generate_ms']:8.3f} ms")
        print(f"  -> {_write('template_cache', tc)}")
    if only in (None, "pipeline"):
        print("== PRD -> codegen.completed latency (2), floor = bare aiokafka relay, 3 hops")
        pl = pipeline.run(quick)
        print(f"  max sustained: {pl['max_sustained_prd_per_s']} PRD/s (all completed, p95 < 2 s)")
        print(f"  -> {_write('pipeline', pl)}")
    return 0
