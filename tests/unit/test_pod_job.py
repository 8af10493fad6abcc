"""supervisor/rules/job.py with the leader remote: one pod of a multi-pod job, driven event by
event.

The pod keeps its local rules but leaves the job-wide decisions to the leader:
failures are reported (ToLeader), generations open and start only on the leader's
messages, and the job ends on EndJob. As in test_job.py there is no clock and no
process: pids and ports come from counters, and `play` acts as the launcher and the
bootstrap. The last tests wire two pods to a real LeaderState in-process, through the wire format.
"""

from __future__ import annotations

import dataclasses
import itertools
import signal
from collections.abc import Iterator, Sequence
from typing import Optional

import pytest
from effects import (
    aborts,
    exits,
    from_leader,
    launcher_commands,
    make_spec,
    play_pod,
    shutdowns,
    starts,
)

from supervisor.rpc.effects_wire import report_to_wire
from supervisor.rpc.peer_wire import failure_from_wire, message_to_wire
from supervisor.rpc.state_wire import record_to_wire
from supervisor.rules.classify import Action
from supervisor.rules.effects import (
    Abort,
    Assigned,
    CollectiveBroke,
    Effect,
    Exit,
    Finished,
    Kill,
    Ready,
    Spawn,
    ToLeader,
)
from supervisor.rules.failure_evidence import FailureDetail
from supervisor.rules.job import JobState, Timings
from supervisor.rules.leader import (
    Broadcast,
    EndJob,
    LeaderState,
    OpenGeneration,
    Phase,
    StartGeneration,
)
from supervisor.rules.restart_policy import Failure, RestartPolicy
from train_supervisor import exit_codes
from train_supervisor.v1 import supervisor_pb2 as pb

WS = pb.WorkerState
NPROC = 2
LOCAL_PORT = 40000  # the pod's own allocator: never the port a multi-pod generation uses
LEADER_PORT = 50000
LEADER_ADDR = "job-0.job-svc"
SIG = "ValueError: bad batch @ train.py:42"


# ------------------------------------------------------------ effect filters
def rank_spawns(effects: Sequence[Effect]) -> list[int]:
    return sorted(c.rank for c in launcher_commands(effects, Spawn) if not c.spare)


def assignments(effects: Sequence[Effect]) -> list[tuple[int, int]]:
    return [(c.pid, c.rank) for c in launcher_commands(effects, Assigned)]


def reports(effects: Sequence[Effect]) -> list[pb.PodReport]:
    """As they go on the wire (supervisor/rpc/effects_wire.py)."""
    return [report_to_wire(e.report) for e in effects if isinstance(e, ToLeader)]


def kinds(effects: Sequence[Effect]) -> list[tuple[str, object]]:
    """The reports for the leader as (kind, value): ("ready", 0), ("failure", PolicyFailure)."""
    found: list[tuple[str, object]] = []
    for report in reports(effects):
        kind = report.WhichOneof("report")
        assert kind is not None, report
        found.append((kind, getattr(report, kind)))
    return found


def open_msg(generation: int, restart_count: int, reason: str = "a rank failed") -> OpenGeneration:
    return from_leader(
        pb.OpenGenerationMsg(generation=generation, restart_count=restart_count, reason=reason)
    )


def start_msg(
    generation: int, restart_count: int = 0, port: int = LEADER_PORT, restore_step: int = -1
) -> StartGeneration:
    return from_leader(
        pb.StartGenerationMsg(
            generation=generation,
            restart_count=restart_count,
            master_addr=LEADER_ADDR,
            master_port=port,
            world_size=4,
            nnodes=2,
            restore_step=restore_step,
        )
    )


def boom(message: str = "bad batch") -> FailureDetail:
    return FailureDetail(
        exception_type="ValueError",
        message=message,
        traceback=f"Traceback (most recent call last):\nValueError: {message}\n",
        signature=SIG,
    )


# ------------------------------------------------------------------ harness
class PodSim:
    """One JobState (its leader remote) plus the launcher and bootstrap of its pod."""

    def __init__(
        self,
        *,
        node_rank: int = 1,
        spares: int = 0,
        bootstrapped: bool = True,
        first_pid: Optional[int] = None,
    ) -> None:
        self.spec = make_spec(
            nproc=NPROC, nnodes=2, node_rank=node_rank, spares=spares, bootstrapped=bootstrapped
        )
        self.ports: Iterator[int] = itertools.count(LOCAL_PORT)
        self.job = JobState(
            leader_remote=True,
            spec=self.spec,
            policy=RestartPolicy(max_restarts=3),
            allocate_port=self.ports.__next__,
            timings=Timings(unwind_timeout_s=10.0),
        )
        self._pids = itertools.count(first_pid if first_pid is not None else 1000 * (node_rank + 1))
        self.now = 100.0

    def new_pid(self) -> int:
        return next(self._pids)

    def pid(self, rank: int) -> int:
        pid = self.job.ranks[rank].pid
        assert pid, f"rank {rank} has no process"
        return pid

    def pids(self) -> dict[int, int]:
        return {rank: slot.pid for rank, slot in sorted(self.job.ranks.items())}

    def play(self, effects: Sequence[Effect]) -> list[Effect]:
        """Every SpawnWorker becomes a process that (bootstrapped) attaches; every
        AbortGeneration is answered with OUTCOME_UNWOUND. Returns everything that happened."""
        return play_pod(self.job, effects, self.new_pid, self.now)

    def launch(self) -> list[Effect]:
        return self.play(self.job.attach_launcher())

    def step_all(self, step: int) -> None:
        for rank, slot in sorted(self.job.ranks.items()):
            assert self.job.heartbeat(self.pid(rank), slot.generation, step, 0.1, self.now) == []

    def finish(self, rank: int) -> list[Effect]:
        pid = self.pid(rank)
        generation = self.job.ranks[rank].generation
        verdict, effects = self.job.outcome(
            pid, generation, pb.OutcomeKind.OUTCOME_FINISHED, None, self.now
        )
        assert verdict == pb.Verdict.VERDICT_WAIT
        return effects

    def kill(self, rank: int) -> list[Effect]:
        return self.job.process_exited(self.pid(rank), 0, signal.SIGKILL, "", self.now)


