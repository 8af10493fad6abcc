"""supervisor/rules/restart_policy.py: crash-loop detection and the job-wide restart budget."""

from __future__ import annotations

import dataclasses

import pytest

from supervisor.rules.classify import Action as ClassAction
from supervisor.rules.restart_policy import (
    Action,
    Failure,
    RestartPolicy,
    crash_loop_repeats,
    decide,
    is_crash_loop,
)

SIG = "ValueError: bad batch @ train.py:42"
OTHER = "RuntimeError: NCCL timeout @ train.py:77"


def failures(*steps: int, signature: str = SIG, rank: int = 0) -> list[Failure]:
    """One failure per step, in consecutive generations."""
    return [
        Failure(generation=g, rank=rank, signature=signature, step=s) for g, s in enumerate(steps)
    ]


# ------------------------------------------------------------------ is_crash_loop
def test_same_signature_without_progress_is_a_crash_loop() -> None:
    assert is_crash_loop(failures(5, 5, 5), threshold=3)


def test_falling_back_to_an_earlier_step_is_no_progress() -> None:
    # Restarting from an older checkpoint and failing earlier is still no progress.
    assert is_crash_loop(failures(5, 3, 0), threshold=3)


@pytest.mark.parametrize("steps", [(5, 6, 6), (5, 5, 6), (0, 1, 0)])
def test_any_step_progress_is_not_a_crash_loop(steps: tuple[int, ...]) -> None:
    assert not is_crash_loop(failures(*steps), threshold=3)


def test_a_different_signature_in_the_window_is_not_a_crash_loop() -> None:
    history = [*failures(5, 5), Failure(generation=2, rank=0, signature=OTHER, step=5)]
    assert not is_crash_loop(history, threshold=3)
    history = [Failure(generation=0, rank=0, signature=OTHER, step=5), *failures(5, 5)]
    assert not is_crash_loop(history, threshold=3)


def test_unknown_signature_is_never_a_crash_loop() -> None:
    # "" means nothing is known about the error: three of them prove nothing.
    assert not is_crash_loop(failures(0, 0, 0, signature=""), threshold=3)


def test_the_same_error_on_different_ranks_is_not_a_crash_loop() -> None:
    # Was keyed on the signature only (issue 21): ranks 0, 1, 2 counted as one rank.
    history = [Failure(generation=g, rank=g, signature=SIG, step=5) for g in range(3)]
    assert not is_crash_loop(history, threshold=3)


def test_kills_of_ranks_1_0_1_without_progress_are_not_a_crash_loop() -> None:
    """Issue 21's run: three SIGKILLs, two ranks; rank 1 has two, the threshold is 3."""
    history = [Failure(g, r, "SIGKILL", 30) for g, r in enumerate((1, 0, 1))]
    assert not is_crash_loop(history, threshold=3)


def test_one_rank_failing_among_others_is_still_a_loop() -> None:
    """Other ranks' failures without progress do not break a rank's run (their steps count)."""
    ranks = (2, 0, 2, 1, 2)
    history = [Failure(g, r, SIG, 7) for g, r in enumerate(ranks)]
    assert is_crash_loop(history, threshold=3)
    assert [f.generation for f in crash_loop_repeats(history)] == [0, 2, 4]


def test_progress_shown_by_another_ranks_failure_breaks_the_run() -> None:
    # Rank 1 at job step 7, then rank 0 fails at job step 20: the job trained in between.
    history = [Failure(0, 1, SIG, 7), Failure(1, 0, OTHER, 20), Failure(2, 1, SIG, 7)]
    history += [Failure(3, 1, SIG, 7)]
    assert not is_crash_loop(history, threshold=3)


def test_repeats_are_counted_once_per_generation() -> None:
    # A rank's failure reported twice for one generation (a re-join) is one failure.
    history = [Failure(0, 1, SIG, 4), Failure(0, 1, SIG, 4), Failure(1, 1, SIG, 4)]
    assert not is_crash_loop(history, threshold=3)


