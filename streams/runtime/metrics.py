"""Prometheus metrics of the worker (served at /metrics)."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS_PROCESSED = Counter(
    "omnistream_events_processed_total", "Events handled by an agent", ["agent", "outcome"])
DLQ_EVENTS = Counter(
    "omnistream_dlq_events_total", "Events sent to the dead-letter topic", ["topic", "reason"])
HANDLE_SECONDS = Histogram(
    "omnistream_event_handle_seconds", "Time an agent spends on one event", ["agent"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
CONSUMER_LAG = Gauge("omnistream_consumer_lag", "Unconsumed messages on assigned partitions")
AGENT_LAG = Gauge("omnistream_agent_consumer_lag",
                  "Unconsumed messages on the assigned partitions of an agent's topics", ["agent"])
