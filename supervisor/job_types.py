"""The values JobState trades in: per-rank slots, timings, and effects for I/O to carry out."""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional, Union

from supervisor.classify import HUNG_SIGNATURE, Evidence, classify
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
    last_heartbeat: Optional[float] = None
    process_starts: int = 0
    evidence: Optional[pb.FailureDetail] = None
    unwind_deadline: Optional[float] = None


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
    """The job's recent events, for status; `recorded` counts all, kept or not."""

    kept: collections.deque[pb.JobEvent] = field(
        default_factory=lambda: collections.deque(maxlen=200)
    )
    recorded: int = 0

    def add(self, kind: str, message: str) -> None:
        self.kept.append(pb.JobEvent(time_unix=time.time(), kind=kind, message=message))
        self.recorded += 1

    def since(self, count: int) -> list[pb.JobEvent]:
        """Events recorded after the first `count` (as many as are still kept)."""
        new = min(self.recorded - count, len(self.kept))
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
) -> pb.FailureRecord:
    """What is known of a rank's death; the signature falls back to the signal or exit code."""
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
        time_unix=time.time(),
    )


def describe_failure(record: pb.FailureRecord, output_tail: str = "") -> str:
    """One line: who died how, and the class the evidence so far gives (supervisor/classify.py)."""
    what = (
        f"signal {signal_name(record.signal)}" if record.signal else f"exit code {record.exit_code}"
    )
    found = classify(
        Evidence(
            exit_code=record.exit_code,
            signum=record.signal,
            exception_type=record.detail.exception_type,
            message=record.detail.message,
            output_tail=output_tail,
            killed_as_hung=record.detail.signature == HUNG_SIGNATURE,
        )
    )
    return (
        f"rank {record.rank} pid {record.pid} {what} after step {record.step}; "
        f"looks like {found.kind.value} ({found.reason})"
    )


def give_up_report(reason: str, record: pb.FailureRecord) -> str:
    """The report a given-up job ends with: what, where, and the traceback."""
    detail = record.detail
    return (
        f"job given up: {reason}\n  rank: {record.rank}\n  step: {record.step}\n"
        f"  error: {detail.exception_type or detail.signature}: {detail.message}\n"
        f"{detail.traceback}"
    )
