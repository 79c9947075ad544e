"""Generated node packages carry their own tests: run them, in a subprocess, for every example
PRD and every node type × mixin, and check the names a PRD may give them."""

from __future__ import annotations

import ast
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from agents.codegen import contracts
from agents.codegen.catalogue import WRAP_ORDER
from agents.codegen.fanout import fan_out
from agents.codegen.render import DEFAULT_OPERATIONS, CodeGenerator
from agents.codegen.validate import validate
from schemas.events import MIXIN_CATALOGUE, NODE_TYPES, NodeTask, PrdNode, PrdSubmitted
from schemas.nodes import MIXIN_MEMBERS, NODE_MEMBERS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.json") if p.stem not in ("invalid", "hostile"))
ALLOWED_IMPORTS = {"__future__", "asyncio", "contextlib", "dataclasses", "datetime", "decimal",
                   "hashlib", "hmac", "inspect", "json", "logging", "os", "random", "time", "typing",
                   "uuid", "zlib", "collections", "cryptography", "pathlib", "pytest"}


@pytest.fixture(scope="module")
def generator() -> CodeGenerator:
    return CodeGenerator()


def _task(node_type: str, name: str, mixins: list[str], operations: list[str] | None = None) -> NodeTask:
    node = PrdNode(node_type=node_type, name=name, mixins=mixins,
                   operations=operations or ["first_op", "second_op"])
    return NodeTask(prd_id="prd-test", service_name="svc", title="Generated tests",
                    node_index=0, node_count=1, node=node)


def _write(generator: CodeGenerator, tasks: list[NodeTask], root: Path) -> list[Path]:
    """Each package in its own top-level folder, so one pytest run can import them all."""
    folders = []
    for i, task in enumerate(tasks):
        rendered = generator.generate(task)
        folder = root / f"pkg_{i:03d}_{task.node.node_type}"
        folder.mkdir(parents=True)
        for f in rendered.files:  # paths below the package's version folder (schemas/…)
            target = folder / f.path.split("/v1_0_0/", 1)[1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f.content)
        folders.append(folder)
    return folders


def _pytest(root: Path) -> subprocess.CompletedProcess:
    # -I: isolated from PYTHONPATH and the working directory; the packages need nothing of ours
    return subprocess.run([sys.executable, "-I", "-B", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-W", "ignore::DeprecationWarning", str(root)],
                          cwd=root, capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if not k.startswith("OMNISTREAM")})


def _example_tasks() -> list[NodeTask]:
    tasks = []
    for path in EXAMPLES:
        data = orjson.loads(path.read_bytes())
        for prd in data if isinstance(data, list) else [data]:
            tasks.extend(fan_out(PrdSubmitted.model_validate(prd)))
    # a node naming a mixin no template knows is built as a failure on purpose (experimental.json)
    return [t for t in tasks if set(t.node.mixins) <= set(MIXIN_CATALOGUE)]


