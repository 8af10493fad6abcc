"""Our own parts restart under running ranks: the pure rules (supervisor/rules/job.py's rebuild,
supervisor/rules/leader.py's detached pods, supervisor/rules/job.py's lost leader)."""

from __future__ import annotations

import itertools
import signal

from effects import aborts, exits, from_leader, launcher_commands, shutdowns, starts
from test_job import Sim, rank_spawns
from test_leader import NPROC, formed, make, opened, started

from supervisor.rpc.state_wire import reattached_from_wire
from supervisor.rules.effects import Spawn
from supervisor.rules.failure_evidence import FailureDetail
from supervisor.rules.job import JobState, Timings
from supervisor.rules.leader import CommitStep, PodView
from supervisor.rules.restart_policy import Failure, RestartPolicy
from train_supervisor import exit_codes
from train_supervisor.v1 import supervisor_pb2 as pb

WS = pb.WorkerState


def reattach(pid: int, rank: int, state: int, generation: int = 0, step: int = 7):
    return reattached_from_wire(pb.AttachWorkerRequest(
        pid=pid, rank=rank, reattach=True, generation=generation, state=state, step=step,
        master_addr="10.0.0.1", master_port=29555, restart_count=generation,
    ))  # fmt: skip


def new_supervisor(sim: Sim) -> JobState:
    """What the sidecar's replacement makes of the same spec: a fresh JobState."""
    return JobState(
        spec=sim.spec,
        policy=RestartPolicy(max_restarts=3, crash_loop_threshold=3),
        allocate_port=itertools.count(41000).__next__,
        timings=Timings(),
    )


def running_sim() -> tuple[Sim, dict[int, int], int]:
    sim = Sim()
    sim.launch()
    sim.step_all(5)
    pids = {rank: sim.pid(rank) for rank in sim.job.ranks}
    return sim, pids, sim.job.spares.idle[0]


def test_a_new_supervisor_takes_the_running_generation_as_it_is() -> None:
    sim, pids, spare = running_sim()
    job = new_supervisor(sim)
    processes = [(pids[0], 0), (pids[1], 1), (spare, -1)]
    assert job.resume_launcher(processes, 200.0) == []  # nothing spawned, nothing started
    assert job.worker_reattached(reattach(pids[0], 0, WS.WORKER_STATE_HEALTHY), 200.0) == []
    assert job.resuming and job.state == pb.JobState.JOB_STATE_STARTING
    spare_back = reattached_from_wire(
        pb.AttachWorkerRequest(pid=spare, rank=-1, spare=True, reattach=True)
    )
    assert job.worker_reattached(spare_back, 200.0) == []
    effects = job.worker_reattached(reattach(pids[1], 1, WS.WORKER_STATE_HEALTHY), 200.0)
    assert effects == [], "no start, no spawn, no abort: the generation runs on"
    assert (job.started, job.generation, job.state) == (True, 0, pb.JobState.JOB_STATE_RUNNING)
    assert {r: s.pid for r, s in job.ranks.items()} == pids
    assert (job.master_addr, job.master_port) == ("10.0.0.1", 29555)
    assert job.spares.idle == [spare] and job.ranks[1].step == 7
    assert "resumed" in [e.kind for e in job.events]
    # It carries on as the old one would: a rank's death is a failure, restored in place.
    effects = job.process_exited(pids[1], 0, signal.SIGKILL, "", 201.0)
    assert job.generation == 1 and aborts(effects) == {pids[0]: aborts(effects)[pids[0]]}


def test_ranks_that_finished_while_it_was_away_end_the_job() -> None:
    sim, pids, _ = running_sim()
    job = new_supervisor(sim)
    job.resume_launcher([(pids[0], 0), (pids[1], 1)], 200.0)
    job.worker_reattached(reattach(pids[0], 0, WS.WORKER_STATE_SUCCEEDED), 200.0)
    effects = job.worker_reattached(reattach(pids[1], 1, WS.WORKER_STATE_SUCCEEDED), 200.0)
    [shutdown] = shutdowns(effects)
    assert shutdown.exit_code == exit_codes.SUCCEEDED and set(exits(effects)) == set(pids.values())


