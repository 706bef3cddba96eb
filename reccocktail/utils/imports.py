"""The imports of the package's modules, read from their source with `ast` (nothing is run).

Every import counts, at module level, inside functions and under `TYPE_CHECKING`. Two users:
the data stage hashes the code of every module it can import (`imported_files`), so its cache
key changes with any of them, a module added later included; and the import-graph test checks
the package's structure (no cycle, no private name used across modules, stages apart).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PACKAGE = PACKAGE_DIR.name


def package_modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Dotted module name -> source file, for every module under `package_dir`."""
    out = {}
    for p in sorted(package_dir.rglob("*.py")):
        parts = list(p.relative_to(package_dir.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


class ModuleImports:
    """What one module imports of its package: `edges` (module -> first line that imports
    it) and `private`, its uses of another module's `_name` ((line, text) each)."""

    def __init__(self, name: str, path: Path, modules: dict[str, Path]) -> None:
        self.edges: dict[str, int] = {}
        self.private: list[tuple[int, str]] = []
        root = name.split(".")[0]
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        aliases: dict[str, str] = {}  # a local name bound to a module of the package
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == root:
                        self._edge(a.name, path, node.lineno, modules)
                        if a.asname:
                            aliases[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, is_pkg, node)
                if base.split(".")[0] != root:
                    continue
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    if sub in modules:  # `from pkg.models import adapters`
                        self._edge(sub, path, node.lineno, modules)
                        aliases[a.asname or a.name] = sub
                        continue
                    self._edge(base, path, node.lineno, modules)
                    if a.name.startswith("_") and base != name:
                        self.private.append((node.lineno, f"from {base} import {a.name}"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and aliases.get(node.value.id, name) != name and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                self.private.append((node.lineno, f"{node.value.id}.{node.attr}"))

    def _edge(self, target: str, path: Path, line: int, modules: dict[str, Path]) -> None:
        if target not in modules:
            raise ValueError(f"{path}:{line}: imports {target}, which is not a module of the package")
        self.edges.setdefault(target, line)


def _absolute(name: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    parts = name.split(".") if is_pkg else name.split(".")[:-1]
    parts = parts[: len(parts) - node.level + 1]
    return ".".join(parts + ([node.module] if node.module else []))


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, ModuleImports]:
    """Every module of the package and what it imports."""
    modules = package_modules(package_dir)
    return {name: ModuleImports(name, path, modules) for name, path in modules.items()}


def reachable(edges: dict[str, set[str]], start: str) -> dict[str, list[str]]:
    """Every module `start` imports directly or transitively, with one import path to it."""
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop()
        for w in sorted(edges.get(v, ())):
            if w not in paths:
                paths[w] = [*paths[v], w]
                todo.append(w)
    del paths[start]
    return paths


def imported_files(start: str, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The source files of `start` and of every module of the package it imports, directly or
    transitively (only those are parsed)."""
    modules = package_modules(package_dir)
    if start not in modules:
        raise ValueError(f"{start}: not a module of {package_dir}")
    seen = {start}
    todo = [start]
    while todo:
        m = todo.pop()
        for w in ModuleImports(m, modules[m], modules).edges:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return sorted(modules[m] for m in seen)
