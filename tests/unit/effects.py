"""Shared by the state machine tests: the WorkerSpec a launcher sends (and the one JobState
holds), the leader's messages as a pod applies them, and picking commands out of the effects
JobState returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from supervisor.rpc.peer_wire import message_from_wire
from supervisor.rpc.state_wire import spec_from_wire
from supervisor.rules.effects import (
    Abort,
    Assigned,
    Effect,
    Exit,
    Kill,
    Shutdown,
    Spawn,
    Start,
    ToLauncher,
    ToWorker,
)
from supervisor.rules.job import JobState
from supervisor.rules.spec import WorkerSpec
from train_supervisor.v1 import supervisor_pb2 as pb

ERROR_DIR = "/tmp/train-launch-errors"


def make_spec(**options: Any) -> WorkerSpec:
    """The spec a JobState holds: wire_spec's (same options), as the launcher service reads it."""
    return spec_from_wire(wire_spec(**options))


def wire_spec(
    *,
    nproc: int = 2,
    spares: int = 1,
    max_restarts: int = 3,
    bootstrapped: bool = True,
    nnodes: int = 1,
    node_rank: int = 0,
    reentry: pb.ReentryMode = pb.ReentryMode.REENTRY_AUTO,
) -> pb.WorkerSpec:
    """What launcher/launch/main.py:worker_spec sends for `--nnodes N --node-rank I --rdzv-id
    job1`."""
    return pb.WorkerSpec(
        run_id="job1",
        role="default",
        nnodes=nnodes,
        node_rank=node_rank,
        nproc_per_node=nproc,
        max_restarts=max_restarts,
        master_addr="127.0.0.1",
        bootstrapped=bootstrapped,
        warm_spares=spares,
        error_file_dir=ERROR_DIR,
        base_env={"OMP_NUM_THREADS": "1"} if nproc > 1 else {},
        snapshot_dir="/dev/shm/train-supervisor/job1",
        reentry=reentry,
    )


LEADER_FIELDS = {
    pb.OpenGenerationMsg: "open",
    pb.StartGenerationMsg: "start",
    pb.CommitMsg: "commit",
    pb.EndJobMsg: "end",
}


def from_leader(
    message: pb.OpenGenerationMsg | pb.StartGenerationMsg | pb.CommitMsg | pb.EndJobMsg,
) -> Any:
    """A leader's message as a pod's supervisor applies it (supervisor/rpc/peer_wire.py)."""
    wrapped = pb.LeaderMessage(**{LEADER_FIELDS[type(message)]: message})
    return message_from_wire(wrapped)


C = TypeVar("C", Spawn, Kill, Assigned, Shutdown)
W = TypeVar("W", Start, Abort, Exit)


def launcher_commands(effects: Sequence[Effect], kind: type[C]) -> list[C]:
    return [e.command for e in effects if isinstance(e, ToLauncher) and isinstance(e.command, kind)]


def shutdowns(effects: Sequence[Effect]) -> list[Shutdown]:
    return launcher_commands(effects, Shutdown)


def to_workers(effects: Sequence[Effect], kind: type[W]) -> dict[int, W]:
    found = [(e.pid, e.command) for e in effects if isinstance(e, ToWorker)]
    of_kind = [(pid, c) for pid, c in found if isinstance(c, kind)]
    by_pid = dict(of_kind)
    assert len(by_pid) == len(of_kind), f"two {kind.__name__} commands for one pid: {of_kind}"
    return by_pid


def starts(effects: Sequence[Effect]) -> dict[int, Start]:
    return to_workers(effects, Start)


def aborts(effects: Sequence[Effect]) -> dict[int, Abort]:
    return to_workers(effects, Abort)


def exits(effects: Sequence[Effect]) -> dict[int, Exit]:
    return to_workers(effects, Exit)


def play_pod(
    job: JobState, effects: Sequence[Effect], new_pid: Callable[[], int], now: float
) -> list[Effect]:
    """Play the launcher's and bootstrap's side until nothing is pending.

    Every SpawnWorker becomes a process: the launcher reports a rank's process
    started (as launcher/launch/main.py does), then (bootstrapped) the process
    attaches. Every AbortGeneration is answered with OUTCOME_UNWOUND. Returns
    the input effects and everything that followed.
    """
    done: list[Effect] = []
    pending = list(effects)
    while pending:
        effect = pending.pop(0)
        done.append(effect)
        if isinstance(effect, ToLauncher) and isinstance(effect.command, Spawn):
            spawn = effect.command
            pid = new_pid()
            if not spawn.spare:
                pending += job.process_started(pid, spawn.rank)
            if job.spec.bootstrapped:
                pending += job.worker_attached(pid, spawn.rank, spawn.spare)
        elif isinstance(effect, ToWorker) and isinstance(effect.command, Abort):
            generation = effect.command.generation
            _, more = job.outcome(effect.pid, generation, pb.OutcomeKind.OUTCOME_UNWOUND, None, now)
            pending += more
    return done
