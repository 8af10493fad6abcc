"""The per-call checks (supervisor/rpc/call_checks.py) against a real JobState, and /proc's
answers."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Optional

import grpc
import pytest
from effects import make_spec, wire_spec

from supervisor.detect.process_table import ProcessTable, launcher_in_view, pid_namespace
from supervisor.rpc import call_checks
from supervisor.rpc.call_checks import Membership, NoProcesses, Refusal
from supervisor.rules.job import JobState
from supervisor.rules.restart_policy import RestartPolicy
from train_supervisor.v1 import supervisor_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
LAUNCHER = 100
RANK0, RANK1, SPARE = 101, 102, 103


class KnownProcesses:
    """A process table given as data: the launcher's children and who is alive."""

    def __init__(self, children: set[int], alive: set[int]) -> None:
        self.children, self.running = children, alive

    def alive(self, pid: int) -> Optional[bool]:
        return pid in self.running

    def descends_from(self, pid: int, ancestor: int) -> Optional[bool]:
        return ancestor == LAUNCHER and pid in self.children


PROCESSES = KnownProcesses({RANK0, RANK1, SPARE, 104}, {LAUNCHER, RANK0, RANK1, SPARE, 104})


def running_job() -> JobState:
    """Pod 0 of two (ranks 0 and 1), both attached and running generation 0."""
    job = JobState(make_spec(nproc=2, spares=1, nnodes=1), RestartPolicy(3), lambda: 29500)
    job.attach_launcher()
    for pid, rank in ((RANK0, 0), (RANK1, 1)):
        job.process_started(pid, rank)
        job.worker_attached(pid, rank, False)
    assert job.started
    return job


def attach(
    job: JobState, pid: int, rank: int, spare: bool = False, attached: tuple[int, ...] = ()
) -> Optional[Refusal]:
    request = pb.AttachWorkerRequest(pid=pid, rank=rank, spare=spare)
    return call_checks.attach_worker(job, request, set(attached), LAUNCHER, PROCESSES)


def code(refusal: Optional[Refusal]) -> Optional[grpc.StatusCode]:
    return None if refusal is None else refusal.code


def test_an_empty_attach_cannot_take_rank_0() -> None:
    job = running_job()
    refusal = attach(job, 0, 0)  # the empty body: pid 0, rank 0
    assert refusal == Refusal(INVALID, "pid 0 is not in 1..4194304")


@pytest.mark.parametrize(
    ("pid", "rank", "spare", "expected"),
    [
        (-1, 0, False, INVALID),  # negative pid
        (1 << 30, 0, False, INVALID),  # past pid_max
        (104, 7, False, PRECONDITION),  # a rank of another pod
        (104, -5, False, PRECONDITION),
        (104, 0, True, INVALID),  # a spare names no rank
        (RANK1, 0, False, PRECONDITION),  # another live rank's pid
        (104, 0, False, PRECONDITION),  # rank 0 is held by a live, attached pid
        (999, -1, True, PRECONDITION),  # not a process of this pod's launcher
        (RANK0, -1, True, PRECONDITION),  # a rank's pid posing as a spare
    ],
)
def test_bad_attaches_are_refused(
    pid: int, rank: int, spare: bool, expected: grpc.StatusCode
) -> None:
    assert code(attach(running_job(), pid, rank, spare, attached=(RANK0, RANK1))) == expected


def test_a_pid_attached_twice_is_refused_even_with_its_own_rank() -> None:
    job = running_job()
    refusal = attach(job, RANK0, 0, attached=(RANK0, RANK1))
    assert refusal == Refusal(PRECONDITION, f"pid {RANK0} is attached already")


def test_a_legitimate_spare_and_a_respawned_rank_are_accepted() -> None:
    job = running_job()
    assert attach(job, SPARE, -1, spare=True, attached=(RANK0, RANK1)) is None
    job.process_exited(RANK1, 1, 0, "", 1.0)  # rank 1 failed: the spare takes it or a respawn
    slot = job.ranks[1]
    if slot.spawning:  # a respawn: the process the launcher started attaches
        assert attach(job, 104, 1, attached=(RANK0,)) is None
    else:
        assert slot.pid == SPARE


