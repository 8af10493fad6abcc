"""supervisor/rules/failure_evidence.py: what a pod knows of a death, and the history rules'
memory."""

from __future__ import annotations

import signal

import pytest

from supervisor.rules.classify import (
    HUNG_SIGNATURE,
    OOM_REPEATS_TO_STOP,
    Action,
    Evidence,
    FailureClass,
    GpuHealth,
    PodFaultRule,
)
from supervisor.rules.failure_evidence import (
    FailureDetail,
    FailureMemory,
    Settled,
    evidence_of,
    policy_failure,
    settle_raised,
)
from supervisor.rules.job import failure_record
from train_supervisor.v1 import supervisor_pb2 as pb

KILL = int(signal.SIGKILL)


def died(
    rank: int = 1,
    exit_code: int = 0,
    signum: int = KILL,
    detail: pb.FailureDetail | None = None,
    step: int = 0,
) -> pb.FailureRecord:
    return failure_record(0, rank, 4242, exit_code, signum, detail, step)


# ------------------------------------------------------------------ evidence_of
@pytest.mark.parametrize(
    ("record", "tail", "oom_kills", "expected"),
    [
        (died(), "", 0, Evidence(signum=KILL)),
        (died(), "", 2, Evidence(signum=KILL, oom_kills=2)),
        (
            died(exit_code=1, signum=0),
            "NCCL error",
            0,
            Evidence(exit_code=1, output_tail="NCCL error"),
        ),
        (
            died(
                exit_code=1,
                signum=0,
                detail=FailureDetail(exception_type="KeyError", message="'x'", signature="s"),
            ),
            "",
            0,
            Evidence(exit_code=1, exception_type="KeyError", message="'x'"),
        ),
        (
            died(detail=FailureDetail(signature=HUNG_SIGNATURE, message="no step for 60s")),
            "",
            0,
            Evidence(signum=KILL, message="no step for 60s", killed_as_hung=True),
        ),
    ],
    ids=["a bare kill", "cgroup OOM kills", "output", "error file", "killed as hung"],
)
def test_evidence_of_takes_every_source(
    record: pb.FailureRecord, tail: str, oom_kills: int, expected: Evidence
) -> None:
    assert evidence_of(record, tail, oom_kills) == expected


def test_evidence_of_carries_history_and_gpu() -> None:
    gpu = GpuHealth(present=True, ecc_uncorrectable=1)
    got = evidence_of(died(), "", 0, same_class_before=2, pod_unexplained_before=1, gpu=gpu)
    assert (got.same_class_before, got.pod_unexplained_before, got.gpu) == (2, 1, gpu)


# ---------------------------------------------------------------- FailureMemory
def test_judge_stores_class_and_reason_on_the_record() -> None:
    record = died()
    found = FailureMemory().judge(record, "", oom_kills=1)
    assert (found.kind, found.action) == (FailureClass.OUT_OF_MEMORY, Action.RESTART_IN_PLACE)
    assert (record.failure_class, record.reason) == ("out_of_memory", found.reason)


def test_oom_again_on_one_rank_stops_other_ranks_count_apart() -> None:
    memory = FailureMemory()
    actions = [memory.judge(died(rank=r), "", 1).action for r in (1, 0, 1, 0)]
    assert actions == [Action.RESTART_IN_PLACE] * 4
    third = memory.judge(died(rank=1), "", 1)
    assert OOM_REPEATS_TO_STOP == 3
    assert (third.kind, third.action) == (FailureClass.OUT_OF_MEMORY, Action.STOP_JOB)
    assert "out of memory 3 times on this rank" in third.reason


def test_an_oom_seen_only_in_the_output_counts_with_the_cgroup_ones() -> None:
    memory = FailureMemory()
    memory.judge(died(), "", 1)
    memory.judge(died(exit_code=1, signum=0), "torch.OutOfMemoryError: CUDA out of memory", 0)
    assert memory.judge(died(), "", 1).action is Action.STOP_JOB


