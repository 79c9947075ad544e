"""The mixins the templates know, and the imports each one's code needs."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.events import MIXIN_CATALOGUE


@dataclass(frozen=True)
class MixinSpec:
    name: str
    stdlib: tuple[str, ...] = ()
    abc: tuple[str, ...] = ()
    typing: tuple[str, ...] = ()


_SPECS = [
    MixinSpec("MixinRetry", ("asyncio", "random"), ("Awaitable", "Callable"), ("Any",)),
    MixinSpec("MixinCircuitBreaker", ("time",)),
    MixinSpec("MixinCaching", ("time",), ("Hashable",), ("Any",)),
    MixinSpec("MixinLogging", ("logging",), (), ("Any",)),
    MixinSpec("MixinMetrics"),
    MixinSpec("MixinTracing", ("contextlib", "time", "uuid"), ("Iterator",), ("Any",)),
    MixinSpec("MixinValidation", (), (), ("Any",)),
    MixinSpec("MixinSerialization", ("json",), (), ("Any",)),
    MixinSpec("MixinEventBus", ("asyncio",), ("Awaitable", "Callable"), ("Any",)),
    MixinSpec("MixinHealthCheck", (), (), ("Any",)),
    MixinSpec("MixinRateLimit", ("asyncio", "time")),
    MixinSpec("MixinTimeout", ("asyncio",), ("Awaitable",), ("Any",)),
    MixinSpec("MixinTransaction", ("contextlib",), ("AsyncIterator", "Awaitable", "Callable")),
    MixinSpec("MixinIdempotency"),
    MixinSpec("MixinAuth", ("hashlib", "hmac", "os")),
    MixinSpec("MixinBatching", (), ("Iterator", "Sequence"), ("Any",)),
    MixinSpec("MixinStreaming", ("asyncio",), ("AsyncIterator",), ("Any",)),
    MixinSpec("MixinPersistence", ("json",), (), ("Any",)),
    MixinSpec("MixinScheduling", ("asyncio", "time"), ("Awaitable", "Callable")),
    MixinSpec("MixinNotification"),
    MixinSpec("MixinAudit", ("hashlib", "json"), (), ("Any",)),
    MixinSpec("MixinEncryption", ("hashlib", "hmac", "os")),
    MixinSpec("MixinCompression", ("zlib",)),
    MixinSpec("MixinConfig", ("os",)),
]
MIXINS: dict[str, MixinSpec] = {s.name: s for s in _SPECS}
assert tuple(MIXINS) == MIXIN_CATALOGUE, "catalogue and schema disagree"
