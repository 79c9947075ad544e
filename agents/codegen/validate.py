"""Validation of generated modules: they compile, class hierarchies linearise (C3), and the
pattern detectors run on them; a quality score sums it up. Nothing generated is executed."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from agents.codegen.patterns import ModuleNodes, scan
from schemas.events import GeneratedFile, PatternFinding

SEVERITY_WEIGHT = {"info": 0.02, "warning": 0.08, "error": 0.2}


class ValidationFailed(Exception):
    pass


@dataclass
class ValidationReport:
    findings: list[PatternFinding] = field(default_factory=list)
    mro: dict[str, list[str]] = field(default_factory=dict)
    quality_score: float = 1.0


def c3_linearize(name: str, bases: dict[str, list[str]], _stack: tuple[str, ...] = ()) -> list[str]:
    """The method resolution order of `name` from its classes' base lists (like type())."""
    if name in _stack:
        raise ValidationFailed(f"class {name} inherits from itself")
    if name == "object":
        return ["object"]
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


def validate(files: list[GeneratedFile], suppressed: frozenset[str] = frozenset()) -> ValidationReport:
    modules: dict[str, ModuleNodes] = {}
    for f in files:
        try:  # compiling the AST checks what parsing alone does not (e.g. `return` outside def)
            tree = ast.parse(f.content, f.path)
            compile(tree, f.path, "exec", dont_inherit=True)
        except SyntaxError as exc:
            raise ValidationFailed(f"{f.path}:{exc.lineno}: does not compile: {exc.msg}") from None
        modules[f.path] = ModuleNodes(tree)  # walked once, for the classes and every detector
    bases: dict[str, list[str]] = {}
    for module in modules.values():
        for node in module.of(ast.ClassDef):
            names = []
            for b in node.bases:
                if not isinstance(b, ast.Name):
                    raise ValidationFailed(f"class {node.name}: unsupported base expression")
                names.append(b.id)
            bases[node.name] = names
    report = ValidationReport()
    for cls in bases:
        report.mro[cls] = c3_linearize(cls, bases)
    for path, module in modules.items():
        report.findings.extend(scan(module, path, suppressed))
    penalty = sum(SEVERITY_WEIGHT[f.severity] * f.confidence for f in report.findings)
    report.quality_score = round(max(0.0, 1.0 - penalty), 3)
    return report
