"""The repository's own imports: no cycle between its modules, directly or through others, counting the imports
inside functions too (a deferred import that closes a cycle is still a cycle)."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

SKIPPED = {".venv", "tests", "__pycache__", ".git"}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the project (tests excluded)."""
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if SKIPPED & set(rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The project modules an import statement names (``from pkg import sub`` names pkg.sub when it is a module)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known] or [base]
    else:
        return []
    found = []
    for name in names:
        while name and name not in known:  # import a.b.c of a module a.b: the edge goes to a.b
            name = name.rpartition(".")[0]
        if name:
            found.append(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            for target in _imported(node, module, path.name == "__init__.py", known):
                # A package's own __init__ importing its submodules (registration), or a submodule reaching its
                # parent package, is how Python packages load, not a cycle between modules.
                if target != module and not target.startswith(module + ".") and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_another_that_imports_it_back():
    graph = import_graph()
    assert {"ffpvad.training.engine", "ffpvad.methods.base", "ffpvad.evaluation.evaluate",
            "ffpvad.training.distributed", "ffpvad.runtime", "ffpvad.data.dataset", "ffpvad.data.labels"} <= set(graph)
    # the graph sees real edges
    assert "ffpvad.config" in graph["ffpvad.methods.base"]
    assert "ffpvad.data.dataset" in graph["ffpvad.evaluation.evaluate"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
