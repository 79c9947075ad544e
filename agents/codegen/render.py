"""Render a NodeTask into Python modules from the templates, through the template cache.

PRD text never becomes code: identifiers are re-checked here (`ident` filter), free text only
enters as `repr()` string literals (`pystr` filter), templates come only from the package
folder, and the environment is jinja2's immutable sandbox.
"""

from __future__ import annotations

import hashlib
import json
import keyword
import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from agents.codegen import contracts
from agents.codegen.cache import HashingLoader, TemplateCache
from agents.codegen.catalogue import MIXINS, class_order, imports_for, requirements_for
from schemas.errors import OmnistreamError
from schemas.events import GeneratedFile, NodeTask
from schemas.nodes import EXECUTE_METHOD, snake

TEMPLATES_DIR = Path(__file__).parent / "templates"
_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")
# Mixins whose generated tests use pytest's fixtures or `pytest.raises`.
PYTEST_MIXINS = frozenset({"MixinLogging", "MixinEncryption", "MixinCompression", "MixinSerialization",
                           "MixinConfig", "MixinTransaction"})
DEFAULT_OPERATIONS = {"effect": ["process"], "compute": ["transform"], "reducer": ["accumulate"],
                      "orchestrator": ["coordinate"]}


class GenerationFailed(OmnistreamError):
    """The PRD was valid but this node cannot be built (e.g. a mixin no template knows)."""


def ident(value: object) -> str:
    text = str(value)
    if not _IDENT.match(text) or keyword.iskeyword(text) or text.startswith("__"):
        raise GenerationFailed(f"{text[:80]!r} is not a safe identifier")
    return text


def pystr(value: object) -> str:
    """A Python string literal: repr() escapes quotes, backslashes and every non-printable
    character (newlines, U+2028/2029, NUL), so the text cannot end the literal."""
    return repr(str(value))


_PY_TYPE = "(str|int|float|bool|Decimal|datetime)"
_ANNOTATION = re.compile(rf"^({_PY_TYPE}( \| None)?|tuple\[{_PY_TYPE}, \.\.\.\])$")


def annotation(value: object) -> str:
    """A field's Python type, from the closed set the contracts use."""
    text = str(value)
    if not _ANNOTATION.match(text):
        raise GenerationFailed(f"{text[:80]!r} is not a contract type")
    return text


def build_environment(cache: TemplateCache, root: Path = TEMPLATES_DIR) -> ImmutableSandboxedEnvironment:
    loader = HashingLoader(root)
    env = ImmutableSandboxedEnvironment(
        loader=loader, undefined=StrictUndefined, autoescape=False, trim_blocks=True,
        lstrip_blocks=True, keep_trailing_newline=True, auto_reload=False, cache_size=0)
    cache.loader = loader
    env.cache = cache  # type: ignore[assignment]  # a bounded mapping jinja2 uses as a dict; every load, including {% extends %} parents, goes through the cache
    env.filters["pystr"] = pystr
    env.filters["ident"] = ident
    env.filters["pyliteral"] = contracts.pyliteral
    env.filters["annotation"] = annotation
    return env


@dataclass
class RenderedNode:
    class_name: str
    files: list[GeneratedFile]
    mixins: list[str]
    scaffolds: list[str] = field(default_factory=list)  # operations left for a developer
    operations: list[str] = field(default_factory=list)


