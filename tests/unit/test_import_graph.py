"""The packages' imports form no cycle, those under `if TYPE_CHECKING:` included.

The one cycle there was: supervisor/rpc/service.py imported snapshot_service.harvest_arenas,
which took the whole Supervisor (imported back for its type). harvest_arenas now takes the
job and a function that records a saved step (supervisor/snapshots/harvest.py).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("supervisor", "launcher", "train_supervisor")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if "v1" not in path.relative_to(REPO).parts:  # generated wire code
                found[module_name(path)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports, wherever in the file (TYPE_CHECKING too)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    imported.add(target if target in known else node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        graph[name] = {m for m in imported if m in known and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_imports_that_matter() -> None:
    graph = import_graph()
    assert "supervisor.rpc.service" in graph["supervisor.rpc.snapshot_service"]
    assert "supervisor.snapshots.harvest" in graph["supervisor.rpc.service"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_itself_back() -> None:
    assert cycles(import_graph()) == []


def test_each_side_of_the_old_cycle_imports_first_in_a_fresh_interpreter() -> None:
    for first in ("supervisor.rpc.snapshot_service", "supervisor.snapshots.harvest"):
        code = f"import {first}, supervisor.rpc.service, supervisor.app"
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
