"""Hang rules: thresholds that adapt to step times, and naming the rank that stalls the rest."""

from __future__ import annotations

from supervisor.rules.hang import (
    HangSettings,
    ProcessEvidence,
    RankProgress,
    culprit,
    describe_stacks,
    overdue,
    stuck_reentry,
    threshold_s,
)

DEFAULT = HangSettings()


def ranks(last_step_at: float, step_s: float, n: int = 4) -> list[RankProgress]:
    return [RankProgress(r, 0.0, last_step_at, (step_s,) * 5) for r in range(n)]


def test_fast_steps_are_flagged_after_the_floor() -> None:
    assert threshold_s(ranks(100.0, 0.1)[0], DEFAULT) == DEFAULT.floor_s
    assert overdue(ranks(100.0, 0.1), now=100.0 + DEFAULT.floor_s - 0.5, settings=DEFAULT) == []
    late = overdue(ranks(100.0, 0.1), now=100.0 + DEFAULT.floor_s + 0.5, settings=DEFAULT)
    assert late == [0, 1, 2, 3], "a stall stops every rank of a synchronous job"


def test_twenty_second_steps_are_not_flagged_mid_step() -> None:
    # Stepping normally: 25 s into a 20 s step is slow, not hung.
    assert overdue(ranks(1000.0, 20.0), now=1025.0, settings=DEFAULT) == []
    assert threshold_s(ranks(1000.0, 20.0)[0], DEFAULT) == 100.0
    assert overdue(ranks(1000.0, 20.0), now=1101.0, settings=DEFAULT) == [0, 1, 2, 3]


def test_one_slow_step_does_not_move_the_threshold() -> None:
    progress = RankProgress(0, 0.0, 50.0, (0.5, 0.5, 30.0, 0.5, 0.5))
    assert threshold_s(progress, DEFAULT) == DEFAULT.floor_s


def test_before_the_first_step_the_startup_allowance_applies() -> None:
    starting = [RankProgress(0, started_at=10.0, last_step_at=None)]
    assert overdue(starting, now=10.0 + DEFAULT.startup_s - 1, settings=DEFAULT) == []
    assert overdue(starting, now=10.0 + DEFAULT.startup_s + 1, settings=DEFAULT) == [0]
    quick = HangSettings(floor_s=2.0, factor=3.0, startup_s=20.0)  # env overrides, later
    assert overdue(starting, now=31.0, settings=quick) == [0]


def test_the_stopped_process_is_the_culprit() -> None:
    waiting = ProcessEvidence("sleeping", False, "allreduce (distributed_c10d.py)")
    evidence = {0: waiting, 1: waiting, 2: ProcessEvidence("stopped", False, ""), 3: waiting}
    found = culprit(evidence)
    assert found is not None and found.rank == 2 and "stopped" in found.why


def test_the_one_rank_burning_cpu_while_the_rest_wait() -> None:
    waiting = ProcessEvidence("sleeping", False)
    evidence = {0: waiting, 1: ProcessEvidence("running", True), 2: waiting, 3: waiting}
    found = culprit(evidence)
    assert found is not None and found.rank == 1 and "CPU" in found.why


def test_the_stack_unlike_the_waiting_majority() -> None:
    wait = "allreduce (torch/distributed/distributed_c10d.py:2501)\nstep (train.py:40)"
    odd = "sleep (time)\nload_batch (data.py:12)"
    evidence = {r: ProcessEvidence("sleeping", False, wait) for r in (0, 1, 3)}
    evidence[2] = ProcessEvidence("sleeping", False, odd)
    found = culprit(evidence)
    assert found is not None and found.rank == 2
    assert "sleep (time)" in found.why and "3 ranks waiting in allreduce" in found.why


def test_no_culprit_when_nothing_stands_out() -> None:
    same = ProcessEvidence("sleeping", False, "allreduce")
    assert culprit({r: same for r in range(4)}) is None
    two_stopped = {0: ProcessEvidence("stopped"), 1: ProcessEvidence("stopped"), 2: same}
    assert culprit(two_stopped) is None, "two stopped ranks: no single culprit"
    split = {0: ProcessEvidence(stack="a"), 1: ProcessEvidence(stack="a"),
             2: ProcessEvidence(stack="b"), 3: ProcessEvidence(stack="b")}  # fmt: skip
    assert culprit(split) is None, "no majority to differ from"


def test_stack_groups_largest_first() -> None:
    wait = "allreduce (distributed_c10d.py)\nstep (train.py)"
    assert describe_stacks({3: wait, 0: wait, 1: wait, 2: "sleep (data.py)"}) == (
        "3 ranks (0, 1, 3) in allreduce (distributed_c10d.py) < step (train.py); "
        "rank 2 in sleep (data.py)"
    )
    assert describe_stacks({0: "a (a.py)", 1: "b (b.py)", 2: ""}) == (
        "rank 0 in a (a.py); rank 1 in b (b.py); rank 2 with no stack"
    ), "ties in rank order; a failed dump is said"
    assert describe_stacks({}) == ""


def test_a_generation_stuck_before_its_first_step_blames_a_reentered_survivor() -> None:
    never = [RankProgress(0, 10.0, None), RankProgress(1, 10.0, None)]
    found = stuck_reentry(never, reentered={0})
    assert found is not None and found.rank == 0
    assert stuck_reentry(never, reentered=set()) is None  # fresh processes only: no guess
    stepped = [RankProgress(0, 10.0, 12.0, (0.1,)), RankProgress(1, 10.0, None)]
    assert stuck_reentry(stepped, reentered={0}) is None  # a step was made: not a start hang
