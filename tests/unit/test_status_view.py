"""supervisor/rpc/status_view.py and `train-supervisor status`'s table (supervisor/cli.py)."""

from __future__ import annotations

import itertools
import signal

from supervisor.cli import render_table
from supervisor.rpc.status_view import job_status, job_wide_ranks
from supervisor.rules.effects import ToWorker
from supervisor.rules.failure_evidence import FailureDetail
from supervisor.rules.job import JobState
from supervisor.rules.restart_policy import RestartPolicy
from supervisor.rules.spec import WorkerSpec
from train_supervisor.v1 import supervisor_pb2 as pb

WS = pb.WorkerState


def running_job(nproc: int = 3) -> JobState:
    """A bootstrapped job in generation 0: ranks on pids 500.., one idle spare on 900."""
    spec = WorkerSpec(
        run_id="status-job",
        role="default",
        nnodes=1,
        node_rank=0,
        nproc_per_node=nproc,
        max_restarts=5,
        master_addr="127.0.0.1",
        bootstrapped=True,
        warm_spares=1,
        error_file_dir="/tmp/e",
    )
    job = JobState(
        spec=spec,
        policy=RestartPolicy(max_restarts=5),
        allocate_port=itertools.count(41000).__next__,
    )
    job.attach_launcher()
    job.worker_attached(900, -1, spare=True)
    for rank in reversed(range(nproc)):  # attach order must not matter
        job.worker_attached(500 + rank, rank, spare=False)
    assert job.started
    return job


def test_status_lists_every_rank_in_order() -> None:
    job = running_job()
    job.heartbeat(500, 0, 10, 0.5, now=1000.0)
    job.heartbeat(502, 0, 12, 0.25, now=1003.0)
    status = job_status(job, now=1004.0, leader="local")

    assert status.run_id == "status-job"
    assert status.world_size == 3
    assert status.state == pb.JobState.JOB_STATE_RUNNING
    assert (status.generation, status.restart_count, status.max_restarts) == (0, 0, 5)
    assert list(status.spare_pids) == [900]
    assert status.leader == "local"
    assert [(r.rank, r.local_rank, r.pid) for r in status.ranks] == [
        (0, 0, 500),
        (1, 1, 501),
        (2, 2, 502),
    ]
    assert [r.step for r in status.ranks] == [10, 0, 12]
    assert [r.state for r in status.ranks] == [WS.WORKER_STATE_HEALTHY] * 3
    assert status.ranks[0].heartbeat_age_s == 4.0
    assert status.ranks[1].heartbeat_age_s == -1.0  # no heartbeat yet
    assert status.ranks[2].heartbeat_age_s == 1.0
    assert status.ranks[2].step_time_s == 0.25
    assert not status.HasField("last_failure")


def test_heartbeat_age_never_negative() -> None:
    job = running_job()
    job.heartbeat(500, 0, 1, 0.1, now=50.0)
    # A caller's clock read a little before the heartbeat landed.
    assert job_status(job, now=49.0, leader="x").ranks[0].heartbeat_age_s == 0.0


def test_status_after_a_failure_shows_it() -> None:
    job = running_job()
    job.heartbeat(501, 0, 33, 0.1, now=10.0)
    job.process_exited(501, 0, signal.SIGKILL, "", now=11.0)
    status = job_status(job, now=12.0, leader="local")

    assert status.state == pb.JobState.JOB_STATE_RESTARTING
    assert (status.generation, status.restart_count) == (1, 1)
    assert status.HasField("last_failure")
    failure = status.last_failure
    assert (failure.rank, failure.pid, failure.step, failure.signal) == (1, 501, 33, signal.SIGKILL)
    assert failure.action == "restart"
    # The spare took rank 1; rank 0 is unwinding.
    assert status.ranks[1].pid == 900
    assert status.ranks[1].process_starts == 2
    assert status.ranks[0].state == WS.WORKER_STATE_UNWINDING
    assert list(status.spare_pids) == []
    assert any(e.kind == "failure" for e in status.recent_events)


def test_recent_events_are_capped() -> None:
    job = running_job()
    for i in range(50):
        job.record("test", f"event {i}")
    events = job_status(job, now=0.0, leader="x").recent_events
    assert len(events) == 20
    assert events[-1].message == "event 49"  # the newest ones


