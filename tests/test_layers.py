"""The architecture as the folders tell it: scripts -> flows -> tasks -> lagcl, never backwards; lagcl never imports
Prefect; no import cycle of any length among the modules (scripts included), nor among lagcl's sub-packages and
top-level modules (no arrow runs back up, e.g. lagcl/rerank -> lagcl/recommend.py -> lagcl/rerank). Read from the
source: every import statement, also the ones inside functions, except those under `if TYPE_CHECKING:`
(annotations only, never run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("lagcl", "tasks", "flows", "scripts")
LAYER = {"lagcl": 0, "tasks": 1, "flows": 2, "scripts": 3}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module a file imports, absolute names (relative imports resolved)."""
    out: set[str] = set()
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
                   for stmt in node.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def project_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    return {name: {m for m in imports(path) if m in files and m != name} for name, path in files.items()}


GRAPH = project_graph()


def test_the_tree_has_modules_in_every_layer():
    assert {m.split(".")[0] for m in GRAPH} == set(PACKAGES) and len(GRAPH) > 40


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_imports_a_higher_layer(package):
    upward = sorted((m, dep) for m, deps in GRAPH.items() if m.split(".")[0] == package
                    for dep in deps if LAYER[dep.split(".")[0]] > LAYER[package])
    assert upward == []


def test_the_library_never_imports_prefect():
    files = [p for p in (REPO / "lagcl").rglob("*.py")]
    assert [str(p) for p in files if any(m == "prefect" or m.startswith("prefect.") for m in imports(p))] == []


def test_no_two_modules_import_each_other():
    mutual = sorted((a, b) for a, deps in GRAPH.items() for b in deps if a < b and a in GRAPH.get(b, ()))
    assert mutual == []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of `graph`, of any length: its strongly connected components of more than one node
    (Tarjan's algorithm, iterative), each sorted; a node importing itself is left out of the graph."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, deps = work[-1]
            for dep in deps:
                if dep not in index:
                    index[dep] = low[dep] = len(index)
                    stack.append(dep)
                    on_stack.add(dep)
                    work.append((dep, iter(sorted(graph.get(dep, ())))))
                    break
                if dep in on_stack:
                    low[node] = min(low[node], index[dep])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        component.append(m)
                        if m == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def unit(module: str) -> str:
    """The unit a module belongs to in the coarse graph: lagcl's sub-package (lagcl.rerank, lagcl.chain, ...) or
    top-level module (lagcl.recommend), or the top folder (tasks, flows, scripts)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "lagcl" else parts[0]


def test_cycles_finds_loops_of_any_length():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": set()}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycle_of_any_length():
    assert cycles(GRAPH) == []


def test_scripts_are_imported_by_no_layer():
    assert sorted((m, dep) for m, deps in GRAPH.items() if not m.startswith("scripts")
                  for dep in deps if dep.startswith("scripts")) == []


def test_no_arrow_runs_back_up_between_the_library_packages():
    coarse: dict[str, set[str]] = {}
    for m, deps in GRAPH.items():
        coarse.setdefault(unit(m), set()).update(unit(d) for d in deps if unit(d) != unit(m))
    assert cycles(coarse) == []
