"""The multi-pod leader's rules: membership, generations, restarts, endings.

Node 0's supervisor runs these for the whole job. Every input is an event (a
pod joined, heartbeat, was ready, finished, failed, was lost); every output is
a list of Broadcasts for the gRPC layer to push. No I/O, no clock: callers pass
`now` (monotonic seconds), ports come from `allocate_port`.

Rules where the design leaves room, and why:

- One restart per generation. The first failure reported for the current
  generation decides (restart or give up) and opens the next one. Later
  reports for that generation (a second rank dying with it, a survivor's echo)
  arrive once the next generation is open: they are kept in the history as
  context (MAX_FAILURES_PER_GENERATION each) and change nothing. Reports for
  older generations are stale and dropped. The crash-loop rule sees them all
  (`policy_history`) and counts a rank once per generation: eight ranks hitting
  one bug together are no crash loop after a single generation, and the rank
  that reports first may vary from one generation to the next.
- A failure of the open generation before it started (an idle rank died) is a
  failure like any other, as on one pod (job.py): it is what bounds a pod whose
  processes die before every start.
- A lost pod while a generation runs is a restart: Failure(rank = the pod's
  first rank, signature POD_LOST, step 0), decided by the policy like a rank
  failure, so a flapping pod spends the budget. It never makes a crash loop
  (the leader cannot fingerprint it, and its step is unknown): the policy sees
  it with the signature "" (unknown), which also breaks a run of equal errors.
  A pod lost while no generation runs interrupts nothing: no restart, only
  context for the failure that opened the generation (a pod killed whole is
  often first reported by a survivor's echo, then by its stream: one restart).
  The open generation waits for the pod to re-join (same node rank) and be ready.
- A pod joining while still a member is a new incarnation (its replacement came
  up before the timeout): the old one is lost first, by the rule above.
- A leader cannot tell a fresh job from its own replacement until the pods
  answer, so every LeaderState starts FORMING and opens nothing until all
  `nnodes` pods joined. No view given back: a new job, generation 0. Otherwise
  the job is rebuilt: generation and restart count are the maxima over the
  views, history the newest view's (each broadcast carries the whole history).
  The old leader's loss is then a lost pod of node 0 in that generation: one
  restart (restart_count + 1, never reset) and the next generation opens, or
  the job gives up when the budget is spent. If every pod, node 0 included,
  gives back a view that finished the newest generation, the job is over (0).
  If every pod was replaced at once nothing is left to give back: the job
  starts over at generation 0 (no external store, by design).
- Once EndJob is sent nothing changes; a pod that joins later gets it again. Pods classify
  their failures (they hold the evidence); a class that calls for stopping (action STOP_JOB:
  out of memory again and again on one rank) gives the job up with the pod's reason
  (restart_policy.decide). A pod with a hardware fault exits (REPLACE_POD): a lost pod.
- Snapshots (supervisor/snapshots/job_snapshots.py): commits, one offload round at a
  time, and at each start the one step every pod has a copy of.
- Re-entry (supervisor/rules/job.py). A pod whose survivor could not re-enter reports
  a failure marked `reentry_failed` (or, for an unwind that failed, only that it
  happened): the job switches to fresh processes for survivors, for good, and
  every Open says so (`fresh_processes`), so that every pod follows. A failed
  re-entry in the running generation opens the next one without spending a
  restart and stays out of the history (no crash loop, no budget). Node 0's
  --reentry rules: `never` starts in fresh-process mode, `always` (falls_back
  False) reads a failed re-entry as an ordinary failure.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Optional, Union

from supervisor.rules import restart_policy
from supervisor.rules.restart_policy import Failure
from supervisor.snapshots.job_snapshots import JobSnapshots, RoundNews
from supervisor.snapshots.restore import NodeCopies
from supervisor.snapshots.rounds import OffloadRound, OffloadRounds
from train_supervisor import exit_codes
from train_supervisor.steps import NO_STEP

#: Signature of the Failure recorded when a pod is lost (stream loss, heartbeat
#: timeout, re-join of a live pod, or the leader's own pod replaced). It spends
#: a restart but never makes a crash loop: see policy_history.
POD_LOST = "pod lost"


def policy_history(history: Iterable[Failure]) -> list[Failure]:
    """What the restart policy decides on: every failure, the context kept after a
    generation's first one included (when every rank hits one bug the first to report it
    varies; the crash-loop rule counts a rank's failures once per generation).

    Lost pods appear with the signature "" (nothing known about the error): they
    spend the budget but neither make nor continue a crash loop.
    """
    return [dataclasses.replace(f, signature="") if f.signature == POD_LOST else f for f in history]


@dataclass(frozen=True)
class Evidence:
    """What the failed rank's pod saw beyond what the policy needs: for the report a job ends
    with (supervisor/rules/job.py:evidence_of). Without it the report names the signature."""

    error: str  # "ValueError: bad batch", or the signal or exit code
    step: str  # where in the job: "12 of the job (4 in generation 2)"
    traceback: str = ""


def give_up_report(
    reason: str,
    node: int,
    failure: Failure,
    restarts_used: int,
    max_restarts: int,
    evidence: Optional[Evidence] = None,
    heading: str = "job given up",
) -> str:
    """The report a job (or a pod) ends with: why, where, the failure's class and evidence."""
    lost = failure.signature == POD_LOST
    classified = failure.failure_class
    found = f"  class: {classified} ({failure.reason})\n" if classified else ""
    step = evidence.step if evidence else "unknown" if lost else str(failure.step)
    error = evidence.error if evidence else failure.signature or "unknown"
    traceback = evidence.traceback if evidence else ""
    return (
        f"{heading}: {reason}\n"
        f"  rank: {failure.rank}\n"
        f"  node: {node}\n"
        f"  step: {step}\n"
        f"  error: {error}\n"
        f"{found}"
        f"  generation: {failure.generation}; restarts used: {restarts_used} of {max_restarts}"
        + (f"\n{traceback}" if traceback else "")
    )