def test_table_names_every_rank_pid_step_and_the_last_failure() -> None:
    job = running_job()
    job.heartbeat(500, 0, 123456, 0.5, now=1.0)
    job.heartbeat(501, 0, 77, 0.5, now=1.0)
    job.outcome(
        501,
        0,
        pb.OutcomeKind.OUTCOME_RAISED,
        FailureDetail(
            exception_type="ZeroDivisionError",
            message="division by zero",
            signature="ZeroDivisionError: division by zero @ t.py:3",
        ),
        now=2.0,
    )
    job.settle(501)
    job.process_exited(501, 1, 0, "", now=2.0)
    table = render_table(job_status(job, now=3.0, leader="local"))
    lines = table.splitlines()

    assert "status-job" in lines[0]
    assert "state restarting" in lines[0]
    assert "generation 1" in lines[0]
    assert "restarts 1/5" in lines[0]
    for column in ("RANK", "PID", "STATE", "STEP", "HB_AGE_S", "STARTS"):
        assert column in lines[1]
    rows = {int(line.split()[0]): line.split() for line in lines[2:5]}
    assert set(rows) == {0, 1, 2}
    assert rows[0][2] == "500" and rows[0][3] == "unwinding" and rows[0][4] == "123456"
    assert rows[1][2] == "900" and rows[1][3] == "init"  # the promoted spare
    assert rows[2][2] == "502" and rows[2][3] == "unwinding"
    [last] = [line for line in lines if line.startswith("last failure:")]
    assert "rank 1" in last and "pid 501" in last and "generation 0" in last
    assert "step 123456 of the job (77 in its generation)" in last  # was "step 77"
    assert "ZeroDivisionError division by zero" in last
    assert last.endswith("(user_bug) -> restart")


def test_table_without_failures_or_spares() -> None:
    job = running_job(nproc=1)
    status = job_status(job, now=0.0, leader="local")
    del status.spare_pids[:]
    table = render_table(status)
    assert "last failure" not in table
    assert "warm spares" not in table
    assert len(table.splitlines()) == 3  # header, column titles, one rank
    row = table.splitlines()[2].split()
    assert row[6] == "-"  # no heartbeat yet


def test_table_lists_warm_spares() -> None:
    table = render_table(job_status(running_job(), now=0.0, leader="local"))
    assert "warm spares: 900" in table


def test_table_of_an_empty_status() -> None:
    # What the supervisor serves before a launcher attached.
    table = render_table(pb.JobStatus(state=pb.JobState.JOB_STATE_STARTING, leader="local"))
    assert "job -" in table and "state starting" in table


def test_finished_job_shows_succeeded() -> None:
    job = running_job(nproc=1)
    effects = job.outcome(500, 0, pb.OutcomeKind.OUTCOME_FINISHED, None, now=5.0)[1]
    assert any(isinstance(e, ToWorker) for e in effects)
    table = render_table(job_status(job, now=6.0, leader="local"))
    assert "state succeeded" in table
    assert table.splitlines()[2].split()[3] == "succeeded"


def test_the_job_wide_view_gives_every_rank_the_leaders_commit_and_offload_steps() -> None:
    leader = pb.JobStatus(committed_step=9, replicated_step=8, persisted_step=4)
    leader.ranks.add(rank=1, saved_step=9, committed_step=9, replicated_step=8, persisted_step=4)
    leader.ranks.add(rank=0, saved_step=9, committed_step=9, replicated_step=8, persisted_step=4)
    # A follower's last report, made before it heard of the newest commit and round.
    lagging = [
        pb.RankStatus(rank=3, saved_step=9, committed_step=8, replicated_step=7, persisted_step=-1),
        pb.RankStatus(rank=2, saved_step=9, committed_step=8, replicated_step=7, persisted_step=-1),
    ]
    ranks = job_wide_ranks(leader, lagging)
    assert [r.rank for r in ranks] == [0, 1, 2, 3]
    assert {(r.committed_step, r.replicated_step, r.persisted_step) for r in ranks} == {(9, 8, 4)}
    assert [r.saved_step for r in ranks] == [9] * 4  # what each rank itself reported stays
    assert lagging[0].committed_step == 8, "the follower's report is not changed in place"


def test_table_names_failed_persists_by_reason() -> None:
    status = job_status(running_job(), now=0.0, leader="local")
    status.offload_errors.append("persist: node 1: step-000000000005.tmp-7: No space (ENOSPC)")
    status.persist_failures.update({"ENOSPC": 3, "EIO": 1})
    table = render_table(status)
    assert "offload error: persist: node 1: " in table
    assert "persist failures on this pod: EIO 1, ENOSPC 3" in table
