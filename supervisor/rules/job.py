"""The job's state machine for one pod: ranks, generations, failures.

Every input is an event (a process attached, exited, reported); every output is
a list of effects (commands for a worker or for the launcher). No I/O, no
clock: callers pass `now` (monotonic seconds) so the rules are testable alone.

One decision-maker. The pod keeps the local rules (processes, spares, unwinding,
heartbeats, classification); what is job-wide is the leader's
(supervisor/rules/leader.py): whether a failure restarts the job or ends it, when
a generation starts, on which MASTER_ADDR/MASTER_PORT, and when the job is over.
The pod reports failures, "ready" and "finished", and applies the leader's
Open/Start/End. For a job of one pod the leader is a LeaderState of one member
held here (`leader`), which answers at once; for several it is node 0's
supervisor (`leader_remote`): reports leave as ToLeader effects and its messages
come back through open_generation, start_generation and end_job, each applied
once (the leader may repeat them after a re-join). With the leader remote, the
pod also carries on while it is away (leader_lost, _cut_off) and offers it the
snapshot steps its ranks hold (the leader commits).

Re-entry and its fallback (spec.reentry, train-launch --reentry). Survivors of an
aborted generation re-enter the script in place. When one cannot — its script
raises before its first step of the new generation (an OUTCOME_RAISED at step 0
from a process that started an earlier generation), or its unwind fails or times
out — the job falls back to what torchrun does, once and for good: that rank gets
a fresh process (a warm spare when ready), and from then on every survivor of an
aborted generation is replaced by a fresh process too (`fresh_processes` says
why). The fallback is the supervisor's doing, not the script's: it spends no
restart, is no failure of the restart policy and is never classified. A script
that fails the same way in a fresh process is a failure like any other, which
the crash-loop rule and the budget bound. REENTRY_NEVER starts in fresh-process
mode; REENTRY_ALWAYS never falls back (a failed re-entry is an ordinary failure).
"""

from __future__ import annotations

import collections
import dataclasses
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Optional

from supervisor.rules import failure_evidence, restart_policy
from supervisor.rules.classify import HUNG_SIGNATURE, Classification, GpuHealth
from supervisor.rules.effects import (
    Abort,
    Assigned,
    CollectiveBroke,
    Effect,
    Exit,
    FailureReport,
    Finished,
    Kill,
    Ready,
    ReentryFailed,
    SnapshotsHeld,
    Spawn,
    Start,
    ToLauncher,
    ToLeader,
    ToWorker,
    end_job,
    kill,
    spawn,
)
from supervisor.rules.failure_evidence import (
    NO_GPU,
    FailureDetail,
    FailureMemory,
    FailureRecord,
    Settled,
    peer_echo,
    policy_failure,
)
from supervisor.rules.hang import HangFinding
from supervisor.rules.leader import (
    Broadcast,
    CommitStep,
    EndJob,
    Evidence,
    LeaderState,
    OpenGeneration,
    PodView,
    StartGeneration,
    give_up_report,
)
from supervisor.rules.spec import WorkerSpec
from supervisor.rules.vocabulary import (
    JobPhase,
    OutcomeKind,
    ReentryMode,
    Verdict,
    WorkerState,
)
from supervisor.snapshots.commit import CommitTracker
from supervisor.workers.spares import SparePool
from supervisor.workers.worker_env import spec_env
from train_supervisor import exit_codes

WS = WorkerState


@dataclass(frozen=True)
class Reattached:
    """A running worker attached again after its supervisor's stream broke: where it stands."""

    pid: int
    rank: int  # -1: a spare
    spare: bool = False
    generation: int = -1  # the generation it last started
    # HEALTHY: its script runs `generation`; SUCCEEDED: it finished it; INIT: it waits
    state: WorkerState = WorkerState.WORKER_STATE_UNKNOWN
    step: int = 0  # optimizer steps completed in `generation`
    master_addr: str = ""  # of `generation`
    master_port: int = 0
    restart_count: int = 0


@dataclass
class RankSlot:
    rank: int
    local_rank: int
    pid: int = 0  # 0: no process holds the rank
    spawning: bool = False
    state: WorkerState = WS.WORKER_STATE_UNKNOWN
    generation: int = -1  # generation the holding process last started
    step: int = 0
    step_time_s: float = 0.0
    compute_s: float = 0.0  # own work in the last step (launcher/worker/heartbeat.py)
    last_heartbeat: Optional[float] = None
    process_starts: int = 0
    evidence: Optional[FailureDetail] = None
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


@dataclass(frozen=True)
class JobEvent:
    time_unix: float = 0.0
    kind: str = ""
    message: str = ""
    seq: int = 0  # 1, 2, ... per supervisor: where a watcher resumes
    node_rank: int = 0  # the pod whose supervisor recorded it


@dataclass
class EventLog:
    """The job's recent events, for status and WatchEvents; `recorded` counts all, kept or not.

    Events are numbered 1, 2, ... (`seq` = how many were recorded up to and
    including it), so a watcher resumes with `since(last seq it got)`.
    """

    kept: collections.deque[JobEvent] = field(default_factory=lambda: collections.deque(maxlen=200))
    recorded: int = 0
    node_rank: int = 0  # stamped on every event: the pod whose supervisor recorded it
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)  # all recorded

    def add(self, kind: str, message: str) -> None:
        self.recorded += 1
        self.by_kind[kind] += 1
        event = JobEvent(
            time_unix=time.time(),
            kind=kind,
            message=message,
            seq=self.recorded,
            node_rank=self.node_rank,
        )
        self.kept.append(event)

    def since(self, seq: int) -> list[JobEvent]:
        """Kept events with a seq above `seq` (those recorded after the first `seq`)."""
        new = min(self.recorded - seq, len(self.kept))
        return list(self.kept)[len(self.kept) - new :] if new > 0 else []

    def __iter__(self) -> Iterator[JobEvent]:
        return iter(self.kept)

    def __len__(self) -> int:
        return len(self.kept)


