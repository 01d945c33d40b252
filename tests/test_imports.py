"""The import graph: packages import only what docs/architecture.md allows, and no module
(counting imports inside functions too) is part of a cycle."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "model", "data_prep", "cluster", "pipeline")
# package -> the first-party packages it may import (ARCHITECTURE: pipeline -> {data_prep, model, cluster} -> core)
ALLOWED = {"core": set(), "model": {"core"}, "data_prep": {"core", "model"}, "cluster": {"core"},
           "pipeline": {"core", "model", "data_prep", "cluster"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """First-party modules `path` imports anywhere in its body (resolved to existing modules)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def test_packages_import_only_what_the_architecture_allows():
    bad = [f"{mod} imports {dep}" for mod, deps in graph().items() for dep in deps
           if dep.split(".")[0] != mod.split(".")[0] and dep.split(".")[0] not in ALLOWED[mod.split(".")[0]]]
    assert not bad, bad


def test_core_imports_only_the_standard_library():
    for path in (ROOT / "core").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top == "core", f"{path.name} imports {name}"


def test_no_module_is_part_of_an_import_cycle():
    deps = graph()
    # a package's __init__ is not an edge back to its own modules' parents (importing a.b runs a)
    state, cycles = {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(deps[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [node, dep]) if dep in stack else f"{node} -> {dep}")
            elif dep not in state:
                visit(dep, stack + [node])
        state[node] = "done"

    for name in sorted(deps):
        if name not in state:
            visit(name, [])
    assert not cycles, cycles
