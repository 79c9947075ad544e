"""Template cache: hit time and lookups/s beside jinja2's own compiled-template cache (an
Environment with a FileSystemLoader keeps compiled templates; by default it checks each file's
mtime on every lookup, `auto_reload=False` does not), and a cached render vs an uncached one
(same run)."""

from __future__ import annotations

import time

from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from agents.codegen.fanout import fan_out
from agents.codegen.render import TEMPLATES_DIR, CodeGenerator, ident, pystr
from schemas.events import MIXIN_CATALOGUE, PrdSubmitted


def _timeit(fn, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n


def run(quick: bool = False) -> dict:
    n = 2_000 if quick else 20_000
    gen = CodeGenerator()
    gen.warm_up()
    name = "node/effect.py.j2"
    hit_s = _timeit(lambda: gen.env.get_template(name), n)
    jinja_hits = {}
    for auto_reload in (True, False):
        own = ImmutableSandboxedEnvironment(loader=FileSystemLoader(str(TEMPLATES_DIR)),
                                            auto_reload=auto_reload, undefined=StrictUndefined)
        own.filters.update(pystr=pystr, ident=ident)
        own.get_template(name)  # compiled once, then served from jinja2's cache
        jinja_hits[auto_reload] = _timeit(lambda own=own: own.get_template(name), n)

    source = (TEMPLATES_DIR / "mixins" / "MixinRetry.py.j2").read_text()
    plain = ImmutableSandboxedEnvironment(undefined=StrictUndefined, trim_blocks=True,
                                          lstrip_blocks=True)
    plain.filters.update(pystr=pystr, ident=ident)
    ctx = {"logger_name": "x", "node_class": "X", "auth_env": "A", "encryption_env": "B",
           "config_prefix": "C"}
    uncached_s = _timeit(lambda: plain.from_string(source).render(ctx), max(200, n // 20))
    cached_s = _timeit(lambda: gen.env.get_template("mixins/MixinRetry.py.j2").render(ctx), n)

    prd = PrdSubmitted.model_validate({
        "title": "Bench", "service_name": "bench",
        "nodes": [{"node_type": "effect", "name": "BenchNode", "mixins": list(MIXIN_CATALOGUE[:6]),
                   "operations": ["one", "two"]}]})
    task = fan_out(prd)[0]
    node_s = _timeit(lambda: gen.generate(task), max(50, n // 100))
    return {
        "cache_hit_us": hit_s * 1e6,
        "lookups_per_s": 1 / hit_s,
        "jinja2_cache_hit_us": jinja_hits[True] * 1e6,
        "jinja2_cache_hit_no_reload_us": jinja_hits[False] * 1e6,
        "vs_jinja2_cache": jinja_hits[True] / hit_s,
        "vs_jinja2_cache_no_reload": jinja_hits[False] / hit_s,
        "render_cached_us": cached_s * 1e6,
        "render_uncached_us": uncached_s * 1e6,
        "speedup_cached_vs_uncached": uncached_s / cached_s,
        "node_generate_ms": node_s * 1000,
        "hit_rate": gen.cache.totals()["hit_rate"],
    }
