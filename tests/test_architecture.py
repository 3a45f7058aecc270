"""The layout's two structural rules: no import cycle among ``flywheel`` modules, and no module so
long that it mixes concerns (a short, explained allow-list aside)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import grimp

SRC = Path(__file__).resolve().parents[1] / "src" / "flywheel"
MAX_LINES = 520

# Modules allowed over MAX_LINES, each with why (the lead shrinks this list as the splits land).
LONG_MODULES: dict[str, str] = {}


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself
    (iterative Tarjan: the import graph is deep enough to exhaust recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterable[str]]] = []
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        work.append((root, iter(sorted(graph[root]))))
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in graph:
                    continue
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_cycles_and_only_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": set()}
    assert sorted(strongly_connected(graph)) == [["a", "b", "c"], ["e"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_flywheel_modules() -> None:
    """Module-level and function-level imports both count (as grimp sees them)."""
    imports = grimp.build_graph("flywheel", cache_dir=None)
    graph = {
        module: {m for m in imports.find_modules_directly_imported_by(module) if m.startswith("flywheel")}
        for module in imports.modules
        if module.startswith("flywheel")
    }
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def _long_modules() -> dict[str, int]:
    lengths = {
        path.relative_to(SRC).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in SRC.rglob("*.py")
    }
    return {name: n for name, n in sorted(lengths.items()) if n > MAX_LINES}


def test_no_module_is_too_long_unless_allowed() -> None:
    too_long = {name: n for name, n in _long_modules().items() if name not in LONG_MODULES}
    assert not too_long, f"modules over {MAX_LINES} lines (split them by concern): {too_long}"


def test_the_allow_list_names_only_long_modules() -> None:
    stale = sorted(name for name in LONG_MODULES if name not in _long_modules())
    assert not stale, f"allowed to be long but missing or short now, drop from LONG_MODULES: {stale}"
