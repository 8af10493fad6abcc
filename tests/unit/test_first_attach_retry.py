"""A worker whose first AttachWorker failed transiently attaches again with reattach set.

Found under podman (tools/containers): the first attach of rank 0 on the leader's pod failed
with a transient status, the worker retried as a re-attach, and the same (not restarted)
supervisor ignored it: the rank stayed unattached and generation 0 never started.
"""

from __future__ import annotations

import itertools

from effects import make_spec, starts
from test_job import spawns

from supervisor.rules.job import JobState, Timings
from supervisor.rules.restart_policy import RestartPolicy
from train_supervisor.v1 import supervisor_pb2 as pb

WS = pb.WorkerState


def fresh_job() -> JobState:
    return JobState(
        spec=make_spec(nproc=2, spares=0),
        policy=RestartPolicy(max_restarts=3, crash_loop_threshold=3),
        allocate_port=itertools.count(41000).__next__,
        timings=Timings(),
    )


def test_a_worker_whose_first_attach_failed_takes_its_rank_when_it_retries() -> None:
    job = fresh_job()
    spawned = sorted(s.rank for s in spawns(job.attach_launcher()))
    assert spawned == [0, 1]
    for pid, rank in ((1000, 0), (1001, 1)):
        assert job.process_started(pid, rank) == []
    assert starts(job.worker_attached(1001, 1, spare=False)) == {}
    # Rank 0's first attach never reached the job; its retry says where it stands: not started.
    retry = pb.AttachWorkerRequest(
        pid=1000, rank=0, reattach=True, generation=-1, state=WS.WORKER_STATE_INIT
    )
    effects = job.worker_reattached(retry, 100.0)
    assert job.ranks[0].process_starts == 1 and not job.ranks[0].spawning
    assert sorted(starts(effects)) == [1000, 1001], "generation 0 starts on both ranks"


def test_a_broken_stream_of_an_attached_worker_changes_nothing() -> None:
    job = fresh_job()
    job.attach_launcher()
    for pid, rank in ((1000, 0), (1001, 1)):
        job.process_started(pid, rank)
        job.worker_attached(pid, rank, spare=False)
    again = pb.AttachWorkerRequest(
        pid=1000, rank=0, reattach=True, generation=0, state=WS.WORKER_STATE_HEALTHY
    )
    assert job.worker_reattached(again, 100.0) == []
    assert job.ranks[0].process_starts == 1
