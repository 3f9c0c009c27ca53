"""The package's import structure: the config is data and YAML plumbing that knows no method and
no scenario, and config, methods and scenario import each other in no circle."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
#: modules that must sit in no import cycle (with any other module of the package)
CORE = ("dfcil.config", "dfcil.methods", "dfcil.scenario")


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package under ``src/``."""
    modules = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file: at the top, inside
    functions, under ``if TYPE_CHECKING:``. ``from package import name`` counts as importing
    the submodule where ``name`` is one, else the package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _is_core(module: str) -> bool:
    return any(module == core or module.startswith(core + ".") for core in CORE)


def test_the_config_imports_no_method_and_no_scenario():
    graph = _import_graph()
    assert not {module for module in graph["dfcil.config"] if _is_core(module) and module != "dfcil.config"}


def test_config_methods_and_scenario_are_in_no_import_cycle():
    graph = _import_graph()
    assert len(graph) > 50 and "dfcil.methods.base" in graph["dfcil.methods"]  # the graph is the package's
    assert [cycle for cycle in _cycles(graph) if any(_is_core(module) for module in cycle)] == []


def test_imports_inside_functions_and_type_checking_blocks_count(tmp_path):
    module = tmp_path / "config.py"
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dfcil.scenario import Task\n"
                      "def f():\n    from dfcil.methods import parse\n    from . import schema\n")
    known = {name: Path() for name in ("dfcil", "dfcil.config", "dfcil.methods", "dfcil.scenario", "dfcil.schema")}
    assert _imports("dfcil.config", module, known) == {"dfcil.scenario", "dfcil.methods", "dfcil.schema"}


def test_the_cycle_finder_finds_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