def test_a_vacant_rank_may_be_reattached_by_the_launchers_process() -> None:
    """After a sidecar restart nothing holds the rank: its surviving process re-attaches."""
    job = JobState(make_spec(nproc=2, spares=0), RestartPolicy(3), lambda: 29500)
    assert attach(job, RANK0, 0) is None
    assert code(attach(job, 999, 0)) == PRECONDITION  # but only a process of the launcher


def test_a_spawned_rank_takes_only_the_pid_the_launcher_reported() -> None:
    job = JobState(make_spec(nproc=2, spares=0), RestartPolicy(3), lambda: 29500)
    job.attach_launcher()
    job.process_started(RANK0, 0)
    assert code(attach(job, 104, 0)) == PRECONDITION
    assert attach(job, RANK0, 0) is None


def test_where_the_os_cannot_tell_pids_are_not_held_against_the_worker() -> None:
    job = JobState(make_spec(nproc=2, spares=0), RestartPolicy(3), lambda: 29500)
    request = pb.AttachWorkerRequest(pid=999, rank=0)
    assert call_checks.attach_worker(job, request, set(), None, NoProcesses()) is None


def test_process_started_cannot_move_a_running_rank() -> None:
    job = running_job()
    started = pb.ProcessStarted(pid=104, rank=0)
    assert code(call_checks.process_started(job, started, LAUNCHER, PROCESSES)) == PRECONDITION
    known = pb.ProcessStarted(pid=RANK0, rank=0)
    assert call_checks.process_started(job, known, LAUNCHER, PROCESSES) is None
    assert code(call_checks.process_started(job, pb.ProcessStarted(pid=-1), None, PROCESSES)) == (
        INVALID
    )


def test_a_process_exit_for_a_running_pid_is_refused() -> None:
    exit_of = pb.ProcessExit(pid=RANK0, exit_code=1)
    assert call_checks.process_exit(exit_of, LAUNCHER, PROCESSES) == Refusal(
        PRECONDITION, f"pid {RANK0} is still running"
    )
    gone = pb.ProcessExit(pid=4242, signal=9)
    assert call_checks.process_exit(gone, LAUNCHER, PROCESSES) is None
    assert code(call_checks.process_exit(pb.ProcessExit(pid=4242, signal=-3), None, PROCESSES)) == (
        INVALID
    )
    tail = pb.ProcessExit(pid=4242, output_tail="x" * (call_checks.MAX_TEXT + 1))
    assert code(call_checks.process_exit(tail, None, PROCESSES)) == INVALID


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (pb.HeartbeatRequest(pid=RANK0, rank=0, generation=0, step=3), None),
        (pb.HeartbeatRequest(pid=RANK1, rank=0, generation=0, step=3), PRECONDITION),
        (pb.HeartbeatRequest(pid=RANK0, rank=0, generation=5, step=3), PRECONDITION),
        (pb.HeartbeatRequest(pid=RANK0, rank=0, generation=-1), INVALID),
        (pb.HeartbeatRequest(pid=RANK0, rank=0, step=-4), INVALID),
        (pb.HeartbeatRequest(pid=RANK0, rank=0, step_time_s=float("nan")), INVALID),
        (pb.HeartbeatRequest(pid=RANK0, rank=0, compute_s=-1.0), INVALID),
        (pb.HeartbeatRequest(), INVALID),
    ],
)
def test_heartbeats(request_: pb.HeartbeatRequest, expected: Optional[grpc.StatusCode]) -> None:
    assert code(call_checks.heartbeat(running_job(), request_)) == expected