def test_a_rank_that_died_while_it_was_away_is_a_failure_once_the_job_is_rebuilt() -> None:
    sim, pids, _ = running_sim()
    job = new_supervisor(sim)
    job.resume_launcher([(pids[0], 0), (pids[1], 1)], 200.0)
    # The launcher tells the exit it could not report before the rank re-attached.
    assert job.process_exited(pids[1], 1, 0, "Traceback ...", 200.0) == []
    effects = job.worker_reattached(reattach(pids[0], 0, WS.WORKER_STATE_HEALTHY), 200.0)
    assert job.generation == 1 and job.failures[-1].rank == 1
    assert job.generation == 1 and job.restart_count == 1, "one failure, one restart"
    assert pids[0] in aborts(effects) and launcher_commands(effects, Spawn)  # rank 1 anew


def test_ranks_that_disagree_start_the_next_generation() -> None:
    sim, pids, _ = running_sim()
    job = new_supervisor(sim)
    job.resume_launcher([(pids[0], 0), (pids[1], 1)], 200.0)
    job.worker_reattached(reattach(pids[0], 0, WS.WORKER_STATE_HEALTHY), 200.0)
    effects = job.worker_reattached(reattach(pids[1], 1, WS.WORKER_STATE_INIT), 200.0)
    assert job.generation == 1 and job.restart_count == 1
    assert set(aborts(effects)) == {pids[0]}
    assert "resume_broken" in [e.kind for e in job.events]


def test_between_generations_the_next_one_starts_when_every_rank_is_back() -> None:
    sim, pids, _ = running_sim()
    job = new_supervisor(sim)
    job.resume_launcher([(pids[0], 0), (pids[1], 1)], 200.0)
    job.worker_reattached(reattach(pids[0], 0, WS.WORKER_STATE_INIT), 200.0)
    effects = job.worker_reattached(reattach(pids[1], 1, WS.WORKER_STATE_INIT), 200.0)
    assert job.generation == 1 and set(starts(effects)) == set(pids.values())


def test_a_worker_that_is_not_the_launchers_is_refused() -> None:
    sim, pids, _ = running_sim()
    job = new_supervisor(sim)
    job.resume_launcher([(pids[0], 0), (pids[1], 1)], 200.0)
    effects = job.worker_reattached(reattach(4242, 0, WS.WORKER_STATE_HEALTHY), 200.0)
    assert exits(effects)[4242].exit_code == 1 and job.ranks[0].pid == pids[0]


def test_a_lost_launcher_fails_its_ranks_and_the_next_one_gets_new_processes() -> None:
    sim, pids, _ = running_sim()
    effects = sim.job.launcher_lost(200.0)
    failed = sim.job.failures[-1]
    assert failed.rank in pids and "launcher" in failed.reason + failed.detail.signature + str(
        [e.message for e in sim.job.events]
    )
    assert sim.job.generation == 1 and not sim.job.over
    assert sorted(rank_spawns(effects)) == [0, 1], "every rank gets a new process"
    assert all(not s.pid for s in sim.job.ranks.values())


def coordinated(node: int = 1) -> Sim:
    sim = Sim()
    spec = sim.spec
    spec.nnodes, spec.node_rank = 2, node
    sim.job = JobState(
        leader_remote=True,
        spec=spec,
        policy=RestartPolicy(3, 3),
        allocate_port=itertools.count(42000).__next__,
    )
    return sim


