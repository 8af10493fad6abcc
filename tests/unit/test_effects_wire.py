"""supervisor/rpc/effects_wire.py: the rules' plain effects become the proto's messages, field
for field, and survive the trip over the wire."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from supervisor.rpc.effects_wire import (
    launcher_command_to_wire,
    report_to_wire,
    worker_command_to_wire,
)
from supervisor.rpc.peer_wire import failure_from_wire
from supervisor.rpc.state_wire import record_from_wire
from supervisor.rules.classify import Action
from supervisor.rules.effects import (
    Abort,
    Assigned,
    CollectiveBroke,
    Exit,
    FailureReport,
    Finished,
    Kill,
    LauncherCommand,
    PodReport,
    Ready,
    ReentryFailed,
    Shutdown,
    SnapshotsHeld,
    Spawn,
    Start,
    WorkerCommand,
)
from supervisor.rules.failure_evidence import FailureRecord
from supervisor.rules.restart_policy import Failure
from train_supervisor.v1 import supervisor_pb2 as pb

WORKER: dict[type, tuple[str, WorkerCommand]] = {
    Start: ("start", Start(3, 5, 1, {"RANK": "5", "MASTER_PORT": "29500"})),
    Abort: ("abort", Abort(3, "rank 2 failed")),
    Exit: ("exit", Exit(1)),
}
LAUNCHER: dict[type, tuple[str, LauncherCommand]] = {
    Spawn: ("spawn", Spawn(-1, 0, spare=True, env={"A": "b"})),
    Kill: ("kill", Kill(4242, 9, "hung")),
    Assigned: ("assigned", Assigned(4242, 3, 1)),
    Shutdown: ("shutdown", Shutdown(4, "job given up: rank 3")),
}


def fields_of(message: object) -> dict[str, object]:
    """A proto message's fields as plain values (maps as dicts, repeated as tuples)."""
    found: dict[str, object] = {}
    for name in type(message).DESCRIPTOR.fields_by_name:  # type: ignore[attr-defined]
        value = getattr(message, name)
        if hasattr(value, "items"):
            value = dict(value)
        elif isinstance(value, (list, tuple)) or type(value).__name__.startswith("Repeated"):
            value = tuple(value)
        found[name] = value
    return found


def test_every_worker_and_launcher_command_has_its_wire_form() -> None:
    assert set(WORKER) == set(typing.get_args(WorkerCommand))
    assert set(LAUNCHER) == set(typing.get_args(LauncherCommand))


@pytest.mark.parametrize("kind", list(WORKER), ids=lambda k: k.__name__)
def test_a_worker_command_is_its_proto_message_field_for_field(kind: type) -> None:
    field, command = WORKER[kind]
    wire = pb.WorkerCommand.FromString(worker_command_to_wire(command).SerializeToString())
    assert wire.WhichOneof("command") == field
    assert fields_of(getattr(wire, field)) == dataclasses.asdict(command)


@pytest.mark.parametrize("kind", list(LAUNCHER), ids=lambda k: k.__name__)
def test_a_launcher_command_is_its_proto_message_field_for_field(kind: type) -> None:
    field, command = LAUNCHER[kind]
    wire = pb.LauncherCommand.FromString(launcher_command_to_wire(command).SerializeToString())
    assert wire.WhichOneof("command") == field
    assert fields_of(getattr(wire, field)) == dataclasses.asdict(command)


def test_every_report_reaches_the_leader_as_its_oneof() -> None:
    failure = Failure(
        2, 3, "ValueError: x", 40, "user_error", Action.RESTART_IN_PLACE, "raised", 7.5
    )
    record = FailureRecord(generation=2, rank=3, pid=77, step=40, action="restart")
    reports: dict[type, tuple[str, PodReport, object]] = {
        Ready: ("ready", Ready(4), 4),
        Finished: ("finished", Finished(4), 4),
        CollectiveBroke: ("collective_broke", CollectiveBroke(4), 4),
        ReentryFailed: ("reentry_failed", ReentryFailed("rank 1 raised"), "rank 1 raised"),
        SnapshotsHeld: ("snapshots", SnapshotsHeld(4, (10, 20)), None),
        FailureReport: ("failure", FailureReport(failure, record), None),
    }
    assert set(reports) == set(typing.get_args(PodReport))
    for field, report, value in reports.values():
        wire = pb.PodReport.FromString(report_to_wire(report).SerializeToString())
        assert wire.WhichOneof("report") == field
        if value is not None:
            assert getattr(wire, field) == value
    held = pb.PodReport.FromString(report_to_wire(SnapshotsHeld(4, (10, 20))).SerializeToString())
    assert (held.snapshots.generation, list(held.snapshots.held)) == (4, [10, 20])
    sent = report_to_wire(FailureReport(failure, record))
    assert failure_from_wire(sent.failure) == failure
    assert record_from_wire(sent.last_failure) == record
    alone = report_to_wire(FailureReport(failure))  # a failed re-entry: no record
    assert not alone.HasField("last_failure")