class Phase(enum.Enum):
    # Waiting for every pod to join. A leader cannot tell a fresh job from its
    # own replacement until the pods answer, so both start here: with no view
    # given back the job is new, otherwise it is rebuilt from the views.
    FORMING = "forming"
    OPEN = "open"  # a generation is open: pods unwind, the leader waits for every "ready"
    RUNNING = "running"  # StartGeneration was sent; the generation trains
    ENDED = "ended"  # EndJob was sent; nothing changes any more


@dataclass(frozen=True)
class LeaderTimings:
    # A pod silent for longer than this is lost. Well under the NCCL/gloo
    # timeouts, well over a heartbeat period plus a GC pause.
    heartbeat_timeout_s: float = 10.0
    # A pod whose stream broke while its ranks train (its supervisor restarts) is kept this
    # long for its re-join. A pod that really died is lost at once all the same: its peers'
    # collectives break, which the other pods report (LeaderState.collective_broke).
    rejoin_grace_s: float = 60.0


# ----------------------------------------------------------------- messages
# Every message carries the generation, the restart count and the history so
# that a follower always holds what a replacement leader will need from it.
# Messages are idempotent: a pod applies a generation's Open or Start once and
# ignores repeats (a re-joining pod may get one twice).


@dataclass(frozen=True)
class OpenGeneration:
    """Abort what runs, unwind every local rank, report ready for `generation`."""

    generation: int
    restart_count: int
    reason: str
    history: tuple[Failure, ...] = ()
    # Not empty: survivors get fresh processes from this generation on, and why.
    fresh_processes: str = ""


@dataclass(frozen=True)
class StartGeneration:
    """Every pod is ready: run the script with this generation's environment."""

    generation: int
    restart_count: int
    master_addr: str
    master_port: int  # fresh for each generation: no rank ever meets a stale store
    world_size: int
    nnodes: int
    history: tuple[Failure, ...] = ()
    restore_step: int = -1  # the committed snapshot every rank restores; -1: none
    restore_reason: str = ""  # which pods have it where


@dataclass(frozen=True)
class CommitStep:
    """Every pod holds snapshot `step`: ranks may now overwrite their older slot."""

    generation: int
    step: int
    offload: Optional[OffloadRound] = None  # a round every pod runs now
    replicated: int = -1  # newest step every pod's replica holds
    persisted: int = -1  # newest step every pod persisted
    drop_persisted: tuple[int, ...] = ()  # steps not every pod persisted: parts to delete
    # A pod is away (its supervisor restarts): no commit comes until it is back, so the
    # ranks must not wait for one (they would stall training); cleared by the next CommitStep.
    pod_away: bool = False
    # A pod waits for a step that can no longer commit: the newest step a pod saved (see
    # supervisor/snapshots/commit.py); NO_STEP: none does.
    newest_saved: int = NO_STEP


