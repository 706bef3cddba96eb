"""The package's import structure, read from the source (`reccocktail.utils.imports`, nothing
is imported). Every import counts, at module level, inside functions and under
`TYPE_CHECKING`: a deferred import hides a dependency from the reader but not from the design.
- no import cycle between modules of `reccocktail`;
- no module uses another module's private (`_name`) name, by `from x import _y` or `m._y`;
- a stage module (`reccocktail.<pkg>.stage`) reaches neither `reccocktail.pipeline` nor another
  stage module through its imports, directly or through the modules it imports (stages meet
  only through the run folder and the modules they share).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reccocktail.utils.imports import ModuleImports, import_graph, package_modules, reachable


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or with a self-loop)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, ModuleImports]:
    return import_graph()


def _edges(graph: dict[str, ModuleImports]) -> dict[str, set[str]]:
    return {m: set(imp.edges) for m, imp in graph.items()}


def test_the_scan_sees_the_package(graph):
    # guards the rules below against passing on an empty or blind scan
    assert {"reccocktail.pipeline", "reccocktail.models.stage", "reccocktail.data.stage"} <= set(graph)
    edges = _edges(graph)
    assert "reccocktail.models.training" in edges["reccocktail.models.stage"]
    assert "reccocktail.models.training" in edges["reccocktail.baselines.p5"]  # inside a function
    assert "reccocktail.evaluation.config" in edges["reccocktail.evaluation.scorers"]  # TYPE_CHECKING


def test_no_import_cycle(graph):
    found = cycles(_edges(graph))
    detail = [" <-> ".join(c) + ": " + "; ".join(
        f"{m} -> {d} (line {graph[m].edges[d]})" for m in c for d in sorted(graph[m].edges)
        if d in c) for c in found]
    assert not found, "import cycles: " + " | ".join(detail)


def test_no_private_name_from_another_module(graph):
    bad = [f"{m}:{line}: {text}" for m, imp in sorted(graph.items()) for line, text in imp.private]
    assert not bad, "private names used across modules: " + "; ".join(bad)


def test_stages_reach_neither_the_pipeline_nor_another_stage(graph):
    edges = _edges(graph)
    stages = sorted(m for m in graph if m.endswith(".stage"))
    assert len(stages) >= 5
    bad = []
    for stage in stages:
        for target, path in reachable(edges, stage).items():
            if target == "reccocktail.pipeline" or target.endswith(".stage"):
                bad.append(" -> ".join(path))
    assert not bad, "a stage imports the orchestrator or another stage: " + "; ".join(bad)


def test_the_rules_catch_what_they_forbid():
    # a cycle, and a stage reaching another stage through a helper module
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert reachable({"x.stage": {"x.helper"}, "x.helper": {"y.stage"}, "y.stage": set()},
                     "x.stage")["y.stage"] == ["x.stage", "x.helper", "y.stage"]


def _tiny_package(root: Path) -> Path:
    pkg = root / "reccocktail"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("_hidden = 1\n")
    (pkg / "sub" / "b.py").write_text(
        "def f():\n    from reccocktail.sub.a import _hidden\n    return _hidden\n")
    (pkg / "sub" / "c.py").write_text("from . import a\n\nx = a._hidden\n")
    return pkg


def test_private_uses_and_function_level_imports_are_seen(tmp_path):
    pkg = _tiny_package(tmp_path)
    modules = package_modules(pkg)
    b = ModuleImports("reccocktail.sub.b", pkg / "sub" / "b.py", modules)
    c = ModuleImports("reccocktail.sub.c", pkg / "sub" / "c.py", modules)
    assert b.private == [(2, "from reccocktail.sub.a import _hidden")]
    assert c.private == [(3, "a._hidden")]
    assert set(b.edges) == {"reccocktail.sub.a"} and set(c.edges) == {"reccocktail.sub.a"}
    (pkg / "sub" / "d.py").write_text("import reccocktail.sub.gone\n")
    with pytest.raises(ValueError, match=r"d\.py:1: imports reccocktail\.sub\.gone"):
        import_graph(pkg)
