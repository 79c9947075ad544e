"""The mixins the templates know, the order they wrap a node's calls in, and the imports their
code needs (found in the rendered code, so a template change cannot leave one missing)."""

from __future__ import annotations

import ast

from schemas.events import MIXIN_CATALOGUE

MIXINS: frozenset[str] = frozenset(MIXIN_CATALOGUE)

# Outermost first: what observes a call (tracing, metrics, audit, logging, health, failure
# notifications, the done-event) sees everything inside it; then what refuses a call before it
# runs (auth, validation, rate limit), what answers without running it (idempotency, cache),
# and what bounds and repeats the operation itself (timeout → circuit breaker → retry).
WRAP_ORDER: tuple[str, ...] = (
    "MixinTracing", "MixinMetrics", "MixinAudit", "MixinLogging", "MixinHealthCheck",
    "MixinNotification", "MixinEventBus", "MixinAuth", "MixinValidation", "MixinRateLimit",
    "MixinIdempotency", "MixinCaching", "MixinTimeout", "MixinCircuitBreaker", "MixinRetry",
)
assert set(WRAP_ORDER) <= MIXINS


def class_order(mixins: list[str]) -> list[str]:
    """The node's bases: the mixins that wrap calls in WRAP_ORDER, then the helper mixins
    (their own methods, nothing in the call path) in the order the PRD named them."""
    wrapping = [m for m in WRAP_ORDER if m in mixins]
    return wrapping + [m for m in mixins if m not in WRAP_ORDER]


_MODULES = ("asyncio", "contextlib", "hashlib", "hmac", "json", "logging", "os", "random", "time",
            "uuid", "zlib")
_FROM = {
    "collections.abc": ("AsyncIterator", "Awaitable", "Callable", "Hashable", "Iterator", "Sequence"),
    "typing": ("Any",),
    "cryptography.exceptions": ("InvalidTag",),
    "cryptography.hazmat.primitives.ciphers.aead": ("AESGCM",),
}
THIRD_PARTY = ("cryptography",)


def imports_for(source: str) -> tuple[list[str], list[str]]:
    """(standard-library import lines, third-party import lines) that `source` uses."""
    used: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name):
            used.add(node.id)
    stdlib = [f"import {m}" for m in _MODULES if m in used]
    third: list[str] = []
    for module, names in _FROM.items():
        wanted = [n for n in names if n in used]
        if wanted:
            line = f"from {module} import {', '.join(wanted)}"
            (third if module.split(".")[0] in THIRD_PARTY else stdlib).append(line)
    return stdlib, third


def requirements_for(source: str) -> list[str]:
    """The packages (pip names) a generated module needs besides the standard library."""
    _, third = imports_for(source)
    return ["cryptography>=41"] if third else []

