"""The rules (supervisor/rules/) are plain Python: no protobuf, no gRPC, none of the wire code,
not even through the modules they import. The adapters in supervisor/rpc/ map their values
to and from the wire (effects_wire.py, state_wire.py, peer_wire.py, status_view.py)."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from test_import_graph import REPO, import_graph

from supervisor.rules import vocabulary
from train_supervisor.v1 import supervisor_pb2 as pb

WIRE = ("train_supervisor.v1", "google.protobuf", "grpc")
RULES = sorted(p.stem for p in (REPO / "supervisor" / "rules").glob("*.py") if p.stem != "__init__")


def imported_names(module: str) -> set[str]:
    """Every module `module` names in an import statement, the project's and others'."""
    path = REPO / (module.replace(".", "/") + ".py")
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def reachable_from_rules() -> set[str]:
    """The project's modules the rules import, directly or through each other."""
    graph = import_graph()
    seen: set[str] = set()
    todo = [f"supervisor.rules.{name}" for name in RULES]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return seen


def test_no_module_the_rules_reach_imports_the_wire() -> None:
    reached = reachable_from_rules()
    assert {f"supervisor.rules.{name}" for name in RULES} <= reached
    offenders = {
        module: sorted(n for n in imported_names(module) if n.startswith(WIRE))
        for module in sorted(reached)
    }
    assert {m: names for m, names in offenders.items() if names} == {}


def test_the_rules_load_without_protobuf() -> None:
    """Imported for real, in a fresh interpreter: nothing of the wire is loaded."""
    modules = ", ".join(f"supervisor.rules.{name}" for name in RULES)
    check = (
        f"import sys, {modules}\n"
        f"loaded = sorted(m for m in sys.modules if m.startswith({WIRE!r}))\n"
        "print(loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    run = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize(
    ("plain", "wire"),
    [
        (vocabulary.WorkerState, pb.WorkerState),
        (vocabulary.JobPhase, pb.JobState),
        (vocabulary.ReentryMode, pb.ReentryMode),
        (vocabulary.OutcomeKind, pb.OutcomeKind),
        (vocabulary.Verdict, pb.Verdict),
    ],
    ids=["WorkerState", "JobState", "ReentryMode", "OutcomeKind", "Verdict"],
)
def test_the_rules_enums_are_the_protos_names_and_numbers(plain: type, wire: object) -> None:
    assert {m.name: m.value for m in plain} == dict(wire.items())  # type: ignore[attr-defined]
