"""Validation of generated modules: they compile, class hierarchies linearise (C3), and the
pattern detectors run on them; a quality score sums it up. Nothing generated is executed."""

from __future__ import annotations

import ast
import functools
import json
from dataclasses import dataclass, field

from agents.codegen.patterns import TEST_IDIOMS, ModuleNodes, scan
from schemas.errors import OmnistreamError
from schemas.events import GeneratedFile, PatternFinding

SEVERITY_WEIGHT = {"info": 0.02, "warning": 0.08, "error": 0.2}


class ValidationFailed(OmnistreamError):
    pass


@dataclass
class ValidationReport:
    findings: list[PatternFinding] = field(default_factory=list)
    mro: dict[str, list[str]] = field(default_factory=dict)
    quality_score: float = 1.0


BUILTIN_ERRORS = frozenset({"Exception", "ValueError", "NotImplementedError"})


def c3_linearize(name: str, bases: dict[str, list[str]], _stack: tuple[str, ...] = ()) -> list[str]:
    """The method resolution order of `name` from its classes' base lists (like type())."""
    if name in _stack:
        raise ValidationFailed(f"class {name} inherits from itself")
    if name == "object":
        return ["object"]
    if name in BUILTIN_ERRORS and name not in bases:  # the contracts' errors derive from these
        return [name, "object"]
    if name not in bases:
        raise ValidationFailed(f"base class {name} is not defined in the generated modules")
    parents = bases[name] or ["object"]
    seqs = [c3_linearize(p, bases, (*_stack, name)) for p in parents] + [list(parents)]
    out = [name]
    while any(seqs):
        seqs = [s for s in seqs if s]
        for seq in seqs:
            head = seq[0]
            if not any(head in s[1:] for s in seqs):
                break
        else:
            raise ValidationFailed(f"cannot create a consistent MRO for {name}")
        out.append(head)
        seqs = [s[1:] if s[0] == head else s for s in seqs]
    return out


@functools.lru_cache(maxsize=1024)
def _check_module(content: str, suppressed: frozenset[str]
                  ) -> tuple[tuple[PatternFinding, ...], tuple[tuple[str, tuple[str, ...]], ...]]:
    """Compile one module and scan it: (findings without their file, classes and their bases).
    Cached by content: nodes of the same shape share most of their modules (models, mixins,
    tests), and a module's verdict depends on nothing else. Raises ValidationFailed."""
    try:  # compiling the AST checks what parsing alone does not (e.g. `return` outside def)
        tree = ast.parse(content, "<generated>")
        compile(tree, "<generated>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise ValidationFailed(f"{exc.lineno}: does not compile: {exc.msg}") from None
    module = ModuleNodes(tree)  # walked once, for the classes and every detector
    classes = []
    for node in module.of(ast.ClassDef):
        names = []
        for b in node.bases:
            if not isinstance(b, ast.Name):
                raise ValidationFailed(f"class {node.name}: unsupported base expression")
            names.append(b.id)
        classes.append((node.name, tuple(names)))
    return tuple(scan(module, None, suppressed)), tuple(classes)


def validate(files: list[GeneratedFile], suppressed: frozenset[str] = frozenset()) -> ValidationReport:
    report = ValidationReport()
    bases: dict[str, list[str]] = {}
    for f in files:
        if f.path.endswith(".json"):  # a contract's JSON Schema: data, checked as JSON
            try:
                json.loads(f.content)
            except ValueError as exc:
                raise ValidationFailed(f"{f.path}: not JSON: {exc}") from None
            continue
        try:
            findings, classes = _check_module(f.content, suppressed)
        except ValidationFailed as exc:
            raise ValidationFailed(f"{f.path}:{exc}") from None
        is_test = f.path.rsplit("/", 1)[-1].startswith("test_")
        report.findings.extend(x.model_copy(update={"file": f.path}) for x in findings
                               if not (is_test and x.pattern_name in TEST_IDIOMS))
        for name, names in classes:
            bases[name] = list(names)
    for cls in bases:
        report.mro[cls] = c3_linearize(cls, bases)
    penalty = sum(SEVERITY_WEIGHT[f.severity] * f.confidence for f in report.findings)
    report.quality_score = round(max(0.0, 1.0 - penalty), 3)
    return report
