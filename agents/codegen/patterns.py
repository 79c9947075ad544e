"""AST pattern detectors run on generated code. Each finding carries a confidence in [0, 1].

Detectors are small functions over a parsed module; `DETECTORS` lists them by name (the
names are what pattern feedback refers to).
"""

from __future__ import annotations

import ast
import builtins
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from schemas.events import PatternFinding


@dataclass(frozen=True)
class Hit:
    line: int
    message: str


class ModuleNodes:
    """Every node of one module, walked once, grouped by type: each detector looks only at the
    kinds of node it is about instead of testing every node of the module again."""

    def __init__(self, tree: ast.Module):
        self.tree = tree
        self.by_type: dict[type, list] = defaultdict(list)
        for node in ast.walk(tree):
            self.by_type[type(node)].append(node)
        self.calls = [(node, _call_name(node)) for node in self.of(ast.Call)]
        self.functions = self.of(ast.FunctionDef, ast.AsyncFunctionDef)

    def of(self, *types: type) -> list:
        if len(types) == 1:
            return self.by_type.get(types[0], [])
        return [node for t in types for node in self.by_type.get(t, [])]


Detector = Callable[[ModuleNodes], Iterator[Hit]]


@dataclass(frozen=True)
class PatternSpec:
    name: str
    detect: Detector
    confidence: float
    severity: Literal["info", "warning", "error"]


def _call_name(node: ast.Call) -> str:
    """Dotted name of what is called: `time.sleep`, `open`, `self.fetch`."""
    parts = []
    target = node.func
    while isinstance(target, ast.Attribute):
        parts.append(target.attr)
        target = target.value
    if isinstance(target, ast.Name):
        parts.append(target.id)
    return ".".join(reversed(parts))


def _own_body(fn: ast.AST) -> Iterator[ast.AST]:
    """Nodes of a function's body, not descending into nested functions or lambdas."""
    stack = list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            stack.extend(ast.iter_child_nodes(node))


def bare_except(m: ModuleNodes) -> Iterator[Hit]:
    for node in m.of(ast.ExceptHandler):
        if node.type is None:
            yield Hit(node.lineno, "bare `except:` also catches KeyboardInterrupt and SystemExit")


def broad_except_pass(m: ModuleNodes) -> Iterator[Hit]:
    for node in m.of(ast.ExceptHandler):
        if (isinstance(node.type, ast.Name)
                and node.type.id in {"Exception", "BaseException"}
                and all(isinstance(s, ast.Pass) for s in node.body)):
            yield Hit(node.lineno, f"`except {node.type.id}: pass` silently swallows every error")


def mutable_default_argument(m: ModuleNodes) -> Iterator[Hit]:
    for fn in m.functions:
        for default in [*fn.args.defaults, *fn.args.kw_defaults]:
            if isinstance(default, ast.List | ast.Dict | ast.Set) or (
                    isinstance(default, ast.Call) and _call_name(default) in {"list", "dict", "set"}):
                yield Hit(default.lineno, f"mutable default argument in {fn.name}() is shared between calls")


def eval_exec(m: ModuleNodes) -> Iterator[Hit]:
    for node, name in m.calls:
        if name in {"eval", "exec", "__import__", "compile"}:
            yield Hit(node.lineno, f"{name}() runs code built at run time")


BLOCKING = {"time.sleep", "requests.get", "requests.post", "requests.put", "requests.delete",
            "requests.request", "urllib.request.urlopen", "urlopen", "subprocess.run",
            "subprocess.call", "subprocess.check_output", "os.system", "input", "open",
            "socket.create_connection"}


def blocking_call_in_async(m: ModuleNodes) -> Iterator[Hit]:
    if not any(name in BLOCKING for _, name in m.calls):
        return
    for fn in m.of(ast.AsyncFunctionDef):
        for node in _own_body(fn):
            if isinstance(node, ast.Call) and _call_name(node) in BLOCKING:
                yield Hit(node.lineno, f"blocking {_call_name(node)}() inside async {fn.name}()")


def missing_await(m: ModuleNodes) -> Iterator[Hit]:
    """A coroutine function of this module called as a bare statement, never awaited."""
    coroutines = {fn.name for fn in m.of(ast.AsyncFunctionDef)}
    for node in m.of(ast.Expr):
        if isinstance(node.value, ast.Call):
            name = _call_name(node.value).rsplit(".", 1)[-1]
            if name in coroutines or _call_name(node.value) == "asyncio.sleep":
                yield Hit(node.lineno, f"coroutine {name}() is called but never awaited")