def test_a_follower_trains_on_while_the_leader_is_away_until_a_collective_breaks() -> None:
    sim = coordinated()
    sim.play(sim.job.attach_launcher())
    start = from_leader(
        pb.StartGenerationMsg(generation=0, master_addr="a", master_port=1, restore_step=-1)
    )
    sim.play(sim.job.start_generation(start))
    assert sim.job.started
    assert sim.job.leader_lost(200.0) == [] and sim.job.started and not sim.job.commits_wait()
    broke = FailureDetail(exception_type="RuntimeError", message="Connection reset by peer")
    pid = sim.job.ranks[2].pid
    _, effects = sim.job.outcome(pid, 0, pb.OutcomeKind.OUTCOME_RAISED, broke, 201.0)
    assert not sim.job.started and set(aborts(effects)) == {pid, sim.job.ranks[3].pid}
    sim.job.rejoined()
    assert sim.job.commits_wait()


def test_a_follower_cut_off_stops_its_generation_once_its_ranks_stop_stepping() -> None:
    """A partition: the collectives across the cut hang. Unwound while it lasts, the ranks'
    sockets still live, so the abort breaks them (tests/e2e/test_partition.py)."""
    sim = coordinated()
    sim.play(sim.job.attach_launcher())
    start = from_leader(
        pb.StartGenerationMsg(generation=0, master_addr="a", master_port=1, restore_step=-1)
    )
    sim.play(sim.job.start_generation(start))
    sim.step_all(3)  # at 100 s
    pids = {slot.pid for slot in sim.job.ranks.values()}
    assert sim.job.leader_lost(101.0) == [] and sim.job.started, "a sidecar restart: trains on"
    assert not aborts(sim.job.tick(109.9)) and sim.job.started
    assert set(aborts(sim.job.tick(110.0))) == pids and not sim.job.started


def test_a_follower_whose_ranks_step_rides_through_a_long_leader_absence() -> None:
    sim = coordinated()
    sim.play(sim.job.attach_launcher())
    sim.play(
        sim.job.start_generation(from_leader(pb.StartGenerationMsg(generation=0, restore_step=-1)))
    )
    sim.step_all(3)
    sim.job.leader_lost(101.0)
    for step in range(4, 40):  # one step a second, 36 s without a leader
        sim.now = 100.0 + step
        sim.step_all(step)
        assert not aborts(sim.job.tick(sim.now + 0.5)) and sim.job.started


def test_a_follower_that_finds_its_leader_gone_after_its_ranks_stalled_stops_at_once() -> None:
    sim = coordinated()
    sim.play(sim.job.attach_launcher())
    sim.play(
        sim.job.start_generation(from_leader(pb.StartGenerationMsg(generation=0, restore_step=-1)))
    )
    sim.step_all(3)
    assert set(aborts(sim.job.leader_lost(111.0))) == {s.pid for s in sim.job.ranks.values()}


def test_a_rebuilt_pod_says_its_ranks_run() -> None:
    sim = coordinated()
    sim.play(sim.job.attach_launcher())
    sim.play(
        sim.job.start_generation(from_leader(pb.StartGenerationMsg(generation=0, restore_step=-1)))
    )
    view = sim.job.resumed_view()
    assert (view.generation, view.running, view.finished) == (0, True, False)


def test_a_pod_whose_stream_breaks_while_training_is_kept_until_it_rejoins() -> None:
    leader = formed(2)
    broadcasts = leader.pod_lost(1, 1.0)
    [away] = [b.message for b in broadcasts]
    assert isinstance(away, CommitStep) and away.pod_away, "ranks stop waiting for commits"
    assert leader.generation == 0 and 1 in leader.members
    # Its new supervisor re-joins with the running generation: nothing restarts.
    back = leader.join(1, NPROC, PodView(0, 0, (), running=True), 3.0, incarnation=9)
    [again] = [b.message for b in back]
    assert isinstance(again, CommitStep) and not again.pod_away
    assert (leader.generation, leader.restart_count, leader.members[1].incarnation) == (0, 0, 9)


def test_a_detached_pod_is_lost_at_once_when_a_collective_breaks() -> None:
    leader = formed(2)
    leader.pod_lost(1, 1.0)
    message = opened(leader.collective_broke(0, 0))
    assert message.generation == 1 and "node 1 lost" in message.reason