def running(sim: PodSim, port: int = LEADER_PORT) -> list[Effect]:
    """Launch the pod and start generation 0 as the leader would: the start's effects."""
    assert kinds(sim.launch()) == [("ready", 0)]
    effects = sim.job.start_generation(start_msg(0, port=port))
    assert len(starts(effects)) == NPROC
    return effects


# ---------------------------------------------------------------- readiness
def test_node_1_holds_ranks_2_and_3_and_reports_ready_instead_of_starting() -> None:
    sim = PodSim()
    assert sorted(sim.job.ranks) == [2, 3]
    assert sim.job.world_size == 4
    effects = sim.job.attach_launcher()
    assert rank_spawns(effects) == [2, 3]
    assert reports(effects) == []  # nothing attached yet

    assert sim.job.worker_attached(2001, 2, spare=False) == []
    effects = sim.job.worker_attached(2002, 3, spare=False)
    assert starts(effects) == {}  # the leader says when
    assert not sim.job.started
    assert effects == [ToLeader(Ready(0))]
    assert sim.job.ready_reported == 0
    assert sim.job.state == pb.JobState.JOB_STATE_STARTING


def test_ready_for_generation_zero_is_set_on_the_wire() -> None:
    """ready=0 is the default value: the oneof must still say "ready" once serialized."""
    sim = PodSim()
    [report] = reports(sim.launch())
    assert report.WhichOneof("report") == "ready"
    again = pb.PodReport.FromString(report.SerializeToString())
    assert again.WhichOneof("report") == "ready"
    assert again.ready == 0


def test_ready_is_reported_once_per_generation() -> None:
    sim = PodSim(spares=1)
    effects = sim.launch()
    assert kinds(effects) == [("ready", 0)]
    # A spare that attaches later, a tick: no second report.
    assert reports(sim.job.worker_attached(sim.new_pid(), -1, spare=True)) == []
    assert sim.job.tick(sim.now + 1.0) == []


def test_spare_attaching_last_reports_ready_once() -> None:
    sim = PodSim(spares=1)
    sim.job.attach_launcher()
    assert kinds(sim.job.worker_attached(2000, -1, spare=True)) == []
    assert kinds(sim.job.worker_attached(2001, 2, spare=False)) == []
    assert kinds(sim.job.worker_attached(2002, 3, spare=False)) == [("ready", 0)]


# ------------------------------------------------------------------- start
def test_start_generation_runs_the_script_with_the_leaders_master() -> None:
    sim = PodSim()
    sim.launch()
    pids = sim.pids()
    effects = sim.job.start_generation(start_msg(0, restart_count=0, port=LEADER_PORT + 7))
    started = starts(effects)
    assert {pid: (s.rank, s.local_rank, s.generation) for pid, s in started.items()} == {
        pids[2]: (2, 0, 0),
        pids[3]: (3, 1, 0),
    }
    for start in started.values():
        env = dict(start.env)
        assert env["MASTER_ADDR"] == LEADER_ADDR  # not the spec's 127.0.0.1
        assert env["MASTER_PORT"] == str(LEADER_PORT + 7)  # not the pod's own allocator
        assert env["RANK"] == str(start.rank)
        assert env["GROUP_RANK"] == "1"
        assert (env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"], env["GROUP_WORLD_SIZE"]) == (
            "4",
            "2",
            "2",
        )
        assert env["TORCHELASTIC_RESTART_COUNT"] == "0"
    assert sim.job.started
    assert sim.job.state == pb.JobState.JOB_STATE_RUNNING
    assert (sim.job.master_addr, sim.job.master_port) == (LEADER_ADDR, LEADER_PORT + 7)
    assert all(s.state == WS.WORKER_STATE_HEALTHY for s in sim.job.ranks.values())
    assert reports(effects) == []


def test_start_of_another_generation_is_ignored() -> None:
    sim = PodSim()
    sim.launch()
    assert sim.job.start_generation(start_msg(1)) == []
    assert not sim.job.started


