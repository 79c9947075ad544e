"""Components' metrics onto metrics.events (besides the Prometheus collectors at /metrics).

`emit()` never blocks the caller: samples are buffered (bounded; the oldest are dropped and
counted when Kafka cannot keep up) and sent once a second. `collect_registry()` turns the
worker's own omnistream_* counters and gauges into samples, so cache, model, pattern, sink,
DLQ and consumer figures reach the windows and the alert rules without each component
publishing twice.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable

from prometheus_client import REGISTRY, Counter
from pydantic import ValidationError

from schemas.codec import metric_records
from schemas.events import MetricEvent, MetricType
from streams.config import Settings
from streams.runtime import tracing

log = logging.getLogger(__name__)

DROPPED = Counter("omnistream_metric_samples_dropped_total", "Samples dropped (buffer full or invalid)")
SKIP = ("omnistream_metric_samples", "omnistream_metric_windows")  # the windows' own counters


class MetricEmitter:
    def __init__(self, source: str, max_buffer: int = 20_000):
        self.source = source
        self.buffer: deque[MetricEvent] = deque()
        self.max_buffer = max_buffer
        self.collectors: list[Callable[[MetricEmitter], None]] = []

    def emit(self, name: str, value: float, metric_type: MetricType = "gauge", **labels: str) -> None:
        try:
            event = MetricEvent(name=name, value=float(value), metric_type=metric_type,
                                labels={"worker": self.source, **{k: str(v) for k, v in labels.items()}})
        except (ValidationError, TypeError, ValueError):  # e.g. NaN: a bad sample must not hurt
            DROPPED.inc()
            log.debug("metric sample dropped", extra={"metadata": {"name": name}})
            return
        if len(self.buffer) >= self.max_buffer:
            self.buffer.popleft()
            DROPPED.inc()
        self.buffer.append(event)

    def collecting(self, collect: Callable[[MetricEmitter], None]) -> Callable[[MetricEmitter], None]:
        """Register a feature's own figures (decorator): `collect(emitter)` runs each collection
        round before the registry is read, so the collector knows no feature by name."""
        self.collectors.append(collect)
        return collect

    def collect_features(self) -> None:
        for collect in self.collectors:
            try:
                collect(self)
            except Exception:  # one feature's figures failing must not stop the others'
                log.warning("metric collector failed", exc_info=True,
                            extra={"metadata": {"collector": getattr(collect, "__qualname__", "?")}})

    def collect_registry(self) -> int:
        n = 0
        for family in REGISTRY.collect():
            if not family.name.startswith("omnistream_") or family.name.startswith(SKIP):
                continue
            if family.type not in ("counter", "gauge"):
                continue
            kind: MetricType = "counter" if family.type == "counter" else "gauge"
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                self.emit(sample.name, sample.value, kind, **sample.labels)
                n += 1
        return n

    async def flush(self, topic) -> int:
        """Send what is buffered, as one batched record per metric name; returns samples sent."""
        samples = list(self.buffer)
        for key, value in metric_records(samples):
            await tracing.send(topic, key=key, value=value)  # failing: all stay buffered for the next try
        for _ in samples:  # more may have been emitted meanwhile
            self.buffer.popleft()
        return len(samples)


emitter = MetricEmitter(f"{Settings.from_env(local_stack=False).app_id}:{os.getpid()}")