@dataclass(frozen=True)
class EndJob:
    """The job is over: exit with this code (train_supervisor.exit_codes)."""

    exit_code: int
    report: str


Message = Union[OpenGeneration, StartGeneration, CommitStep, EndJob]


@dataclass(frozen=True)
class Broadcast:
    target: Optional[int]  # node_rank of one pod, or None: every connected pod
    message: Message


# -------------------------------------------------------- what pods give back
@dataclass(frozen=True)
class PodView:
    """What a follower keeps from the leader's messages, and gives back to a new leader."""

    generation: int
    restart_count: int
    history: tuple[Failure, ...]
    finished: bool = False  # this pod's ranks all finished `generation`
    fresh_processes: str = ""  # as the last Open said
    # Its ranks run `generation` now, unharmed (the pod's supervisor restarted under them).
    running: bool = False


def follow(view: Optional[PodView], message: Message) -> Optional[PodView]:
    """The view a follower holds after `message` (keep it; send it with a re-join).

    An out-of-order message of an older generation changes nothing. The
    follower sets `finished` itself (dataclasses.replace) once its ranks end.
    """
    if isinstance(message, (EndJob, CommitStep)):
        return view
    if view is not None and message.generation < view.generation:
        return view
    same = view is not None and view.generation == message.generation
    # A repeated Start keeps what the pod did since; an Open always starts over.
    finished = same and view is not None and view.finished
    finished = finished and isinstance(message, StartGeneration)
    fresh = view.fresh_processes if view is not None else ""
    if isinstance(message, OpenGeneration):
        fresh = message.fresh_processes or fresh
    return PodView(message.generation, message.restart_count, message.history, finished, fresh)


def mark_finished(view: PodView) -> PodView:
    return dataclasses.replace(view, finished=True)


# -------------------------------------------------------------------- status
@dataclass(frozen=True)
class MemberView:
    node_rank: int
    first_rank: int  # ranks first_rank .. first_rank + nproc - 1, stable across generations
    nproc: int
    ready: bool  # for the open generation
    finished: bool  # the running generation
    heartbeat_age_s: float


@dataclass(frozen=True)
class JobView:
    phase: Phase
    generation: int
    restart_count: int
    max_restarts: int
    history: tuple[Failure, ...]
    leader_address: str
    master_addr: str
    master_port: int  # 0 while no generation runs
    world_size: int
    members: tuple[MemberView, ...]  # by node rank
    missing: tuple[int, ...]  # node ranks not joined (lost, or not there yet)
    end: Optional[EndJob]


#: Failures kept per generation: the one that decided, and context after it.
#: Bounded because every rank of a 1,000-pod job may report one bug together.
MAX_FAILURES_PER_GENERATION = 8


class JoinRefused(ValueError):
    """A pod that cannot be part of this job (node rank out of range, other nproc)."""


@dataclass
class _Member:
    last_heartbeat: float
    incarnation: int  # chosen by the caller (e.g. a stream id): a late loss of an old stream
    view: Optional[PodView]  # as given at join; None: the pod's processes are new
    detached_at: Optional[float] = None  # its stream broke while its ranks train


