"""Hang detection with no code change: step heartbeats against supervisor/rules/hang.py's rules
(I/O).

Each tick, the ranks that have not stepped within their threshold are looked
at (psutil: process state and CPU time; the workers' PIDs are visible to the
supervisor in `--standalone`, and to a sidecar when the pod shares its process
namespace). When neither names a culprit, the overdue ranks' Python stacks
are dumped with py-spy (supervisor/detect/stacks.py) in a thread, and a later tick
compares them. The culprit, when one stands out, is handed to the core, which kills it
(JobState.hang_found): its exit then takes the usual path (a new process for
that rank only, the others re-enter). The watch reads the job and never changes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Optional

import psutil

from supervisor.detect.stacks import PySpy, RoundKey, StackRounds
from supervisor.rules.hang import (
    HangFinding,
    HangSettings,
    ProcessEvidence,
    RankProgress,
    culprit,
    describe_stacks,
    overdue,
    stuck_reentry,
    threshold_s,
)
from supervisor.rules.job import JobState, RankSlot
from supervisor.rules.vocabulary import WorkerState
from supervisor.settings.detection import DetectConfig

# CPU seconds between two looks above which a process counts as working.
BUSY_CPU_S = 0.05
# While no culprit stands out, the stacks are dumped again this often.
STACK_RETRY_S = 5.0


@dataclass
class HangWatch:
    settings: HangSettings = field(default_factory=HangSettings)
    stacks: Optional[StackRounds] = None  # None: no py-spy stacks
    _cpu: dict[int, float] = field(default_factory=dict)  # pid -> CPU seconds at the last look
    _suspected: set[int] = field(default_factory=set)  # generations already reported
    _acted: set[int] = field(default_factory=set)  # generations whose culprit was killed
    # (generation, pid) -> when a tick first saw that process run the generation: the start
    # a rank that never stepped in it (a re-entry stuck in init_process_group) is timed from.
    _seen_since: dict[tuple[int, int], float] = field(default_factory=dict)

    def check(self, job: JobState, now: float) -> list[HangFinding]:
        """What this look found, for the core to apply (JobState.hang_found); reads `job` only."""
        if not job.started or job.over or job.generation in self._acted:
            return []
        stepping = [
            s for s in job.ranks.values()
            if s.pid and s.state == WorkerState.WORKER_STATE_HEALTHY
            and s.generation == job.generation
        ]  # fmt: skip
        seen = {(job.generation, s.pid): self._seen_since.get((job.generation, s.pid), now)
                for s in stepping}  # fmt: skip
        self._seen_since = seen  # older generations' processes are done with
        progress = {s.rank: _progress(s, seen[(job.generation, s.pid)]) for s in stepping}
        late = overdue(list(progress.values()), now, self.settings)
        if not late:
            return []
        evidence = {s.rank: self._look(s.pid) for s in stepping}
        found = culprit(evidence)
        stacks: Optional[Mapping[int, str]] = None
        if found is None and self.stacks is not None and self.stacks.usable:
            key = (job.generation, tuple((r, job.ranks[r].pid) for r in late))
            stacks = self._stacks(self.stacks, key, now)
            if stacks is None and job.generation not in self._suspected:
                return []  # the first stacks are on their way: report with them
            if stacks is not None:
                with_stacks = {r: replace(e, stack=stacks.get(r, "")) for r, e in evidence.items()}
                found = culprit(with_stacks)
        if found is None:
            reentered = {s.rank for s in stepping if s.reentered}
            found = stuck_reentry([progress[r] for r in late], reentered)
        slowest = min(progress[r].last_step_at or progress[r].started_at for r in late)
        limit = threshold_s(progress[late[0]], self.settings)
        what = f"ranks {late} made no step for {now - slowest:.1f}s (threshold {limit:.1f}s)"
        if stacks and any(stacks.values()):
            what += f"; stacks: {describe_stacks(stacks)}"
        if found is None:
            if job.generation in self._suspected:
                return []
            self._suspected.add(job.generation)
            return [HangFinding(f"{what}; no single rank stands out yet")]
        self._acted.add(job.generation)
        pid = job.ranks[found.rank].pid
        return [
            HangFinding(f"{what}; rank {found.rank} (pid {pid}) is hung: {found.why}", found, pid)
        ]

    def _stacks(
        self, rounds: StackRounds, key: RoundKey, now: float
    ) -> Optional[Mapping[int, str]]:
        """The newest finished round's stacks for `key`; starts a round when due."""
        stacks = rounds.finished(key)
        started = rounds.started_at(key)
        if started is None or (stacks is not None and now - started >= STACK_RETRY_S):
            rounds.start(key, now)
        return stacks

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


def _progress(slot: RankSlot, started_at: float) -> RankProgress:
    recent = (slot.step_time_s,) if slot.step_time_s > 0 else ()
    return RankProgress(slot.rank, started_at, slot.last_heartbeat, recent)


def hang_watch_for(config: DetectConfig) -> HangWatch:
    """The watch `config` asks for; py-spy's absence is logged here, once."""
    stacks = StackRounds(PySpy()) if config.hang_stacks else None
    return HangWatch(config.hang, stacks)
