"""The floors of the tree, read from the source: schemas ← agents ← streams ← (the CLI, bench).

An import from a lower floor to a higher one (agents reaching into streams, the runtime into a
feature, a feature into the interfaces) fails here with the file and the import named."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOORS = {"schemas": 0, "agents": 1, "streams": 2, "bench": 3}
FEATURES = {"codegen", "learning", "monitoring", "alerting"}
# Between the features: the windows know none of their readers (the alert evaluator registers
# itself with them), learning knows no code generation (which reads its models).
FEATURE_FLOORS = {"monitoring": 0, "learning": 0, "alerting": 1, "codegen": 1}
# Inside streams: the runtime and the local infra under the features, the features under the
# interfaces (the CLI, web views, the Python client).
BASE = {"runtime", "infra", "config"}


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def arrows_against_the_floors(root: Path = ROOT) -> list[str]:
    bad = []
    for floor in FLOORS:
        for path in sorted((root / floor).rglob("*.py")):
            where = path.relative_to(root)
            part = where.parts[1].removesuffix(".py") if len(where.parts) > 1 else ""
            for name in imports(path):
                target = name.split(".")
                if target[0] in FLOORS and FLOORS[target[0]] > FLOORS[floor]:
                    if str(where) != "streams/interfaces/cli.py":  # the CLI runs the benchmarks
                        bad.append(f"{where} imports {name}")
                if floor == "streams" and target[0] == "streams" and len(target) > 1:
                    up = target[1] in FEATURES | {"interfaces"} if part in BASE else \
                        target[1] == "interfaces" if part in FEATURES else False
                    if part in FEATURES and target[1] in FEATURES and target[1] != part:
                        up = up or FEATURE_FLOORS[target[1]] >= FEATURE_FLOORS[part]
                    if up:
                        bad.append(f"{where} imports {name}")
    return bad


def test_no_import_goes_up_a_floor():
    assert arrows_against_the_floors() == []


def test_the_check_sees_an_arrow_up(tmp_path):
    """The check itself can fail: a domain module importing the runtime, and the runtime
    importing a feature, are both named."""
    for floor in FLOORS:
        (tmp_path / floor).mkdir()
    (tmp_path / "agents" / "bad.py").write_text("from streams.runtime.app import app\n")
    (tmp_path / "streams" / "runtime").mkdir()
    (tmp_path / "streams" / "runtime" / "bad.py").write_text("import streams.learning.topology\n")
    (tmp_path / "streams" / "monitoring").mkdir()
    (tmp_path / "streams" / "monitoring" / "bad.py").write_text(
        "from streams.alerting.topology import window_closed\nfrom streams.runtime import app\n")
    (tmp_path / "streams" / "alerting").mkdir()
    (tmp_path / "streams" / "alerting" / "fine.py").write_text("from streams.monitoring import topology\n")
    assert arrows_against_the_floors(tmp_path) == [
        "agents/bad.py imports streams.runtime.app",
        "streams/monitoring/bad.py imports streams.alerting.topology",
        "streams/runtime/bad.py imports streams.learning.topology"]