@dataclass
class LeaderState:
    nnodes: int
    nproc: int  # ranks per pod, the same on every pod: pod i holds ranks i*nproc ..
    policy: restart_policy.RestartPolicy
    allocate_port: Callable[[], int]
    master_addr: str  # node 0's address: its rank 0 hosts each generation's TCPStore
    timings: LeaderTimings = field(default_factory=LeaderTimings)
    leader_address: str = ""  # this leader's gRPC address, for status
    rounds: OffloadRounds = field(default_factory=lambda: OffloadRounds(False, False))
    # Not empty: survivors get fresh processes, and why (set: node 0's --reentry never).
    fresh_processes: str = ""
    falls_back: bool = True  # False: node 0's --reentry always
    phase: Phase = field(default=Phase.FORMING, init=False)
    generation: int = field(default=0, init=False)
    restart_count: int = field(default=0, init=False)
    master_port: int = field(default=0, init=False)  # 0 while no generation runs
    history: list[Failure] = field(default_factory=list, init=False)
    members: dict[int, _Member] = field(default_factory=dict, init=False)
    snapshots: JobSnapshots = field(init=False)
    end: Optional[EndJob] = field(default=None, init=False)
    # The policy's newest decision (the job's restarts are decided here only; a pod of many
    # asks the policy itself just whether its own hardware fault makes it leave, job.py): what
    # the pod of a one-pod job writes in its failure record and event (supervisor/rules/job.py).
    decision: Optional[restart_policy.Decision] = field(default=None, init=False)
    _open_reason: str = field(default="", init=False)
    _views: dict[int, PodView] = field(default_factory=dict, init=False)  # given while FORMING
    _ready: set[int] = field(default_factory=set, init=False)  # for the open generation
    _finished: set[int] = field(default_factory=set, init=False)  # the running generation
    _ran: int = field(default=-1, init=False)  # the generation that started last
    _broke: int = field(default=-1, init=False)  # generation a pod saw a collective break in

    def __post_init__(self) -> None:
        if self.nnodes < 1 or self.nproc < 1:
            raise ValueError(f"nnodes and nproc must be >= 1, not {self.nnodes}, {self.nproc}")
        self.snapshots = JobSnapshots(self.nnodes, self.rounds)

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc

    # ------------------------------------------------------------------ events
    def join(
        self, node: int, nproc: int, view: Optional[PodView], now: float, incarnation: int = 0
    ) -> list[Broadcast]:
        """A pod's supervisor (re-)joined, giving back what it kept (None: nothing)."""
        if not 0 <= node < self.nnodes:
            raise JoinRefused(f"node rank {node} is not in 0..{self.nnodes - 1}")
        if nproc != self.nproc:
            raise JoinRefused(f"node {node} has {nproc} ranks per pod, the job has {self.nproc}")
        effects: list[Broadcast] = []
        if self.end is None and node in self.members:
            if self._resumes(view):  # its supervisor restarted; its ranks train on
                self.members[node] = _Member(now, incarnation, view)
                return [self._commits_wait(True)]
            effects += self._lose(node, "re-joined while still live: a new incarnation")
        if self.end is not None:
            return [*effects, Broadcast(node, self.end)]
        self.members[node] = _Member(now, incarnation, view)
        if self.phase is Phase.FORMING:
            if view is not None:
                self._views[node] = view  # kept even if the pod is lost again: still true
            return effects + (self._form() if len(self.members) == self.nnodes else [])
        # OPEN: a running generation cannot miss a pod (losing it opened the next one).
        return [*effects, Broadcast(node, self._open_message())]

    def heartbeat(self, node: int, now: float) -> bool:
        """Every pod heartbeats, the leader's own included (locally).

        False: the leader does not count this pod (unknown, lost, or the job is
        over); the pod should re-join to learn where the job stands.
        """
        member = self.members.get(node)
        if member is None or self.end is not None:
            return False
        member.last_heartbeat = now
        return True

    def tick(self, now: float) -> list[Broadcast]:
        """Pods silent for longer than the heartbeat timeout are lost."""
        timeout, grace = self.timings.heartbeat_timeout_s, self.timings.rejoin_grace_s
        late = [
            (n, f"no heartbeat for more than {timeout:g}s")
            for n, m in self.members.items()
            if m.detached_at is None and now - m.last_heartbeat > timeout
        ] + [
            (n, f"its stream broke and it did not re-join within {grace:g}s")
            for n, m in self.members.items()
            if m.detached_at is not None and now - m.detached_at > grace
        ]
        effects: list[Broadcast] = []
        for node, why in late:
            if self.end is not None:
                break
            effects += self._lose(node, why)
        return effects

    def pod_lost(self, node: int, now: float, incarnation: Optional[int] = None) -> list[Broadcast]:
        """The pod's stream broke. With `incarnation`, only that incarnation is lost:
        the teardown of a stream that a re-join already replaced changes nothing."""
        member = self.members.get(node)
        if self.end is not None or member is None:
            return []
        if incarnation is not None and incarnation != member.incarnation:
            return []
        if self.phase is Phase.RUNNING and self._broke != self.generation:
            # Its supervisor may be restarting while its ranks train on: wait for the
            # re-join (rejoin_grace_s), unless a collective breaks first (collective_broke).
            member.detached_at = now
            self.snapshots.forget_held(node)  # what it offered may be overwritten by now
            return [self._commits_wait(False)]
        return self._lose(node, "stream lost")

    def collective_broke(self, node: int, generation: int) -> list[Broadcast]:
        """A rank on `node` saw a collective of `generation` lose a peer: a pod whose stream
        is down (detached) did not just restart its supervisor, it died."""
        if not self._counts(node, generation):
            return []
        self._broke = generation  # a stream that breaks from now on is a lost pod
        effects: list[Broadcast] = []
        for lost, member in sorted(self.members.items()):
            if member.detached_at is not None:
                why = f"stream lost, and node {node}'s collective broke"
                effects += self._lose(lost, why)
        return effects

    def _commits_wait(self, again: bool) -> Broadcast:
        """While a pod is away no commit can come: ranks must not wait for one."""
        away = not again or any(m.detached_at is not None for m in self.members.values())
        rounds = self.snapshots.rounds
        step = CommitStep(
            self.generation, self.snapshots.committed, None, rounds.replicated, rounds.persisted,
            pod_away=away,
        )  # fmt: skip
        return Broadcast(None, step)

    def _resumes(self, view: Optional[PodView]) -> bool:
        """A (re-)joining pod whose ranks train the running generation unharmed."""
        return (
            view is not None
            and view.running
            and self.phase is Phase.RUNNING
            and view.generation == self.generation
        )

    def pod_ready(self, node: int, generation: int) -> list[Broadcast]:
        """Every local rank of the pod is attached and unwound for `generation`."""
        if self.phase is not Phase.OPEN or generation != self.generation:
            return []
        member = self.members.get(node)
        if member is None or member.detached_at is not None:
            return []  # a pod whose stream is down says it again once re-joined (no pod away)
        self._ready.add(node)
        if len(self._ready) < self.nnodes:  # ready pods are members: every pod joined and ready
            return []
        self.phase, self._ran = Phase.RUNNING, self.generation
        self.master_port = self.allocate_port()
        choice = self.snapshots.choose(range(self.nnodes))
        start = StartGeneration(
            generation=self.generation,
            restart_count=self.restart_count,
            master_addr=self.master_addr,
            master_port=self.master_port,
            world_size=self.world_size,
            nnodes=self.nnodes,
            history=tuple(self.history),
            restore_step=choice.step,
            restore_reason=choice.why(),
        )
        return [Broadcast(None, start)]

    def pod_snapshots(
        self, node: int, generation: int, held: Iterable[int], now: float = 0.0
    ) -> list[Broadcast]:
        """Every local rank of pod `node` holds the steps `held`."""
        if self._counts(node, generation):
            return self._commit_news(self.snapshots.held(node, held, now))
        if self.phase is Phase.OPEN and generation == self._ran and node in self.members:
            self.snapshots.late_held(node, held)  # what a pod found when the Open came
        return []

    def pod_copies(self, node: int, copies: NodeCopies) -> None:
        """What pod `node` holds now (with its "ready" and after each round)."""
        if node in self.members:
            self.snapshots.pod_copies(node, copies)

    def pod_offloaded(
        self, node: int, step: int, replica_error: str, persist_error: str, now: float
    ) -> list[Broadcast]:
        if self.phase is not Phase.RUNNING or node not in self.members:
            return []
        news = self.snapshots.offloaded(node, step, replica_error, persist_error, now)
        return self._commit_news(news)

    def restore_failed(
        self, node: int, generation: int, step: int, problem: str
    ) -> list[Broadcast]:
        """No copy of `step` on `node` passed its checksums: restart without it."""
        if not self._counts(node, generation):
            return []
        self.snapshots.restore_failed(node, step)
        failed = Failure(generation, node * self.nproc, f"restore of step {step} failed", 0)
        self.history.append(failed)
        return self._decide(node, failed, f"node {node} could not restore step {step}: {problem}")

    def _counts(self, node: int, generation: int) -> bool:
        """A report of the running generation from a pod the leader counts."""
        return (
            self.phase is Phase.RUNNING and generation == self.generation and node in self.members
        )

    def _commit_news(self, news: Optional[RoundNews]) -> list[Broadcast]:
        if news is None:
            return []
        step = CommitStep(
            self.generation,
            news.committed,
            news.offload,
            news.replicated,
            news.persisted,
            news.drop_persisted,
            newest_saved=news.newest_saved,
        )
        return [Broadcast(None, step)]

    def pod_finished(self, node: int, generation: int) -> list[Broadcast]:
        """Every local rank of the pod finished the script in `generation`."""
        member = self.members.get(node)
        if self.phase is Phase.FORMING and member is not None and member.view is not None:
            if member.view.running and member.view.generation == generation:
                # A leader forming under running ranks (its supervisor restarted): kept for
                # the rebuild, which ends the job if every pod had finished.
                member.view = mark_finished(member.view)
            return []
        if not self._counts(node, generation):
            return []
        self._finished.add(node)
        if len(self._finished) < self.nnodes:
            return []
        return self._end(
            exit_codes.SUCCEEDED, f"all {self.nnodes} pods finished generation {generation}"
        )

    def failure(
        self, node: int, generation: int, failure: Failure, evidence: Optional[Evidence] = None
    ) -> list[Broadcast]:
        """A pod's supervisor settled a rank failure in `generation` (`evidence`: what it saw,
        for the report should the job end)."""
        if self.phase in (Phase.FORMING, Phase.ENDED) or node not in self.members:
            # FORMING: the generation is not known yet, and the rebuild spends a restart anyway.
            return []
        failure = dataclasses.replace(failure, generation=generation)
        if failure.reentry_failed and not self.falls_back:
            failure = dataclasses.replace(failure, reentry_failed=False)  # --reentry always
        if failure.reentry_failed:
            if generation != self.generation or self.phase is not Phase.RUNNING:
                return []  # its generation is over already: nothing to reopen
            self.reentry_failed(node, failure.reason or failure.signature)
            self.generation += 1  # no restart spent: the supervisor's fallback, not a fault
            why = f"rank {failure.rank} on node {node} could not re-enter the script"
            return [Broadcast(None, self._open(f"{why}; no restart spent"))]
        if generation == self.generation:
            why = (
                f"rank {failure.rank} on node {node} failed at job step {failure.step}: "
                f"{failure.signature or 'unknown error'}"
            )
            self.history.append(failure)
            return self._decide(node, failure, why, evidence)
        if generation == self.generation - 1:
            self._note(failure)  # its generation already restarted: context only
        return []

    def adopt(self, generation: int, restart_count: int, running: bool) -> None:
        """The job's only pod rebuilt itself under running ranks (its supervisor, and so this
        leader, restarted): the job goes on where the ranks are, and nothing was lost. With
        several pods a new leader rebuilds the job from the pods' views instead (join)."""
        if self.nnodes != 1 or 0 not in self.members:
            raise ValueError("only a leader of one joined pod adopts where its pod stands")
        self.generation, self.restart_count = generation, restart_count
        if running:
            self.phase, self._ran = Phase.RUNNING, generation
        else:
            self._open("the supervisor restarted between generations")

    def reentry_failed(self, node: int, why: str) -> None:
        """A survivor on `node` could not re-enter: fresh processes from the next Open on."""
        if self.falls_back and not self.fresh_processes:
            self.fresh_processes = f"re-entry failed on node {node}: {why}"

    # ------------------------------------------------------------------ status
    def view(self, now: float) -> JobView:
        members = tuple(
            MemberView(
                node_rank=n,
                first_rank=n * self.nproc,
                nproc=self.nproc,
                ready=n in self._ready,
                finished=n in self._finished,
                heartbeat_age_s=max(0.0, now - m.last_heartbeat),
            )
            for n, m in sorted(self.members.items())
        )
        return JobView(
            phase=self.phase,
            generation=self.generation,
            restart_count=self.restart_count,
            max_restarts=self.policy.max_restarts,
            history=tuple(self.history),
            leader_address=self.leader_address,
            master_addr=self.master_addr,
            master_port=self.master_port,
            world_size=self.world_size,
            members=members,
            missing=tuple(n for n in range(self.nnodes) if n not in self.members),
            end=self.end,
        )

    def pod_view(self, node: Optional[int] = None) -> PodView:
        """What a follower that got every broadcast so far holds (for `node`'s finished)."""
        finished = node is not None and node in self._finished
        history = tuple(self.history)
        return PodView(self.generation, self.restart_count, history, finished, self.fresh_processes)

    # --------------------------------------------------------------- decisions
    def _form(self) -> list[Broadcast]:
        """Every pod joined: open generation 0, or rebuild the job from their views."""
        if not self._views:
            return [Broadcast(None, self._open(f"job formed: {self.nnodes} pods joined"))]
        views = self._views.values()
        newest = max(views, key=lambda v: (v.generation, v.restart_count, len(v.history)))
        self.generation = max(v.generation for v in views)
        self.restart_count = max(v.restart_count for v in views)
        self.history = list(newest.history)
        fresh = [v.fresh_processes for v in views if v.fresh_processes]
        self.fresh_processes = self.fresh_processes or (fresh[0] if fresh else "")
        given = [m.view for m in self.members.values()]
        if all(v is not None and v.finished and v.generation == self.generation for v in given):
            return self._end(
                exit_codes.SUCCEEDED,
                f"all {self.nnodes} pods had finished generation {self.generation} "
                "before the leader changed",
            )
        if all(v is not None and v.running and v.generation == self.generation for v in given):
            # The leader's supervisor restarted while every rank trained on: go on.
            self.phase, self._ran = Phase.RUNNING, self.generation
            self._finished = {n for n, m in self.members.items() if m.view and m.view.finished}
            return [self._commits_wait(True)]
        lost = Failure(self.generation, 0, POD_LOST, 0)
        self.history.append(lost)
        for node in sorted(n for n, m in self.members.items() if m.view is None and n != 0):
            self._note(Failure(self.generation, node * self.nproc, POD_LOST, 0))
        why = f"leader replaced; job rebuilt from {len(self._views)} pod views"
        return self._decide(0, lost, why)

    def _lose(self, node: int, why: str) -> list[Broadcast]:
        self.snapshots.lost(node)
        del self.members[node]
        self._ready.discard(node)
        self._finished.discard(node)
        lost = Failure(self.generation, node * self.nproc, POD_LOST, 0)
        if self.phase is Phase.RUNNING:
            self.history.append(lost)
            return self._decide(node, lost, f"node {node} lost: {why}")
        if self.phase is Phase.OPEN and self.generation > 0:
            self._note(dataclasses.replace(lost, generation=self.generation - 1))
        return []  # FORMING, or generation 0 not started yet: nothing was interrupted

    def _decide(
        self, node: int, failure: Failure, why: str, evidence: Optional[Evidence] = None
    ) -> list[Broadcast]:
        """`failure` (just appended) is the first of the current generation: restart or end."""
        decision = restart_policy.decide(
            self.policy, policy_history(self.history), self.restart_count
        )
        self.decision = decision
        if decision.action is not restart_policy.Action.RESTART:
            return self._give_up(node, failure, decision.reason, evidence)
        self.restart_count += 1
        self.generation += 1
        return [Broadcast(None, self._open(f"{why}; {decision.reason}"))]

    def _note(self, failure: Failure) -> None:
        """Keep a failure of a generation already decided, as context (bounded, no repeats)."""
        same: list[Failure] = []
        for f in reversed(self.history):  # the newest generations are at the end
            if f.generation < failure.generation:
                break
            if f.generation == failure.generation:
                same.append(f)
        if failure not in same and len(same) < MAX_FAILURES_PER_GENERATION:
            self.history.append(failure)

    def _open(self, reason: str) -> OpenGeneration:
        self.phase = Phase.OPEN
        self.master_port = 0
        self._open_reason = reason
        self._ready.clear()
        self._finished.clear()
        self.snapshots.generation_opened()
        return self._open_message()

    def _open_message(self) -> OpenGeneration:
        return OpenGeneration(
            self.generation,
            self.restart_count,
            self._open_reason,
            tuple(self.history),
            self.fresh_processes,
        )

    def _give_up(
        self, node: int, failure: Failure, reason: str, evidence: Optional[Evidence]
    ) -> list[Broadcast]:
        used = (self.restart_count, self.policy.max_restarts)
        if self.decision is not None and self.decision.action is restart_policy.Action.REPLACE_POD:
            # Hardware at fault: the pod goes, and a new one carries on. With several pods a
            # pod sees this itself and leaves alone (job.py): a lost pod to the leader.
            heading = "this pod must be replaced"
            report = give_up_report(reason, node, failure, *used, evidence, heading)
            return self._end(exit_codes.REPLACE_POD, report)
        report = give_up_report(reason, node, failure, *used, evidence)
        return self._end(exit_codes.GAVE_UP, report)

    def _end(self, exit_code: int, report: str) -> list[Broadcast]:
        self.phase = Phase.ENDED
        self.master_port = 0
        self.end = EndJob(exit_code, report)
        return [Broadcast(None, self.end)]
