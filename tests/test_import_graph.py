"""captionkit's modules import one another without cycles, and lower layers never import ``api`` or the root.

The graph is read from the source with ``ast``, not by importing it. What counts as an edge:
- every ``import`` and ``from ... import`` of a captionkit module, at module level AND inside functions: a lazy
  import only postpones a cycle to the first call;
- except those under ``if TYPE_CHECKING:``, which never run;
- ``from captionkit.a import b`` is an edge to ``captionkit.a.b`` when that is a module, else to ``captionkit.a``;
- an edge goes to the module named, not to the packages above it: a submodule importing its sibling through the
  package's ``__init__`` is how packages work, not a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import captionkit

ROOT = Path(captionkit.__file__).parent
TOP = ("captionkit", "captionkit.api")
# The layers below the API (lowest first): none of their modules may import the API or the package root. Above the
# API sit what uses a Captioner: jobs, serve, demo, benchmark, model_evaluation and cli.
LOWER = (
    "captionkit.errors",
    "captionkit.version",
    "captionkit.shards",
    "captionkit.images",
    "captionkit.hub",
    "captionkit.config",
    "captionkit.text",
    "captionkit.data",
    "captionkit.models",
    "captionkit.decoding",
    "captionkit.evaluation",
    "captionkit.attention",
    "captionkit.parts",
    "captionkit.export",
    "captionkit.loading",
    "captionkit.training",
)
# Known offenders being rewritten elsewhere (issue 21.1 splits the trainer); each entry is a module -> why.


def module_names() -> dict[str, Path]:
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except the bodies of ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (inner for child in node.orelse for inner in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {target for target in found if target in modules and target != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between captionkit's top-level packages and modules (``captionkit.data.formats.coco`` -> ``data``)."""
    packages: dict[str, set[str]] = {}
    for name, targets in graph.items():
        package = ".".join(name.split(".")[:2])
        packages.setdefault(package, set()).update(".".join(t.split(".")[:2]) for t in targets)
        packages[package].discard(package)
    return packages


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group (breadth first)."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & group):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"{sorted(group)} is not strongly connected")


def test_find_cycles_names_each_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    packages = package_graph(
        {"captionkit.text.styles": {"captionkit.data.records"}, "captionkit.data.dataset": {"captionkit.text"}}
    )
    assert find_cycles(packages) == [["captionkit.data", "captionkit.text", "captionkit.data"]]


def test_imports_of_counts_lazy_imports_but_not_type_checking(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from captionkit.api import Captioner\n"
        "def f():\n    from captionkit.jobs import outputs\n    import captionkit.errors\n",
        encoding="utf-8",
    )
    found = imports_of("captionkit.jobs.batch", source, module_names())
    assert found == {"captionkit.jobs.outputs", "captionkit.errors"}


def test_captionkit_has_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_captionkit_packages_have_no_import_cycles() -> None:
    cycles = find_cycles(package_graph(import_graph()))
    assert not cycles, "import cycles between packages:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_lower_layers_never_import_api_or_the_package_root() -> None:
    lower = [name for name in import_graph() if name.startswith(LOWER)]
    graph = import_graph()
    wrong = sorted(f"{name} imports {target}" for name in lower for target in graph[name] & set(TOP))
    assert not wrong, "\n".join(wrong)
