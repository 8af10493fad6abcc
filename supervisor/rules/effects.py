"""What the job's rules (supervisor/rules/job.py) tell others: commands for one worker or for
the launcher, and reports for the job's leader.

Plain values with the proto messages' field names; supervisor/rpc/effects_wire.py builds
their protobuf where supervisor/rpc/service.py delivers them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from supervisor.rules.failure_evidence import FailureRecord
from supervisor.rules.restart_policy import Failure


# ------------------------------------------------------------- for one worker
@dataclass(frozen=True)
class Start:
    """Run the script in `generation` with torchrun's environment."""

    generation: int
    rank: int
    local_rank: int
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Abort:
    """Leave `generation` and wait in place for the next one."""

    generation: int
    reason: str = ""


@dataclass(frozen=True)
class Exit:
    """The process is no longer needed: exit with `exit_code`."""

    exit_code: int = 0


WorkerCommand = Union[Start, Abort, Exit]


# ------------------------------------------------------------- for the launcher
@dataclass(frozen=True)
class Spawn:
    """A new process for `rank` (-1: a warm spare); `env` only for --no-python workers."""

    rank: int
    local_rank: int = 0
    spare: bool = False
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Kill:
    pid: int
    signal: int
    reason: str = ""


@dataclass(frozen=True)
class Assigned:
    """The warm spare `pid` holds `rank` from now on."""

    pid: int
    rank: int
    local_rank: int


@dataclass(frozen=True)
class Shutdown:
    """The job is over: the launcher exits with `exit_code` and prints `report`."""

    exit_code: int
    report: str = ""


LauncherCommand = Union[Spawn, Kill, Assigned, Shutdown]


# ------------------------------------------------------------- for the leader
@dataclass(frozen=True)
class Ready:
    """Every rank of this pod can start `generation`."""

    generation: int


@dataclass(frozen=True)
class Finished:
    """Every rank of this pod finished `generation`."""

    generation: int


@dataclass(frozen=True)
class FailureReport:
    """A failure as the restart policy sees it; `last_failure`: what the pod knows of it."""

    failure: Failure
    last_failure: Optional[FailureRecord] = None


@dataclass(frozen=True)
class SnapshotsHeld:
    """The snapshot steps every local rank holds in `generation` (the leader commits)."""

    generation: int
    held: tuple[int, ...]


@dataclass(frozen=True)
class ReentryFailed:
    """A survivor of this pod could not re-enter: fresh processes from now on, and why."""

    why: str


@dataclass(frozen=True)
class CollectiveBroke:
    """A rank of this pod saw a collective of `generation` break (a peer's death)."""

    generation: int


PodReport = Union[Ready, Finished, FailureReport, SnapshotsHeld, ReentryFailed, CollectiveBroke]


# ------------------------------------------------------------- the effects
@dataclass(frozen=True)
class ToWorker:
    pid: int
    command: WorkerCommand


@dataclass(frozen=True)
class ToLauncher:
    command: LauncherCommand


@dataclass(frozen=True)
class ToLeader:
    """A report for the job's leader (multi-pod): it decides, this pod carries out."""

    report: PodReport


Effect = Union[ToWorker, ToLauncher, ToLeader]


def spawn(rank: int, local_rank: int = 0, env: Optional[dict[str, str]] = None) -> ToLauncher:
    """A new process for `rank` (-1: a warm spare)."""
    return ToLauncher(Spawn(rank, local_rank, spare=rank < 0, env=env or {}))


def kill(pid: int, signum: int, reason: str) -> ToLauncher:
    return ToLauncher(Kill(pid, signum, reason))


def end_job(pids: list[int], exit_code: int, report: str) -> list[Effect]:
    """Every process leaves, then the launcher exits with `exit_code` and `report`."""
    goodbyes: list[Effect] = [ToWorker(pid, Exit(0)) for pid in pids]
    return [*goodbyes, ToLauncher(Shutdown(exit_code, report))]