def test_outcomes_and_snapshot_reports() -> None:
    job = running_job()
    ok = pb.WorkerOutcome(pid=RANK0, rank=0, kind=pb.OutcomeKind.OUTCOME_RAISED)
    assert call_checks.outcome(job, ok) is None
    unknown = pb.WorkerOutcome(pid=RANK0, rank=0)
    unknown.kind = 9  # type: ignore[assignment]
    assert code(call_checks.outcome(job, unknown)) == INVALID
    assert code(call_checks.outcome(job, pb.WorkerOutcome(pid=RANK0, rank=0))) == INVALID
    long_type = pb.FailureDetail(exception_type="E" * 5000)
    raised = pb.WorkerOutcome(pid=RANK0, rank=0, kind=ok.kind, failure=long_type)
    assert code(call_checks.outcome(job, raised)) == INVALID
    saved = pb.SnapshotSaved(pid=RANK0, rank=0, step=4, held=[2, 4], bytes=10)
    assert call_checks.snapshot_saved(job, saved) is None
    three = pb.SnapshotSaved(pid=RANK0, rank=0, step=4, held=[1, 2, 4])
    assert code(call_checks.snapshot_saved(job, three)) == INVALID
    restore = pb.RestoreReport(pid=RANK0, rank=0, step=-1, source="none")
    assert call_checks.restore_report(job, restore) is None
    odd = pb.RestoreReport(pid=RANK0, rank=0, step=-1, source="x" * 100)
    assert code(call_checks.restore_report(job, odd)) == INVALID
    assert code(call_checks.restore_request(job, pb.RestoreRequest(pid=RANK1, rank=0))) == (
        PRECONDITION
    )


def test_attach_launcher_bounds_the_spec() -> None:
    good = pb.AttachLauncherRequest(spec=wire_spec(), launcher_pid=LAUNCHER)
    assert call_checks.attach_launcher(good) is None
    assert code(call_checks.attach_launcher(pb.AttachLauncherRequest())) == INVALID
    bad = pb.AttachLauncherRequest(spec=wire_spec(nnodes=2, node_rank=2), launcher_pid=1)
    assert code(call_checks.attach_launcher(bad)) == INVALID
    huge = pb.AttachLauncherRequest(spec=wire_spec(), launcher_pid=1)
    huge.spec.run_id = "r" * 10_000
    assert code(call_checks.attach_launcher(huge)) == INVALID


MEMBERS = Membership(
    run_id="job1", nnodes=2, nproc=2, incarnations={0: 0, 1: 77}, streaming=frozenset({1})
)


def test_a_join_cannot_replace_a_live_pod_or_name_a_bad_node() -> None:
    join = pb.JoinRequest(run_id="job1", node_rank=1, nproc=2, incarnation=78)
    assert code(call_checks.join(MEMBERS, join)) == PRECONDITION  # node 1 is live
    same = pb.JoinRequest(run_id="job1", node_rank=1, nproc=2, incarnation=77)
    assert call_checks.join(MEMBERS, same) is None  # its own re-join
    big = pb.JoinRequest(run_id="job1", node_rank=1, nproc=2, incarnation=(1 << 62) - 1)
    quiet = Membership("job1", 2, 2, {0: 0, 1: 77}, frozenset())
    assert call_checks.join(quiet, big) is None  # a follower picks 62 random bits
    quiet = Membership("job1", 2, 2, {0: 0, 1: 77}, frozenset())
    assert call_checks.join(quiet, join) is None  # a restarted follower, old stream gone
    for bad in (
        pb.JoinRequest(run_id="other", node_rank=1, nproc=2),
        pb.JoinRequest(run_id="job1", node_rank=0, nproc=2),
        pb.JoinRequest(run_id="job1", node_rank=2, nproc=2),
        pb.JoinRequest(run_id="job1", node_rank=1, nproc=3, incarnation=77),
        pb.JoinRequest(run_id="job1", node_rank=1, nproc=2, incarnation=-1),
    ):
        assert call_checks.join(MEMBERS, bad) is not None, bad


def test_a_join_shows_only_the_joining_pods_own_ranks() -> None:
    join = pb.JoinRequest(run_id="job1", node_rank=1, nproc=2, incarnation=77)
    join.ranks.add(rank=2)
    join.ranks.add(rank=3)
    assert call_checks.join(MEMBERS, join) is None
    join.ranks.add(rank=0)  # node 0's rank
    assert code(call_checks.join(MEMBERS, join)) == INVALID
    many = pb.JoinRequest(run_id="job1", node_rank=1, nproc=2, incarnation=77)
    for _ in range(3):
        many.ranks.add(rank=2)
    assert code(call_checks.join(MEMBERS, many)) == INVALID


