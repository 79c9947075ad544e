"""Codegen without Kafka: rendering, the template cache, validation, injection safety."""

from __future__ import annotations

import ast
import shutil
import threading
import time

import pytest

from agents.codegen import assembler
from agents.codegen.cache import TemplateCache
from agents.codegen.catalogue import class_order
from agents.codegen.fanout import fan_out
from agents.codegen.patterns import BY_NAME, DETECTORS, scan
from agents.codegen.pipeline import generate_node
from agents.codegen.render import TEMPLATES_DIR, CodeGenerator, GenerationFailed
from agents.codegen.validate import ValidationFailed, c3_linearize, validate
from schemas.events import MIXIN_CATALOGUE, GeneratedNode, NodeTask, PrdNode, PrdSubmitted

NODE_TYPES = ["effect", "compute", "reducer", "orchestrator"]


def _prd(**overrides) -> PrdSubmitted:
    data = {"title": "Orders", "service_name": "orders", "description": "Order service",
            "nodes": [{"node_type": t, "name": f"Part{t.capitalize()}",
                       "mixins": list(MIXIN_CATALOGUE[i * 6:(i + 1) * 6]),
                       "operations": ["first_step", "second_step"]}
                      for i, t in enumerate(NODE_TYPES)]}
    data.update(overrides)
    return PrdSubmitted.model_validate(data)


@pytest.fixture(scope="module")
def generator() -> CodeGenerator:
    g = CodeGenerator()
    g.warm_up()
    return g


def test_every_node_type_and_mixin_compiles_with_a_clean_mro(generator):
    for task in fan_out(_prd()):
        rendered = generator.generate(task)
        report = validate(rendered.files)
        mro = report.mro[rendered.class_name]
        assert mro[1:1 + len(task.node.mixins)] == class_order(list(task.node.mixins))
        assert mro[-2:] == [f"Node{task.node.node_type.capitalize()}Base", "object"]
        # Clean code; operations named with no rule are scaffolds, and say so.
        stubs = len(task.node.operations)
        assert rendered.scaffolds == task.node.operation_names
        assert [f.pattern_name for f in report.findings] == ["stub_operation"] * stubs, \
            [f.message for f in report.findings]
        assert report.quality_score == round(1.0 - 0.01 * stubs, 3)
        assert {f.path.rsplit("/", 1)[1] for f in rendered.files} == {
            "node.py", "models.py", "contracts.py", "mixins.py", "__init__.py", "test_node.py"}


def test_unknown_mixin_gives_a_failed_node_and_result(generator):
    task = fan_out(_prd(nodes=[{"node_type": "effect", "name": "Quantum",
                                "mixins": ["MixinQuantumEntanglement", "MixinRetry"]}]))[0]
    with pytest.raises(GenerationFailed, match="unknown mixin MixinQuantumEntanglement") as failed:
        generator.generate(task)
    assert "24 mixins: MixinAudit, MixinAuth," in str(failed.value)  # says what would work
    node, result = generate_node(generator, task, "w1")
    assert not node.success and node.files == [] and "MixinQuantumEntanglement" in node.failure_reason
    assert not result.success and result.mixins == ["MixinQuantumEntanglement", "MixinRetry"]
    assert result.correlation_id == task.correlation_id


ATTACKS = [
    "{{ 7*7 }}", "{% for x in range(3) %}X{% endfor %}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "'); import os; os.system('id'); ('", '"); __import__("os").system("id") #',
    "'''\nimport os\nos.system('id')\n'''", '"""\nimport os\nos.system("id")\n"""',
    "line\u2028__import__('os').system('id')", "line\u2029exec('1')", "tab\tvtab\x0bff\x0cnul\x00end",
    "\\'; exec('print(1)'); \\'", "\r\nimport sys\r\n", "# comment\nimport os", "x" * 5000,
    "\\N{LATIN SMALL LETTER A}", "\U0001F600 emoji",
]


