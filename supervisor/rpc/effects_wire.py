"""The job's effects (supervisor/rules/effects.py) to the wire: the commands a worker or the
launcher gets on its stream, the reports a pod sends its leader (pure)."""

from __future__ import annotations

from supervisor.rpc.peer_wire import failure_to_wire
from supervisor.rpc.state_wire import record_to_wire
from supervisor.rules.effects import (
    Abort,
    Assigned,
    CollectiveBroke,
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
from train_supervisor.v1 import supervisor_pb2 as pb


def worker_command_to_wire(command: WorkerCommand) -> pb.WorkerCommand:
    if isinstance(command, Start):
        start = pb.StartGeneration(
            generation=command.generation,
            rank=command.rank,
            local_rank=command.local_rank,
            env=command.env,
        )
        return pb.WorkerCommand(start=start)
    if isinstance(command, Abort):
        abort = pb.AbortGeneration(generation=command.generation, reason=command.reason)
        return pb.WorkerCommand(abort=abort)
    return pb.WorkerCommand(exit=pb.ExitWorker(exit_code=command.exit_code))


def launcher_command_to_wire(command: LauncherCommand) -> pb.LauncherCommand:
    if isinstance(command, Spawn):
        spawn = pb.SpawnWorker(
            rank=command.rank, local_rank=command.local_rank, spare=command.spare, env=command.env
        )
        return pb.LauncherCommand(spawn=spawn)
    if isinstance(command, Kill):
        kill = pb.KillProcess(pid=command.pid, signal=command.signal, reason=command.reason)
        return pb.LauncherCommand(kill=kill)
    if isinstance(command, Assigned):
        assigned = pb.RankAssigned(
            pid=command.pid, rank=command.rank, local_rank=command.local_rank
        )
        return pb.LauncherCommand(assigned=assigned)
    return pb.LauncherCommand(shutdown=shutdown_to_wire(command))


def shutdown_to_wire(shutdown: Shutdown) -> pb.Shutdown:
    return pb.Shutdown(exit_code=shutdown.exit_code, report=shutdown.report)


def report_to_wire(report: PodReport) -> pb.PodReport:
    if isinstance(report, Ready):
        return pb.PodReport(ready=report.generation)
    if isinstance(report, Finished):
        return pb.PodReport(finished=report.generation)
    if isinstance(report, FailureReport):
        wire = pb.PodReport(failure=failure_to_wire(report.failure))
        if report.last_failure is not None:
            wire.last_failure.CopyFrom(record_to_wire(report.last_failure))
        return wire
    if isinstance(report, SnapshotsHeld):
        held = pb.PodSnapshots(generation=report.generation, held=report.held)
        return pb.PodReport(snapshots=held)
    if isinstance(report, ReentryFailed):
        return pb.PodReport(reentry_failed=report.why)
    if isinstance(report, CollectiveBroke):
        return pb.PodReport(collective_broke=report.generation)
    raise TypeError(f"not a pod report: {report!r}")
