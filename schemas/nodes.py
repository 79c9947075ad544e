"""What a generated node package defines, so a PRD can be refused before its names break one.
No I/O here; tests/unit/test_codegen.py checks these lists against the rendered classes."""

from __future__ import annotations

import re

EXECUTE_METHOD: dict[str, str] = {"effect": "execute_effect", "compute": "execute_compute",
                                  "reducer": "execute_reduction",
                                  "orchestrator": "execute_orchestration"}

# Public members of every node class (its base), whatever its mixins.
NODE_MEMBERS: frozenset[str] = frozenset({
    "node_type", "node_id", "settings", "calls", "elapsed_ms", "resolved", "metadata",
    "OPERATIONS", "SCAFFOLDS", "INPUT_CONTRACTS", *EXECUTE_METHOD.values(),
})

# Public members each mixin adds to the node.
MIXIN_MEMBERS: dict[str, frozenset[str]] = {name: frozenset(members.split()) for name, members in {
    "MixinRetry": "retry_attempts retry_base_delay_s with_retry",
    "MixinCircuitBreaker": "breaker_threshold breaker_reset_s breaker_allows breaker_record",
    "MixinCaching": "cache_ttl_s cache_max_entries cache_get cache_put cache_key",
    "MixinLogging": "log log_event",
    "MixinMetrics": "metric_observe metric_summary",
    "MixinTracing": "trace_keep trace_spans",
    "MixinValidation": "required_fields validate_payload contract_problems",
    "MixinSerialization": "serialize deserialize",
    "MixinEventBus": "subscribe publish",
    "MixinHealthCheck": "health health_record_error",
    "MixinRateLimit": "rate_per_s burst rate_limit_try rate_limit_acquire",
    "MixinTimeout": "timeout_s with_timeout",
    "MixinTransaction": "transaction",
    "MixinIdempotency": "idempotency_window seen_before",
    "MixinAuth": "auth_key_env auth_max_ttl_s signed_message sign refusal",
    "MixinBatching": "batch_size batches",
    "MixinStreaming": "stream_buffer stream_items",
    "MixinPersistence": "save_state load_state",
    "MixinScheduling": "run_every",
    "MixinNotification": "notify_channel notify drain_notifications",
    "MixinAudit": "audit audit_trail audit_verify",
    "MixinEncryption": "encryption_key_env seal unseal",
    "MixinCompression": "compress_min_bytes compress decompress",
    "MixinConfig": "config_prefix config",
}.items()}


def snake(name: str) -> str:
    """The folder and logger form of a node name: HttpServer, HTTPServer → http_server."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])|(?<=[A-Z])([A-Z])(?=[a-z])", r"_\1\2", name).lower()


def shadowed_member(operation: str, mixins: list[str]) -> str | None:
    """Whose member an operation of that name would replace on the node (None: no clash)."""
    if operation in NODE_MEMBERS:
        return "the node class"
    for mixin in mixins:
        if operation in MIXIN_MEMBERS.get(mixin, ()):
            return mixin
    return None
