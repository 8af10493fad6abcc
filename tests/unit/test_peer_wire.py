"""supervisor/rpc/peer_wire.py: the leader's values to and from the protobuf wire.

Each kind is checked field by field on the wire (a swap in both directions
would survive a round trip) and then round-tripped through bytes.
"""

from __future__ import annotations

import pytest

from supervisor.rpc.peer_wire import (
    copies_from_wire,
    copies_to_wire,
    failure_from_wire,
    failure_to_wire,
    message_from_wire,
    message_to_wire,
    view_from_wire,
    view_to_wire,
)
from supervisor.rules.classify import Action
from supervisor.rules.leader import (
    POD_LOST,
    CommitStep,
    EndJob,
    Message,
    OpenGeneration,
    PodView,
    StartGeneration,
)
from supervisor.rules.restart_policy import Failure
from supervisor.snapshots.restore import NodeCopies
from train_supervisor import exit_codes
from train_supervisor.v1 import supervisor_pb2 as pb

SIG = "ValueError: bad batch @ train.py:42"
HISTORY = (
    Failure(generation=0, rank=3, signature="SIGKILL", step=7),
    Failure(generation=0, rank=1, signature=SIG, step=6),
    Failure(generation=1, rank=2, signature=POD_LOST, step=0),
    Failure(generation=2, rank=0, signature="", step=2**40),  # nothing known; a long run
)


def through_bytes(message: pb.LeaderMessage) -> pb.LeaderMessage:
    return pb.LeaderMessage.FromString(message.SerializeToString())


# ------------------------------------------------------------------ failures
@pytest.mark.parametrize("failure", HISTORY)
def test_failure_round_trip(failure: Failure) -> None:
    wire = failure_to_wire(failure)
    assert (wire.generation, wire.rank, wire.signature, wire.step) == (
        failure.generation,
        failure.rank,
        failure.signature,
        failure.step,
    )
    again = pb.PolicyFailure.FromString(wire.SerializeToString())
    assert failure_from_wire(again) == failure


def test_the_pods_classification_goes_on_the_wire_by_action_name() -> None:
    failure = Failure(1, 3, "SIGKILL", 7, "out_of_memory", Action.STOP_JOB, "oom_kill +1")
    wire = pb.PolicyFailure.FromString(failure_to_wire(failure).SerializeToString())
    assert (wire.failure_class, wire.action, wire.reason) == (
        "out_of_memory",
        "STOP_JOB",
        "oom_kill +1",
    )
    assert failure_from_wire(wire) == failure


def test_an_action_this_version_does_not_know_reads_as_none() -> None:
    wire = pb.PolicyFailure(generation=1, rank=3, signature="x", action="REBOOT_THE_MOON")
    assert failure_from_wire(wire).action is None


def test_failure_from_a_pod_report() -> None:
    report = pb.PodReport(
        failure=pb.PolicyFailure(generation=4, rank=5, signature="SIGSEGV", step=9)
    )
    report = pb.PodReport.FromString(report.SerializeToString())
    assert report.WhichOneof("report") == "failure"
    assert failure_from_wire(report.failure) == Failure(4, 5, "SIGSEGV", 9)


# ------------------------------------------------------------------ messages
def test_open_generation_on_the_wire() -> None:
    message = OpenGeneration(generation=3, restart_count=2, reason="rank 3 failed", history=HISTORY)
    wire = message_to_wire(message)
    assert wire.WhichOneof("message") == "open"
    assert (wire.open.generation, wire.open.restart_count, wire.open.reason) == (
        3,
        2,
        "rank 3 failed",
    )
    assert [failure_from_wire(f) for f in wire.open.history] == list(HISTORY)
    again = message_from_wire(through_bytes(wire))
    assert again == message
    assert isinstance(again, OpenGeneration)
    assert isinstance(again.history, tuple)


def test_start_generation_on_the_wire() -> None:
    message = StartGeneration(
        generation=1,
        restart_count=1,
        master_addr="job-0.job-svc",
        master_port=29517,
        world_size=8,
        nnodes=2,
        history=HISTORY[:1],
    )
    wire = message_to_wire(message)
    assert wire.WhichOneof("message") == "start"
    start = wire.start
    assert (start.generation, start.restart_count) == (1, 1)
    assert (start.master_addr, start.master_port) == ("job-0.job-svc", 29517)
    assert (start.world_size, start.nnodes) == (8, 2)
    assert [failure_from_wire(f) for f in start.history] == [HISTORY[0]]
    assert message_from_wire(through_bytes(wire)) == message