def test_start_before_every_rank_attached_is_ignored() -> None:
    sim = PodSim()
    sim.job.attach_launcher()
    sim.job.worker_attached(2001, 2, spare=False)  # rank 3 still starting
    assert sim.job.start_generation(start_msg(0)) == []
    assert not sim.job.started
    # Rank 3 attaches: the pod reports ready, and the leader's next Start runs it.
    assert kinds(sim.job.worker_attached(2002, 3, spare=False)) == [("ready", 0)]
    assert len(starts(sim.job.start_generation(start_msg(0)))) == NPROC


def test_repeated_start_is_applied_once() -> None:
    sim = PodSim()
    running(sim)
    assert sim.job.start_generation(start_msg(0)) == []


def test_start_adopts_the_leaders_restart_count() -> None:
    sim = PodSim()
    sim.launch()
    sim.job.start_generation(start_msg(0, restart_count=2))
    assert sim.job.restart_count == 2


# ---------------------------------------------------------------- a failure
def test_sigkilled_rank_is_reported_and_respawned_without_a_local_restart() -> None:
    sim = PodSim()
    running(sim)
    sim.step_all(7)
    survivor, victim = sim.pid(2), sim.pid(3)

    effects = sim.kill(3)
    [report] = reports(effects)
    assert report.WhichOneof("report") == "failure"
    assert report.failure == pb.PolicyFailure(
        generation=0,
        rank=3,
        signature="SIGKILL",
        step=7,
        failure_class="transient",
        action="RESTART_IN_PLACE",
        reason="killed by SIGKILL; sender unknown, not the supervisor, no OOM kill seen",
        time_unix=report.failure.time_unix,  # when the pod saw it: the crash-loop window
    )
    assert report.failure.time_unix > 0
    record = report.last_failure
    assert (record.generation, record.rank, record.pid, record.signal) == (0, 3, victim, 9)
    assert record.detail.signature == "SIGKILL"
    assert record.action == "reported to the leader"
    assert [record_to_wire(f) for f in sim.job.failures] == [record]  # what it holds, sent
    # The failed rank gets a process at once, and that is all: no abort, no
    # new generation, no restart spent; the leader decides.
    assert rank_spawns(effects) == [3]
    assert aborts(effects) == {}
    assert (sim.job.generation, sim.job.restart_count) == (0, 0)
    assert [f.signature for f in sim.job.history] == ["SIGKILL"]  # the pod's own, for its rules
    assert sim.job.started
    assert sim.job.ranks[2].pid == survivor
    assert sim.job.ranks[2].state == WS.WORKER_STATE_HEALTHY

    # The new process attaches: the pod is not ready (generation 0 still runs here).
    assert reports(sim.play(effects[1:])) == []
    assert sim.job.ranks[3].pid not in (0, victim)
    assert sim.job.ranks[3].state == WS.WORKER_STATE_INIT


def test_sigkilled_rank_gets_the_warm_spare() -> None:
    sim = PodSim(spares=1)
    running(sim)
    spare = sim.job.spares.idle[0]
    effects = sim.kill(3)
    assert kinds(effects)[0][0] == "failure"
    assert assignments(effects) == [(spare, 3)]
    assert rank_spawns(effects) == []
    assert sim.job.ranks[3].pid == spare


def test_raised_error_is_reported_with_its_signature_and_step() -> None:
    sim = PodSim()
    running(sim)
    pid = sim.pid(2)
    sim.job.heartbeat(pid, 0, 12, 0.1, sim.now)
    verdict, effects = sim.job.outcome(pid, 0, pb.OutcomeKind.OUTCOME_RAISED, boom(), sim.now)
    assert (verdict, effects) == (None, [])
    verdict, effects = sim.job.settle(pid)
    assert (verdict, effects) == (pb.Verdict.VERDICT_EXIT_FAILED, [])
    effects = sim.job.process_exited(pid, 1, 0, "Traceback ...", sim.now)
    [report] = reports(effects)
    assert report.failure == pb.PolicyFailure(
        generation=0,
        rank=2,
        signature=SIG,
        step=12,
        failure_class="user_bug",
        action="RESTART_IN_PLACE",
        reason="ValueError: bad batch",
        time_unix=report.failure.time_unix,  # when the pod saw it: the crash-loop window
    )
    assert report.failure.time_unix > 0
    assert report.last_failure.detail.exception_type == "ValueError"
    assert report.last_failure.exit_code == 1


def test_a_rank_dying_before_the_start_is_reported_for_the_open_generation() -> None:
    sim = PodSim()
    sim.launch()  # ready, not started
    effects = sim.kill(2)
    [(kind, failure)] = kinds(effects)
    assert kind == "failure" and isinstance(failure, pb.PolicyFailure)
    where = (failure.generation, failure.rank, failure.signature, failure.step)
    assert where == (0, 2, "SIGKILL", 0)
    assert rank_spawns(effects) == [2]