def test_a_generation_starts_with_no_pod_away() -> None:
    leader = formed(3)
    leader.pod_lost(2, 1.0)  # detached: its ranks may train on
    opened(leader.failure(0, 0, Failure(0, 0, "boom", 5)))  # another pod's rank fails
    assert leader.pod_ready(0, 1) == [] and leader.pod_ready(1, 1) == []
    assert leader.pod_ready(2, 1) == [], "its stream is down: the pods' commits would wait on it"
    leader.join(2, NPROC, None, 2.0, incarnation=7)
    assert started(leader.pod_ready(2, 1)).generation == 1


def test_a_detached_pod_that_never_rejoins_is_lost_after_the_grace() -> None:
    leader = formed(2)
    leader.pod_lost(1, 1.0)
    leader.heartbeat(0, 50.0)
    assert leader.tick(50.0) == []
    leader.heartbeat(0, 62.0)
    assert opened(leader.tick(62.0)).generation == 1


def test_a_new_leader_under_running_ranks_resumes_their_generation() -> None:
    leader = make(2)
    running = PodView(4, 2, (), running=True)
    leader.join(0, NPROC, running, 0.0)
    [message] = [b.message for b in leader.join(1, NPROC, running, 0.1)]
    assert isinstance(message, CommitStep)
    assert (leader.phase.value, leader.generation, leader.restart_count) == ("running", 4, 2)


def test_a_new_leader_with_one_pod_not_running_rebuilds_with_a_restart() -> None:
    leader = make(2)
    leader.join(0, NPROC, PodView(4, 2, (), running=True), 0.0)
    message = opened(leader.join(1, NPROC, PodView(4, 2, ()), 0.1))
    assert (message.generation, message.restart_count) == (5, 3)


def test_pods_that_finished_while_the_new_leader_formed_end_the_job() -> None:
    leader = make(2)
    leader.join(0, NPROC, PodView(4, 2, (), running=True), 0.0)
    assert leader.pod_finished(0, 4) == []
    end = leader.join(1, NPROC, PodView(4, 2, (), finished=True, running=True), 0.1)
    [message] = [b.message for b in end]
    assert getattr(message, "exit_code", None) == exit_codes.SUCCEEDED


def test_a_rank_that_finishes_while_the_others_reattach_counts_as_finished() -> None:
    """The report sequence of a leader sidecar restarted near the job's end (fault matrix,
    sigkill_leader_sidecar, under load): rank 0 re-attaches while its script runs, finishes
    before rank 1 re-attached (which finished meanwhile): a finished generation, no restart."""
    sim, pids, _ = running_sim()
    job = new_supervisor(sim)
    job.resume_launcher([(pids[0], 0), (pids[1], 1)], 200.0)
    assert job.worker_reattached(reattach(pids[0], 0, WS.WORKER_STATE_HEALTHY), 200.0) == []
    verdict, effects = job.outcome(pids[0], 0, pb.OutcomeKind.OUTCOME_FINISHED, None, 200.5, 40)
    assert verdict == pb.Verdict.VERDICT_WAIT and effects == []
    effects = job.worker_reattached(reattach(pids[1], 1, WS.WORKER_STATE_SUCCEEDED), 201.0)
    assert "resume_broken" not in [e.kind for e in job.events] and job.restart_count == 0
    [shutdown] = shutdowns(effects)
    assert shutdown.exit_code == exit_codes.SUCCEEDED and set(exits(effects)) == set(pids.values())


def test_a_rank_that_finishes_while_the_others_reattach_is_not_cut_short() -> None:
    """The same while the other rank still trains: the generation runs on."""
    sim, pids, _ = running_sim()
    job = new_supervisor(sim)
    job.resume_launcher([(pids[0], 0), (pids[1], 1)], 200.0)
    job.worker_reattached(reattach(pids[0], 0, WS.WORKER_STATE_HEALTHY), 200.0)
    job.outcome(pids[0], 0, pb.OutcomeKind.OUTCOME_FINISHED, None, 200.5, 40)
    assert job.worker_reattached(reattach(pids[1], 1, WS.WORKER_STATE_HEALTHY), 201.0) == []
    assert (job.started, job.restart_count, job.ranks[0].state) == (
        True,
        0,
        WS.WORKER_STATE_SUCCEEDED,
    )
    _, effects = job.outcome(pids[1], 0, pb.OutcomeKind.OUTCOME_FINISHED, None, 202.0, 40)
    [shutdown] = shutdowns(effects)
    assert shutdown.exit_code == exit_codes.SUCCEEDED