def test_generated_tests_pass_for_every_example_prd_and_node_type_x_mixin(generator, tmp_path):
    tasks = _example_tasks()
    assert len(tasks) >= 10, "the examples should hold a few PRDs"
    for node_type in NODE_TYPES:
        tasks.append(_task(node_type, "Bare", []))
        tasks.append(_task(node_type, "Everything", list(MIXIN_CATALOGUE)))
        tasks.extend(_task(node_type, f"Only{m[5:]}", [m]) for m in MIXIN_CATALOGUE)
    folders = _write(generator, tasks, tmp_path)
    for task in tasks:  # clean code: only the scaffolds of effect/orchestrator operations say so
        findings = validate(generator.generate(task).files).findings
        assert {f.pattern_name for f in findings} <= {"stub_operation"}, [f.message for f in findings]
    for folder in folders:  # nothing of omnistream is imported by what it generates
        for source in folder.glob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.Import | ast.ImportFrom) and not getattr(node, "level", 0):
                    names = ([node.module] if isinstance(node, ast.ImportFrom)
                             else [a.name for a in node.names])
                    assert {n.split(".")[0] for n in names} <= ALLOWED_IMPORTS, (source, names)
    proc = _pytest(tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    passed = int(summary.split(" passed")[0].split()[-1])
    xfailed = int(summary.split(" xfailed")[0].split()[-1]) if " xfailed" in summary else 0
    # every package: a test per declared rule and per declared input, the unknown-operation
    # test, one test per mixin (MixinAuth: two, signatures and then replay/expiry/re-aiming);
    # and a strict xfail per scaffold
    plans = [contracts.plan(t.node, DEFAULT_OPERATIONS[t.node.node_type]) for t in tasks]
    expected = sum(sum(not p.scaffold for p in ops) + sum(p.has_input for p in ops) + 1
                   + len(t.node.mixins) + ("MixinAuth" in t.node.mixins)
                   for t, ops in zip(tasks, plans, strict=True))
    assert passed == expected, summary
    assert xfailed == sum(p.scaffold for ops in plans for p in ops), summary
    assert any(not p.scaffold for ops in plans for p in ops), "an example declares rules"


def test_a_generated_test_fails_when_its_mixin_does_nothing(generator, tmp_path):
    """The mixin tests check effects: strip the cache's `_invoke` and its test fails."""
    folder = _write(generator, [_task("compute", "Cached", ["MixinCaching"])], tmp_path)[0]
    mixins = folder / "mixins.py"
    source = mixins.read_text()
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MixinCaching")
    cls.body = [n for n in cls.body if not (isinstance(n, ast.AsyncFunctionDef) and n.name == "_invoke")]
    mixins.write_text(ast.unparse(tree))
    proc = _pytest(tmp_path)
    assert proc.returncode == 1
    assert "test_a_cached_second_call_does_not_reach_the_operation FAILED" in proc.stdout or \
        "FAILED" in proc.stdout and "cached_second_call" in proc.stdout, proc.stdout[-3000:]


def test_reserved_member_lists_match_the_generated_classes(generator, tmp_path):
    """schemas.nodes names exactly the public members a node and each mixin define."""
    for node_type in NODE_TYPES:
        ops = ["first_op", "second_op"]
        folder = _write(generator, [_task(node_type, "Everything", list(MIXIN_CATALOGUE), ops)],
                        tmp_path / node_type)[0]
        sys.path.insert(0, str(folder.parent))
        try:
            pkg = importlib.import_module(folder.name)
            mixins = importlib.import_module(f"{folder.name}.mixins")
        finally:
            sys.path.remove(str(folder.parent))
        cls = next(getattr(pkg, n) for n in pkg.__all__ if n != "REQUIREMENTS")
        public = {n for n in dir(cls) if not n.startswith("_")}
        declared = set(NODE_MEMBERS).union(*MIXIN_MEMBERS.values())
        assert public - set(ops) <= declared, public - set(ops) - declared
        for name, members in MIXIN_MEMBERS.items():
            own = {n for n in vars(getattr(mixins, name)) if not n.startswith("_")}
            assert own == members, (name, own ^ members)
        # the wrapping mixins are the outermost bases, in the documented order
        assert [c.__name__ for c in cls.__mro__[1:1 + len(WRAP_ORDER)]] == list(WRAP_ORDER)
        shutil.rmtree(folder.parent)


@pytest.mark.parametrize(("operation", "mixins", "owner"), [
    ("execute_effect", [], "the node class"), ("elapsed_ms", [], "the node class"),
    ("log", ["MixinLogging"], "MixinLogging"), ("with_retry", ["MixinRetry"], "MixinRetry"),
    ("seal", ["MixinCaching", "MixinEncryption"], "MixinEncryption"),
])
def test_an_operation_that_shadows_a_member_is_refused_naming_the_clash(operation, mixins, owner):
    with pytest.raises(ValidationError) as err:
        PrdNode(node_type="effect", name="Payments", mixins=mixins, operations=[operation])
    message = str(err.value)
    assert f"operation {operation!r} of node Payments would shadow {owner}.{operation}" in message
    PrdNode(node_type="effect", name="Payments", mixins=[], operations=["log"] if mixins else ["charge"])


def test_node_names_that_collide_after_snake_casing_are_refused():
    nodes = [{"node_type": "effect", "name": "HttpServer"}, {"node_type": "compute", "name": "HTTPServer"}]
    with pytest.raises(ValidationError) as err:
        PrdSubmitted(title="t", service_name="svc", nodes=nodes)
    assert "nodes HttpServer and HTTPServer are both 'http_server'" in str(err.value)
    PrdSubmitted(title="t", service_name="svc",
                 nodes=[nodes[0], {"node_type": "compute", "name": "HttpClient"}])


def _ledger_tasks() -> list[NodeTask]:
    prd = orjson.loads((ROOT / "examples" / "ledger.json").read_bytes())
    return fan_out(PrdSubmitted.model_validate(prd))


def _outcomes(proc: subprocess.CompletedProcess) -> dict[str, str]:
    """test name → PASSED / FAILED / XFAIL / XPASS, from `pytest -rA` output."""
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        parts = line.split(" ", 2)
        if len(parts) >= 2 and parts[0] in ("PASSED", "FAILED", "XFAIL", "XPASS", "ERROR"):
            out[parts[1].split("::")[-1]] = parts[0]
    return out


def _pytest_all(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-B", "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                           "-W", "ignore::DeprecationWarning", str(root)],
                          cwd=root, capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if not k.startswith("OMNISTREAM")})