def failure_record(
    generation: int,
    rank: int,
    pid: int,
    exit_code: int,
    signum: int,
    evidence: Optional[FailureDetail],
    step: int,
    job_step: Optional[int] = None,
) -> FailureRecord:
    """What is known of a rank's death; the signature falls back to the signal or exit code.

    `step`: the rank's steps in `generation`; `job_step`: the job's over all generations
    (JobState.job_step; None: `step`, as in generation 0)."""
    detail = evidence or FailureDetail()
    if not detail.signature:
        detail.signature = signal_name(signum) if signum else f"exit code {exit_code}"
    return FailureRecord(
        generation=generation,
        rank=rank,
        pid=pid,
        exit_code=exit_code,
        signal=signum,
        detail=dataclasses.replace(detail),  # the record's own: the rank's may change
        step=step,
        job_step=step if job_step is None else job_step,
        time_unix=time.time(),
    )


def describe_failure(record: FailureRecord, then: str) -> str:
    """One line: who died how, the class and its evidence (supervisor/rules/classify.py), what
    follows."""
    what = (
        f"signal {signal_name(record.signal)}" if record.signal else f"exit code {record.exit_code}"
    )
    return (
        # Heartbeats are coalesced (one per 0.5 s): the steps may be a little behind.
        f"rank {record.rank} pid {record.pid} {what} at step {where_in_job(record)}; "
        f"looks like {record.failure_class} ({record.reason}) -> {then}"
    )


def where_in_job(record: FailureRecord) -> str:
    """The job-wide step first: a rank's own count restarts at 0 in every generation."""
    return f"{record.job_step} of the job ({record.step} in generation {record.generation})"


def evidence_of(record: FailureRecord) -> Evidence:
    """What a give-up report (supervisor/rules/leader.py:give_up_report) shows of `record`."""
    detail = record.detail
    error = f"{detail.exception_type or detail.signature}: {detail.message}"
    return Evidence(error, where_in_job(record), detail.traceback)


JS = JobPhase


def fresh_from_the_start(spec: WorkerSpec, whose: str = "") -> str:
    """Why survivors never re-enter in this job ("" : they do)."""
    never = spec.bootstrapped and spec.reentry == ReentryMode.REENTRY_NEVER
    return f"{whose}train-launch --reentry never" if never else ""


ENDED = (JS.JOB_STATE_SUCCEEDED, JS.JOB_STATE_FAILED, JS.JOB_STATE_STOPPED)  # over: no restarts
__all__ = ["JobEvent", "JobState", "RankSlot", "Reattached", "Timings"]