def test_unexplained_faults_anywhere_on_the_pod_point_at_it() -> None:
    # A rule of 3 (the lifetime count's old number, now the limit of a rate): the default is 4.
    memory = FailureMemory(pod_fault_rule=PodFaultRule(limit=3, window_s=60))
    explained = [
        memory.judge(died(exit_code=1, signum=0, detail=FailureDetail(exception_type="E")), "", 0),
        memory.judge(died(rank=0), "", 1),  # an OOM kill is explained
    ]
    assert all(f.explained for f in explained) and memory.unexplained == 0
    first = memory.judge(died(rank=0), "", 0)
    second = memory.judge(died(rank=1, exit_code=7, signum=0), "", 0)
    assert (first.kind, second.kind) == (FailureClass.TRANSIENT, FailureClass.UNKNOWN)
    third = memory.judge(died(rank=1), "", 0)
    assert (third.kind, third.action) == (FailureClass.HARDWARE, Action.REPLACE_POD)
    assert "3 unexplained faults on this pod" in third.reason


def test_policy_failure_carries_the_class_for_the_leader() -> None:
    record = died(step=9)
    found = FailureMemory().judge(record, "", 1)
    failure = policy_failure(record, found)
    assert (failure.rank, failure.signature, failure.step) == (1, "SIGKILL", 9)
    assert (failure.failure_class, failure.action) == ("out_of_memory", Action.RESTART_IN_PLACE)
    assert failure.reason == found.reason


ECHO = FailureDetail(exception_type="DistBackendError", message="Connection reset by peer")
OWN = FailureDetail(exception_type="KeyError", message="'lr'")


@pytest.mark.parametrize(
    ("own", "raised", "final", "settled"),
    [
        (OWN, [OWN, None], True, Settled.THE_FAILURE),  # its own error: the failure at once
        (OWN, [OWN, ECHO], False, Settled.THE_FAILURE),
        (ECHO, [ECHO, OWN], True, Settled.ECHO_WAITS),  # another rank raised the cause
        (ECHO, [ECHO, None], False, Settled.UNDECIDED),  # only echoes: one more window
        (ECHO, [ECHO, ECHO], True, Settled.THE_FAILURE),  # still only echoes: it is the failure
        (None, [None], True, Settled.THE_FAILURE),
    ],
)
def test_a_peers_echo_waits_while_another_rank_raised_the_cause(
    own: pb.FailureDetail | None,
    raised: list[pb.FailureDetail | None],
    final: bool,
    settled: Settled,
) -> None:
    assert settle_raised(own, raised, final) is settled


def test_three_unexplained_kills_do_not_replace_the_pod_by_default() -> None:
    """Issue 21: three SIGKILLs from outside on a pod within minutes ended the job (exit 4)."""
    memory = FailureMemory()
    found = [memory.judge(died(rank=r), "", 0, now=60.0 * i) for i, r in enumerate((1, 0, 1))]
    assert [f.action for f in found] == [Action.RESTART_IN_PLACE] * 3
    fourth = memory.judge(died(rank=0), "", 0, now=240.0)
    assert (fourth.kind, fourth.action) == (FailureClass.HARDWARE, Action.REPLACE_POD)
    for part in ("4 unexplained faults on this pod within 3600s", "4 within 3600s"):
        assert part in fourth.reason
    assert "SUPERVISOR_POD_FAULT_LIMIT" in fourth.reason
    assert "SUPERVISOR_POD_FAULT_WINDOW_S" in fourth.reason


def test_unexplained_faults_count_only_within_the_window() -> None:
    """A rate, not a lifetime count: faults older than the window are forgotten."""
    memory = FailureMemory(pod_fault_rule=PodFaultRule(limit=2, window_s=100))
    assert memory.judge(died(), "", 0, now=0.0).action is Action.RESTART_IN_PLACE
    assert memory.judge(died(), "", 0, now=101.0).action is Action.RESTART_IN_PLACE
    assert memory.unexplained == 1  # the first one left the window
    assert memory.judge(died(), "", 0, now=150.0).action is Action.REPLACE_POD


def test_a_pod_fault_limit_of_zero_never_replaces() -> None:
    memory = FailureMemory(pod_fault_rule=PodFaultRule(limit=0))
    found = [memory.judge(died(), "", 0, now=float(i)) for i in range(20)]
    assert all(f.action is Action.RESTART_IN_PLACE for f in found)