# ------------------------------------------------------------ the open message
def test_open_of_a_newer_generation_aborts_survivors_then_reports_ready() -> None:
    sim = PodSim()
    running(sim)
    survivor = sim.pid(2)
    sim.play(sim.kill(3))
    newcomer = sim.pid(3)

    effects = sim.job.open_generation(open_msg(1, 1), sim.now)
    assert aborts(effects) == {survivor: Abort(generation=0, reason="a rank failed")}
    assert reports(effects) == []  # the survivor has not unwound yet
    assert (sim.job.generation, sim.job.restart_count) == (1, 1)
    assert sim.job.state == pb.JobState.JOB_STATE_RESTARTING
    assert not sim.job.started
    assert sim.job.ranks[2].state == WS.WORKER_STATE_UNWINDING
    assert sim.job.ranks[3].state == WS.WORKER_STATE_INIT  # the newcomer is not aborted

    _, effects = sim.job.outcome(survivor, 0, pb.OutcomeKind.OUTCOME_UNWOUND, None, sim.now)
    assert effects == [ToLeader(Ready(1))]
    assert starts(effects) == {}

    started = starts(sim.job.start_generation(start_msg(1, restart_count=1, port=LEADER_PORT + 1)))
    assert set(started) == {survivor, newcomer}
    for start in started.values():
        assert start.generation == 1
        assert start.env["MASTER_PORT"] == str(LEADER_PORT + 1)
        assert start.env["TORCHELASTIC_RESTART_COUNT"] == "1"
    assert sim.job.ranks[2].process_starts == 1
    assert sim.job.ranks[3].process_starts == 2


def test_open_on_a_pod_without_failures_aborts_every_rank() -> None:
    """A failure elsewhere: every local rank unwinds in place, none is replaced."""
    sim = PodSim()
    running(sim)
    before = sim.pids()
    effects = sim.play(sim.job.open_generation(open_msg(1, 1), sim.now))
    assert set(aborts(effects)) == set(before.values())
    assert rank_spawns(effects) == []
    assert kinds(effects) == [("ready", 1)]
    assert sim.pids() == before


def test_open_of_the_current_or_an_older_generation_aborts_nothing() -> None:
    sim = PodSim()
    running(sim)
    sim.job.open_generation(open_msg(2, 2), sim.now)
    assert sim.job.generation == 2
    assert sim.job.open_generation(open_msg(2, 2), sim.now) == []
    assert sim.job.open_generation(open_msg(1, 1), sim.now) == []
    assert (sim.job.generation, sim.job.restart_count) == (2, 2)  # never lowered


def test_open_adopts_a_higher_restart_count_for_the_same_generation() -> None:
    sim = PodSim()
    sim.launch()
    sim.job.open_generation(open_msg(0, 1, "leader replaced"), sim.now)
    assert sim.job.restart_count == 1
    assert sim.job.generation == 0


def test_survivor_that_does_not_unwind_is_killed_as_collateral_and_not_reported() -> None:
    sim = PodSim()
    running(sim)
    stuck = sim.pid(2)
    sim.job.open_generation(open_msg(1, 1), sim.now)  # rank 3 unwinds, rank 2 does not
    sim.job.outcome(sim.pid(3), 0, pb.OutcomeKind.OUTCOME_UNWOUND, None, sim.now)
    kills = launcher_commands(sim.job.tick(sim.now + 10.0), Kill)
    assert [(k.pid, k.signal) for k in kills] == [(stuck, signal.SIGKILL)]

    effects = sim.play(sim.job.process_exited(stuck, 0, signal.SIGKILL, "", sim.now + 10.1))
    assert rank_spawns(effects) == [2]
    assert kinds(effects) == [("ready", 1)]  # no failure: we killed it
    assert list(sim.job.failures) == []


# ----------------------------------------------------------------- snapshots
def test_the_pod_tells_the_leader_what_every_local_rank_holds() -> None:
    sim = PodSim()  # node 1: ranks 2 and 3
    running(sim)
    assert sim.job.snapshot_saved(2, 5, [5], 4096, 0.01) == []  # rank 3 has not saved 5
    effects = sim.job.snapshot_saved(3, 5, [5], 4096, 0.01)
    assert reports(effects) == [pb.PodReport(snapshots=pb.PodSnapshots(generation=0, held=[5]))]
    assert sim.job.snapshot_saved(3, 5, [5], 4096, 0.01) == []  # nothing new to tell
    assert sim.job.snapshots.committed == -1  # the leader commits, not the pod
    assert sim.job.commit_snapshot(from_leader(pb.CommitMsg(generation=0, step=5)))
    assert sim.job.snapshots.committed == 5
    assert not sim.job.commit_snapshot(from_leader(pb.CommitMsg(generation=3, step=6)))
    with pytest.raises(ValueError, match=r"is not in 2\.\.3"):
        sim.job.snapshot_saved(0, 6, [6], 4096, 0.01)


def test_each_generation_starts_from_the_leaders_restore_step() -> None:
    sim = PodSim()
    running(sim)
    sim.job.snapshot_saved(2, 5, [5], 1, 0.0)
    sim.job.snapshot_saved(3, 5, [5], 1, 0.0)
    sim.job.commit_snapshot(from_leader(pb.CommitMsg(generation=0, step=5)))
    sim.play(sim.job.open_generation(open_msg(1, 1), sim.now))
    sim.job.start_generation(start_msg(1, restart_count=1, restore_step=5))
    assert sim.job.snapshots.committed == 5
    sim.play(sim.job.open_generation(open_msg(2, 2), sim.now))
    sim.job.start_generation(start_msg(2, restart_count=2, restore_step=-1))  # a pod was lost
    assert sim.job.snapshots.committed == -1 and sim.job.snapshots.held(2) == frozenset()


