"""The values JobState trades in: per-rank slots, timings, and effects for I/O to carry out."""

from __future__ import annotations

import signal
from dataclasses import dataclass
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


Effect = Union[ToWorker, ToLauncher]


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
