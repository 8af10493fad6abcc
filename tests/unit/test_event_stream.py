"""Job events: EventLog numbering (job_types.py) and the WatchEvents stream (event_watch.py).

The stream runs against a real Supervisor and JobState on an event loop; events
are recorded the way the state machine records them, then `apply` notifies.
"""

from __future__ import annotations

import asyncio
import itertools

from effects import make_spec

from supervisor.rpc.event_watch import watch_events
from supervisor.rpc.service import Supervisor, SupervisorSettings
from supervisor.rules.job import EventLog, JobState
from supervisor.rules.restart_policy import RestartPolicy
from train_supervisor.v1 import supervisor_pb2 as pb

WAIT_S = 5.0  # bounds every await: a broken stream fails the test instead of hanging it


def new_job(node_rank: int = 0) -> JobState:
    ports = itertools.count(41000)
    return JobState(
        spec=make_spec(nnodes=2, node_rank=node_rank),
        policy=RestartPolicy(max_restarts=3, crash_loop_threshold=3),
        allocate_port=ports.__next__,
    )


# ------------------------------------------------------------------ EventLog
def test_events_are_numbered_from_one_and_stamped_with_the_pod() -> None:
    log = EventLog(node_rank=3)
    for kind in ("attached", "failure", "failure"):
        log.add(kind, "m")
    assert [(e.seq, e.kind, e.node_rank) for e in log] == [
        (1, "attached", 3),
        (2, "failure", 3),
        (3, "failure", 3),
    ]
    assert dict(log.by_kind) == {"attached": 1, "failure": 2}


def test_since_gives_the_kept_events_after_a_seq() -> None:
    log = EventLog()
    for i in range(250):  # 200 are kept
        log.add("tick", str(i))
    assert [e.seq for e in log.since(247)] == [248, 249, 250]
    assert log.since(250) == [] and log.since(999) == []
    assert [e.seq for e in log.since(0)] == list(range(51, 251))  # the first 50 are gone
    assert log.by_kind["tick"] == 250  # counted even when no longer kept


def test_a_job_stamps_its_node_rank_on_its_events() -> None:
    job = new_job(node_rank=1)
    job.record("attached", "launcher attached")
    assert [(e.node_rank, e.seq) for e in job.events] == [(1, 1)]


# ------------------------------------------------------------------ the stream
async def collect(sup: Supervisor, after: int, follow: bool) -> list[pb.JobEvent]:
    return [event async for event in watch_events(sup, after, follow)]


def record(sup: Supervisor, kind: str) -> None:
    assert sup.job is not None
    sup.job.record(kind, f"{kind} happened")
    sup.apply([])  # as every state change does: wakes the watchers


def test_without_follow_the_kept_events_after_a_seq_are_sent_and_the_stream_ends() -> None:
    async def scenario() -> tuple[list[pb.JobEvent], list[pb.JobEvent]]:
        sup = Supervisor(SupervisorSettings())
        sup.job = new_job()
        for kind in ("a", "b", "c"):
            sup.job.record(kind, "")
        every = await asyncio.wait_for(collect(sup, 0, follow=False), WAIT_S)
        later = await asyncio.wait_for(collect(sup, 2, follow=False), WAIT_S)
        return every, later

    every, later = asyncio.run(scenario())
    assert [e.kind for e in every] == ["a", "b", "c"]
    assert [(e.seq, e.kind) for e in later] == [(3, "c")]


def test_without_a_job_and_without_follow_the_stream_is_empty() -> None:
    async def scenario() -> list[pb.JobEvent]:
        return await asyncio.wait_for(collect(Supervisor(SupervisorSettings()), 0, False), WAIT_S)

    assert asyncio.run(scenario()) == []


def test_a_follower_waits_for_the_job_gets_new_events_and_ends_when_the_job_is_over() -> None:
    async def scenario() -> list[tuple[int, str]]:
        sup = Supervisor(SupervisorSettings())
        follower = asyncio.create_task(collect(sup, 0, follow=True))
        await asyncio.sleep(0)  # the follower is waiting: no launcher attached yet
        assert not follower.done()
        sup.job = new_job()
        record(sup, "attached")
        record(sup, "failure")
        assert sup.job is not None
        sup.apply(sup.job.stop("stopped by the test"))  # over: records "stopped" too
        events = await asyncio.wait_for(follower, WAIT_S)
        return [(e.seq, e.kind) for e in events]

    assert asyncio.run(scenario()) == [(1, "attached"), (2, "failure"), (3, "stopped")]


def test_a_follower_of_a_finished_job_gets_its_events_and_the_stream_ends() -> None:
    async def scenario() -> list[str]:
        sup = Supervisor(SupervisorSettings())
        sup.job = new_job()
        record(sup, "attached")
        sup.stop("stopped")
        events = await asyncio.wait_for(collect(sup, 0, follow=True), WAIT_S)
        return [e.kind for e in events]

    assert asyncio.run(scenario()) == ["attached", "stopped"]


def test_stopping_the_supervisor_ends_a_follower_that_never_saw_a_job() -> None:
    async def scenario() -> list[pb.JobEvent]:
        sup = Supervisor(SupervisorSettings())
        follower = asyncio.create_task(collect(sup, 0, follow=True))
        await asyncio.sleep(0)
        sup.stop("SIGTERM")
        return await asyncio.wait_for(follower, WAIT_S)

    assert asyncio.run(scenario()) == []