def test_a_pod_away_in_the_last_generation_holds_no_commit_back_in_the_next() -> None:
    sim = PodSim()
    running(sim)
    # A pod's stream broke while training: no commit can come, ranks stop waiting.
    sim.job.commit_snapshot(from_leader(pb.CommitMsg(generation=0, step=-1, pod_away=True)))
    assert not sim.job.commits_wait()
    # It was lost (a collective broke): the next generation starts with every pod ready.
    sim.play(sim.job.open_generation(open_msg(1, 1), sim.now))
    sim.job.start_generation(start_msg(1, restart_count=1, restore_step=-1))
    assert sim.job.started and sim.job.commits_wait()
    sim.job.snapshot_saved(2, 3, [3], 1, 0.0)
    effects = sim.job.snapshot_saved(3, 3, [3], 1, 0.0)
    assert reports(effects) == [pb.PodReport(snapshots=pb.PodSnapshots(generation=1, held=[3]))]


def test_ranks_waiting_for_a_step_another_pod_overtook_are_woken() -> None:
    """Back from a pod away, this pod's ranks wait for 8 while the other pod's waited for 9,
    which they can no longer give: the leader's word wakes them (ReportSaved's wait)."""
    sim = PodSim()
    running(sim)
    for rank in (2, 3):
        sim.job.snapshot_saved(rank, 5, [5], 1, 0.0)
    sim.job.commit_snapshot(from_leader(pb.CommitMsg(generation=0, step=5)))
    for rank in (2, 3):
        sim.job.snapshot_saved(rank, 8, [5, 8], 1, 0.0)
    assert sim.job.commits_wait() and not sim.job.snapshots.is_settled(8)
    assert sim.job.commit_snapshot(from_leader(pb.CommitMsg(generation=0, step=5, newest_saved=9)))
    assert sim.job.snapshots.is_settled(8) and not sim.job.snapshots.is_settled(9)


def peer_lost() -> FailureDetail:
    message = "[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:16550"
    return FailureDetail(exception_type="RuntimeError", message=message)


def test_a_peers_error_waits_in_place_while_the_rank_with_its_own_error_is_the_failure() -> None:
    """Whichever settles (or exits) first: the ValueError is the failure, not the echo."""
    sim = PodSim()
    running(sim)
    culprit, echo = sim.pid(3), sim.pid(2)
    raised = pb.OutcomeKind.OUTCOME_RAISED
    # The leader hears of the broken collective at once (LeaderState.collective_broke).
    told = [ToLeader(CollectiveBroke(0))]
    assert sim.job.outcome(echo, 0, raised, peer_lost(), sim.now) == (None, told)
    assert sim.job.settle(echo, final=False) == (None, []), "no cause known yet: one more window"
    assert sim.job.outcome(culprit, 0, raised, boom(), sim.now) == (None, [])
    assert sim.job.settle(echo, final=True) == (pb.Verdict.VERDICT_WAIT, [])
    assert sim.job.settle(culprit) == (pb.Verdict.VERDICT_EXIT_FAILED, [])
    effects = sim.job.process_exited(culprit, 1, 0, "ValueError: bad batch", sim.now)
    [report] = reports(effects)
    assert (report.failure.rank, report.failure.failure_class) == (3, "user_bug")
    assert sim.job.ranks[2].pid == echo, "the echo is not replaced: it re-enters in place"


def test_a_peers_error_with_no_cause_in_the_pod_is_the_failure_after_a_second_window() -> None:
    sim = PodSim()
    running(sim)
    echo = sim.pid(2)
    assert sim.job.outcome(echo, 0, pb.OutcomeKind.OUTCOME_RAISED, peer_lost(), sim.now)[0] is None
    assert sim.job.settle(echo, final=False) == (None, [])
    assert sim.job.settle(echo, final=True) == (pb.Verdict.VERDICT_EXIT_FAILED, [])


# ---------------------------------------------------------------- leader lost
def test_leader_lost_stops_the_generation_and_ranks_wait_in_place() -> None:
    """A rank that raises because the leader's pod died waits instead of being replaced."""
    sim = PodSim()
    running(sim)
    before = sim.pids()
    raised = sim.pid(2)  # its collective with the dead pod's ranks failed
    verdict, _ = sim.job.outcome(raised, 0, pb.OutcomeKind.OUTCOME_RAISED, peer_lost(), sim.now)
    assert verdict is None

    effects = sim.job.leader_lost(sim.now)
    reason = "the leader was lost"
    assert aborts(effects) == {pid: Abort(generation=0, reason=reason)
                               for pid in before.values()}  # fmt: skip
    assert reports(effects) == [] and not sim.job.started and sim.job.generation == 0
    assert sim.job.settle(raised) == (pb.Verdict.VERDICT_WAIT, [])
    other = sim.pid(3)
    _, effects = sim.job.outcome(other, 0, pb.OutcomeKind.OUTCOME_UNWOUND, None, sim.now)
    assert reports(effects) == [] and rank_spawns(effects) == []
    assert sim.pids() == before
    assert "leader_lost" in [e.kind for e in sim.job.events]

    # The new leader opens the next generation: every rank is already waiting.
    sim.job.rejoined()
    effects = sim.play(sim.job.open_generation(open_msg(1, 1), sim.now))
    assert aborts(effects) == {} and rank_spawns(effects) == []
    assert kinds(effects) == [("ready", 1)]
    assert set(starts(sim.job.start_generation(start_msg(1, restart_count=1)))) == set(
        before.values()
    )


