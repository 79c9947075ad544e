"""Learning agents: the shared mixin model, the compatibility matrix, pattern feedback.

Mixin flow: codegen.results → results-intake (decode, DLQ) → {app}-mixin-results, keyed to the
shared model (one partition: one model learns from every node type) → mixin-learner (the live
model, snapshotted into the `mixin-models` table) and mixin-matrix-sink (mixin_results_log +
update_mixin_compatibility()). Every worker reads the table's changelog (streams.runtime.replica) into
a ModelRegistry and predicts from it.

Feedback flow: pattern.feedback → feedback-intake → {app}-pattern-feedback keyed by pattern
→ pattern-feedback-learner (posterior per pattern in the `pattern-feedback` table) and
pattern-feedback-sink (pattern_feedback_log through record_pattern_feedback()).

All of them run on the checkpointed path (streams.runtime.processing): the learner snapshots every
model a batch changed (at most SNAPSHOT_EVERY results, or what came within
SNAPSHOT_INTERVAL_S) before the batch is acked, and each snapshot says which offsets it holds,
so a crash neither loses a result nor learns one twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson
from faust.types import TP, StreamT

from agents.learning import feedback, snapshot
from agents.learning.features import canonical
from agents.learning.hierarchy import HierarchicalModel
from agents.learning.minibatch import MiniBatch
from agents.learning.registry import SHARED
from schemas.codec import encode
from schemas.events import GenerationResult, PatternFeedback
from schemas.topics import CODEGEN_RESULTS, PATTERN_FEEDBACK
from streams.config import model_key
from streams.learning.learner import SNAPSHOTS_REFUSED, Learner
from streams.learning.replicas import models, patterns
from streams.runtime import tables
from streams.runtime.app import app, codegen_results, pattern_feedback, settings
from streams.runtime.dlq import correlation_headers, header, send_to_dlq
from streams.runtime.faust import Record
from streams.runtime.processing import (
    Applied,
    control_kind,
    handle_event,
    held,
    origin,
    produce,
    run_checkpoints,
    run_intake,
    source_headers,
    table_put,
)
from streams.runtime.sink import PgBatchSink, run_sink
from streams.runtime.tables import FEEDBACK_TABLE, KIND_HEADER, MODEL_TABLE, TRAINED_HEADER, ControlKind

log = logging.getLogger(__name__)

SNAPSHOT_EVERY = settings.model_snapshot_every
SNAPSHOT_INTERVAL_S = settings.model_snapshot_interval_s

def _internal(name: str, partitions: int) -> Any:
    return app.topic(name, key_type=bytes, value_type=bytes, partitions=partitions, internal=True,
                     value_serializer="raw", key_serializer="raw")


# Every result goes to the one partition that owns the shared model (agents/learning/hierarchy.py).
SHARED_KEY = SHARED.encode()
results_inbox = _internal(tables.results_inbox(settings.app_id), settings.partitions)
feedback_inbox = _internal(tables.feedback_inbox(settings.app_id), settings.partitions)
model_table = app.Table(MODEL_TABLE, default=None, partitions=settings.partitions,
                        key_type=bytes, value_type=bytes)  # raw bytes in the changelog
feedback_table = app.Table(FEEDBACK_TABLE, default=None, partitions=settings.partitions,
                           key_type=str)  # json keys and values

# ---------------------------------------------------------------------------- intake


@app.agent(codegen_results, name="results-intake")
async def results_intake(stream: StreamT) -> None:
    async def handle(result: GenerationResult, event: Record) -> None:
        # Re-encoded: an envelope filled on intake (id, timestamps) stays the same downstream;
        # the source header lets the learner skip what a replay sends again.
        await produce(results_inbox, SHARED_KEY, encode(result), headers={
            **correlation_headers(result.correlation_id), KIND_HEADER: ControlKind.RESULT.header,
            **source_headers(event)})

    # In timestamp order across the source partitions: the learner learns a drift the way the
    # results were published, whatever partitions an outside producer spread them over.
    await run_intake(stream, GenerationResult, "results-intake", handle, time_ordered=True)


@app.agent(pattern_feedback, name="feedback-intake")
async def feedback_intake(stream: StreamT) -> None:
    async def handle(fb: PatternFeedback, event: Record) -> None:
        await produce(feedback_inbox, fb.pattern_name.encode(), encode(fb), headers={
            **correlation_headers(fb.correlation_id), **source_headers(event)})

    await run_intake(stream, PatternFeedback, "feedback-intake", handle)


# ---------------------------------------------------------------------------- mixin learner


learner = Learner(model_table, b"", models)


def start() -> None:
    """At worker start: the key that signs and verifies model snapshots; the compiled learning
    loop loaded (numba's cache), not in the first busy batch's time."""
    models.key = learner.key = model_key()
    MiniBatch(HierarchicalModel())


@app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust types receivers with `signal=`; ours take **kwargs
async def _forget_unacked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
    learner.reset()


def learn_now(results: list[tuple[GenerationResult, str, int]], changed: dict[str, int],
              partition: int) -> None:
    """Learn the results collected so far (and empty the list)."""
    if results and learner.learn_many(results):
        changed[SHARED] = partition
    results.clear()


@app.agent(results_inbox, name="mixin-learner")
async def mixin_learner(stream: StreamT) -> None:
    conflict_sink = learner.conflict_sink = await PgBatchSink(
        settings.database_url, "mixin_conflicts", ("node_type", "conflicts"),
        stage_ddl="(node_type text, conflicts jsonb)",
        apply_sql="SELECT replace_mixin_conflicts(node_type, conflicts) FROM {stage} ORDER BY node_type",
        dedupe_key=lambda row: row[0], max_ms=1000).start()

    try:
        await run_checkpoints(stream, "mixin-learner", _LearnerCheckpoint, max_events=SNAPSHOT_EVERY,
                              within_s=SNAPSHOT_INTERVAL_S)
    finally:
        await conflict_sink.stop()


class _LearnerCheckpoint:
    """A batch of the results inbox (streams.runtime.processing.Checkpoint): results learnt in
    order, installs in between; the model snapshots saved. Nothing to flush: the conflicts are
    derived from the model and written by their sink within its interval (after a crash, the
    next snapshot writes them again)."""

    def __init__(self) -> None:
        self.changed: dict[str, int] = {}  # model key → partition of its table key
        self.results: list[tuple[GenerationResult, str, int]] = []  # learnt together, in order

    async def apply(self, events: Sequence[Any]) -> None:
        changed, results = self.changed, self.results
        last_partition = 0
        for event in events:
            kind = control_kind(event)
            node_type = (event.key or b"").decode("utf-8", "replace")
            if kind is ControlKind.INSTALL:  # the key names the model (the shared one)
                try:
                    trained = {int(k): int(v) for k, v in
                               orjson.loads(header(event, TRAINED_HEADER) or "{}").items()}
                    learn_now(results, changed, event.message.partition)  # before the install
                    learner.install(node_type, event.value or b"", trained)
                    changed[node_type] = event.message.partition
                except (snapshot.SnapshotRejected, ValueError, orjson.JSONDecodeError) as exc:
                    SNAPSHOTS_REFUSED.labels("install").inc()
                    log.error("model install refused", extra={"metadata": {
                        "node_type": node_type, "reason": str(exc)}})
                    await send_to_dlq(event, "model_install_refused", str(exc), "mixin-learner")
                continue
            if kind not in (None, "result"):
                continue
            where, offset = origin(event)

            async def collect(result: GenerationResult, event: Record, where=where, offset=offset) -> None:
                results.append((result, where, offset))

            await handle_event(event, GenerationResult, "mixin-learner", collect)
            last_partition = event.message.partition
        if results:
            learn_now(results, changed, last_partition)

    async def flush(self) -> None:
        pass

    def save(self) -> None:
        learner.save(self.changed, put=lambda p, k, v: table_put(model_table, p, k, v),
                     held=lambda p: held(results_inbox.get_topic_name(), p))


# ---------------------------------------------------------------------------- matrix sink

RESULT_COLUMNS = ("id", "node_type", "mixin_combination", "success", "source", "failure_reason",
                  "correlation_id", "occurred_at")
_COLS = ", ".join(RESULT_COLUMNS)
# Only rows new to mixin_results_log are counted, so a replayed batch changes nothing; the
# batch's groups are counted in one statement (migrations/006_mixin_counts_in_sets.sql).
MATRIX_SQL = f"""
WITH fresh AS (
    INSERT INTO mixin_results_log ({_COLS}) SELECT {_COLS} FROM {{stage}}
    ON CONFLICT (id) DO NOTHING
    RETURNING node_type, mixin_combination, success),
groups AS (
    SELECT node_type, array_to_string(mixin_combination, chr(31)) AS combination,
           (count(*) FILTER (WHERE success))::int AS successes,
           (count(*) FILTER (WHERE NOT success))::int AS failures
    FROM fresh GROUP BY node_type, mixin_combination)
SELECT add_mixin_counts(array_agg(node_type), array_agg(combination), array_agg(successes),
                        array_agg(failures))
FROM groups"""


def result_row(r: GenerationResult) -> tuple:
    return (r.id, r.node_type, list(canonical(r.mixins)), r.success, r.source[:100],
            r.failure_reason, r.correlation_id, r.occurred_at)


@app.agent(results_inbox, name="mixin-matrix-sink")
async def mixin_matrix_sink(stream: StreamT) -> None:
    await run_sink(stream, "mixin-matrix-sink", GenerationResult, PgBatchSink(
        settings.database_url, "mixin_results_log", RESULT_COLUMNS, apply_sql=MATRIX_SQL,
        dedupe_key=lambda row: row[0], source_topic=CODEGEN_RESULTS.name, max_rows=SNAPSHOT_EVERY),
        result_row,
        accept=lambda event: control_kind(event) is ControlKind.RESULT,
        max_events=SNAPSHOT_EVERY)  # one statement per batch: bigger batches, fewer commits


# ---------------------------------------------------------------------------- pattern feedback

POLICY = feedback.FeedbackPolicy(
    floor=settings.pattern_precision_floor, source_cap=settings.feedback_source_cap)
patterns.policy = POLICY


@app.agent(feedback_inbox, name="pattern-feedback-learner")
async def pattern_feedback_learner(stream: StreamT) -> None:
    """Posterior per pattern in the table; each state carries the offsets it has applied."""
    await run_checkpoints(stream, "pattern-feedback-learner", _FeedbackCheckpoint)


class _FeedbackCheckpoint:
    """A batch of the feedback inbox (streams.runtime.processing.Checkpoint): nothing is sent,
    so nothing to flush; the changed posteriors are saved."""

    def __init__(self) -> None:
        self.changed: dict[str, tuple[int, feedback.FeedbackState]] = {}

    async def apply(self, events: Sequence[Any]) -> None:
        changed = self.changed
        for event in events:
            where, offset = origin(event)

            async def handle(fb: PatternFeedback, event: Record, where=where, offset=offset) -> None:
                state = (changed[fb.pattern_name][1] if fb.pattern_name in changed
                         else feedback.FeedbackState.load(feedback_table.get(fb.pattern_name))) \
                    or feedback.new_state(fb.pattern_name)
                if Applied.seen(state.applied, where, offset):
                    return
                was = state.suppressed
                state = feedback.apply(state, fb.feedback_type, float(fb.user_weight), fb.is_correct,
                                       fb.source or "anonymous", time.time(), POLICY)
                Applied.mark(state.applied, where, offset)
                changed[fb.pattern_name] = (event.message.partition, state)
                if state.suppressed != was:
                    log.warning("pattern %s", "suppressed" if state.suppressed else "reported again",
                                extra={"metadata": feedback.summary(state, POLICY)})

            await handle_event(event, PatternFeedback, "pattern-feedback-learner", handle)

    async def flush(self) -> None:
        pass

    def save(self) -> None:
        for name, (partition, state) in self.changed.items():
            if held(feedback_inbox.get_topic_name(), partition):
                table_put(feedback_table, partition, name, state.dump())


FEEDBACK_COLUMNS = ("id", "pattern_name", "feedback_type", "user_weight", "is_correct",
                    "confidence_score", "metadata", "correlation_id")
FEEDBACK_SQL = """
SELECT record_pattern_feedback(id, pattern_name, feedback_type, user_weight, is_correct,
                               confidence_score, metadata, correlation_id)
FROM {stage} ORDER BY id"""


def feedback_row(fb: PatternFeedback) -> tuple:
    meta = {k: v for k, v in {"source": fb.source, "comment": fb.comment}.items() if v is not None}
    return (fb.id, fb.pattern_name, fb.feedback_type, fb.user_weight, fb.is_correct,
            fb.confidence, orjson.dumps(meta).decode(), fb.correlation_id)


@app.agent(feedback_inbox, name="pattern-feedback-sink")
async def pattern_feedback_sink(stream: StreamT) -> None:
    await run_sink(stream, "pattern-feedback-sink", PatternFeedback, PgBatchSink(
        settings.database_url, "pattern_feedback_log", FEEDBACK_COLUMNS, apply_sql=FEEDBACK_SQL,
        dedupe_key=lambda row: row[0], source_topic=PATTERN_FEEDBACK.name), feedback_row)
