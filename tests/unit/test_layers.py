"""The package's layering, as its own import graph shows it: no import
cycles (function-local imports count; imports for annotations only, under
TYPE_CHECKING, do not), and the contracts in pyproject.toml
([tool.importlinter]) hold."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[2]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of GRAPH with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        # Tarjan's algorithm, iteratively (the graph is deep enough to matter).
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


CASES = [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"a"}}, []),  # a module importing itself is no cycle between modules
    ({"a": {"b", "c"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["a", "b"], ["c", "d"]]),
]


def test_the_cycle_finder():
    for graph, expected in CASES:
        assert sorted(cycles(graph)) == expected, graph


def import_graph(package: str) -> dict[str, set[str]]:
    g = grimp.build_graph(package, cache_dir=None, exclude_type_checking_imports=True)
    return {m: set(g.find_modules_directly_imported_by(m)) for m in g.modules}


def test_qlite_has_no_import_cycles_counting_local_imports():
    found = cycles(import_graph("qlite"))
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_layer_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_every_module_of_qlite_has_a_layer():
    """A new module outside every layer would be checked by nothing."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layered = next(c for c in config["contracts"] if c["type"] == "layers")
    names = {n.strip() for line in layered["layers"] for n in line.replace("|", ":").split(":")}
    outside = sorted(
        m
        for m in import_graph("qlite")
        if m != "qlite"
        and not any(m == n or m.startswith(n + ".") for n in names)
        and m not in {"qlite.core", "qlite.domain"}
    )  # package faces that define nothing
    assert outside == []
