"""Codegen's CPU work (render, parse, compile, detectors) in a pool of processes, off the
event loop, so a worker uses every core.

Each process keeps its own template cache (warmed when it starts) and returns that cache's
statistics with every node; `snapshot()` and `totals()` sum them over the processes, so the
figures read like one cache's. With `processes=0` everything runs in the calling process.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import Any

from agents.codegen.cache import TemplateCache, TemplateStats
from agents.codegen.pipeline import Phase, generate_node
from agents.codegen.render import CodeGenerator
from schemas.codec import decode, encode
from schemas.errors import OmnistreamError
from schemas.events import Compatibility, GeneratedNode, GenerationResult, NodeTask

log = logging.getLogger(__name__)

_generator: CodeGenerator | None = None  # in a pool process: its own generator and cache


def _exit_with_parent(parent: int) -> None:
    """A worker killed with SIGKILL cannot stop its pool: each process leaves on its own once
    its parent is gone (it is then re-parented)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


def _start_process(cache_settings: dict[str, Any], parent: int) -> None:
    """`parent`: the worker's pid as it saw it (it may already be gone when this runs)."""
    global _generator
    if os.getppid() != parent:
        os._exit(0)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True,
                     name="exit-with-parent").start()
    _generator = CodeGenerator(TemplateCache(**cache_settings))
    _generator.warm_up()


def _ready() -> int:
    return os.getpid()


@dataclass(frozen=True)
class Generated:
    """One node, encoded for its topics where it was made (the event loop only sends bytes),
    with what the worker logs and measures about it."""

    node: bytes
    result: bytes
    node_type: str
    node_name: str
    success: bool
    quality_score: float
    duration_ms: float
    files: int
    phases: tuple[Phase, ...] = ()  # when it was rendered and validated (wall-clock ns)

    @classmethod
    def of(cls, node: GeneratedNode, result: GenerationResult, phases: Sequence[Phase] = ()) -> Generated:
        return cls(encode(node), encode(result), node.node_type, node.node_name, node.success,
                   node.quality_score, node.duration_ms, len(node.files), tuple(phases))


def _generate_in_process(task: bytes, worker: str | None, suppressed: frozenset[str],
                         compatibility: Compatibility | None, timed: bool = False
                         ) -> tuple[Generated, int, list[TemplateStats]]:
    assert _generator is not None, "pool process started without its initializer"
    phases: list[Phase] | None = [] if timed else None
    node, result = generate_node(_generator, decode(NodeTask, task), worker, suppressed, compatibility,
                                 phases)
    return Generated.of(node, result, phases or ()), os.getpid(), _generator.cache.snapshot()


def default_processes() -> int:
    """One process per core the worker may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class PoolBroken(OmnistreamError, RuntimeError):
    """A pool process died (e.g. killed by the OOM killer); the pool was rebuilt, try again."""

    retriable = True


class GenerationPool:
    def __init__(self, processes: int, **cache_settings: Any) -> None:
        self.processes = processes
        self.cache_settings = cache_settings
        self.local = CodeGenerator(TemplateCache(**cache_settings)) if processes == 0 else None
        self._executor: ProcessPoolExecutor | None = None
        self._stats: dict[int, list[TemplateStats]] = {}

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # spawn, not fork: the worker process runs an event loop and client threads
            self._executor = ProcessPoolExecutor(
                self.processes, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_process, initargs=(self.cache_settings, os.getpid()))
        return self._executor

    async def start(self) -> int:
        """Start every process (each warms its cache) before the first task; returns how many."""
        if self.local is not None:
            self.local.warm_up()
            return 0
        loop = asyncio.get_running_loop()
        pool = self._pool()
        pids = await asyncio.gather(*(loop.run_in_executor(pool, _ready) for _ in range(self.processes)))
        return len(set(pids))

    async def generate(self, task: NodeTask | bytes, worker: str | None = None,
                       suppressed: frozenset[str] = frozenset(),
                       compatibility: Compatibility | None = None, timed: bool = False) -> Generated:
        """`task`: the NodeTask or its encoded bytes (as read from Kafka: sent on as they are);
        `timed`: also say when each phase ran (for traces)."""
        if self.local is not None:
            if isinstance(task, bytes):
                task = decode(NodeTask, task)
            phases: list[Phase] | None = [] if timed else None
            node, result = generate_node(self.local, task, worker, suppressed, compatibility, phases)
            return Generated.of(node, result, phases or ())
        loop = asyncio.get_running_loop()
        try:
            generated, pid, stats = await loop.run_in_executor(
                self._pool(), _generate_in_process, task if isinstance(task, bytes) else encode(task),
                worker, suppressed, compatibility, timed)
        except BrokenProcessPool:
            log.error("a codegen process died; restarting the pool")
            self.close()
            raise PoolBroken("codegen process pool broke; rebuilt") from None
        self._stats[pid] = stats
        return generated

    def snapshot(self) -> list[TemplateStats]:
        """Statistics per template, summed over the processes (a process that was replaced
        keeps its counts: they are cumulative)."""
        if self.local is not None:
            return self.local.cache.snapshot()
        merged: dict[str, TemplateStats] = {}
        for stats in self._stats.values():
            for st in stats:
                seen = merged.get(st.name)
                if seen is None:
                    merged[st.name] = replace(st)
                    continue
                seen.hits += st.hits
                seen.misses += st.misses
                seen.evictions += st.evictions
                seen.invalidations += st.invalidations
                seen.load_time_ms = max(seen.load_time_ms, st.load_time_ms)
                if st.last_access >= seen.last_access:
                    seen.last_access, seen.sha256, seen.size_bytes = st.last_access, st.sha256, st.size_bytes
        return list(merged.values())

    def totals(self) -> dict[str, float]:
        if self.local is not None:
            return self.local.cache.totals()
        stats = self.snapshot()
        hits, misses = sum(s.hits for s in stats), sum(s.misses for s in stats)
        return {"hits": hits, "misses": misses, "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
                "evictions": sum(s.evictions for s in stats)}

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
