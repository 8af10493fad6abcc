"""One pod's JobState when the job spans pods: the leader decides, this pod carries out.

The local rules stay JobState's (processes, spares, unwinding, heartbeats);
what is job-wide moves to the leader (supervisor/rules/leader.py): whether a
failure restarts the job or ends it, when a generation starts, on which
MASTER_ADDR/MASTER_PORT, and when the job is over. This pod reports failures,
"ready" and "finished", and applies the leader's Open/Start/End messages,
each once (the leader may repeat them after a re-join).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from supervisor.rpc.peer_wire import failure_to_wire
from supervisor.rules import restart_policy
from supervisor.rules.classify import Classification
from supervisor.rules.failure_evidence import peer_echo, policy_failure
from supervisor.rules.job import (
    Effect,
    JobState,
    ToLeader,
    describe_failure,
    reentry_error,
    reentry_failure,
)
from supervisor.rules.leader import PodView
from supervisor.snapshots.commit import CommitTracker
from train_supervisor import exit_codes
from train_supervisor.v1 import supervisor_pb2 as pb


@dataclass
class CoordinatedJobState(JobState):
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
        super().__post_init__()
        first = self.spec.node_rank * self.spec.nproc_per_node
        self.snapshots = CommitTracker(self.spec.nproc_per_node, first, decides=False)

    def _in_process_leader(self) -> None:
        return None  # the leader is node 0's supervisor, reached through ToLeader effects

    def _adopt(self, running: bool) -> None:
        """The leader learns where this pod stands from its view (resumed_view)."""

    def _resume_broken(self, now: float) -> list[Effect]:
        """The pod opens the next generation; the leader's Open follows from the views."""
        self.restart_count += 1
        self.master_port = self.allocate_port()
        return (
            self._open_generation(self.generation + 1, now)
            + self._fill_vacancies()
            + self._maybe_start()
        )

    # ------------------------------------------------------------ snapshots
    def snapshot_saved(
        self, rank: int, step: int, held: list[int], size: int, wait: float
    ) -> list[Effect]:
        """The leader commits: tell it when what every local rank holds changes.

        A step saved while commits do not wait (commits_wait) is not offered: its rank
        may overwrite it at once, so it must never become the committed step."""
        if not self.commits_wait():
            return []
        self.snapshots.saved(rank, step, held, size, wait)
        common = self.snapshots.common()
        if common == self.snapshots_reported:
            return []
        self.snapshots_reported = common
        report = pb.PodSnapshots(generation=self.generation, held=sorted(common))
        return [ToLeader(pb.PodReport(snapshots=report))]

    def commit_snapshot(self, message: pb.CommitMsg) -> bool:
        """The leader's commit; True: waiting ranks are to be woken."""
        if message.generation != self.generation:
            return False
        away, self.pod_away = self.pod_away, message.pod_away
        overtaken = self.snapshots.overtaken(message.newest_saved)
        committed = self.snapshots.commit(message.step)
        return committed or overtaken or (self.pod_away and not away)

    def commits_wait(self) -> bool:
        """A rank waits for its step's commit, unless none can come now (a pod is away)."""
        return not self.leader_away and not self.pod_away

    # ------------------------------------------------- decisions: the leader's
    def _fall_back(self, why: str) -> list[Effect]:
        """Every pod must follow: the leader carries it in its next Open."""
        if not self._switch_to_fresh(f"re-entry failed on node {self.spec.node_rank}: {why}"):
            return []
        return [ToLeader(pb.PodReport(reentry_failed=why))]

    def _reentry_fallback(self, record: pb.FailureRecord, now: float) -> list[Effect]:
        """The leader opens the next generation (no restart spent); the rank's fresh
        process comes now, every other survivor's with the Open."""
        why = reentry_error(record)
        effects = self._fall_back(why)
        report = pb.PodReport(failure=failure_to_wire(reentry_failure(record, why)))
        return [*effects, ToLeader(report), *self._fill_vacancies()]

    def _on_failure(
        self, record: pb.FailureRecord, found: Classification, now: float
    ) -> list[Effect]:
        """The pod classifies (it has the evidence); the leader decides, except on a pod
        replacement: then this pod reports nothing more and goes (its launcher exits with
        REPLACE_POD), which the leader handles as a lost pod that will come back."""
        failure = policy_failure(record, found)
        # This pod's own failures: enough for the one rule decided here (a crash loop
        # is no hardware fault); the job-wide history is the leader's.
        self.history.append(failure)
        local = restart_policy.decide(self.policy, self.history, self.restart_count)
        if local.action is restart_policy.Action.REPLACE_POD:
            record.action = local.action.value
            self.record("failure", describe_failure(record, f"{record.action}: {local.reason}"))
            return self._replace_pod(local.reason, record)
        record.action = "reported to the leader"
        self.record("failure", describe_failure(record, f"{record.action}: {found.action.value}"))
        # The failed rank gets its process now; the leader opens the generation.
        report = pb.PodReport(failure=failure_to_wire(failure), last_failure=record)
        return [ToLeader(report), *self._fill_vacancies()]

    def _maybe_start(self) -> list[Effect]:
        if not self._ready() or self.ready_reported == self.generation:
            return []
        self.ready_reported = self.generation
        return [ToLeader(pb.PodReport(ready=self.generation))]

    def _maybe_finish(self) -> list[Effect]:
        if not self._all_finished() or self.finished_reported == self.generation:
            return []
        self.finished_reported = self.generation
        return [ToLeader(pb.PodReport(finished=self.generation))]

    # ------------------------------------------------- the leader's messages
    def open_generation(self, message: pb.OpenGenerationMsg, now: float) -> list[Effect]:
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

    def start_generation(self, message: pb.StartGenerationMsg) -> list[Effect]:
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

    def end_job(self, message: pb.EndJobMsg) -> list[Effect]:
        if self.over:
            return []
        succeeded = message.exit_code == 0
        self.state = pb.JobState.JOB_STATE_SUCCEEDED if succeeded else pb.JobState.JOB_STATE_FAILED
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

    def tick(self, now: float) -> list[Effect]:
        effects = super().tick(now)
        if self.leader_away and not self.over and self._cut_off(now):
            effects += self._stop_cut_off(now)
        return effects

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

    def outcome(
        self,
        pid: int,
        generation: int,
        kind: pb.OutcomeKind,
        detail: Optional[pb.FailureDetail],
        now: float,
        step: int = 0,
    ) -> tuple[Optional[pb.Verdict], list[Effect]]:
        """A rank's collective broke (a peer's death): with no leader to open the next
        generation, stop this one here, so the ranks wait in place instead of being
        judged the failure when the settle window ends; else tell the leader at once,
        which loses a pod whose stream is down (LeaderState.collective_broke)."""
        effects: list[Effect] = []
        broke = (
            kind == pb.OutcomeKind.OUTCOME_RAISED
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
            effects.append(ToLeader(pb.PodReport(collective_broke=generation)))
        verdict, more = super().outcome(pid, generation, kind, detail, now, step)
        return verdict, effects + more

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