@dataclass
class JobState:
    spec: WorkerSpec
    policy: restart_policy.RestartPolicy
    allocate_port: Callable[[], int]
    timings: Timings = field(default_factory=Timings)
    generation: int = 0
    started: bool = False
    restart_count: int = 0
    state: JobPhase = JobPhase.JOB_STATE_STARTING
    ranks: dict[int, RankSlot] = field(default_factory=dict)
    spares: SparePool = field(default_factory=lambda: SparePool(target=0))
    killed_by_us: set[int] = field(default_factory=set)
    history: list[restart_policy.Failure] = field(default_factory=list)
    failures: list[FailureRecord] = field(default_factory=list)
    failure_memory: FailureMemory = field(default_factory=FailureMemory)  # for classify's history
    events: EventLog = field(default_factory=EventLog)
    master_port: int = 0
    master_addr: str = ""  # the spec's in standalone; the leader's otherwise
    generation_seen_at: Optional[float] = None  # first tick of the running generation
    # A new supervisor under running ranks (the sidecar restarted): pids of the launcher's
    # ranked processes that have not re-attached yet, and exits reported meanwhile.
    awaiting: set[int] = field(default_factory=set)
    resuming: bool = False
    exits_while_resuming: list[tuple[int, int, int, str, int]] = field(default_factory=list)
    snapshots: CommitTracker = field(
        init=False
    )  # in-memory snapshots (supervisor/snapshots/commit.py)
    # Optimizer steps the job completed in the generations before the running one
    # (job_step): the progress the restart policy reads (supervisor/rules/restart_policy.py).
    steps_before: int = 0
    # Not empty: survivors get fresh processes instead of re-entering, and why.
    fresh_processes: str = ""
    # True: the job spans pods and its leader is node 0's supervisor, reached through ToLeader
    # reports; its messages come back through open_generation, start_generation, end_job,
    # commit_snapshot and asked_to_leave. False: the leader runs in this state (`leader`).
    leader_remote: bool = False
    # The job's leader when it runs here (a job of one pod): it decides whether a failure
    # restarts the job or ends it, when a generation starts and when the job is over.
    leader: Optional[LeaderState] = field(default=None, init=False, repr=False)
    # --- with the leader remote:
    ready_reported: int = -1  # generation last reported ready
    finished_reported: int = -1
    snapshots_reported: frozenset[int] = frozenset()  # steps every local rank holds, as told
    leader_away: bool = False  # the leader's stream broke; not re-joined yet
    pod_away: bool = False  # the leader says a pod is away: commits wait for it
    collective_reported: int = -1  # generation whose broken collective was told to the leader
    # With the leader away, this long without a step of any local rank: cut off (set to the
    # leader's heartbeat timeout, after which it counts this pod lost).
    stall_timeout_s: float = 10.0
    leader_away_since: Optional[float] = None

    def __post_init__(self) -> None:
        base = self.spec.node_rank * self.spec.nproc_per_node
        for local_rank in range(self.spec.nproc_per_node):
            self.ranks[base + local_rank] = RankSlot(rank=base + local_rank, local_rank=local_rank)
        self.master_port = self.allocate_port()
        self.master_addr = self.master_addr or self.spec.master_addr
        self.spares = SparePool(self.spec.warm_spares, self.timings.max_spare_failures)
        self.snapshots = CommitTracker(self.world_size)
        self.events.node_rank = self.spec.node_rank
        self.fresh_processes = fresh_from_the_start(self.spec)
        if self.fresh_processes:
            self.record("fresh_processes", f"survivors get fresh processes: {self.fresh_processes}")
        if self.leader_remote:  # the leader commits: this pod tells it what its ranks hold
            first = self.spec.node_rank * self.spec.nproc_per_node
            self.snapshots = CommitTracker(self.spec.nproc_per_node, first, decides=False)
        else:
            self.leader = self._in_process_leader()

    def _in_process_leader(self) -> LeaderState:
        """A leader of one pod, this one, joined: it opens generation 0, which this pod is in.
        Its ports are the ones this pod reserves as each generation opens (rank 0 is here)."""
        leader = LeaderState(
            nnodes=1,
            nproc=self.spec.nproc_per_node,
            policy=self.policy,
            allocate_port=lambda: self.master_port,
            master_addr=self.master_addr,
            fresh_processes=self.fresh_processes,
            falls_back=self.spec.reentry != ReentryMode.REENTRY_ALWAYS,
        )
        leader.history = self.history  # one history: the leader's, shown as this pod's
        leader.join(0, self.spec.nproc_per_node, None, 0.0)
        return leader

    # ----------------------------------------------------------------- helpers
    @property
    def world_size(self) -> int:
        return self.spec.nnodes * self.spec.nproc_per_node

    @property
    def over(self) -> bool:
        return self.state in ENDED

    def record(self, kind: str, message: str) -> None:
        self.events.add(kind, message)

    def snapshot_saved(
        self, rank: int, step: int, held: list[int], size: int, wait: float
    ) -> list[Effect]:
        """A rank wrote snapshot `step` (ValueError: its report breaks the protocol).

        With the leader remote, it commits: tell it when what every local rank holds changes.
        A step saved while commits do not wait (commits_wait) is not offered: its rank may
        overwrite it at once, so it must never become the committed step."""
        if not self.leader_remote:
            self.snapshots.saved(rank, step, held, size, wait)
            return []
        if not self.commits_wait():
            return []
        self.snapshots.saved(rank, step, held, size, wait)
        common = self.snapshots.common()
        if common == self.snapshots_reported:
            return []
        self.snapshots_reported = common
        return [ToLeader(SnapshotsHeld(self.generation, tuple(sorted(common))))]

    def commit_snapshot(self, message: CommitStep) -> bool:
        """The remote leader's commit; True: waiting ranks are to be woken."""
        if message.generation != self.generation:
            return False
        away, self.pod_away = self.pod_away, message.pod_away
        overtaken = self.snapshots.overtaken(message.newest_saved)
        committed = self.snapshots.commit(message.step)
        return committed or overtaken or (self.pod_away and not away)

    def job_step(self) -> int:
        """Optimizer steps the job completed over all generations: those before the running
        generation, plus the most any rank took in it (ranks step together)."""
        running = [s.step for s in self.ranks.values() if s.generation == self.generation]
        return self.steps_before + max(running, default=0)

    @property
    def falls_back(self) -> bool:
        """A failed re-entry switches the job to fresh processes (not yet switched)."""
        return self.spec.reentry == ReentryMode.REENTRY_AUTO and not self.fresh_processes

    def commits_wait(self) -> bool:
        """A rank's report of a saved step waits for its commit, unless none can come now (the
        remote leader or another pod is away: waiting would stall training)."""
        return not self.leader_away and not self.pod_away

    def slot_of(self, pid: int) -> Optional[RankSlot]:
        return next((s for s in self.ranks.values() if s.pid == pid and pid), None)

    def _spawn_rank(self, slot: RankSlot, env: Optional[dict[str, str]] = None) -> Effect:
        slot.spawning = True
        return spawn(slot.rank, slot.local_rank, env)

    def _replenish_spares(self) -> list[Effect]:
        if self.over or not self.spec.bootstrapped:
            return []
        count = self.spares.deficit()
        self.spares.spawned(count)
        return [spawn(-1) for _ in range(count)]

    def _stepping(self) -> bool:
        """The current generation is past its first step on every rank: recovery is over."""
        return self.started and all(
            s.step > 0 and s.generation == self.generation for s in self.ranks.values()
        )

    # ------------------------------------------------------------------ events
    def attach_launcher(self) -> list[Effect]:
        effects: list[Effect] = []
        if self.spec.bootstrapped:
            effects += [self._spawn_rank(slot) for slot in self.ranks.values()]
            effects += self._replenish_spares()
        self.record("launcher_attached", f"{len(self.ranks)} ranks, {self.spec.warm_spares} spares")
        return effects + self._maybe_start()

    def worker_attached(self, pid: int, rank: int, spare: bool) -> list[Effect]:
        if self.over:
            return [ToWorker(pid, Exit(0))]
        if spare:
            self.spares.attached(pid)
            return self._fill_vacancies() + self._maybe_start()
        slot = self.ranks[rank]
        self._take_rank(slot, pid)
        return self._maybe_start()

    def process_started(self, pid: int, rank: int) -> list[Effect]:
        """The launcher spawned a process for `rank`.

        A bootstrapped worker holds the rank from its AttachWorker on; knowing
        the pid now makes a death before that attach a failure of the rank,
        not an unknown exit. A --no-python worker runs as soon as it exists.
        """
        slot = self.ranks[rank]
        if self.spec.bootstrapped:
            if slot.spawning:
                slot.pid = pid
            return []
        self._take_rank(slot, pid)
        slot.state = WS.WORKER_STATE_HEALTHY
        slot.generation = self.generation
        return []

    def _take_rank(self, slot: RankSlot, pid: int) -> None:
        slot.pid, slot.spawning = pid, False
        slot.state, slot.unwind_deadline = WS.WORKER_STATE_INIT, None
        slot.forget_progress()
        slot.process_starts += 1
        slot.first_generation = -1

    def heartbeat(
        self,
        pid: int,
        generation: int,
        step: int,
        step_time_s: float,
        now: float,
        compute_s: float = 0.0,
    ) -> list[Effect]:
        slot = self.slot_of(pid)
        if slot is None or generation != slot.generation:
            return []
        slot.step, slot.step_time_s, slot.last_heartbeat = step, step_time_s, now
        slot.compute_s = compute_s
        # Spares used up by a recovery are replaced once every rank steps again.
        return self._replenish_spares() if self._stepping() else []

    def outcome(
        self,
        pid: int,
        generation: int,
        kind: OutcomeKind,
        detail: Optional[FailureDetail],
        now: float,
        step: int = 0,
    ) -> tuple[Optional[Verdict], list[Effect]]:
        """A worker's script ended. Returns (verdict or None if not yet known, effects).

        `step` is exact where heartbeats are coalesced: the failure report names it. With
        the leader remote, a rank's collective that broke (a peer's death) is told to it at
        once, which loses a pod whose stream is down (LeaderState.collective_broke); with no
        leader to open the next generation, this one stops here, so the ranks wait in place
        instead of being judged the failure when the settle window ends.
        """
        effects: list[Effect] = []
        broke = (
            self.leader_remote
            and kind == OutcomeKind.OUTCOME_RAISED
            and peer_echo(detail)
            and self.started
            and not self.over
            and generation == self.generation
        )
        if broke and self.leader_away:
            self.record("leader_lost", f"generation {generation} stopped; ranks wait in place")
            effects += self._unwind_all(generation, now, "the leader was lost")
        elif broke and self.collective_reported != generation:
            self.collective_reported = generation
            effects.append(ToLeader(CollectiveBroke(generation)))
        verdict, more = self._script_ended(pid, generation, kind, detail, step)
        return verdict, effects + more

    def _script_ended(
        self,
        pid: int,
        generation: int,
        kind: OutcomeKind,
        detail: Optional[FailureDetail],
        step: int,
    ) -> tuple[Optional[Verdict], list[Effect]]:
        slot = self.slot_of(pid)
        if slot is None or self.over or generation != slot.generation:
            return Verdict.VERDICT_WAIT, []  # stale: that generation is already settled
        slot.step = max(slot.step, step)
        if self.resuming and kind == OutcomeKind.OUTCOME_FINISHED:
            # It re-attached while its script ran, then finished before every process of the
            # pod answered: nothing aborted it (this supervisor started nothing yet).
            slot.state = WS.WORKER_STATE_SUCCEEDED
            return Verdict.VERDICT_WAIT, []
        aborted = generation < self.generation or not self.started
        if kind == OutcomeKind.OUTCOME_UNWOUND or aborted:
            return Verdict.VERDICT_WAIT, self._unwound(slot)
        if kind == OutcomeKind.OUTCOME_FINISHED:
            slot.state = WS.WORKER_STATE_SUCCEEDED
            return Verdict.VERDICT_WAIT, self._maybe_finish()
        # Raised in a live generation: the first error of a failure or the
        # echo of a peer's death that has not been reported yet. settle() decides.
        slot.evidence = detail
        return None, []

    def settle(self, pid: int, final: bool = True) -> tuple[Optional[Verdict], list[Effect]]:
        """The settle window after a RAISED outcome is over: decide (None: one more window;
        failure_evidence.settle_raised says why)."""
        slot = self.slot_of(pid)
        if slot is None or self.over:
            return Verdict.VERDICT_EXIT_FAILED, []
        if slot.generation < self.generation or not self.started:
            return Verdict.VERDICT_WAIT, self._unwound(slot)
        raised = [s.evidence for s in self.ranks.values()]
        settled = failure_evidence.settle_raised(slot.evidence, raised, final)
        if settled is Settled.ECHO_WAITS:
            slot.state, slot.evidence = WS.WORKER_STATE_INIT, None
            return Verdict.VERDICT_WAIT, []
        return (None if settled is Settled.UNDECIDED else Verdict.VERDICT_EXIT_FAILED), []

    def _unwound(self, slot: RankSlot) -> list[Effect]:
        """`slot`'s process left its generation and waits: it re-enters the next one, or,
        with fresh processes, leaves for a new process."""
        slot.state, slot.unwind_deadline = WS.WORKER_STATE_INIT, None
        if self.fresh_processes and self.spec.bootstrapped:
            return self._retire(slot)
        return self._maybe_start()

    def _retire(self, slot: RankSlot) -> list[Effect]:
        """Fresh-process mode: a waiting survivor exits; its rank gets a new process once it
        is gone (process_exited), or once tick() killed it if it lingers."""
        self.killed_by_us.add(slot.pid)
        slot.state, slot.unwind_deadline = WS.WORKER_STATE_STOPPED, None
        return [ToWorker(slot.pid, Exit(0))]

    def process_exited(
        self,
        pid: int,
        exit_code: int,
        signum: int,
        tail: str,
        now: float,
        oom_kills: int = 0,
        gpu: GpuHealth = NO_GPU,
    ) -> list[Effect]:
        """A process ended: its last output, its cgroup's OOM kills, its device's health."""
        if self.resuming and pid in self.awaiting:  # handled once the job is rebuilt
            self.awaiting.discard(pid)
            self.exits_while_resuming.append((pid, exit_code, signum, tail, oom_kills))
            return self._finish_resume(now) if not self.awaiting else []
        slot = self.slot_of(pid)
        if self.spares.exited(pid, holds_rank=slot is not None):
            self.record("spare_lost", f"spare pid {pid} exited ({exit_code}, signal {signum})")
            return self._replenish_spares()
        if slot is None:
            return []
        slot.spawning = False
        if self.over:
            slot.pid, slot.state = 0, WS.WORKER_STATE_STOPPED
            return []
        ours = pid in self.killed_by_us
        unwinding = slot.state == WS.WORKER_STATE_UNWINDING
        self.killed_by_us.discard(pid)
        if (
            not (ours or unwinding)
            and not self.spec.bootstrapped
            and exit_code == 0
            and signum == 0
        ):
            slot.state = WS.WORKER_STATE_SUCCEEDED
            slot.pid = 0
            return self._maybe_finish()
        record = failure_record(
            self.generation,
            slot.rank,
            pid,
            exit_code,
            signum,
            slot.evidence,
            slot.step,
            self.job_step(),
        )
        reentry_failed = self._reentry_failed(slot)
        slot.pid, slot.state, slot.unwind_deadline = 0, WS.WORKER_STATE_FAILED, None
        if ours or unwinding:
            # A SIGKILL we did not send and no OOM kill explains came from outside (a second
            # fault, landing while its generation aborts): a new process, no re-entry failure.
            killed_outside = not ours and signum == signal.SIGKILL and not oom_kills
            how = "killed from outside during" if killed_outside else "replaced after"
            self.record("respawn", f"rank {slot.rank} pid {pid} {how} an abort")
            effects: list[Effect] = []
            reentry_broke = unwinding and not ours and not killed_outside
            if reentry_broke and self.spec.bootstrapped and self.falls_back:
                how = f"signal {signal_name(signum)}" if signum else f"exit code {exit_code}"
                effects += self._fall_back(f"rank {slot.rank} pid {pid} died unwinding ({how})")
            return effects + self._fill_vacancies() + self._maybe_start()
        if reentry_failed:
            return self._reentry_fallback(record, now)
        self.failures.append(record)
        found = self.failure_memory.judge(record, tail, oom_kills, gpu, now)
        return self._on_failure(record, found, now)

    def _reentry_failed(self, slot: RankSlot) -> bool:
        """The worker side's contract: an error raised before the first step of the running
        generation by a process that had started an earlier one (it re-entered). Not a
        peer's echo (a collective that lost its peer): that is another rank's failure."""
        return (
            self.falls_back
            and self.spec.bootstrapped
            and self.started
            and slot.evidence is not None
            and not failure_evidence.peer_echo(slot.evidence)
            and slot.step == 0
            and slot.generation == self.generation
            and slot.reentered
        )

    def tick(self, now: float) -> list[Effect]:
        """Enforce the unwind grace period; replenish spares if no heartbeat ever does."""
        effects: list[Effect] = []
        if self.started:
            if self.generation_seen_at is None:
                self.generation_seen_at = now
            elif now - self.generation_seen_at >= self.timings.spare_replenish_fallback_s:
                effects += self._replenish_spares()
        for slot in self.ranks.values():
            if not slot.pid:
                continue
            if slot.state == WS.WORKER_STATE_STOPPED and slot.pid in self.killed_by_us:
                # Retired (fresh-process mode): told to exit; killed if it lingers.
                if slot.unwind_deadline is None:
                    slot.unwind_deadline = now + self.timings.unwind_timeout_s
                elif now >= slot.unwind_deadline:
                    slot.unwind_deadline = now + self.timings.unwind_timeout_s
                    effects.append(kill(slot.pid, signal.SIGKILL, "did not exit when retired"))
                continue
            late = slot.unwind_deadline is not None and now >= slot.unwind_deadline
            if slot.state == WS.WORKER_STATE_UNWINDING and late:
                slot.unwind_deadline = None
                self.killed_by_us.add(slot.pid)
                reason = f"rank {slot.rank} did not unwind within {self.timings.unwind_timeout_s}s"
                self.record("unwind_timeout", f"{reason}; killing pid {slot.pid}")
                effects.append(kill(slot.pid, signal.SIGKILL, reason))
                if self.falls_back and self.spec.bootstrapped:
                    effects += self._fall_back(reason)
        if self.leader_away and not self.over and self._cut_off(now):
            effects += self._stop_cut_off(now)
        return effects

    def hang_found(self, finding: HangFinding) -> list[Effect]:
        """What the hang watch found: recorded; a culprit is killed, its failure to be
        classified as hung (supervisor/rules/classify.py)."""
        found = finding.culprit
        if found is None:
            self.record("hang_suspected", finding.message)
            return []
        slot = self.ranks.get(found.rank)
        if slot is None or slot.pid != finding.pid:
            return []  # that process is gone already: its exit took the usual path
        self.record("hang", finding.message)
        slot.evidence = FailureDetail(signature=HUNG_SIGNATURE, message=found.why)
        return [kill(slot.pid, signal.SIGKILL, f"hung: {found.why}")]

    def stop(self, report: str) -> list[Effect]:
        """The launcher is shutting down (SIGTERM): no more restarts."""
        self.state = JobPhase.JOB_STATE_STOPPED
        self.record("stopped", report)
        return []

    # --------------------------------------------------------------- decisions
    def _switch_to_fresh(self, why: str) -> bool:
        """Fresh processes for survivors from now on, said once (False: already so)."""
        if self.fresh_processes:
            return False
        self.fresh_processes = why
        self.record(
            "reentry_fallback",
            f"survivors get fresh processes from now on: {why} (no restart spent; "
            "train-launch --reentry always keeps re-entering)",
        )
        return True

    def _fall_back(self, why: str) -> list[Effect]:
        """A survivor of this pod could not re-enter (`why`): the leader's next Opens say so,
        and every pod follows."""
        if self.leader is not None:
            self._switch_to_fresh(f"re-entry failed: {why}")
            self.leader.reentry_failed(0, why)
            return []
        if not self._switch_to_fresh(f"re-entry failed on node {self.spec.node_rank}: {why}"):
            return []
        return [ToLeader(ReentryFailed(why))]

    def _reentry_fallback(self, record: FailureRecord, now: float) -> list[Effect]:
        """A survivor's re-entry raised: the leader opens a generation that spends no restart
        (the rank failed, not the script), with a fresh process for its rank (now) and every
        survivor (with the Open)."""
        why = reentry_error(record)
        effects = self._fall_back(why)
        failure = reentry_failure(record, why)
        if self.leader is not None:
            told = self.leader.failure(0, record.generation, failure)
            return effects + self._follow(told, now, "a re-entry failed")
        return [*effects, ToLeader(FailureReport(failure)), *self._fill_vacancies()]

    def _on_failure(self, record: FailureRecord, found: Classification, now: float) -> list[Effect]:
        """The pod classifies (`found`: it has the evidence); the leader decides, and one
        event says what and why."""
        failure = policy_failure(record, found)
        if self.leader is not None:  # the answer comes at once
            told = self.leader.failure(0, record.generation, failure, evidence_of(record))
            decision = self.leader.decision
            if decision is not None and told:
                record.action = decision.action.value
                then = f"{record.action}: {decision.reason}"
                self.record("failure", describe_failure(record, then))
            return self._follow(told, now)
        # A pod of many replaces itself on a hardware fault: it reports nothing more and goes
        # (its launcher exits with REPLACE_POD), which the leader handles as a lost pod that
        # will come back. Its own failures are enough for that rule (a crash loop is no
        # hardware fault); the job-wide history is the leader's.
        self.history.append(failure)
        local = restart_policy.decide(self.policy, self.history, self.restart_count)
        if local.action is restart_policy.Action.REPLACE_POD:
            record.action = local.action.value
            self.record("failure", describe_failure(record, f"{record.action}: {local.reason}"))
            return self._replace_pod(local.reason, failure, record)
        record.action = "reported to the leader"
        self.record("failure", describe_failure(record, f"{record.action}: {found.action.value}"))
        # The failed rank gets its process now; the leader opens the generation.
        return [ToLeader(FailureReport(failure, record)), *self._fill_vacancies()]

    def _follow(
        self, told: list[Broadcast], now: float, why: str = "a rank failed"
    ) -> list[Effect]:
        """Carry out what the in-process leader decided: open the next generation (`why` the
        ranks unwind) or end the job; a start comes once every rank is in place
        (_maybe_start)."""
        effects: list[Effect] = []
        for message in (b.message for b in told):
            if isinstance(message, OpenGeneration):
                self.restart_count = message.restart_count
                self.master_port = self.allocate_port()  # the next Start's (the leader's port)
                effects += self._open_generation(message.generation, now, why)
                effects += self._fill_vacancies() + self._maybe_start()
            elif isinstance(message, StartGeneration):
                self.restart_count = message.restart_count
                self.master_addr, self.master_port = message.master_addr, message.master_port
                effects += self._start_now()
            elif isinstance(message, EndJob):
                effects += self._ended(message)
        return effects

    def _ended(self, end: EndJob) -> list[Effect]:
        if end.exit_code == exit_codes.SUCCEEDED:
            self.state = JobPhase.JOB_STATE_SUCCEEDED
            finished = f"all {len(self.ranks)} ranks finished generation {self.generation}"
            self.record("succeeded", finished)
            return self._end(exit_codes.SUCCEEDED, end.report)
        kind = "replace_pod" if end.exit_code == exit_codes.REPLACE_POD else "gave_up"
        return self._fail(end.exit_code, kind, end.report)

    def _open_generation(
        self, generation: int, now: float, reason: str = "a rank failed"
    ) -> list[Effect]:
        """Abort the running generation here: survivors unwind and wait for `generation`."""
        old = self.generation
        self.steps_before = self.job_step()
        self.generation = generation
        self.snapshots.new_generation()
        effects = self._unwind_all(old, now, reason)
        self.record(
            "generation_opened", f"generation {self.generation} (restart {self.restart_count})"
        )
        return effects

    def _unwind_all(self, old: int, now: float, reason: str) -> list[Effect]:
        """Every live rank leaves generation `old` (in place where bootstrapped)."""
        self.started = False
        self.state = JobPhase.JOB_STATE_RESTARTING
        effects: list[Effect] = []
        deadline = now + self.timings.unwind_timeout_s
        for slot in self.ranks.values():
            live = (WS.WORKER_STATE_HEALTHY, WS.WORKER_STATE_SUCCEEDED)
            waiting = slot.pid and slot.state == WS.WORKER_STATE_INIT and not slot.spawning
            if (
                waiting
                and self.fresh_processes
                and self.spec.bootstrapped
                and slot.first_generation >= 0
            ):
                effects += self._retire(slot)  # waits in place: a fresh process instead
                continue
            if not slot.pid or slot.state not in live:
                continue
            slot.state, slot.unwind_deadline = WS.WORKER_STATE_UNWINDING, deadline
            if self.spec.bootstrapped:
                effects.append(ToWorker(slot.pid, Abort(old, reason)))
            else:
                self.killed_by_us.add(slot.pid)
                effects.append(kill(slot.pid, signal.SIGTERM, "restart all"))
        return effects

    def _fill_vacancies(self) -> list[Effect]:
        if not self.spec.bootstrapped or self.over:
            return []
        effects: list[Effect] = []
        for slot in self.ranks.values():
            if slot.pid or slot.spawning:
                continue
            pid = self.spares.take()
            if pid is not None:
                self._take_rank(slot, pid)
                self.record("spare_promoted", f"spare pid {pid} takes rank {slot.rank}")
                effects.append(ToLauncher(Assigned(pid, slot.rank, slot.local_rank)))
            else:
                effects.append(self._spawn_rank(slot))
        return effects

    def _ready(self) -> bool:
        """Every rank of this pod can start the current generation."""
        if self.started or self.over:
            return False
        slots = self.ranks.values()
        if self.spec.bootstrapped:
            return all(s.pid and s.state == WS.WORKER_STATE_INIT for s in slots)
        return not any(s.pid or s.spawning for s in slots)

    def _maybe_start(self) -> list[Effect]:
        """Every rank is in place: the pod is ready, and the leader starts the generation."""
        if not self._ready() or self.ready_reported == self.generation:
            return []
        self.ready_reported = self.generation
        if self.leader is not None:
            return self._follow(self.leader.pod_ready(0, self.generation), 0.0)
        return [ToLeader(Ready(self.generation))]

    def _start_now(self) -> list[Effect]:
        slots = self.ranks.values()
        self.started = True
        self.generation_seen_at = None
        self.state = JobPhase.JOB_STATE_RUNNING
        self.record("generation_started", f"generation {self.generation}, port {self.master_port}")
        effects: list[Effect] = []
        master = (self.master_addr, self.master_port)
        for slot in slots:
            env = spec_env(self.spec, slot.rank, slot.local_rank, self.generation, *master)
            slot.generation = self.generation
            if slot.first_generation < 0:
                slot.first_generation = self.generation
            slot.forget_progress()  # survivors' too
            if not self.spec.bootstrapped:
                effects.append(self._spawn_rank(slot, env))
                continue
            slot.state = WS.WORKER_STATE_HEALTHY
            start = Start(self.generation, slot.rank, slot.local_rank, env)
            effects.append(ToWorker(slot.pid, start))
        return effects

    def _all_finished(self) -> bool:
        return all(s.state == WS.WORKER_STATE_SUCCEEDED for s in self.ranks.values())

    def _maybe_finish(self) -> list[Effect]:
        """Every rank finished: the leader ends the job once every pod's did."""
        if not self._all_finished() or self.finished_reported == self.generation:
            return []
        self.finished_reported = self.generation
        if self.leader is not None:
            return self._follow(self.leader.pod_finished(0, self.generation), 0.0)
        return [ToLeader(Finished(self.generation))]

    def _replace_pod(
        self, reason: str, failure: restart_policy.Failure, record: FailureRecord
    ) -> list[Effect]:
        """This pod's hardware is at fault: it ends, with the leader's report of `failure` and
        `record`'s evidence."""
        used = (self.restart_count, self.policy.max_restarts)
        heading = "this pod must be replaced"
        evidence = evidence_of(record)
        report = give_up_report(reason, self.spec.node_rank, failure, *used, evidence, heading)
        return self._fail(exit_codes.REPLACE_POD, "replace_pod", report)

    def _fail(self, exit_code: int, kind: str, report: str) -> list[Effect]:
        self.state = JobPhase.JOB_STATE_FAILED
        self.record(kind, report.splitlines()[0])
        return self._end(exit_code, report)

    def _end(self, exit_code: int, report: str) -> list[Effect]:
        pids = [s.pid for s in self.ranks.values() if s.pid] + self.spares.idle
        return end_job(pids, exit_code, report)

    # ------------------------------ the remote leader's messages (a job of several pods)
    def open_generation(self, message: OpenGeneration, now: float) -> list[Effect]:
        if self.over:
            return []
        self.restart_count = max(self.restart_count, message.restart_count)
        effects: list[Effect] = []
        if message.fresh_processes:  # job-wide: before the survivors unwind
            self._switch_to_fresh(message.fresh_processes)
        if message.generation > self.generation:
            self.record("leader_decision", message.reason)  # e.g. which pod was lost, and why
            effects += self._open_generation(message.generation, now) + self._fill_vacancies()
        if message.generation >= self.generation:
            # A "ready" sent before this Open may have reached a leader still
            # forming, which drops it: say it again (the leader ignores repeats).
            self.ready_reported = -1
        return effects + self._maybe_start()

    def start_generation(self, message: StartGeneration) -> list[Effect]:
        # Not ready any more (a rank died since): our failure report makes the
        # leader open the next generation instead.
        if self.over or message.generation != self.generation or not self._ready():
            return []
        self.restart_count = message.restart_count
        self.master_addr, self.master_port = message.master_addr, message.master_port
        heard = self.snapshots.committed
        if message.restore_step < heard:  # its copies are gone (corrupt, or overwritten)
            restored = f"step {message.restore_step}" if message.restore_step >= 0 else "none"
            self.record(
                "snapshot_lost",
                f"step {heard} was committed, but not every pod has a copy of it any more: "
                f"the job restores {restored} ({message.restore_reason})",
            )
        self.snapshots.adopt(message.restore_step)
        self.snapshots_reported = frozenset()
        # A pod away in the last generation (its stream broke) was lost or is back: the
        # leader starts a generation only once every pod joined and is ready. Kept, it
        # would keep this pod's steps from the leader for good, and the other pods'
        # ranks waiting for commits that never come.
        self.pod_away = False
        return self._start_now()

    def end_job(self, message: EndJob) -> list[Effect]:
        if self.over:
            return []
        succeeded = message.exit_code == 0
        self.state = JobPhase.JOB_STATE_SUCCEEDED if succeeded else JobPhase.JOB_STATE_FAILED
        first_line = message.report.splitlines()[0] if message.report else ""
        self.record("ended", f"exit code {message.exit_code}: {first_line}")
        return self._end(message.exit_code, message.report)

    def leader_lost(self, now: float) -> list[Effect]:
        """The leader's stream broke or it no longer counts this pod.

        The ranks train on: the collectives do not need the leader, and a leader
        whose supervisor restarts rebuilds the running generation from the pods'
        views. Only once a collective breaks (its pod died, or the leader opened the
        next generation without us) do the ranks unwind and wait in place (outcome).
        """
        if self.over or self.leader_away:
            self.leader_away = True
            return []
        self.leader_away, self.leader_away_since = True, now
        if self.started and any(peer_echo(s.evidence) for s in self.ranks.values()):
            # A collective already broke: nobody else will stop this generation.
            self.record("leader_lost", f"generation {self.generation} stopped; ranks wait in place")
            return self._unwind_all(self.generation, now, "the leader was lost")
        if self._cut_off(now):
            return self._stop_cut_off(now)
        self.record("leader_lost", f"generation {self.generation} trains on; re-joining")
        return []

    def _cut_off(self, now: float) -> bool:
        """The leader is away and no local rank stepped for stall_timeout_s (or two of its
        steps), and not because they all finished: a partition, whose collectives across
        the cut hang, not a restarting leader sidecar, whose pods train on."""
        if not self.started or self.leader_away_since is None or self._all_finished():
            return False  # ranks that finished step no more, and nothing of theirs hangs
        slots = self.ranks.values()
        stepped = [s.last_heartbeat for s in slots if s.last_heartbeat is not None]
        last = max(stepped) if stepped else self.leader_away_since
        patience = max(self.stall_timeout_s, 2 * max((s.step_time_s for s in slots), default=0))
        return now - last >= patience

    def _stop_cut_off(self, now: float) -> list[Effect]:
        """Unwind while the partition lasts: severed now, the generation's sockets still
        live and their shutdown breaks the hung collectives. Once the link is back, the far
        pod's closes reach gloo first and can leave a rank's send waiting for its timeout
        (30 min): the rank could not unwind and would get a fresh process."""
        stalled = f"no step for {self.stall_timeout_s:g}s with the leader away"
        self.record("leader_lost", f"generation {self.generation} stopped ({stalled}); "
                    "ranks wait in place")  # fmt: skip
        return self._unwind_all(self.generation, now, f"cut off from the leader: {stalled}")

    def rejoined(self) -> list[Effect]:
        """A new leader knows nothing of our reports: give them again."""
        self.leader_away, self.leader_away_since = False, None
        self.ready_reported = self.finished_reported = -1
        return self._maybe_start() + self._maybe_finish()

    def resumed_view(self) -> PodView:
        """What this pod gives a leader after its supervisor restarted under its ranks."""
        finished = self._all_finished()
        return PodView(self.generation, self.restart_count, (), finished, running=self.started)

    def asked_to_leave(self, reason: str) -> list[Effect]:
        """The leader wants this pod replaced (a straggler past the policy): end it so."""
        if self.over:
            return []
        report = f"this pod must be replaced: {reason}"
        return self._fail(exit_codes.REPLACE_POD, "replace_pod", report)

    # ------------------------------------ a supervisor restarted under running ranks
    # The sidecar was restarted (killed, OOM, upgraded) while the launcher and the
    # workers kept training: the collectives never needed it. The new supervisor
    # rebuilds this pod's job from what they report when they attach again; nothing
    # is spawned, aborted or started until every process the launcher runs answered.

    def resume_launcher(self, processes: list[tuple[int, int]], now: float) -> list[Effect]:
        """The launcher attached again with its processes ((pid, rank); rank -1: a spare)."""
        self.resuming = True
        for pid, rank in processes:
            slot = self.ranks.get(rank)
            if rank < 0:
                self.spares.spawned(1)  # counted once it attaches again
            elif slot is not None and not slot.pid:
                slot.pid, slot.state, slot.process_starts = pid, WS.WORKER_STATE_UNKNOWN, 1
                self.awaiting.add(pid)
        self.record(
            "supervisor_restarted",
            f"launcher attached again with {len(processes)} processes; rebuilding from them",
        )
        return self._finish_resume(now) if not self.awaiting else []

    def worker_reattached(self, report: Reattached, now: float) -> list[Effect]:
        """A running worker attached again: where it stands (its generation, state, step)."""
        if self.over:
            return [ToWorker(report.pid, Exit(0))]
        if report.spare:
            self.spares.attached(report.pid)
            return [] if self.resuming else self._fill_vacancies() + self._maybe_start()
        slot = self.slot_of(report.pid)
        if slot is None or slot.rank != report.rank:
            why = f"pid {report.pid} (rank {report.rank}) is not a process of this pod's launcher"
            self.record("reattach_refused", why)
            return [ToWorker(report.pid, Exit(1))]
        if not self.resuming:  # the same supervisor: its stream broke, nothing else changed
            if slot.spawning:  # ... or its first attach failed (transiently): it is one now
                return self.worker_attached(report.pid, report.rank, spare=False)
            return []
        known = (WS.WORKER_STATE_HEALTHY, WS.WORKER_STATE_SUCCEEDED)
        slot.state = report.state if report.state in known else WS.WORKER_STATE_INIT
        slot.generation, slot.step = report.generation, report.step
        slot.last_heartbeat = now if slot.state == WS.WORKER_STATE_HEALTHY else None
        if slot.state in known and report.master_port:
            self.master_addr, self.master_port = report.master_addr, report.master_port
        self.restart_count = max(self.restart_count, report.restart_count)
        self.awaiting.discard(report.pid)
        return self._finish_resume(now) if not self.awaiting else []

    def _finish_resume(self, now: float) -> list[Effect]:
        """Every process answered: go on with the generation they run, or start the next."""
        self.resuming = False
        slots = list(self.ranks.values())
        live = (WS.WORKER_STATE_HEALTHY, WS.WORKER_STATE_SUCCEEDED)
        newest = max((s.generation for s in slots if s.pid), default=-1)
        for pid, *_ in self.exits_while_resuming:  # it ran until then: its exit is a failure
            died = self.slot_of(pid)
            if died is not None:
                died.state, died.generation = WS.WORKER_STATE_HEALTHY, newest
        running = [s for s in slots if s.state in live and s.generation == newest]
        effects: list[Effect] = []
        if running and len(running) == len(slots):
            self.generation, self.started = newest, True
            self.state = JobPhase.JOB_STATE_RUNNING
            self._adopt(running=True)
            self.record("resumed", f"generation {newest} runs on: {len(running)} ranks re-attached")
            effects += self._maybe_finish()
        elif running:  # some ranks left the generation meanwhile: it cannot go on
            self.generation, self.started = newest, True
            self._adopt(running=True)
            where = ", ".join(f"rank {s.rank}: {s.state.name} in {s.generation}" for s in slots)
            self.record("resume_broken", f"generation {newest} cannot go on ({where})")
            effects += self._resume_broken(now)  # as a failure would: a restart
        else:  # between generations: the next one starts once every rank is in place
            self.generation = max(self.generation, newest + 1)
            self._adopt(running=False)
            self.record("resumed", f"ranks wait for generation {self.generation}")
            effects += self._fill_vacancies() + self._maybe_start()
        exits, self.exits_while_resuming = self.exits_while_resuming, []
        for pid, exit_code, signum, tail, oom_kills in exits:
            effects += self.process_exited(pid, exit_code, signum, tail, now, oom_kills)
        return effects

    def _adopt(self, running: bool) -> None:
        """The in-process leader goes on where the rebuilt pod stands (a remote one learns it
        from resumed_view)."""
        if self.leader is not None:
            self.leader.adopt(self.generation, self.restart_count, running)

    def _resume_broken(self, now: float) -> list[Effect]:
        """Ranks left the running generation while the supervisor restarted: the in-process
        leader decides, as on a failure of the pod's first rank whose error is not known; with
        the leader remote the pod opens the next generation (the views tell the leader)."""
        if self.leader is not None:
            first = min(self.ranks)
            broke = restart_policy.Failure(self.generation, first, "", self.job_step())
            return self._follow(self.leader.failure(0, self.generation, broke), now)
        self.restart_count += 1
        self.master_port = self.allocate_port()
        return (
            self._open_generation(self.generation + 1, now)
            + self._fill_vacancies()
            + self._maybe_start()
        )

    def launcher_lost(self, now: float) -> list[Effect]:
        """The launcher's stream ended without a shutdown: it died (its container restarts),
        and its workers with it (PDEATHSIG). Its ranks failed; a launcher attaching again
        gets their new processes."""
        if self.over:
            return []
        self.record("launcher_lost", "the launcher detached; its processes died with it")
        effects: list[Effect] = []
        for pid in list(self.spares.idle):
            self.spares.exited(pid, holds_rank=False)
            self.spares.failures -= 1  # not the spare's fault
        self.spares.spawning = 0
        for slot in self.ranks.values():
            if slot.pid:
                tail = "its launcher died (the trainer container restarts)"
                effects += self.process_exited(slot.pid, 0, signal.SIGKILL, tail, now)
        for slot in self.ranks.values():
            slot.spawning = False
        # Spawns and kills made for the dead launcher: the next one gets its processes anew.
        kept = [e for e in effects if not (isinstance(e, ToLauncher) and _for_processes(e))]
        return kept + self._respawn_all()

    def _respawn_all(self) -> list[Effect]:
        effects: list[Effect] = []
        if self.over:
            return effects
        for slot in self.ranks.values():
            if not slot.pid and not slot.spawning and self.spec.bootstrapped:
                effects.append(self._spawn_rank(slot))
        return effects + self._replenish_spares()


def _for_processes(effect: ToLauncher) -> bool:
    return isinstance(effect.command, (Spawn, Kill, Assigned))


def reentry_failure(record: FailureRecord, why: str) -> restart_policy.Failure:
    """A survivor's failed re-entry as the leader sees it: no restart spent, no crash loop."""
    return restart_policy.Failure(
        record.generation,
        record.rank,
        record.detail.signature,
        record.job_step,
        reason=why,
        time_s=record.time_unix,
        reentry_failed=True,
    )


def reentry_error(record: FailureRecord) -> str:
    """What a survivor that could not re-enter raised, for the log, the events and status."""
    detail = record.detail
    error = f"{detail.exception_type}: {detail.message}" if detail.exception_type else ""
    what = error or detail.signature
    return f"rank {record.rank} pid {record.pid} raised before its first step ({what})"