def test_leader_lost_before_the_start_or_after_the_end_changes_nothing() -> None:
    sim = PodSim()
    sim.launch()
    assert sim.job.leader_lost(sim.now) == []
    sim.job.start_generation(start_msg(0))
    sim.job.end_job(from_leader(pb.EndJobMsg(exit_code=0, report="done")))
    assert sim.job.leader_lost(sim.now) == []


def test_open_after_the_job_ended_is_ignored() -> None:
    sim = PodSim()
    running(sim)
    sim.job.end_job(from_leader(pb.EndJobMsg(exit_code=exit_codes.GAVE_UP, report="job given up")))
    assert sim.job.open_generation(open_msg(1, 1), sim.now) == []
    assert sim.job.start_generation(start_msg(0)) == []
    assert sim.job.generation == 0


# ----------------------------------------------------------------- the end
def test_finished_is_reported_once_and_the_pod_waits_for_end_job() -> None:
    sim = PodSim()
    running(sim)
    pids = sim.pids()
    assert sim.finish(2) == []
    effects = sim.finish(3)
    assert effects == [ToLeader(Finished(0))]
    assert shutdowns(effects) == []  # the job is over when the leader says so
    assert not sim.job.over
    assert sim.job.rejoined() == [ToLeader(Finished(0))]  # a new leader asks again

    effects = sim.job.end_job(from_leader(pb.EndJobMsg(exit_code=0, report="all 2 pods finished")))
    assert set(exits(effects)) == set(pids.values())
    assert [(s.exit_code, s.report) for s in shutdowns(effects)] == [(0, "all 2 pods finished")]
    assert sim.job.state == pb.JobState.JOB_STATE_SUCCEEDED
    assert sim.job.end_job(from_leader(pb.EndJobMsg(exit_code=0))) == []  # once


def test_end_job_with_a_failure_code_fails_the_pod() -> None:
    sim = PodSim(spares=1)
    running(sim)
    spare = sim.job.spares.idle[0]
    report = "job given up: crash loop\n  rank: 3"
    effects = sim.job.end_job(
        from_leader(pb.EndJobMsg(exit_code=exit_codes.GAVE_UP, report=report))
    )
    assert set(exits(effects)) == {*sim.pids().values(), spare}
    assert [(s.exit_code, s.report) for s in shutdowns(effects)] == [(exit_codes.GAVE_UP, report)]
    assert sim.job.state == pb.JobState.JOB_STATE_FAILED
    assert any(
        e.kind == "ended" and "job given up: crash loop" in e.message for e in sim.job.events
    )
    # Workers attaching afterwards are sent away.
    assert exits(sim.job.worker_attached(9999, -1, spare=True)) == {9999: Exit(exit_code=0)}


# ----------------------------------------------------------------- rejoined
def test_rejoined_reports_ready_again_while_not_started() -> None:
    sim = PodSim()
    sim.launch()
    assert sim.job.rejoined() == [ToLeader(Ready(0))]
    assert sim.job.rejoined() == [ToLeader(Ready(0))]


def test_rejoined_reports_nothing_while_running_or_not_ready() -> None:
    sim = PodSim()
    sim.job.attach_launcher()
    assert sim.job.rejoined() == []  # no rank attached yet
    sim = PodSim()
    running(sim)
    assert sim.job.rejoined() == []


# ------------------------------------------------------------ --no-python
def test_no_python_pod_is_ready_at_once_and_spawns_with_the_leaders_env() -> None:
    sim = PodSim(bootstrapped=False)
    effects = sim.job.attach_launcher()
    assert effects == [ToLeader(Ready(0))]
    effects = sim.job.start_generation(start_msg(0, port=LEADER_PORT + 3))
    spawned = launcher_commands(effects, Spawn)
    assert sorted(s.rank for s in spawned) == [2, 3]
    for spawn in spawned:
        assert spawn.env["MASTER_ADDR"] == LEADER_ADDR
        assert spawn.env["MASTER_PORT"] == str(LEADER_PORT + 3)
    sim.play(effects)
    assert sim.job.process_exited(sim.pid(2), 0, 0, "", sim.now) == []
    assert sim.job.process_exited(sim.pid(3), 0, 0, "", sim.now) == [ToLeader(Finished(0))]


