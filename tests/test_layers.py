"""The architecture as the folders tell it: flows -> tasks -> lagcl, never backwards; lagcl never imports
Prefect; no two modules import each other. Read from the source: every import statement, also the ones inside
functions, except those under `if TYPE_CHECKING:` (annotations only, never run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("lagcl", "tasks", "flows")
LAYER = {"lagcl": 0, "tasks": 1, "flows": 2}


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