_SECRET_NAME = re.compile(r"(pass(word|wd)?|secret|token|api_?key|private_?key|credential)s?$", re.I)


def hardcoded_secret(m: ModuleNodes) -> Iterator[Hit]:
    for node in m.of(ast.Assign, ast.AnnAssign, ast.keyword):
        targets: list[ast.expr] = []
        value = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        elif isinstance(node, ast.keyword) and node.arg:
            if _SECRET_NAME.search(node.arg) and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, str) and len(node.value.value) >= 4:
                yield Hit(node.value.lineno, f"hard-coded secret passed as {node.arg}=")
            continue
        if not (isinstance(value, ast.Constant) and isinstance(value.value, str) and len(value.value) >= 4):
            continue
        for target in targets:
            name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", "")
            if name and _SECRET_NAME.search(name):
                yield Hit(node.lineno, f"hard-coded secret assigned to {name}")


_BUILTINS = {n for n in dir(builtins) if not n.startswith("_")} - {
    "copyright", "credits", "license", "exit", "quit"}


def shadowed_builtin(m: ModuleNodes) -> Iterator[Hit]:
    for node in m.functions + m.of(ast.Name):
        names: list[tuple[str, int]] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            names += [(a.arg, node.lineno) for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.append((node.id, node.lineno))
        for name, line in names:
            if name in _BUILTINS:
                yield Hit(line, f"`{name}` shadows the builtin of that name")


def unused_import(m: ModuleNodes) -> Iterator[Hit]:
    imports = m.of(ast.Import, ast.ImportFrom)
    if not imports:
        return
    used = {n.id for n in m.of(ast.Name)}
    used |= {n.value.id for n in m.of(ast.Attribute) if isinstance(n.value, ast.Name)}
    exported: set[str] = set()
    for node in m.tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                 for t in node.targets):
            exported |= {e.value for e in getattr(node.value, "elts", [])
                         if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    for node in imports:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        for alias in node.names:
            bound = (alias.asname or alias.name).split(".")[0]
            if bound != "*" and bound not in used and bound not in exported:
                yield Hit(node.lineno, f"`{bound}` is imported but never used")


def wildcard_import(m: ModuleNodes) -> Iterator[Hit]:
    for node in m.of(ast.ImportFrom):
        if any(a.name == "*" for a in node.names):
            yield Hit(node.lineno, f"`from {node.module} import *` hides where names come from")


def print_call(m: ModuleNodes) -> Iterator[Hit]:
    for node, name in m.calls:
        if name == "print":
            yield Hit(node.lineno, "print() in library code; use logging")


def global_statement(m: ModuleNodes) -> Iterator[Hit]:
    for node in m.of(ast.Global):
        yield Hit(node.lineno, f"`global {', '.join(node.names)}` makes state hard to follow")


def compare_to_none(m: ModuleNodes) -> Iterator[Hit]:
    for node in m.of(ast.Compare):
        for op, right in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.Eq | ast.NotEq) and isinstance(right, ast.Constant) and right.value is None:
                yield Hit(node.lineno, "compare to None with `is` / `is not`")


def shell_injection(m: ModuleNodes) -> Iterator[Hit]:
    for node, name in m.calls:
        if name.startswith(("subprocess.", "os.popen")):
            for kw in node.keywords:
                if kw.arg == "shell" and isinstance(kw.value, ast.Constant) and kw.value.value is True:
                    yield Hit(node.lineno, "subprocess with shell=True")


def weak_hash(m: ModuleNodes) -> Iterator[Hit]:
    for node, name in m.calls:
        if name in {"hashlib.md5", "hashlib.sha1"}:
            yield Hit(node.lineno, f"{name}() is not collision resistant")


def unsafe_deserialization(m: ModuleNodes) -> Iterator[Hit]:
    for node, name in m.calls:
        if name in {"pickle.loads", "pickle.load", "marshal.loads", "yaml.load"}:
            yield Hit(node.lineno, f"{name}() can run code from its input")