def test_pod_reports_must_come_from_the_joined_incarnation_with_its_own_ranks() -> None:
    beat = pb.PodReport(node_rank=1, incarnation=77, heartbeat=True)
    beat.ranks.add(rank=2)
    assert call_checks.pod_report(MEMBERS, beat) is None
    impostor = pb.PodReport(node_rank=1, incarnation=5, heartbeat=True)
    assert code(call_checks.pod_report(MEMBERS, impostor)) == PRECONDITION
    foreign = pb.PodReport(node_rank=1, incarnation=77, heartbeat=True)
    foreign.ranks.add(rank=0)  # node 0's rank
    assert code(call_checks.pod_report(MEMBERS, foreign)) == INVALID
    leader = pb.PodReport(node_rank=0, incarnation=0, ready=0)
    assert code(call_checks.pod_report(MEMBERS, leader)) == INVALID
    nan = pb.PodReport(node_rank=1, incarnation=77, heartbeat=True)
    nan.sample.metrics["x"] = float("inf")
    assert code(call_checks.pod_report(MEMBERS, nan)) == INVALID
    ready = pb.PodReport(node_rank=1, incarnation=77, ready=-2)
    assert code(call_checks.pod_report(MEMBERS, ready)) == INVALID
    heard = pb.PodReport(node_rank=1, incarnation=77, ready=0)
    heard.copies.committed = -1
    assert call_checks.pod_report(MEMBERS, heard) is None, "no commit heard of"
    heard.copies.committed = -2
    assert code(call_checks.pod_report(MEMBERS, heard)) == INVALID


def test_a_further_stores_steps_are_checked_by_name_and_count() -> None:
    def with_stored(name: str, steps: list[int]) -> pb.PodReport:
        report = pb.PodReport(node_rank=1, incarnation=77, heartbeat=True)
        report.copies.stored.add(name=name, steps=steps)
        return report

    assert call_checks.pod_report(MEMBERS, with_stored("bucket", [4, 5])) is None
    for name in ("", "shm", "peer", "durable"):  # the three have fields of their own
        assert code(call_checks.pod_report(MEMBERS, with_stored(name, [4]))) == INVALID, name
    assert code(call_checks.pod_report(MEMBERS, with_stored("x" * 5000, [4]))) == INVALID
    assert code(call_checks.pod_report(MEMBERS, with_stored("bucket", [-3]))) == INVALID
    many = pb.PodReport(node_rank=1, incarnation=77, heartbeat=True)
    for index in range(call_checks.MAX_ENTRIES + 1):
        many.copies.stored.add(name=f"store{index}", steps=[1])
    assert code(call_checks.pod_report(MEMBERS, many)) == INVALID


def test_the_process_table_reads_real_processes() -> None:
    table = ProcessTable()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert table.alive(child.pid) is True
        assert table.descends_from(child.pid, os.getpid()) is True
        assert table.descends_from(os.getpid(), child.pid) is False
    finally:
        child.kill()
        child.wait()
    assert table.alive(child.pid) is False
    assert launcher_in_view(os.getpid(), pid_namespace()) is (pid_namespace() != "")
    assert not launcher_in_view(os.getpid(), "pid:[1]")


def test_once_the_launcher_is_gone_its_children_are_not_required() -> None:
    """A launcher restarted in place: until it re-attaches, the old pid vouches for nothing."""
    job = JobState(make_spec(nproc=2, spares=0), RestartPolicy(3), lambda: 29500)
    gone = KnownProcesses(set(), {RANK0})
    request = pb.AttachWorkerRequest(pid=RANK0, rank=0)
    assert call_checks.attach_worker(job, request, set(), LAUNCHER, gone) is None


def test_a_pushed_replica_is_of_another_pod_and_one_of_its_ranks() -> None:
    spec = make_spec(nproc=2, nnodes=3, node_rank=1)
    ok = pb.ReplicaHeader(node_rank=0, rank=1, step=4)
    assert call_checks.replica_header(spec, ok) is None
    for bad in (
        pb.ReplicaHeader(node_rank=1, rank=2),  # this pod's own
        pb.ReplicaHeader(node_rank=5, rank=10),  # no such pod
        pb.ReplicaHeader(node_rank=0, rank=2),  # pod 1's rank under pod 0
        pb.ReplicaHeader(node_rank=2, rank=(1 << 31) - 1),
        pb.ReplicaHeader(node_rank=2, rank=4, step=-1),
    ):
        assert call_checks.replica_header(spec, bad) is not None, bad
