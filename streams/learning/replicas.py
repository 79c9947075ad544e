"""What every worker predicts from, whichever partitions it holds: the shared mixin model and
the pattern-feedback states, read from their tables' changelogs (streams.runtime.replica)
into registries. The learning agents write those tables (streams/learning/topology.py); codegen,
the web API and the worker's own metrics read the registries here, not the agents."""

from __future__ import annotations

from prometheus_client import Gauge

from agents.learning.registry import ModelRegistry, PatternRegistry
from streams.learning.learner import SNAPSHOTS_REFUSED
from streams.runtime import tables
from streams.runtime.app import app, settings
from streams.runtime.emit import MetricEmitter, emitter
from streams.runtime.replica import ChangelogReplica
from streams.runtime.tables import FEEDBACK_TABLE, MODEL_TABLE

MODEL_VERSION = Gauge("omnistream_model_version", "Model version in use on this worker", ["node_type"])
MODEL_ACCURACY = Gauge("omnistream_model_progressive_accuracy",
                       "Test-then-train accuracy of the model in use", ["node_type"])
PATTERN_SUPPRESSED = Gauge("omnistream_pattern_suppressed", "1 when a pattern is suppressed", ["pattern"])

# The snapshot key is set by `start()` when the worker starts (it may create the key file).
models = ModelRegistry(b"")
patterns = PatternRegistry()


@emitter.collecting
def _pattern_figures(out: MetricEmitter) -> None:
    for summary in patterns.summaries():
        out.emit("pattern_precision", summary["precision"], pattern=summary["pattern"])


def _apply_model(key: bytes | None, value: bytes | None, partition: int, offset: int) -> None:
    if not models.apply(key, value):
        SNAPSHOTS_REFUSED.labels("replica").inc()
        return
    for node_type, (version, accuracy) in models.versions().items():
        MODEL_VERSION.labels(node_type).set(version)
        MODEL_ACCURACY.labels(node_type).set(accuracy)


def _apply_pattern(key: bytes | None, value: bytes | None, partition: int, offset: int) -> None:
    patterns.apply(key, value)
    for name, state in patterns.states.items():
        PATTERN_SUPPRESSED.labels(name).set(1 if state.suppressed else 0)


@app.task
async def model_replica() -> None:
    topic = tables.changelog_topic(settings.app_id, MODEL_TABLE)
    await ChangelogReplica(settings.kafka_bootstrap, topic, _apply_model,
                           security=settings.kafka_security).run()


@app.task
async def pattern_replica() -> None:
    topic = tables.changelog_topic(settings.app_id, FEEDBACK_TABLE)
    await ChangelogReplica(settings.kafka_bootstrap, topic, _apply_pattern,
                           security=settings.kafka_security).run()