def assert_for_validation(m: ModuleNodes) -> Iterator[Hit]:
    for node in m.of(ast.Assert):
        yield Hit(node.lineno, "assert is stripped under -O; raise an exception to validate")


def _is_sleep_zero(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Await)
            and isinstance(stmt.value.value, ast.Call) and _call_name(stmt.value.value) == "asyncio.sleep"
            and len(stmt.value.value.args) == 1 and isinstance(stmt.value.value.args[0], ast.Constant)
            and stmt.value.value.args[0].value == 0)


def _raises_scaffold(body: list[ast.stmt]) -> bool:
    """`[Contract.from_payload(...)]; raise ScaffoldOperation(...)`: a generated scaffold."""
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Call) \
            and _call_name(body[0].value).endswith(".from_payload"):
        body = body[1:]
    return (len(body) == 1 and isinstance(body[0], ast.Raise) and isinstance(body[0].exc, ast.Call)
            and _call_name(body[0].exc) == "ScaffoldOperation")


def stub_operation(m: ModuleNodes) -> Iterator[Hit]:
    """A scaffold left as is: the body only raises the scaffold's error (what the generator
    writes for an operation no rule was declared for), or only yields to the loop and returns
    a literal (a hand-written placeholder). Teams that find the reminder noisy say so through
    pattern feedback, which is how it gets suppressed."""
    for fn in m.functions:
        body = list(fn.body)
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            body = body[1:]
        if _raises_scaffold(body):
            yield Hit(fn.lineno, f"`{fn.name}` is a scaffold: write its body")
        elif (len(body) == 2 and _is_sleep_zero(body[0]) and isinstance(body[1], ast.Return)
                and isinstance(body[1].value, ast.Dict)
                and not any(isinstance(n, ast.Call | ast.Await) for n in ast.walk(body[1].value))):
            yield Hit(fn.lineno, f"`{fn.name}` is still a placeholder: write the real call")


DETECTORS: tuple[PatternSpec, ...] = (
    PatternSpec("bare_except", bare_except, 0.95, "warning"),
    PatternSpec("broad_except_pass", broad_except_pass, 0.9, "warning"),
    PatternSpec("mutable_default_argument", mutable_default_argument, 0.95, "warning"),
    PatternSpec("eval_exec", eval_exec, 0.98, "error"),
    PatternSpec("blocking_call_in_async", blocking_call_in_async, 0.85, "error"),
    PatternSpec("missing_await", missing_await, 0.8, "error"),
    PatternSpec("hardcoded_secret", hardcoded_secret, 0.7, "error"),
    PatternSpec("shadowed_builtin", shadowed_builtin, 0.75, "info"),
    PatternSpec("unused_import", unused_import, 0.9, "info"),
    PatternSpec("wildcard_import", wildcard_import, 0.95, "warning"),
    PatternSpec("print_call", print_call, 0.6, "info"),
    PatternSpec("global_statement", global_statement, 0.7, "info"),
    PatternSpec("compare_to_none", compare_to_none, 0.9, "info"),
    PatternSpec("shell_injection", shell_injection, 0.9, "error"),
    PatternSpec("weak_hash", weak_hash, 0.6, "warning"),
    PatternSpec("unsafe_deserialization", unsafe_deserialization, 0.85, "error"),
    PatternSpec("assert_for_validation", assert_for_validation, 0.5, "info"),
    PatternSpec("stub_operation", stub_operation, 0.5, "info"),
)
BY_NAME = {p.name: p for p in DETECTORS}
# Not findings in a pytest module: `assert` is how its tests check.
TEST_IDIOMS = frozenset({"assert_for_validation"})


def scan(module: ast.Module | ModuleNodes, file: str | None = None,
         suppressed: frozenset[str] = frozenset()) -> list[PatternFinding]:
    """Run every detector not suppressed (by pattern feedback) on one parsed module."""
    findings = []
    nodes = module if isinstance(module, ModuleNodes) else ModuleNodes(module)
    is_test = file is not None and file.rsplit("/", 1)[-1].startswith("test_")
    for spec in DETECTORS:
        if spec.name in suppressed or (is_test and spec.name in TEST_IDIOMS):
            continue
        for hit in spec.detect(nodes):
            findings.append(PatternFinding(pattern_name=spec.name, message=hit.message,
                                           line=hit.line, confidence=spec.confidence,
                                           severity=spec.severity, file=file))
    return findings