def test_a_rebuilt_leader_pod_whose_ranks_finished_meanwhile_says_so() -> None:
    """Node 0's sidecar restarted near the end: what it gives its new leader is a finished,
    running generation (the leader ends the job once every pod says so), never a new one."""
    sim = coordinated(node=0)
    sim.play(sim.job.attach_launcher())
    sim.play(
        sim.job.start_generation(from_leader(pb.StartGenerationMsg(generation=0, restore_step=-1)))
    )
    pids = {rank: slot.pid for rank, slot in sim.job.ranks.items()}
    job = JobState(
        leader_remote=True,
        spec=sim.spec,
        policy=RestartPolicy(3, 3),
        allocate_port=itertools.count(43000).__next__,
    )
    job.resume_launcher([(pid, rank) for rank, pid in pids.items()], 200.0)
    first, second = sorted(pids)
    job.worker_reattached(reattach(pids[first], first, WS.WORKER_STATE_HEALTHY), 200.0)
    job.outcome(pids[first], 0, pb.OutcomeKind.OUTCOME_FINISHED, None, 200.5, 40)
    job.worker_reattached(reattach(pids[second], second, WS.WORKER_STATE_SUCCEEDED), 201.0)
    view = job.resumed_view()
    assert (view.generation, view.running, view.finished) == (0, True, True)
    assert job.restart_count == 0 and "resume_broken" not in [e.kind for e in job.events]


def test_a_follower_whose_ranks_all_finished_is_never_cut_off() -> None:
    """Ranks that finished step no more: that is no partition. Unwound, they would read as a
    pod out of its generation and make the leader's replacement restart the job."""
    sim = coordinated()
    sim.play(sim.job.attach_launcher())
    sim.play(
        sim.job.start_generation(from_leader(pb.StartGenerationMsg(generation=0, restore_step=-1)))
    )
    sim.step_all(3)  # at 100 s
    assert sim.job.leader_lost(101.0) == []
    for slot in list(sim.job.ranks.values()):
        sim.job.outcome(slot.pid, 0, pb.OutcomeKind.OUTCOME_FINISHED, None, 102.0, 40)
    assert not aborts(sim.job.tick(140.0)) and sim.job.started
    assert sim.job.leader_lost(150.0) == [] and sim.job.started
    assert all(s.state == WS.WORKER_STATE_SUCCEEDED for s in sim.job.ranks.values())


def test_a_pod_reports_a_committed_step_the_job_could_not_restore() -> None:
    """Never silent: a restore older than the commit this pod heard of loses steps."""
    sim = coordinated()
    sim.play(sim.job.attach_launcher())
    sim.play(
        sim.job.start_generation(from_leader(pb.StartGenerationMsg(generation=0, restore_step=-1)))
    )
    sim.job.commit_snapshot(from_leader(pb.CommitMsg(generation=0, step=23)))
    sim.play(
        sim.job.open_generation(
            from_leader(pb.OpenGenerationMsg(generation=1, restart_count=1)), 201.0
        )
    )
    reason = "step 21 (durable: nodes 0,1)"
    start = from_leader(pb.StartGenerationMsg(generation=1, restore_step=21, restore_reason=reason))
    sim.play(sim.job.start_generation(start))
    [lost] = [e.message for e in sim.job.events if e.kind == "snapshot_lost"]
    assert lost == (
        "step 23 was committed, but not every pod has a copy of it any more: "
        f"the job restores step 21 ({reason})"
    )