# ============================================================ with a leader
class Cluster:
    """A real LeaderState and two pods (node 0, node 1), wired in-process.

    What the gRPC layer (supervisor/rpc/peers.py) carries is routed here: a pod's
    ToLeader reports go to the leader, the leader's Broadcasts go through
    message_to_wire to each pod's open/start/end, and every effect a pod
    produces is played (spawns attach, aborts unwind) and kept per node.
    """

    def __init__(self, *, spares: int = 0, bootstrapped: bool = True) -> None:
        ports = itertools.count(LEADER_PORT)
        self.leader = LeaderState(
            nnodes=2,
            nproc=NPROC,
            policy=RestartPolicy(max_restarts=3),
            allocate_port=ports.__next__,
            master_addr=LEADER_ADDR,
        )
        self.pods = {
            node: PodSim(node_rank=node, spares=spares, bootstrapped=bootstrapped)
            for node in (0, 1)
        }
        self.log: dict[int, list[Effect]] = {0: [], 1: []}
        self.broadcasts: list[Broadcast] = []
        self.now = 100.0

    def phase(self) -> Phase:
        return self.leader.phase

    def take_log(self) -> dict[int, list[Effect]]:
        log, self.log = self.log, {0: [], 1: []}
        return log

    def join(self, node: int) -> None:
        self.deliver(self.leader.join(node, NPROC, None, self.now))

    def pod(self, node: int, effects: Sequence[Effect]) -> None:
        """Effects a pod produced: play them, then carry its reports to the leader."""
        done = self.pods[node].play(effects)
        self.log[node] += done
        for report in reports(done):
            kind = report.WhichOneof("report")
            if kind == "ready":
                self.deliver(self.leader.pod_ready(node, report.ready))
            elif kind == "finished":
                self.deliver(self.leader.pod_finished(node, report.finished))
            elif kind == "failure":
                failure = failure_from_wire(report.failure)
                self.deliver(self.leader.failure(node, failure.generation, failure))

    def deliver(self, broadcasts: Sequence[Broadcast]) -> None:
        for broadcast in broadcasts:
            self.broadcasts.append(broadcast)
            message = pb.LeaderMessage.FromString(
                message_to_wire(broadcast.message).SerializeToString()
            )
            nodes = [0, 1] if broadcast.target is None else [broadcast.target]
            for node in nodes:
                job = self.pods[node].job
                kind = message.WhichOneof("message")
                if kind == "open":
                    self.pod(node, job.open_generation(from_leader(message.open), self.now))
                elif kind == "start":
                    self.pod(node, job.start_generation(from_leader(message.start)))
                elif kind == "end":
                    self.pod(node, job.end_job(from_leader(message.end)))


def envs(effects: Sequence[Effect]) -> dict[int, dict[str, str]]:
    """rank -> env of the StartGeneration each rank got."""
    return {s.rank: dict(s.env) for s in starts(effects).values()}


def test_two_pods_and_a_leader_form_recover_one_rank_and_finish() -> None:
    c = Cluster()
    # Both pods join before their ranks attach (the usual order: the trainers
    # take seconds to import torch); the leader opens generation 0.
    c.join(0)
    c.join(1)
    assert c.phase() is Phase.OPEN
    for node in (0, 1):
        c.pod(node, c.pods[node].job.attach_launcher())

    # ------------------------------------------------ formation: one job of 4
    assert c.phase() is Phase.RUNNING
    log = c.take_log()
    gen0 = {**envs(log[0]), **envs(log[1])}
    assert sorted(envs(log[0])) == [0, 1] and sorted(envs(log[1])) == [2, 3]
    assert {env["MASTER_PORT"] for env in gen0.values()} == {str(LEADER_PORT)}
    assert {env["MASTER_ADDR"] for env in gen0.values()} == {LEADER_ADDR}
    assert {env["WORLD_SIZE"] for env in gen0.values()} == {"4"}
    assert {rank: env["RANK"] for rank, env in gen0.items()} == {r: str(r) for r in range(4)}
    assert {rank: env["GROUP_RANK"] for rank, env in gen0.items()} == {
        0: "0",
        1: "0",
        2: "1",
        3: "1",
    }
    before = {**c.pods[0].pids(), **c.pods[1].pids()}
    for pod in c.pods.values():
        pod.step_all(7)

    # ---------------------------------------- SIGKILL of rank 3 on node 1
    c.pod(1, c.pods[1].kill(3))
    log = c.take_log()
    # With the pod's classification, through the wire.
    transient = (
        "transient",
        Action.RESTART_IN_PLACE,
        "killed by SIGKILL; sender unknown, not the supervisor, no OOM kill seen",
    )
    [failure] = c.leader.history
    assert failure.time_s > 0  # the crash-loop window's clock: when the pod saw it
    assert [dataclasses.replace(failure, time_s=0.0)] == [Failure(0, 3, "SIGKILL", 7, *transient)]
    # Both pods abort their survivors, in place.
    assert set(aborts(log[0])) == {before[0], before[1]}
    assert set(aborts(log[1])) == {before[2]}
    assert {a.generation for a in (*aborts(log[0]).values(), *aborts(log[1]).values())} == {0}
    # Only rank 3 gets a new process.
    assert rank_spawns(log[0]) == []
    assert rank_spawns(log[1]) == [3]
    after = {**c.pods[0].pids(), **c.pods[1].pids()}
    assert {r: after[r] == before[r] for r in range(4)} == {0: True, 1: True, 2: True, 3: False}
    # One restart, counted on both pods, and generation 1 starts on both.
    for pod in c.pods.values():
        assert (pod.job.generation, pod.job.restart_count) == (1, 1)
        assert pod.job.state == pb.JobState.JOB_STATE_RUNNING
    gen1 = {**envs(log[0]), **envs(log[1])}
    assert {rank: env["RANK"] for rank, env in gen1.items()} == {r: str(r) for r in range(4)}
    assert {s.generation for node in (0, 1) for s in starts(log[node]).values()} == {1}
    assert {env["MASTER_PORT"] for env in gen1.values()} == {str(LEADER_PORT + 1)}
    assert {env["TORCHELASTIC_RESTART_COUNT"] for env in gen1.values()} == {"1"}
    assert {env["WORLD_SIZE"] for env in gen1.values()} == {"4"}
    assert (c.leader.phase, c.leader.generation, c.leader.restart_count) == (Phase.RUNNING, 1, 1)

    # ----------------------------------------------------- all finished
    for node in (0, 1):
        for rank in sorted(c.pods[node].job.ranks):
            c.pod(node, c.pods[node].finish(rank))
    log = c.take_log()
    for node in (0, 1):
        assert [s.exit_code for s in shutdowns(log[node])] == [0]
        assert set(exits(log[node])) == set(c.pods[node].pids().values())
        assert c.pods[node].job.state == pb.JobState.JOB_STATE_SUCCEEDED
    assert c.leader.end == EndJob(0, "all 2 pods finished generation 1")
    # Start went to everyone once per generation.
    assert [
        b.message.generation for b in c.broadcasts if isinstance(b.message, StartGeneration)
    ] == [
        0,
        1,
    ]


