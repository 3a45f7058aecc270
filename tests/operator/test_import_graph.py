"""The operator's import graph: no cycle runs through it, and importing it registers nothing (see
``test_operator_cli``). import-linter (``lint-imports``) checks the layer contracts; cycles it does not."""

from __future__ import annotations

import grimp


def _cycles(graph: grimp.ImportGraph) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if not child.startswith("flywheel"):
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for name in ("flywheel.a", "flywheel.b", "flywheel.c"):
        graph.add_module(name)
    graph.add_import(importer="flywheel.a", imported="flywheel.b")
    graph.add_import(importer="flywheel.b", imported="flywheel.a")
    graph.add_import(importer="flywheel.c", imported="flywheel.a")
    assert _cycles(graph) == [{"flywheel.a", "flywheel.b"}]


def test_no_import_cycle_runs_through_the_operator_or_the_api() -> None:
    graph = grimp.build_graph("flywheel")
    ours = ("flywheel.operator", "flywheel.kubeclient", "flywheel.api")
    involved = [sorted(c) for c in _cycles(graph) if any(m.startswith(ours) for m in c)]
    assert involved == []
