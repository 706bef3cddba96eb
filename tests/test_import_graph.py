"""The package's import structure, read from the source with `ast` (nothing is imported).

Every import counts, at module level, inside functions and under `TYPE_CHECKING`: a deferred
import hides a dependency from the reader but not from the design. Three rules:
- no import cycle between modules of `reccocktail`;
- no module uses another module's private (`_name`) name, by `from x import _y` or `m._y`;
- a stage module (`reccocktail.<pkg>.stage`) reaches neither `reccocktail.pipeline` nor another
  stage module through its imports, directly or through the modules it imports (stages meet
  only through the run folder and the modules they share).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "reccocktail"


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module under `package`."""
    out = {}
    for p in sorted(package.rglob("*.py")):
        parts = list(p.relative_to(package.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


class Imports:
    """What one module imports: `edges` (module -> first line), `private` uses of other
    modules' `_names` (line, text)."""

    def __init__(self, name: str, path: Path, modules: dict[str, Path]) -> None:
        self.edges: dict[str, int] = {}
        self.private: list[tuple[int, str]] = []
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        aliases: dict[str, str] = {}  # local name -> reccocktail module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == "reccocktail" or a.name.startswith("reccocktail."):
                        self._edge(a.name, node.lineno, modules)
                        if a.asname:
                            aliases[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom):
                base = self._absolute(name, is_pkg, node)
                if not (base == "reccocktail" or base.startswith("reccocktail.")):
                    continue
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    if sub in modules:  # `from reccocktail.models import adapters`
                        self._edge(sub, node.lineno, modules)
                        aliases[a.asname or a.name] = sub
                        continue
                    self._edge(base, node.lineno, modules)
                    if a.name.startswith("_") and base != name:
                        self.private.append((node.lineno, f"from {base} import {a.name}"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__") and aliases[node.value.id] != name):
                self.private.append((node.lineno, f"{node.value.id}.{node.attr}"))

    @staticmethod
    def _absolute(name: str, is_pkg: bool, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        parts = name.split(".") if is_pkg else name.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        return ".".join(parts + ([node.module] if node.module else []))

    def _edge(self, target: str, line: int, modules: dict[str, Path]) -> None:
        if target not in modules:
            raise AssertionError(f"import of {target} (line {line}): no such module in the package")
        self.edges.setdefault(target, line)


def import_graph() -> dict[str, Imports]:
    """Every module of the package and what it imports."""
    modules = _modules()
    return {name: Imports(name, path, modules) for name, path in modules.items()}


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


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, list[str]]:
    """Every module `start` imports directly or transitively, with one import path to it."""
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop()
        for w in sorted(graph[v]):
            if w not in paths:
                paths[w] = [*paths[v], w]
                todo.append(w)
    del paths[start]
    return paths


@pytest.fixture(scope="module")
def graph() -> dict[str, Imports]:
    return import_graph()


def _edges(graph: dict[str, Imports]) -> dict[str, set[str]]:
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
    # a cycle, a private import and a stage reaching another stage through a helper module
    g = {"a": {"b"}, "b": {"a"}, "c": set()}
    assert cycles(g) == [["a", "b"]]
    assert reachable({"x.stage": {"x.helper"}, "x.helper": {"y.stage"}, "y.stage": set()},
                     "x.stage")["y.stage"] == ["x.stage", "x.helper", "y.stage"]


def test_private_imports_are_detected(tmp_path):
    pkg = tmp_path / "reccocktail"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("_hidden = 1\n")
    (pkg / "sub" / "b.py").write_text(
        "def f():\n    from reccocktail.sub.a import _hidden\n    return _hidden\n")
    (pkg / "sub" / "c.py").write_text("from . import a\n\nx = a._hidden\n")
    modules = _modules(pkg)
    b = Imports("reccocktail.sub.b", pkg / "sub" / "b.py", modules)
    c = Imports("reccocktail.sub.c", pkg / "sub" / "c.py", modules)
    assert b.private == [(2, "from reccocktail.sub.a import _hidden")]
    assert c.private == [(3, "a._hidden")]
    assert set(b.edges) == {"reccocktail.sub.a"} and set(c.edges) == {"reccocktail.sub.a"}