@pytest.mark.parametrize("bootstrapped", [True, False], ids=["bootstrapped", "no-python"])
def test_ranks_ready_before_the_job_forms_still_start(bootstrapped: bool) -> None:
    """Node 0's ranks attach before node 1 joined (pod 1 still being scheduled).

    In supervisor/rpc/peers.py node 0 joins its own leader when its launcher attaches
    and has no re-join to call rejoined() later; with --no-python its pod is
    ready (and reports it) within attach_launcher itself.
    """
    c = Cluster(bootstrapped=bootstrapped)
    c.join(0)
    c.pod(0, c.pods[0].job.attach_launcher())
    assert kinds(c.log[0]) == [("ready", 0)]  # reported while FORMING: dropped
    c.join(1)  # the job forms: Open(0)
    c.pod(1, c.pods[1].job.attach_launcher())
    assert c.phase() is Phase.RUNNING
    assert all(pod.job.started for pod in c.pods.values())


# ------------------------------------------------ classified failures decide
XID = "NVRM: Xid (PCI:0000:3b:00): 79, GPU has fallen off the bus\n"


def formed_cluster() -> Cluster:
    c = Cluster()
    for node in (0, 1):
        c.join(node)
        c.pod(node, c.pods[node].job.attach_launcher())
    assert c.phase() is Phase.RUNNING
    c.take_log()
    return c


def test_a_hardware_fault_ends_the_pod_with_replace_and_tells_the_leader_nothing() -> None:
    c = formed_cluster()
    pod = c.pods[1]
    survivor = pod.pid(2)
    c.pod(1, pod.job.process_exited(pod.pid(3), 1, 0, XID, c.now))
    log = c.take_log()
    [shutdown] = shutdowns(log[1])
    assert shutdown.exit_code == exit_codes.REPLACE_POD
    assert "hardware fault on rank 3: output: 'Xid (PCI:0000:3b:00): 79'" in shutdown.report
    assert set(exits(log[1])) == {survivor}
    assert reports(log[1]) == [] and pod.job.over
    assert pod.job.failures[-1].failure_class == "hardware"
    # The leader heard nothing; when the pod's sidecar goes too, its stream breaks:
    # a lost pod, one restart, and the job waits for the replacement.
    assert c.phase() is Phase.RUNNING and c.leader.history == []
    # (Its ranks died with its launcher: pod 0's collectives broke.)
    c.deliver(c.leader.pod_lost(1, c.now) + c.leader.collective_broke(0, c.leader.generation))
    assert (c.phase(), c.leader.generation, c.leader.view(c.now).missing) == (Phase.OPEN, 1, (1,))
    c.pods[1] = PodSim(node_rank=1, first_pid=5000)
    c.join(1)
    c.pod(1, c.pods[1].job.attach_launcher())
    assert c.phase() is Phase.RUNNING and c.leader.generation == 1


def test_out_of_memory_again_on_one_rank_gives_the_job_up_through_the_leader() -> None:
    c = formed_cluster()
    for attempt in range(3):
        for pod in c.pods.values():
            pod.step_all(attempt + 1)
        pod = c.pods[1]
        c.pod(1, pod.job.process_exited(pod.pid(3), 0, signal.SIGKILL, "", c.now, oom_kills=1))
        failure = c.leader.history[-1]
        assert (failure.rank, failure.failure_class) == (3, "out_of_memory")
    assert failure.action is Action.STOP_JOB
    end = c.leader.end
    assert end is not None and end.exit_code == exit_codes.GAVE_UP
    assert end.report.startswith("job given up: rank 3: out of memory 3 times on this rank")
    assert "class: out_of_memory" in end.report and "node: 1" in end.report
    assert c.leader.restart_count == 2
    for pod in c.pods.values():
        assert pod.job.state == pb.JobState.JOB_STATE_FAILED
