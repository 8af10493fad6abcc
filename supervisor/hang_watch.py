"""Hang detection with no code change: step heartbeats against supervisor/hang.py's rules (I/O).

Each tick, the ranks that have not stepped within their threshold are looked
at (psutil: process state and CPU time; the workers' PIDs are visible to the
supervisor in `--standalone`, and to a sidecar when the pod shares its process
namespace). The culprit, when one stands out, is killed: its exit then takes
the usual path (a new process for that rank only, the others re-enter).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

import psutil

from supervisor.classify import HUNG_SIGNATURE
from supervisor.hang import (
    HangSettings,
    ProcessEvidence,
    RankProgress,
    culprit,
    overdue,
    threshold_s,
)
from supervisor.job import JobState
from supervisor.job_types import Effect, RankSlot, ToLauncher
from train_supervisor.v1 import supervisor_pb2 as pb

# CPU seconds between two looks above which a process counts as working.
BUSY_CPU_S = 0.05


@dataclass
class HangWatch:
    settings: HangSettings = field(default_factory=HangSettings)
    _cpu: dict[int, float] = field(default_factory=dict)  # pid -> CPU seconds at the last look
    _suspected: set[int] = field(default_factory=set)  # generations already reported
    _acted: set[int] = field(default_factory=set)  # generations whose culprit was killed

    def check(self, job: JobState, now: float) -> list[Effect]:
        if not job.started or job.over or job.generation in self._acted:
            return []
        stepping = [
            s for s in job.ranks.values()
            if s.pid and s.state == pb.WorkerState.WORKER_STATE_HEALTHY
            and s.generation == job.generation and s.last_heartbeat is not None
        ]  # fmt: skip
        progress = {s.rank: _progress(s) for s in stepping}
        late = overdue(list(progress.values()), now, self.settings)
        if not late:
            return []
        found = culprit({s.rank: self._look(s.pid) for s in stepping})
        slowest = min(progress[r].last_step_at or now for r in late)
        limit = threshold_s(progress[late[0]], self.settings)
        what = f"ranks {late} made no step for {now - slowest:.1f}s (threshold {limit:.1f}s)"
        if found is None:
            if job.generation not in self._suspected:
                self._suspected.add(job.generation)
                job.record("hang_suspected", f"{what}; no single rank stands out yet")
            return []
        self._acted.add(job.generation)
        slot = job.ranks[found.rank]
        job.record("hang", f"{what}; rank {found.rank} (pid {slot.pid}) is hung: {found.why}")
        slot.evidence = pb.FailureDetail(signature=HUNG_SIGNATURE, message=found.why)
        reason = f"hung: {found.why}"
        kill = pb.KillProcess(pid=slot.pid, signal=int(signal.SIGKILL), reason=reason)
        return [ToLauncher(pb.LauncherCommand(kill=kill))]

    def _look(self, pid: int) -> ProcessEvidence:
        try:
            process = psutil.Process(pid)
            state = process.status()
            times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return ProcessEvidence()  # not visible from here (another PID namespace)
        cpu = times.user + times.system
        before = self._cpu.get(pid)
        self._cpu[pid] = cpu
        advancing = None if before is None else cpu - before > BUSY_CPU_S
        return ProcessEvidence(state=state, cpu_advancing=advancing)


def _progress(slot: RankSlot) -> RankProgress:
    recent = (slot.step_time_s,) if slot.step_time_s > 0 else ()
    return RankProgress(slot.rank, slot.last_heartbeat or 0.0, slot.last_heartbeat, recent)
