"""The values JobState trades in: per-rank slots, timings, and effects for I/O to carry out."""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional, Union

from train_supervisor.v1 import supervisor_pb2 as pb

WS = pb.WorkerState


@dataclass(frozen=True)
class ToWorker:
    pid: int
    command: pb.WorkerCommand


@dataclass(frozen=True)
class ToLauncher:
    command: pb.LauncherCommand


@dataclass(frozen=True)
class ToLeader:
    """A report for the job's leader (multi-pod): it decides, this pod carries out."""

    report: pb.PodReport


Effect = Union[ToWorker, ToLauncher, ToLeader]


def spawn(rank: int, local_rank: int = 0, env: Optional[dict[str, str]] = None) -> ToLauncher:
    """A new process for `rank` (-1: a warm spare)."""
    command = pb.SpawnWorker(rank=rank, local_rank=local_rank, env=env or {}, spare=rank < 0)
    return ToLauncher(pb.LauncherCommand(spawn=command))


def kill(pid: int, signum: int, reason: str) -> ToLauncher:
    command = pb.KillProcess(pid=pid, signal=signum, reason=reason)
    return ToLauncher(pb.LauncherCommand(kill=command))


def end_job(pids: list[int], exit_code: int, report: str) -> list[Effect]:
    """Every process leaves, then the launcher exits with `exit_code` and `report`."""
    bye = pb.WorkerCommand(exit=pb.ExitWorker(exit_code=0))
    shutdown = pb.Shutdown(exit_code=exit_code, report=report)
    goodbyes: list[Effect] = [ToWorker(pid, bye) for pid in pids]
    return [*goodbyes, ToLauncher(pb.LauncherCommand(shutdown=shutdown))]


@dataclass
class RankSlot:
    rank: int
    local_rank: int
    pid: int = 0  # 0: no process holds the rank
    spawning: bool = False
    state: pb.WorkerState = WS.WORKER_STATE_UNKNOWN
    generation: int = -1  # generation the holding process last started
    step: int = 0
    step_time_s: float = 0.0
    compute_s: float = 0.0  # own work in the last step (launcher/heartbeat.py)
    last_heartbeat: Optional[float] = None
    process_starts: int = 0
    evidence: Optional[pb.FailureDetail] = None
    unwind_deadline: Optional[float] = None
    # The generation the holding process started first (-1: none yet): a process that
    # started an earlier one than it runs now re-entered the script in place.
    first_generation: int = -1

    @property
    def reentered(self) -> bool:
        return 0 <= self.first_generation < self.generation

    def forget_progress(self) -> None:
        """Steps (and a raised error's evidence) count per process and per generation."""
        self.step, self.step_time_s, self.last_heartbeat = 0, 0.0, None
        self.evidence = None


@dataclass(frozen=True)
class Timings:
    unwind_timeout_s: float = 10.0  # survivor must be back in place by then
    max_spare_failures: int = 3  # stop replenishing spares that keep dying
    # Spares are replaced when every rank steps again; a script that never
    # calls optimizer.step() gets them back after this long instead.
    spare_replenish_fallback_s: float = 60.0


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclass
class EventLog:
    """The job's recent events, for status and WatchEvents; `recorded` counts all, kept or not.

    Events are numbered 1, 2, ... (`seq` = how many were recorded up to and
    including it), so a watcher resumes with `since(last seq it got)`.
    """

    kept: collections.deque[pb.JobEvent] = field(
        default_factory=lambda: collections.deque(maxlen=200)
    )
    recorded: int = 0
    node_rank: int = 0  # stamped on every event: the pod whose supervisor recorded it
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)  # all recorded

    def add(self, kind: str, message: str) -> None:
        self.recorded += 1
        self.by_kind[kind] += 1
        event = pb.JobEvent(
            time_unix=time.time(),
            kind=kind,
            message=message,
            seq=self.recorded,
            node_rank=self.node_rank,
        )
        self.kept.append(event)

    def since(self, seq: int) -> list[pb.JobEvent]:
        """Kept events with a seq above `seq` (those recorded after the first `seq`)."""
        new = min(self.recorded - seq, len(self.kept))
        return list(self.kept)[len(self.kept) - new :] if new > 0 else []

    def __iter__(self) -> Iterator[pb.JobEvent]:
        return iter(self.kept)

    def __len__(self) -> int:
        return len(self.kept)


def failure_record(
    generation: int,
    rank: int,
    pid: int,
    exit_code: int,
    signum: int,
    evidence: Optional[pb.FailureDetail],
    step: int,
    job_step: Optional[int] = None,
) -> pb.FailureRecord:
    """What is known of a rank's death; the signature falls back to the signal or exit code.

    `step`: the rank's steps in `generation`; `job_step`: the job's over all generations
    (JobState.job_step; None: `step`, as in generation 0)."""
    detail = evidence or pb.FailureDetail()
    if not detail.signature:
        detail.signature = signal_name(signum) if signum else f"exit code {exit_code}"
    return pb.FailureRecord(
        generation=generation,
        rank=rank,
        pid=pid,
        exit_code=exit_code,
        signal=signum,
        detail=detail,
        step=step,
        job_step=step if job_step is None else job_step,
        time_unix=time.time(),
    )


def describe_failure(record: pb.FailureRecord, then: str) -> str:
    """One line: who died how, the class and its evidence (supervisor/classify.py), what follows."""
    what = (
        f"signal {signal_name(record.signal)}" if record.signal else f"exit code {record.exit_code}"
    )
    return (
        # Heartbeats are coalesced (one per 0.5 s): the steps may be a little behind.
        f"rank {record.rank} pid {record.pid} {what} at step {where_in_job(record)}; "
        f"looks like {record.failure_class} ({record.reason}) -> {then}"
    )


def where_in_job(record: pb.FailureRecord) -> str:
    """The job-wide step first: a rank's own count restarts at 0 in every generation."""
    return f"{record.job_step} of the job ({record.step} in generation {record.generation})"


def give_up_report(reason: str, record: pb.FailureRecord, heading: str = "job given up") -> str:
    """The report a job (or a pod) ends with: why, where, the class's evidence, the traceback."""
    detail = record.detail
    return (
        f"{heading}: {reason}\n  rank: {record.rank}\n  step: {where_in_job(record)}\n"
        f"  error: {detail.exception_type or detail.signature}: {detail.message}\n"
        f"  class: {record.failure_class} ({record.reason})\n"
        f"{detail.traceback}"
    )