def test_a_crash_loop_is_counted_within_its_window() -> None:
    at = [1000.0, 2000.0, 2500.0]
    history = [Failure(g, 0, SIG, 5, time_s=t) for g, t in enumerate(at)]
    assert is_crash_loop(history, threshold=3, window_s=1500)
    assert not is_crash_loop(history, threshold=3, window_s=1499)
    # Unknown times (0) stay in any window.
    history = [dataclasses.replace(f, time_s=0.0) for f in history]
    assert is_crash_loop(history, threshold=3, window_s=1)


def test_a_failed_re_entry_never_makes_a_crash_loop() -> None:
    history = [*failures(5, 5), dataclasses.replace(failures(5)[0], generation=2)]
    assert is_crash_loop(history, threshold=3)
    history[-1] = dataclasses.replace(history[-1], reentry_failed=True)
    assert not is_crash_loop(history, threshold=3)


@pytest.mark.parametrize(
    ("count", "threshold", "expected"),
    [
        (2, 3, False),  # one short of the threshold
        (3, 3, True),  # exactly the threshold
        (4, 3, True),
        (3, 4, False),
        (4, 4, True),
        (1, 1, True),  # threshold 1: the first failure with a known signature
        (0, 1, False),
        (5, 0, False),  # threshold < 1 disables the rule
    ],
)
def test_threshold_boundaries(count: int, threshold: int, expected: bool) -> None:
    assert is_crash_loop(failures(*([7] * count)), threshold=threshold) is expected


def test_only_the_last_threshold_failures_count() -> None:
    # An old run of the same error followed by a different one is over.
    history = [*failures(5, 5, 5), Failure(generation=3, rank=1, signature=OTHER, step=9)]
    assert not is_crash_loop(history, threshold=3)
    # Older, different failures before the window do not hide a loop.
    history = [Failure(generation=0, rank=1, signature=OTHER, step=1), *failures(5, 5, 5)]
    assert is_crash_loop(history, threshold=3)


# ----------------------------------------------------------------------- decide
def test_restart_while_budget_left() -> None:
    decision = decide(RestartPolicy(max_restarts=3), failures(1), restart_count=0)
    assert decision.action is Action.RESTART
    assert "1 of 3" in decision.reason


@pytest.mark.parametrize(("restart_count", "max_restarts"), [(3, 3), (4, 3), (0, 0)])
def test_budget_spent_gives_up(restart_count: int, max_restarts: int) -> None:
    decision = decide(RestartPolicy(max_restarts=max_restarts), failures(1), restart_count)
    assert decision.action is Action.GIVE_UP_BUDGET
    assert "budget" in decision.reason
    assert f"{restart_count} of {max_restarts}" in decision.reason


def test_last_restart_of_the_budget_is_still_granted() -> None:
    decision = decide(RestartPolicy(max_restarts=3), failures(1), restart_count=2)
    assert decision.action is Action.RESTART


def test_budget_is_job_wide_across_ranks() -> None:
    # Ranks 0 and 1 spent the budget; rank 2's first failure still finds it empty.
    history = [
        Failure(generation=0, rank=0, signature="SIGKILL", step=10),
        Failure(generation=1, rank=1, signature="exit code 1", step=20),
        Failure(generation=2, rank=2, signature=OTHER, step=30),
    ]
    decision = decide(RestartPolicy(max_restarts=2), history, restart_count=2)
    assert decision.action is Action.GIVE_UP_BUDGET


def test_crash_loop_stops_the_job_before_the_budget_is_spent() -> None:
    policy = RestartPolicy(max_restarts=100, crash_loop_threshold=3)
    assert decide(policy, failures(5, 5), restart_count=1).action is Action.RESTART
    decision = decide(policy, failures(5, 5, 5), restart_count=2)
    assert decision.action is Action.GIVE_UP_CRASH_LOOP
    assert "crash loop" in decision.reason
    assert "rank 0" in decision.reason
    assert "step 5" in decision.reason


def test_crash_loop_wins_over_an_empty_budget() -> None:
    decision = decide(RestartPolicy(max_restarts=2), failures(5, 5, 5), restart_count=2)
    assert decision.action is Action.GIVE_UP_CRASH_LOOP


