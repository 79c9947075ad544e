"""Template cache: LRU by count and bytes, TTL, SHA-256 content invalidation, statistics.

It plugs into jinja2 as the Environment's cache, so every template load — including the
parents of `{% extends %}` — goes through it. The loader hands jinja2 an `uptodate` check
that compares the file's SHA-256 (after a cheap stat), so an edited template is recompiled
and an untouched one (even with a new mtime) is not.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import BaseLoader, Environment, Template, TemplateNotFound


@dataclass
class SourceInfo:
    sha256: str
    size: int


class HashingLoader(BaseLoader):
    """Loads templates from a folder; records each source's SHA-256 and size."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.info: dict[str, SourceInfo] = {}

    def _path(self, name: str) -> Path:
        path = (self.root / name).resolve()
        if self.root not in path.parents or not path.is_file():
            raise TemplateNotFound(name)
        return path

    def get_source(self, environment: Environment, name: str) -> tuple[str, str, Callable[[], bool]]:
        path = self._path(name)
        raw = path.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        stat = path.stat()
        self.info[name] = SourceInfo(digest, len(raw))
        seen = {"sig": (stat.st_mtime_ns, stat.st_size)}

        def uptodate() -> bool:
            try:
                st = path.stat()
            except OSError:
                return False
            if (st.st_mtime_ns, st.st_size) == seen["sig"]:
                return True
            fresh = hashlib.sha256(path.read_bytes()).hexdigest() == digest
            if fresh:  # touched, not changed: remember the new stat
                seen["sig"] = (st.st_mtime_ns, st.st_size)
            return fresh

        return raw.decode("utf-8"), str(path), uptodate

    def list_templates(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*.j2"))


@dataclass
class TemplateStats:
    name: str
    sha256: str = ""
    size_bytes: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    invalidations: int = 0
    load_time_ms: float = 0.0
    last_access: float = 0.0

    @property
    def template_type(self) -> str:
        if self.name.startswith("mixins/"):
            return "mixin"
        return "node" if self.name.startswith("node/") else "other"


@dataclass
class _Entry:
    template: Template
    size: int
    loaded_at: float
    checked_at: float = 0.0  # when its file was last compared (see check_every_s)


@dataclass
class TemplateCache:
    """A mapping jinja2 uses as its cache (get / __setitem__), bounded and observable."""

    max_entries: int = 100
    max_bytes: int = 50 * 2**20
    ttl_s: float = 3600.0
    # An edited template is seen within this long: its file is stat'ed (and hashed when the
    # stat changed) at most once per interval, not on every lookup (a stat cost ~3 µs a hit).
    check_every_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    _entries: OrderedDict = field(default_factory=OrderedDict, init=False)
    _bytes: int = field(default=0, init=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False)
    _miss_started: dict = field(default_factory=dict, init=False)
    stats: dict[str, TemplateStats] = field(default_factory=dict, init=False)
    loader: HashingLoader | None = field(default=None, init=False)

    # -- the two calls jinja2 makes ------------------------------------------------
    def get(self, key: Any, default: Any = None) -> Template | None:
        name = key[1]
        now = self.clock()
        with self._lock:
            st = self._stat(name)
            st.last_access = time.time()
            entry = self._entries.get(key)
            if entry is not None:
                if now - entry.loaded_at > self.ttl_s:
                    self._drop(key, eviction=True)
                elif now - entry.checked_at >= self.check_every_s \
                        and not self._still_current(entry, now):
                    self._drop(key, eviction=False)
                    st.invalidations += 1
                else:
                    self._entries.move_to_end(key)
                    st.hits += 1
                    return entry.template
            st.misses += 1
            self._miss_started[name] = time.perf_counter()
            return default

    @staticmethod
    def _still_current(entry: _Entry, now: float) -> bool:
        entry.checked_at = now
        return entry.template.is_up_to_date

    def __setitem__(self, key: Any, template: Template) -> None:
        name = key[1]
        info = self.loader.info.get(name) if self.loader else None
        size = info.size if info else 0
        with self._lock:
            if key in self._entries:
                self._drop(key, eviction=False)
            st = self._stat(name)
            started = self._miss_started.pop(name, None)
            if started is not None:
                st.load_time_ms = (time.perf_counter() - started) * 1000
            if info:
                st.sha256, st.size_bytes = info.sha256, info.size
            now = self.clock()
            self._entries[key] = _Entry(template, size, now, checked_at=now)
            self._bytes += size
            while self._entries and (len(self._entries) > self.max_entries
                                     or self._bytes > self.max_bytes):
                oldest = next(iter(self._entries))
                if oldest == key and len(self._entries) == 1:
                    break  # one template larger than max_bytes stays until replaced
                self._drop(oldest, eviction=True)

    # -- jinja2 also calls these on its cache --------------------------------------
    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def copy(self) -> TemplateCache:  # used by Environment.overlay()
        return self

    def __contains__(self, key: Any) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    # -- internals -----------------------------------------------------------------
    def _stat(self, name: str) -> TemplateStats:
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = TemplateStats(name)
        return st

    def _drop(self, key: Any, eviction: bool) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.size
        if eviction:
            self._stat(key[1]).evictions += 1

    # -- public view -----------------------------------------------------------------
    @property
    def size_bytes(self) -> int:
        return self._bytes

    def totals(self) -> dict[str, float]:
        with self._lock:
            hits = sum(s.hits for s in self.stats.values())
            misses = sum(s.misses for s in self.stats.values())
            return {
                "entries": len(self._entries), "bytes": self._bytes, "hits": hits,
                "misses": misses, "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
                "evictions": sum(s.evictions for s in self.stats.values()),
                "invalidations": sum(s.invalidations for s in self.stats.values()),
            }

    def snapshot(self) -> list[TemplateStats]:
        with self._lock:
            return [TemplateStats(**vars(s)) for s in self.stats.values() if s.sha256]