def test_a_declared_refund_reducer_is_tested_on_its_arithmetic_and_a_flipped_sign_fails(generator, tmp_path):
    """`refund` declared as `subtract amount per customer_id`: its generated test checks balances
    computed by the generator from the rule; a mutant that adds instead fails that test only."""
    task = next(t for t in _ledger_tasks() if t.node.name == "CustomerTotals")
    folder = _write(generator, [task], tmp_path)[0]
    assert _pytest(tmp_path).returncode == 0
    node = folder / "node.py"
    source = node.read_text()
    body = source.split("def refund(", 1)[1].split("@staticmethod", 1)[0]
    assert "values.get(key, 0) - data.amount" in body
    node.write_text(source.replace(body, body.replace("values.get(key, 0) - data.amount",
                                                      "values.get(key, 0) + data.amount")))
    outcomes = _outcomes(_pytest_all(tmp_path))
    assert outcomes["test_operation_refund_follows_its_rule"] == "FAILED", outcomes
    assert outcomes["test_operation_charge_follows_its_rule"] == "PASSED", outcomes


def test_a_scaffold_is_a_strict_xfail_that_turns_red_once_written(generator, tmp_path):
    task = next(t for t in _ledger_tasks() if t.node.name == "CustomerTotals")
    rendered = generator.generate(task)
    assert rendered.scaffolds == ["close_account"]
    folder = _write(generator, [task], tmp_path)[0]
    outcomes = _outcomes(_pytest_all(tmp_path))
    assert outcomes["test_operation_close_account_is_written"] == "XFAIL", outcomes
    node = folder / "node.py"
    source = node.read_text()
    scaffold = "        raise ScaffoldOperation('close_account'"
    assert scaffold in source
    node.write_text(source.replace(scaffold, "        return {**state, 'closed': True}\n" + scaffold))
    outcomes = _outcomes(_pytest_all(tmp_path))
    assert outcomes["test_operation_close_account_is_written"] == "FAILED", outcomes  # XPASS(strict)


def test_declared_contracts_come_with_json_schemas_and_prd_text_stays_data(generator):
    hostile = '"""\nimport os; os.system("rm -rf /")\n"""'
    node = PrdNode.model_validate({"node_type": "compute", "name": "Quote", "operations": [
        {"name": "share", "description": hostile,
         "input": {"part": {"type": "decimal", "description": hostile}, "whole": "decimal"},
         "rule": "ratio part / whole"}]})
    task = NodeTask(prd_id="prd-test", service_name="svc", title="t", node_index=0, node_count=1, node=node)
    files = {f.path.split("/v1_0_0/", 1)[1]: f.content for f in generator.generate(task).files}
    schema = orjson.loads(files["schemas/share_input.json"])
    assert schema["required"] == ["part", "whole"] and schema["additionalProperties"] is False
    assert schema["properties"]["part"]["description"] == hostile
    assert orjson.loads(files["schemas/share_output.json"])["properties"]["ratio"]
    for name, content in files.items():
        if name.endswith(".py"):
            calls = {ast.unparse(n.func) for n in ast.walk(ast.parse(content)) if isinstance(n, ast.Call)}
            assert "os.system" not in calls, name
    with pytest.raises(ValidationError, match="unknown rule"):
        PrdNode.model_validate({"node_type": "compute", "name": "Quote", "operations": [
            {"name": "share", "input": {"part": "int", "whole": "int"}, "rule": "ratio part / whole or 1"}]})


@pytest.mark.parametrize(("operation", "why"), [
    ({"name": "refund", "input": {"amount": "money"}}, "unknown type 'money'"),
    ({"name": "refund", "input": {"amount": "decimal"}, "rule": "multiply amount"},
     "unknown rule 'multiply amount'"),
    ({"name": "refund", "input": {"amount": "str", "c": "str"}, "rule": "sum amount per c"},
     "rule sum needs a number, and 'amount' is str"),
    ({"name": "refund", "input": {"amount": "int"}, "rule": "sum total"},
     "reads 'total', which its input does not"),
    ({"name": "refund", "input": {"amount": "int"}, "output": {"x": "int"}, "rule": "sum amount"},
     "declare no output beside a rule"),
])
def test_a_prd_with_a_bad_declaration_is_refused_by_the_cli_in_one_line(tmp_path, operation, why):
    prd = {"title": "t", "service_name": "svc",
           "nodes": [{"node_type": "reducer", "name": "Totals", "operations": [operation]}]}
    path = tmp_path / "prd.json"
    path.write_bytes(orjson.dumps(prd))
    proc = subprocess.run([sys.executable, "-m", "streams.interfaces.cli", "publish", "prd", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert proc.returncode == 1, proc.stderr  # refused as bad input, before any connection
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and why in lines[0], proc.stderr