def test_crash_loop_reason_names_the_newest_failure() -> None:
    # Ranks (0, 3, 2) were one loop before issue 21; rank 2's own three failures are one now.
    history = [
        Failure(generation=g, rank=r, signature=SIG, step=4) for g, r in enumerate((2, 0, 2, 3, 2))
    ]
    decision = decide(RestartPolicy(max_restarts=10), history, restart_count=2)
    assert decision.action is Action.GIVE_UP_CRASH_LOOP
    assert "rank 2" in decision.reason


def test_every_give_up_names_its_rule_numbers_and_setting() -> None:
    policy = RestartPolicy(max_restarts=9, crash_loop_threshold=3, crash_loop_window_s=600)
    history = [Failure(g, 1, SIG, 12, time_s=100.0 + 10 * g) for g in range(3)]
    loop = decide(policy, history, restart_count=2).reason
    for part in ("rank 1", "3 times", "in 20s", "job step 12", "within 600s", SIG):
        assert part in loop
    assert "SUPERVISOR_CRASH_LOOP_THRESHOLD" in loop and "SUPERVISOR_CRASH_LOOP_WINDOW_S" in loop
    budget = decide(RestartPolicy(max_restarts=3), failures(1), restart_count=3).reason
    assert "3 of 3" in budget and "--max-restarts" in budget


# ------------------------------------------------- the failure's class decides
def classified(action: ClassAction, *steps: int, reason: str = "evidence") -> list[Failure]:
    """Failures as `failures` makes them, the newest classified with `action`."""
    history = failures(*steps, signature="SIGKILL", rank=1)
    history[-1] = dataclasses.replace(
        history[-1], failure_class="some_class", action=action, reason=reason
    )
    return history


@pytest.mark.parametrize(
    ("history", "restart_count", "expected"),
    [
        # The class says stop: before the crash loop and the budget, with its own reason.
        (classified(ClassAction.STOP_JOB, 1), 0, Action.GIVE_UP_CLASSIFIED),
        (classified(ClassAction.STOP_JOB, 5, 5, 5), 2, Action.GIVE_UP_CLASSIFIED),
        (classified(ClassAction.STOP_JOB, 1), 9, Action.GIVE_UP_CLASSIFIED),
        # The class says replace the pod: with or without budget ...
        (classified(ClassAction.REPLACE_POD, 1), 0, Action.REPLACE_POD),
        (classified(ClassAction.REPLACE_POD, 1, 2), 9, Action.REPLACE_POD),
        # ... but a crash loop is the script's, not the node's.
        (classified(ClassAction.REPLACE_POD, 5, 5, 5), 2, Action.GIVE_UP_CRASH_LOOP),
        # A class that calls for a restart leaves it to the budget and the loop rule.
        (classified(ClassAction.RESTART_IN_PLACE, 1), 0, Action.RESTART),
        (classified(ClassAction.KILL_AND_RESTART, 1), 9, Action.GIVE_UP_BUDGET),
        (classified(ClassAction.RESTART_IN_PLACE, 5, 5, 5), 2, Action.GIVE_UP_CRASH_LOOP),
    ],
)
def test_the_class_takes_part_in_the_decision(
    history: list[Failure], restart_count: int, expected: Action
) -> None:
    policy = RestartPolicy(max_restarts=9, crash_loop_threshold=3)
    assert decide(policy, history, restart_count).action is expected


def test_a_classified_decision_names_the_rank_and_the_evidence() -> None:
    policy = RestartPolicy(max_restarts=9)
    why = "out of memory 3 times on this rank (last: the kernel OOM killer)"
    stop = decide(policy, classified(ClassAction.STOP_JOB, 1, reason=why), 0)
    assert stop.reason == f"rank 1: {why}"
    replace = decide(policy, classified(ClassAction.REPLACE_POD, 1, reason="output: 'Xid 79'"), 0)
    assert replace.reason == "some_class fault on rank 1: output: 'Xid 79'"
