"""`omnistream bench [--quick]`: run the benchmarks, print tables, write bench/results/*.json."""

from __future__ import annotations

from bench.common import isolated_stack, write_result


def main(quick: bool = False, only: str | None = None, minutes: float = 30) -> int:
    from bench import learning, metrics, pipeline, template_cache

    if only == "soak":
        from bench import soak

        print(f"== soak: {minutes:g} minutes of mixed load (RSS, open windows, table sizes, lag)")
        with isolated_stack():
            result = soak.run(minutes)
        print(f"  RSS at minutes 1/10/30: {result['rss_mib_at']}")
        print(f"  -> {write_result('soak', result)}")
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
        print(f"  -> {write_result('template_cache', tc)}")
    if only in (None, "pipeline", "learning", "learner", "metrics"):
        print("  starting a throwaway Kafka + PostgreSQL for the load runs")
        with isolated_stack():
            if only in (None, "pipeline"):
                print("== PRD -> codegen.completed latency (2), floor = bare aiokafka relay, 3 hops")
                pl = pipeline.run(quick)
                print(f"  max sustained with the pool: {pl['max_sustained_prd_per_s']} PRD/s")
                print(f"  -> {write_result('pipeline', pl)}")
            if only in (None, "metrics"):
                print("== metrics ingest (1, 6): ours beside Quix Streams on the same single and batched "
                      "records, bare consumer, faust, one INSERT each; sink (3) beside raw COPY")
                mt = metrics.run(quick)
                metrics.print_report(mt)
                print(f"  -> {write_result('metrics', mt)}")
            if only in (None, "learner"):
                import asyncio

                from bench import learner_e2e

                print("== learner end to end (6): codegen.results -> results-intake -> mixin-learner")
                le = asyncio.run(learner_e2e.run(10_000 if quick else 30_000))
                learner_e2e.print_report(le)
                print(f"  -> {write_result('learner', le)}")
                from bench import drift_burst

                print("== a drifting world's burst from kcat, served (issue 25's outside check): held-out "
                      "accuracy on the world after the drift, through /api/predict")
                seeds = drift_burst.SEEDS[:1] if quick else drift_burst.SEEDS
                db = asyncio.run(drift_burst.run(30_000, seeds))
                drift_burst.print_report(db)
                print(f"  -> {write_result('drift_burst', db)}")
            if only in (None, "learning"):
                print("== mixin model (4): drifting synthetic stream, baseline = best plain config")
                lr = learning.run(quick)
                learning.print_report(lr)
                print(f"  -> {write_result('learning', lr)}")
    if only in (None, "scaleout"):
        from bench import scaleout

        print("== scale-out (8): 1, 2, 3 workers of one app on 12 partitions (a stack of its own: "
              "the topics are made with 12)")
        with isolated_stack():
            so = scaleout.run(quick)
        scaleout.print_report(so)
        print(f"  -> {write_result('scaleout', so)}")
    return 0
