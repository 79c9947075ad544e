"""Names of the Faust tables, their changelogs and the internal topics around them.

Kept apart from the app so CLI commands (predict, replay) can find the changelogs and inboxes
without building a Faust app.
"""

from __future__ import annotations

from enum import StrEnum

MODEL_TABLE = "mixin-models"          # the shared model's key → signed model snapshot (raw bytes)
FEEDBACK_TABLE = "pattern-feedback"   # pattern name → posterior state (JSON)
ASSEMBLY_TABLE = "codegen-assembly"   # correlation id → assembly state (JSON)

KIND_HEADER = "omnistream.kind"  # a ControlKind; honoured on internal topics only
SOURCE_HEADER = "omnistream.source"            # topic:partition:offset of the record a re-keying intake read
TRAINED_HEADER = "omnistream.trained-through"  # install: next offset per codegen.results partition


class ControlKind(StrEnum):
    """What a record on an internal topic is, in its KIND_HEADER (processing.control_kind reads
    it). Everything else a worker reads is data from outside, whatever its headers say."""

    RESULT = "result"    # learning inbox: a codegen.results record re-keyed to the shared model
    INSTALL = "install"  # learning inbox: a replayed, signed model to swap in (TRAINED_HEADER)
    NODE = "node"        # assembler inbox: a generated node re-keyed by correlation id
    SAMPLE = "sample"    # metrics inbox: a sample re-keyed by its metric name
    WINDOW = "window"    # alert inbox: a closed metric window
    COMMAND = "command"  # alert inbox: ack / resolve / silence from alerts.commands
    TICK = "tick"        # any inbox: its timer's tick (assembler deadlines, idle windows, alerts)

    @property
    def header(self) -> bytes:
        return self.value.encode()


def changelog_topic(app_id: str, table: str) -> str:
    return f"{app_id}-{table}-changelog"  # Faust's naming


def results_inbox(app_id: str) -> str:
    return f"{app_id}-mixin-results"


def feedback_inbox(app_id: str) -> str:
    return f"{app_id}-pattern-feedback"


def assembler_inbox(app_id: str) -> str:
    return f"{app_id}-assembler-inbox"

WINDOW_TABLE = "metric-windows"       # series|size|start → open window aggregate (JSON)


def metrics_inbox(app_id: str) -> str:
    return f"{app_id}-metric-series"

ALERT_TABLE = "alert-state"           # "engine" → every alert, group and silence (JSON)


def alert_inbox(app_id: str) -> str:
    return f"{app_id}-alert-engine"
