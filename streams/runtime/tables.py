"""Names of the Faust tables, their changelogs and the internal topics around them.

Kept apart from the app so CLI commands (predict, replay) can find the changelogs and inboxes
without building a Faust app.
"""

from __future__ import annotations

MODEL_TABLE = "mixin-models"          # node type → signed model snapshot (raw bytes)
FEEDBACK_TABLE = "pattern-feedback"   # pattern name → posterior state (JSON)
ASSEMBLY_TABLE = "codegen-assembly"   # correlation id → assembly state (JSON)

# Honoured on internal topics only: result, sample, tick, install, node, window, command.
KIND_HEADER = "omnistream.kind"
SOURCE_HEADER = "omnistream.source"            # topic:partition:offset of the record a re-keying intake read
TRAINED_HEADER = "omnistream.trained-through"  # install: next offset per codegen.results partition


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