def _shape(source: str) -> str:
    """The module's AST with every string constant blanked: only text may differ."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node.value = ""
    return ast.dump(tree, include_attributes=False)


@pytest.mark.parametrize("attack", ATTACKS)
def test_prd_text_never_becomes_code(generator, attack):
    benign = fan_out(_prd(title="Benign", description="benign"))
    hostile = fan_out(_prd(title=attack[:200] or "x", description=attack,
                           nodes=[{**n.model_dump(), "description": attack[:2000]}
                                  for n in _prd().nodes]))
    for good, bad in zip(benign, hostile, strict=True):
        good_files = {f.path: f.content for f in generator.generate(good).files}
        bad_files = {f.path: f.content for f in generator.generate(bad).files}
        assert good_files.keys() == bad_files.keys()
        for path, source in bad_files.items():
            assert _shape(source) == _shape(good_files[path]), f"{attack!r} changed {path}"
            compile(source, path, "exec")
        node_src = bad_files[next(p for p in bad_files if p.endswith("node.py"))]
        constants = [n.value for n in ast.walk(ast.parse(node_src))
                     if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        assert attack[:2000] in constants  # the text survives verbatim, as data (not rendered)


def test_unsafe_identifier_is_refused_even_past_the_schema(generator):
    """Defence in depth: a NodeTask built without validation still cannot inject a name."""
    task = fan_out(_prd())[0]
    evil_node = PrdNode.model_construct(node_type="effect", name="X(): pass\nimport os\nclass Y",
                                        mixins=[], operations=[], description=None)
    evil = NodeTask.model_construct(**{**dict(task), "node": evil_node})
    with pytest.raises(GenerationFailed, match="not a safe identifier"):
        generator.generate(evil)
    evil_op = PrdNode.model_construct(node_type="effect", name="Fine", mixins=[],
                                      operations=["__class__"], description=None)
    with pytest.raises(GenerationFailed):
        generator.generate(NodeTask.model_construct(**{**dict(task), "node": evil_op}))


def test_sandbox_refuses_unsafe_template_access(generator):
    from jinja2.exceptions import SecurityError

    template = generator.env.from_string("{{ x.__class__.__mro__ }}")  # our own code only
    with pytest.raises(SecurityError):
        template.render(x="")


# ------------------------------------------------------------------------------ cache


def _copy_templates(tmp_path):
    root = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, root)
    return root


def test_cache_hits_after_warm_up_and_counts(tmp_path):
    g = CodeGenerator(TemplateCache(), _copy_templates(tmp_path))
    n = g.warm_up()
    assert g.cache.totals()["misses"] == n and len(g.cache) == n
    g.generate(fan_out(_prd())[0])
    totals = g.cache.totals()
    assert totals["misses"] == n and totals["hits"] > 0


def test_cache_lru_by_count_and_bytes(tmp_path):
    cache = TemplateCache(max_entries=3)
    g = CodeGenerator(cache, _copy_templates(tmp_path))
    for name in ["init.py.j2", "models.py.j2", "mixins.py.j2", "node/base.py.j2"]:
        g.env.get_template(name)
    assert len(cache) == 3 and cache.stats["init.py.j2"].evictions == 1
    g.env.get_template("models.py.j2")  # hit, becomes most recent
    g.env.get_template("init.py.j2")  # miss, evicts the least recent (mixins.py.j2)
    assert cache.stats["mixins.py.j2"].evictions == 1 and cache.stats["models.py.j2"].hits == 1

    small = TemplateCache(max_bytes=1500)
    g2 = CodeGenerator(small, _copy_templates(tmp_path / "b"))
    for name in g2.env.loader.list_templates():
        g2.env.get_template(name)
        assert small.size_bytes <= 1500 or len(small) == 1
    assert sum(s.evictions for s in small.stats.values()) > 0


def test_cache_ttl_with_the_real_clock(tmp_path):
    cache = TemplateCache(ttl_s=0.05)
    g = CodeGenerator(cache, _copy_templates(tmp_path))
    g.env.get_template("init.py.j2")
    g.env.get_template("init.py.j2")
    time.sleep(0.1)
    g.env.get_template("init.py.j2")
    st = cache.stats["init.py.j2"]
    assert (st.hits, st.misses, st.evictions) == (1, 2, 1)


def test_cache_content_invalidation_by_sha256(tmp_path):
    root = _copy_templates(tmp_path)
    cache = TemplateCache(check_every_s=0.0)  # compare the file on every lookup
    g = CodeGenerator(cache, root)
    task = fan_out(_prd())[0]
    before = g.generate(task).files
    path = root / "init.py.j2"
    path.touch()  # new mtime, same content: still a hit
    g.env.get_template("init.py.j2")
    assert cache.stats["init.py.j2"].invalidations == 0
    path.write_text(path.read_text() + "\nGENERATED_MARKER = 1\n")
    after = g.generate(task).files
    assert cache.stats["init.py.j2"].invalidations == 1
    init_after = next(f for f in after if f.path.endswith("__init__.py"))
    assert "GENERATED_MARKER = 1" in init_after.content
    assert init_after.sha256 != next(f for f in before if f.path.endswith("__init__.py")).sha256


def test_cache_is_safe_under_threads(tmp_path):
    cache = TemplateCache(max_entries=10)
    g = CodeGenerator(cache, _copy_templates(tmp_path))
    tasks = fan_out(_prd())
    errors = []

    def work():
        try:
            for _ in range(20):
                for t in tasks:
                    g.generate(t)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    totals = cache.totals()
    assert len(cache) <= 10
    lookups = sum(s.hits + s.misses for s in cache.stats.values())
    assert lookups == totals["hits"] + totals["misses"] > 0


# ------------------------------------------------------------------------------ patterns

POSITIVE = {
    "bare_except": "try:\n    x = 1\nexcept:\n    x = 2\n",
    "broad_except_pass": "try:\n    x = 1\nexcept Exception:\n    pass\n",
    "mutable_default_argument": "def f(a=[]):\n    return a\n",
    "eval_exec": "def f(s):\n    return eval(s)\n",
    "blocking_call_in_async": "import time\nasync def f():\n    time.sleep(1)\n",
    "missing_await": "async def g():\n    return 1\nasync def f():\n    g()\n",
    "hardcoded_secret": "API_KEY = 'sk-live-1234567890'\n",
    "shadowed_builtin": "def f(list):\n    return list\n",
    "unused_import": "import os\nx = 1\n",
    "wildcard_import": "from os import *\n",
    "print_call": "print('hi')\n",
    "global_statement": "X = 1\ndef f():\n    global X\n    X = 2\n",
    "compare_to_none": "def f(x):\n    return x == None\n",
    "shell_injection": "import subprocess\nsubprocess.run('ls', shell=True)\n",
    "weak_hash": "import hashlib\nhashlib.md5(b'x')\n",
    "unsafe_deserialization": "import pickle\npickle.loads(b'')\n",
    "assert_for_validation": "def f(x):\n    assert x > 0\n",
    "stub_operation": ("import asyncio\nasync def f(p):\n    'Doc.'\n    await asyncio.sleep(0)\n"
                       "    return {'ok': True}\n"),
}
NEGATIVE = {
    "bare_except": "try:\n    x = 1\nexcept ValueError:\n    x = 2\n",
    "broad_except_pass": "import logging\ntry:\n    x = 1\nexcept Exception:\n    logging.exception('x')\n",
    "mutable_default_argument": "def f(a=None):\n    return a or []\n",
    "eval_exec": "def f(s):\n    return int(s)\n",
    "blocking_call_in_async": ("import asyncio, time\nasync def f():\n    await asyncio.sleep(1)\n"
                               "def g():\n    time.sleep(1)\n"),
    "missing_await": "async def g():\n    return 1\nasync def f():\n    await g()\n",
    "hardcoded_secret": "import os\nAPI_KEY = os.environ['API_KEY']\n",
    "shadowed_builtin": "def f(items):\n    return list(items)\n",
    "unused_import": "import os\nx = os.sep\n",
    "wildcard_import": "from os import sep\nx = sep\n",
    "print_call": "import logging\nlogging.info('hi')\n",
    "global_statement": "X = 1\ndef f():\n    return X\n",
    "compare_to_none": "def f(x):\n    return x is None\n",
    "shell_injection": "import subprocess\nsubprocess.run(['ls'])\n",
    "weak_hash": "import hashlib\nhashlib.sha256(b'x')\n",
    "unsafe_deserialization": "import json\njson.loads('1')\n",
    "assert_for_validation": "def f(x):\n    if x <= 0:\n        raise ValueError(x)\n",
    "stub_operation": ("import asyncio\nasync def f(c):\n    await asyncio.sleep(0)\n"
                       "    return {'n': await c.fetch()}\n"),
}


def test_there_are_at_least_twelve_detectors():
    assert len(DETECTORS) >= 12 and set(POSITIVE) == set(BY_NAME) == set(NEGATIVE)


@pytest.mark.parametrize("name", sorted(POSITIVE))
def test_detector_fires_on_its_pattern_only(name):
    hits = [f for f in scan(ast.parse(POSITIVE[name])) if f.pattern_name == name]
    assert hits and 0 < hits[0].confidence <= 1 and hits[0].line >= 1
    assert not [f for f in scan(ast.parse(NEGATIVE[name])) if f.pattern_name == name]
    assert not [f for f in scan(ast.parse(POSITIVE[name]), suppressed=frozenset({name}))
                if f.pattern_name == name]


def test_quality_score_drops_with_findings():
    from schemas.events import GeneratedFile

    bad = "import os\ndef f(a=[]):\n    try:\n        return eval(a)\n    except:\n        pass\n"
    f = GeneratedFile(path="x/bad.py", content=bad, sha256="0" * 64)
    report = validate([f])
    assert {x.pattern_name for x in report.findings} >= {"unused_import", "eval_exec", "bare_except"}
    assert report.quality_score < 0.7


def test_mro_conflict_and_syntax_error_are_refused():
    with pytest.raises(ValidationFailed, match="consistent MRO"):
        c3_linearize("C", {"A": [], "B": ["A"], "C": ["A", "B"]})
    with pytest.raises(ValidationFailed, match="not defined"):
        c3_linearize("C", {"C": ["Missing"]})
    from schemas.events import GeneratedFile

    with pytest.raises(ValidationFailed, match="does not compile"):
        validate([GeneratedFile(path="x/a.py", content="def f(:\n", sha256="0" * 64)])


# ------------------------------------------------------------------------------ assembler


def _node(task: NodeTask, success: bool = True) -> GeneratedNode:
    return GeneratedNode(correlation_id=task.correlation_id, prd_id=task.prd_id,
                         service_name=task.service_name, node_type=task.node.node_type,
                         node_name=task.node.name, node_index=task.node_index,
                         node_count=task.node_count, mixins=[], files=[], quality_score=1.0,
                         duration_ms=1.0, success=success, prd_nodes=task.prd_nodes,
                         submitted_at=task.submitted_at,
                         failure_reason=None if success else "boom")


def test_assembler_complete_partial_duplicate_and_deadline():
    tasks = fan_out(_prd())
    cid = str(tasks[0].correlation_id)
    now = time.time()
    state = None
    for t in tasks[:3]:
        state = assembler.add_node(state, _node(t), now, 60)
        state = assembler.add_node(state, _node(t), now, 60)  # redelivery
    assert not assembler.is_complete(state) and not assembler.is_overdue(state, now + 1)
    late = assembler.completed_event(state, cid, now + 61, "w", timed_out=True)
    assert assembler.is_overdue(state, now + 61)
    assert late.status == "timed_out" and late.missing == [tasks[3].node.name]
    state = assembler.add_node(state, _node(tasks[3], success=False), now, 60)
    assert assembler.is_complete(state)
    done = assembler.completed_event(state, cid, now + 1, "w")
    assert done.status == "partial" and done.failed == [tasks[3].node.name] and done.missing == []
    assert [n.node_name for n in done.nodes] == [t.node.name for t in tasks]
    assert done.id == assembler.completion_id(cid)  # deterministic across replays
    state = assembler.mark_done(state, now + 1)
    assert not assembler.is_complete(state) and not assembler.is_overdue(state, now + 1000)


def test_cache_compares_a_file_at_most_once_per_interval(tmp_path):
    root = _copy_templates(tmp_path)
    cache = TemplateCache(check_every_s=0.3)
    g = CodeGenerator(cache, root)
    first = g.env.get_template("init.py.j2")
    path = root / "init.py.j2"
    path.write_text(path.read_text() + "\nGENERATED_MARKER = 1\n")
    assert g.env.get_template("init.py.j2") is first  # within the interval: not compared yet
    time.sleep(0.35)
    assert g.env.get_template("init.py.j2") is not first
    assert cache.stats["init.py.j2"].invalidations == 1