class CodeGenerator:
    def __init__(self, cache: TemplateCache | None = None, root: Path = TEMPLATES_DIR):
        self.cache = cache if cache is not None else TemplateCache()
        self.env = build_environment(self.cache, root)

    def warm_up(self) -> int:
        """Compile every template once (at worker start) so the first PRD hits the cache."""
        assert self.env.loader is not None, "built with a loader"
        names = self.env.loader.list_templates()
        for name in names:
            self.env.get_template(name)
        return len(names)

    def render(self, name: str, **context: object) -> str:
        return self.env.get_template(name).render(**context)

    def generate(self, task: NodeTask) -> RenderedNode:
        node = task.node
        unknown = [m for m in node.mixins if m not in MIXINS]
        if unknown:
            raise GenerationFailed(
                f"unknown mixin {', '.join(unknown)}: the templates know {len(MIXINS)} mixins: "
                + ", ".join(sorted(MIXINS)))
        name = ident(node.name)
        class_name = f"Node{name}{node.node_type.capitalize()}"
        plans = contracts.plan(node, DEFAULT_OPERATIONS[node.node_type])
        operations = [p.name for p in plans]
        # What node.py and test_node.py take from contracts.py: the scaffolds' error, the input
        # classes the operations check, the output classes compute rules build.
        scaffold_error = ["ScaffoldOperation"] if any(p.scaffold for p in plans) else []
        contract_imports = sorted({"INPUTS", *scaffold_error, *(p.input_class for p in plans if p.has_input),
                                   *(p.output_class for p in plans
                                     if p.has_output and not p.scaffold and node.node_type == "compute")})
        description = node.description or task.prd_description
        ctx: dict[str, Any] = {
            "node_type": node.node_type, "node_name": name, "class_name": class_name,
            "base_class": f"Node{node.node_type.capitalize()}Base",
            "input_model": f"Model{name}Input", "output_model": f"Model{name}Output",
            "mixins": list(node.mixins), "bases": class_order(list(node.mixins)),
            "operations": operations, "plans": plans, "declared": any(p.declared for p in plans),
            "contract_imports": contract_imports,
            "contract_test_imports": sorted(p.input_class for p in plans if p.has_input),
            # what the modules import besides their templates' fixed lines (none unused: the
            # unused_import detector would say so)
            "uses_decimal_in_node": any(p.rule is not None and p.rule.kind == "sum"
                                        and p.node_type == "compute" and p.result_type() == "decimal"
                                        for p in plans),
            "test_uses_decimal": contracts.test_values_hold(plans, Decimal),
            "test_uses_datetime": contracts.test_values_hold(plans, datetime),
            "test_uses_pytest": any(p.scaffold for p in plans) or bool(PYTEST_MIXINS & set(node.mixins)),
            "execute": EXECUTE_METHOD[node.node_type],
            "prd_id": task.prd_id, "service_name": task.service_name, "title": task.title,
            "description": description,
            "module_doc": f"{class_name}: {task.title}\n\n{description}".rstrip(),
            "class_doc": description or f"{node.node_type.capitalize()} node {name}.",
        }
        mixin_ctx = {
            **ctx, "logger_name": f"{task.service_name}.{snake(name)}",
            "node_class": class_name,
            "auth_env": f"{task.service_name.upper()}_AUTH_KEY",
            "encryption_env": f"{task.service_name.upper()}_SEAL_KEY",
            "config_prefix": f"{task.service_name.upper()}_{snake(name).upper()}_",
        }
        sources = {"node.py": self.render(f"node/{node.node_type}.py.j2", **ctx),
                   "models.py": self.render("models.py.j2", **ctx),
                   "contracts.py": self.render("contracts.py.j2", **ctx)}
        requirements: list[str] = []
        if node.mixins:
            bodies = "\n\n\n".join(self.render(f"mixins/{m}.py.j2", **mixin_ctx).strip()
                                    for m in ctx["bases"])
            stdlib, third_party = imports_for(bodies)
            requirements = requirements_for(bodies)
            sources["mixins.py"] = self.render("mixins.py.j2", **ctx, stdlib_imports=stdlib,
                                               third_party_imports=third_party, mixin_bodies=bodies)
        sources["__init__.py"] = self.render("init.py.j2", **ctx, requirements=requirements)
        sources["test_node.py"] = self.render("test_node.py.j2", **ctx)
        folder = f"{task.service_name}/nodes/node_{snake(name)}_{node.node_type}/v1_0_0"
        files = [
            GeneratedFile(path=f"{folder}/{fname}", content=src,
                          sha256=hashlib.sha256(src.encode()).hexdigest())
            for fname, src in sources.items()
        ]
        for fname, schema in contracts.json_schemas(plans, class_name).items():
            body = json.dumps(schema, indent=2, sort_keys=True) + "\n"
            files.append(GeneratedFile(path=f"{folder}/schemas/{fname}", content=body,
                                       sha256=hashlib.sha256(body.encode()).hexdigest()))
        return RenderedNode(class_name, files, list(node.mixins),
                            scaffolds=[p.name for p in plans if p.scaffold], operations=operations)