def test_end_job_on_the_wire() -> None:
    message = EndJob(exit_code=exit_codes.GAVE_UP, report="job given up: crash loop\n  rank: 3")
    wire = message_to_wire(message)
    assert wire.WhichOneof("message") == "end"
    assert (wire.end.exit_code, wire.end.report) == (message.exit_code, message.report)
    assert message_from_wire(through_bytes(wire)) == message


def test_end_job_with_exit_code_zero_keeps_its_kind() -> None:
    """Every field of a successful EndJob may be a default: the oneof still says "end"."""
    wire = through_bytes(message_to_wire(EndJob(exit_code=0, report="")))
    assert wire.WhichOneof("message") == "end"
    assert message_from_wire(wire) == EndJob(0, "")


@pytest.mark.parametrize(
    "message",
    [
        OpenGeneration(0, 0, "job formed: 2 pods joined"),
        OpenGeneration(5, 4, "node 1 lost: stream lost; restart 4 of 9", HISTORY),
        StartGeneration(0, 0, "10.0.0.1", 40000, 4, 2),
        StartGeneration(2, 2, "job-0.job-svc", 65535, 1024, 128, HISTORY),
        StartGeneration(3, 3, "job-0.job-svc", 40001, 4, 2, HISTORY, restore_step=0),
        StartGeneration(3, 3, "job-0.job-svc", 40001, 4, 2, restore_step=12_345),
        CommitStep(generation=3, step=12_346),
        CommitStep(generation=3, step=12_346, persisted=12_000, drop_persisted=(12_300,)),
        CommitStep(generation=3, step=12_346, newest_saved=12_350),
        EndJob(exit_codes.SUCCEEDED, "all 2 pods finished generation 0"),
        EndJob(exit_codes.GAVE_UP, "job given up"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_message_round_trip(message: Message) -> None:
    assert message_from_wire(through_bytes(message_to_wire(message))) == message


def test_empty_leader_message_is_refused() -> None:
    with pytest.raises(ValueError, match="empty LeaderMessage"):
        message_from_wire(pb.LeaderMessage())


# --------------------------------------------------------------------- views
@pytest.mark.parametrize(
    "view",
    [
        PodView(generation=0, restart_count=0, history=()),
        PodView(generation=3, restart_count=2, history=HISTORY),
        PodView(generation=3, restart_count=2, history=HISTORY[:2], finished=True),
    ],
    ids=["empty", "history", "finished"],
)
def test_view_round_trip_through_a_join_request(view: PodView) -> None:
    wire = view_to_wire(view)
    assert (wire.generation, wire.restart_count, wire.finished) == (
        view.generation,
        view.restart_count,
        view.finished,
    )
    request = pb.JoinRequest(run_id="job1", node_rank=1, nproc=2, has_view=True, view=wire)
    request = pb.JoinRequest.FromString(request.SerializeToString())
    again = view_from_wire(request)
    assert again == view
    assert again is not None and isinstance(again.history, tuple)


def test_no_view_is_none() -> None:
    assert view_from_wire(pb.JoinRequest(run_id="job1", node_rank=1, nproc=2)) is None


def test_has_view_false_wins_over_a_view_that_is_set() -> None:
    view = view_to_wire(PodView(2, 1, HISTORY))
    assert view_from_wire(pb.JoinRequest(node_rank=1, view=view, has_view=False)) is None


def test_an_all_default_view_is_still_a_view() -> None:
    """A pod that kept generation 0, no restarts, no history gives back a view, not None."""
    request = pb.JoinRequest.FromString(
        pb.JoinRequest(node_rank=1, has_view=True, view=pb.PodView()).SerializeToString()
    )
    assert view_from_wire(request) == PodView(0, 0, ())


def test_a_pods_copies_carry_the_commit_it_heard_of() -> None:
    copies = NodeCopies(
        shm=frozenset({5, 6}), replicas={1: frozenset({4})}, persisted=frozenset({3}), committed=5
    )
    wire = copies_to_wire(copies)
    assert (list(wire.shm), list(wire.persisted), wire.committed) == ([5, 6], [3], 5)
    assert copies_from_wire(pb.PodCopies.FromString(wire.SerializeToString())) == copies
    assert copies_from_wire(copies_to_wire(NodeCopies())).committed == -1, "none heard of"
