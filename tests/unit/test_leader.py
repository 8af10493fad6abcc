"""supervisor/rules/leader.py: the multi-pod leader's rules, driven event by event.

No gRPC and no clock: pods are node ranks, ports come from a counter, `now`
is passed explicitly. Helpers play the followers (join everyone, report ready).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Optional

import pytest

from supervisor.rules.classify import Action
from supervisor.rules.leader import (
    MAX_FAILURES_PER_GENERATION,
    POD_LOST,
    Broadcast,
    CommitStep,
    EndJob,
    JoinRefused,
    LeaderState,
    LeaderTimings,
    Message,
    OpenGeneration,
    Phase,
    PodView,
    StartGeneration,
    follow,
    mark_finished,
    policy_history,
)
from supervisor.rules.restart_policy import Failure, RestartPolicy
from train_supervisor import exit_codes

NPROC = 2
FIRST_PORT = 40000
MASTER = "job-0.job-svc"
SIG = "ValueError: bad batch @ train.py:42"
OTHER = "RuntimeError: NCCL timeout @ train.py:77"


def died(
    leader: LeaderState, node: int, now: float, incarnation: Optional[int] = None
) -> list[Broadcast]:
    """Pod `node` died: its stream broke, and so did the other pods' collectives with its
    ranks (a stream that breaks alone is a supervisor restarting: see the ride-through tests)."""
    effects = leader.pod_lost(node, now, incarnation)
    member = leader.members.get(node)
    if member is not None and member.detached_at is not None:
        witness = next(n for n in leader.members if n != node)
        effects = leader.collective_broke(witness, leader.generation)  # not the pod_away news
    return effects


def make(
    nnodes: int = 2, *, max_restarts: int = 3, threshold: int = 3, timeout: float = 10.0
) -> LeaderState:
    ports = itertools.count(FIRST_PORT)
    return LeaderState(
        nnodes=nnodes,
        nproc=NPROC,
        policy=RestartPolicy(max_restarts=max_restarts, crash_loop_threshold=threshold),
        allocate_port=lambda: next(ports),
        master_addr=MASTER,
        timings=LeaderTimings(heartbeat_timeout_s=timeout),
        leader_address="job-0.job-svc:29400",
    )


def fail(rank: int, step: int = 5, signature: str = SIG, generation: int = 0) -> Failure:
    return Failure(generation=generation, rank=rank, signature=signature, step=step)


# ------------------------------------------------------------ effect helpers
def only(effects: Sequence[Broadcast], target: Optional[int] = None) -> Message:
    """The single message of `effects`, checking its target."""
    assert len(effects) == 1, effects
    assert effects[0].target == target
    return effects[0].message


def opened(effects: Sequence[Broadcast]) -> OpenGeneration:
    message = only(effects)
    assert isinstance(message, OpenGeneration), message
    return message


def started(effects: Sequence[Broadcast]) -> StartGeneration:
    message = only(effects)
    assert isinstance(message, StartGeneration), message
    return message


def ended(effects: Sequence[Broadcast], target: Optional[int] = None) -> EndJob:
    message = only(effects, target)
    assert isinstance(message, EndJob), message
    return message


def join_all(leader: LeaderState, now: float = 0.0) -> list[Broadcast]:
    effects: list[Broadcast] = []
    for node in range(leader.nnodes):
        effects += leader.join(node, NPROC, None, now)
    return effects


def ready_all(leader: LeaderState, generation: int) -> list[Broadcast]:
    effects: list[Broadcast] = []
    for node in range(leader.nnodes):
        effects += leader.pod_ready(node, generation)
    return effects


def formed(
    nnodes: int = 2, *, max_restarts: int = 3, threshold: int = 3, timeout: float = 10.0
) -> LeaderState:
    """A job whose generation 0 runs."""
    leader = make(nnodes, max_restarts=max_restarts, threshold=threshold, timeout=timeout)
    join_all(leader)
    started(ready_all(leader, 0))
    return leader


def heartbeat_all_but(leader: LeaderState, silent: int, now: float) -> None:
    for node in list(leader.members):
        if node != silent:
            assert leader.heartbeat(node, now)


# ------------------------------------------------------------------ formation
@pytest.mark.parametrize("nnodes", [2, 3])
def test_nothing_opens_until_every_pod_joined(nnodes: int) -> None:
    leader = make(nnodes)
    for node in range(nnodes - 1):
        assert leader.join(node, NPROC, None, now=0.0) == []
        assert leader.phase is Phase.FORMING
    message = opened(leader.join(nnodes - 1, NPROC, None, now=0.0))
    assert (message.generation, message.restart_count, message.history) == (0, 0, ())
    assert leader.phase is Phase.OPEN


@pytest.mark.parametrize("nnodes", [2, 3])
def test_nothing_starts_until_every_pod_is_ready(nnodes: int) -> None:
    leader = make(nnodes)
    join_all(leader)
    for node in range(nnodes - 1):
        assert leader.pod_ready(node, 0) == []
    start = started(leader.pod_ready(nnodes - 1, 0))
    assert start == StartGeneration(
        generation=0,
        restart_count=0,
        master_addr=MASTER,
        master_port=FIRST_PORT,
        world_size=nnodes * NPROC,
        nnodes=nnodes,
        history=(),
        restore_step=-1,
        restore_reason="no snapshot saved yet: the script starts from its beginning",
    )
    assert leader.phase is Phase.RUNNING


def test_the_join_order_does_not_matter() -> None:
    leader = make(3)
    assert leader.join(2, NPROC, None, 0.0) == []
    assert leader.join(0, NPROC, None, 0.0) == []
    assert opened(leader.join(1, NPROC, None, 0.0)).generation == 0


def test_ready_before_the_generation_opens_does_not_count() -> None:
    leader = make(2)
    leader.join(0, NPROC, None, 0.0)
    assert leader.pod_ready(0, 0) == []  # still forming
    opened(leader.join(1, NPROC, None, 0.0))
    assert leader.pod_ready(1, 0) == []  # pod 0 must report again
    started(leader.pod_ready(0, 0))


def test_ready_twice_counts_once() -> None:
    leader = make(2)
    join_all(leader)
    assert leader.pod_ready(0, 0) == []
    assert leader.pod_ready(0, 0) == []
    started(leader.pod_ready(1, 0))


def test_ready_for_another_generation_or_from_a_stranger_is_ignored() -> None:
    leader = make(2)
    leader.join(0, NPROC, None, 0.0)
    opened(leader.join(1, NPROC, None, 0.0))
    assert leader.pod_ready(0, 1) == []
    assert leader.pod_ready(1, -1) == []
    assert leader.pod_ready(0, 0) == []
    assert leader.pod_ready(1, 1) == []
    started(leader.pod_ready(1, 0))


def test_ready_after_the_start_changes_nothing() -> None:
    leader = formed(2)
    assert leader.pod_ready(0, 0) == []
    assert leader.phase is Phase.RUNNING


@pytest.mark.parametrize(("node", "nproc"), [(-1, NPROC), (2, NPROC), (0, NPROC + 1), (1, 1)])
def test_a_pod_that_cannot_be_part_of_the_job_is_refused(node: int, nproc: int) -> None:
    leader = make(2)
    with pytest.raises(JoinRefused):
        leader.join(node, nproc, None, 0.0)
    assert leader.members == {}


def test_a_bad_layout_is_refused() -> None:
    with pytest.raises(ValueError):
        LeaderState(0, NPROC, RestartPolicy(3), lambda: 1, MASTER)
    with pytest.raises(ValueError):
        LeaderState(2, 0, RestartPolicy(3), lambda: 1, MASTER)


def test_every_generation_gets_a_fresh_port() -> None:
    leader = formed(2)
    ports = [leader.master_port]
    for generation in range(1, 4):
        opened(
            leader.failure(1, generation - 1, fail(2, step=generation, signature=f"e{generation}"))
        )
        assert leader.master_port == 0  # no port while no generation runs
        ports.append(started(ready_all(leader, generation)).master_port)
    assert ports == [FIRST_PORT, FIRST_PORT + 1, FIRST_PORT + 2, FIRST_PORT + 3]


# ------------------------------------------------------------------ failures
def test_a_failure_on_pod_1_opens_the_next_generation_everywhere() -> None:
    leader = formed(2)
    failure = fail(rank=3)
    message = opened(leader.failure(1, 0, failure))
    assert (message.generation, message.restart_count) == (1, 1)
    assert message.history == (failure,)
    assert "rank 3 on node 1" in message.reason and SIG in message.reason
    assert (leader.generation, leader.restart_count, leader.phase) == (1, 1, Phase.OPEN)
    assert leader.pod_ready(0, 1) == []
    start = started(leader.pod_ready(1, 1))
    assert (start.generation, start.restart_count, start.world_size) == (1, 1, 4)
    assert start.history == (failure,)


def test_the_failure_generation_argument_is_authoritative() -> None:
    leader = formed(2)
    opened(leader.failure(1, 0, fail(rank=3, generation=7)))
    assert leader.history == [fail(rank=3, generation=0)]


def test_two_failures_in_one_generation_spend_one_restart() -> None:
    leader = formed(2)
    opened(leader.failure(1, 0, fail(rank=3)))
    assert leader.failure(0, 0, fail(rank=0, signature=OTHER)) == []  # an echo, or died together
    assert (leader.generation, leader.restart_count) == (1, 1)
    assert leader.history == [fail(rank=3), fail(rank=0, signature=OTHER)]
    started(ready_all(leader, 1))  # the late report did not disturb the open generation


def test_every_rank_hitting_one_bug_together_is_no_crash_loop() -> None:
    # 4 ranks x the same error at the same step: one generation, not three in a row.
    leader = formed(2, threshold=3)
    effects = [leader.failure(rank // NPROC, 0, fail(rank)) for rank in (3, 0, 1, 2)]
    assert opened(effects[0]).generation == 1
    assert effects[1:] == [[], [], []]
    assert leader.end is None
    assert len(leader.history) == 4


def test_duplicates_do_not_hasten_a_crash_loop() -> None:
    leader = formed(2, threshold=3, max_restarts=10)
    for generation in (0, 1):
        opened(leader.failure(1, generation, fail(rank=2)))
        leader.failure(0, generation, fail(rank=0))
        leader.failure(0, generation, fail(rank=1))
        started(ready_all(leader, generation + 1))
    assert leader.end is None  # two generations in a row only
    # The third of rank 2 (rank 3 here was one loop with rank 2 before issue 21: the rule
    # keyed on the signature only).
    ended(leader.failure(1, 2, fail(rank=2)))


def test_a_repeated_report_is_kept_once() -> None:
    leader = formed(2)
    opened(leader.failure(1, 0, fail(rank=3)))
    leader.failure(1, 0, fail(rank=3))
    leader.failure(0, 0, fail(rank=0))
    leader.failure(0, 0, fail(rank=0))
    assert leader.history == [fail(rank=3), fail(rank=0)]


def test_context_per_generation_is_bounded() -> None:
    leader = formed(2)
    opened(leader.failure(1, 0, fail(rank=3)))
    for step in range(50):
        leader.failure(0, 0, fail(rank=0, step=step))
    assert len(leader.history) == MAX_FAILURES_PER_GENERATION


def test_a_stale_failure_is_ignored() -> None:
    leader = formed(2)
    opened(leader.failure(1, 0, fail(rank=3)))
    started(ready_all(leader, 1))
    opened(leader.failure(1, 1, fail(rank=2, signature=OTHER)))
    started(ready_all(leader, 2))
    history = list(leader.history)
    assert leader.failure(0, 0, fail(rank=0)) == []  # two generations old
    assert leader.failure(0, 5, fail(rank=0)) == []  # a generation that never existed
    assert (leader.generation, leader.restart_count, leader.history) == (2, 2, history)


def test_a_failure_from_a_pod_that_is_not_a_member_is_ignored() -> None:
    leader = formed(3)
    opened(died(leader, 2, now=1.0))
    assert leader.failure(2, 1, fail(rank=4)) == []
    assert leader.restart_count == 1


def test_a_failure_while_forming_is_ignored() -> None:
    leader = make(2)
    leader.join(0, NPROC, None, 0.0)
    assert leader.failure(0, 0, fail(rank=0)) == []
    assert leader.history == []


def test_a_failure_of_the_open_generation_before_it_starts_counts() -> None:
    # An idle rank died: as on one pod, a real failure, so a pod whose processes
    # die before every start spends the budget instead of looping for ever.
    leader = formed(2)
    opened(leader.failure(1, 0, fail(rank=3)))
    leader.pod_ready(0, 1)
    message = opened(leader.failure(0, 1, fail(rank=1, signature=OTHER, generation=1)))
    assert (message.generation, message.restart_count) == (2, 2)
    assert leader.pod_ready(1, 2) == []  # the ready for generation 1 is gone
    started(leader.pod_ready(0, 2))


# ------------------------------------------------------------------ endings
def test_a_crash_loop_across_generations_gives_up_with_a_report() -> None:
    leader = formed(2, threshold=3, max_restarts=10)
    for generation in (0, 1):
        opened(leader.failure(1, generation, fail(rank=3, step=5)))
        started(ready_all(leader, generation + 1))
    end = ended(leader.failure(1, 2, fail(rank=3, step=4)))
    assert end.exit_code == exit_codes.GAVE_UP == 3
    for part in ("crash loop", "rank: 3", "node: 1", "step: 4", SIG):
        assert part in end.report
    assert leader.phase is Phase.ENDED
    assert leader.restart_count == 2  # giving up spends nothing


def test_progress_between_failures_is_no_crash_loop() -> None:
    leader = formed(2, threshold=3, max_restarts=10)
    for generation, step in enumerate((5, 6, 7)):
        opened(leader.failure(1, generation, fail(rank=3, step=step)))
        started(ready_all(leader, generation + 1))
    assert leader.end is None


def test_a_failure_whose_class_says_stop_gives_the_job_up_with_the_pods_reason() -> None:
    leader = formed(2, max_restarts=10)
    why = "out of memory 3 times on this rank (last: the kernel OOM killer)"
    oom = dataclasses.replace(
        fail(rank=3, signature="SIGKILL"),
        failure_class="out_of_memory",
        action=Action.STOP_JOB,
        reason=why,
    )
    end = ended(leader.failure(1, 0, oom))
    assert end.exit_code == exit_codes.GAVE_UP
    assert end.report.startswith(f"job given up: rank 3: {why}\n")
    for part in ("node: 1", "error: SIGKILL", f"class: out_of_memory ({why})"):
        assert part in end.report
    assert leader.restart_count == 0 and leader.phase is Phase.ENDED


def test_a_spent_budget_gives_up() -> None:
    leader = formed(2, max_restarts=1)
    opened(leader.failure(1, 0, fail(rank=3)))
    started(ready_all(leader, 1))
    end = ended(leader.failure(0, 1, fail(rank=1, step=9, signature=OTHER)))
    assert end.exit_code == exit_codes.GAVE_UP
    for part in ("restart budget spent", "rank: 1", "node: 0", "step: 9", OTHER, "1 of 1"):
        assert part in end.report


def test_no_budget_gives_up_at_the_first_failure() -> None:
    leader = formed(2, max_restarts=0)
    assert ended(leader.failure(1, 0, fail(rank=3))).exit_code == exit_codes.GAVE_UP
    assert leader.restart_count == 0


def test_all_pods_finished_ends_the_job() -> None:
    leader = formed(3)
    assert leader.pod_finished(0, 0) == []
    assert leader.pod_finished(2, 0) == []
    assert leader.pod_finished(2, 0) == []  # counted once
    end = ended(leader.pod_finished(1, 0))
    assert end.exit_code == exit_codes.SUCCEEDED == 0
    assert leader.phase is Phase.ENDED


def test_finished_before_the_start_or_for_another_generation_is_ignored() -> None:
    leader = make(2)
    join_all(leader)
    assert leader.pod_finished(0, 0) == []
    assert leader.pod_finished(1, 0) == []
    started(ready_all(leader, 0))
    assert leader.pod_finished(0, 1) == []
    assert leader.pod_finished(0, 0) == []
    ended(leader.pod_finished(1, 0))


def test_a_failure_after_some_pods_finished_runs_them_again() -> None:
    leader = formed(2)
    leader.pod_finished(0, 0)
    opened(leader.failure(1, 0, fail(rank=3)))
    started(ready_all(leader, 1))
    assert leader.pod_finished(1, 1) == []  # pod 0's finish was for generation 0
    ended(leader.pod_finished(0, 1))


def test_after_the_end_nothing_changes_and_late_joiners_hear_it_again() -> None:
    leader = formed(2, max_restarts=0)
    end = ended(leader.failure(1, 0, fail(rank=3)))
    assert leader.failure(0, 0, fail(rank=0)) == []
    assert leader.pod_ready(0, 0) == []
    assert leader.pod_finished(0, 0) == []
    assert died(leader, 1, 1.0) == []
    assert leader.tick(1_000.0) == []
    assert not leader.heartbeat(0, 1.0)  # re-join to hear the end
    assert ended(leader.join(1, NPROC, None, 2.0), target=1) == end
    assert ended(leader.join(0, NPROC, None, 2.0), target=0) == end
    assert (leader.phase, leader.restart_count, leader.generation) == (Phase.ENDED, 0, 0)


# ----------------------------------------------------------------- lost pods
def test_a_pod_silent_past_the_timeout_is_lost_and_the_job_waits_for_it() -> None:
    leader = formed(2, timeout=10.0)
    heartbeat_all_but(leader, silent=1, now=5.0)
    assert leader.tick(10.0) == []  # exactly the timeout: not older than it
    heartbeat_all_but(leader, silent=1, now=10.0)
    message = opened(leader.tick(10.5))
    assert (message.generation, message.restart_count) == (1, 1)
    assert message.history == (Failure(0, 2, POD_LOST, 0),)
    assert "node 1 lost" in message.reason and "heartbeat" in message.reason
    assert leader.view(10.5).missing == (1,)
    assert leader.pod_ready(0, 1) == []  # survivors wait in place
    assert not leader.heartbeat(1, 11.0)  # the lost pod must re-join
    rejoin = only(leader.join(1, NPROC, None, 20.0), target=1)
    assert rejoin == message
    start = started(leader.pod_ready(1, 1))
    assert (start.generation, start.restart_count) == (1, 1)


def test_a_heartbeat_keeps_a_pod() -> None:
    leader = formed(2, timeout=10.0)
    for now in (9.0, 18.0, 27.0):
        assert leader.heartbeat(0, now) and leader.heartbeat(1, now)
        assert leader.tick(now + 9.0) == []
    assert leader.phase is Phase.RUNNING


def test_a_broken_stream_loses_the_pod_at_once() -> None:
    leader = formed(2)
    message = opened(died(leader, 1, now=0.1))
    assert (message.generation, message.restart_count) == (1, 1)
    assert "stream lost" in message.reason
    assert leader.pod_ready(0, 1) == []
    only(leader.join(1, NPROC, None, 5.0), target=1)
    started(leader.pod_ready(1, 1))


def test_the_loss_of_an_old_stream_after_a_rejoin_changes_nothing() -> None:
    leader = make(2)
    leader.join(0, NPROC, None, 0.0, incarnation=1)
    leader.join(1, NPROC, None, 0.0, incarnation=2)
    started(ready_all(leader, 0))
    opened(died(leader, 1, 1.0, incarnation=2))
    leader.join(1, NPROC, None, 2.0, incarnation=3)
    assert died(leader, 1, 2.1, incarnation=2) == []  # the old stream's teardown
    assert 1 in leader.members
    assert died(leader, 1, 2.2, incarnation=3) == []  # lost while no generation runs
    assert 1 not in leader.members


def test_a_pod_unknown_to_the_leader_cannot_be_lost() -> None:
    leader = formed(2)
    died(leader, 1, 1.0)
    assert died(leader, 1, 1.1) == []
    assert leader.restart_count == 1


def test_two_pods_lost_together_spend_one_restart() -> None:
    leader = formed(3, timeout=10.0)
    leader.heartbeat(0, 8.0)
    message = opened(leader.tick(11.0))
    assert (message.generation, message.restart_count) == (1, 1)
    assert leader.history == [Failure(0, 2, POD_LOST, 0), Failure(0, 4, POD_LOST, 0)]
    assert leader.view(11.0).missing == (1, 2)


def test_a_pod_lost_between_generations_spends_no_restart() -> None:
    # A pod killed whole: a survivor's echo is often reported before its stream breaks.
    leader = formed(2)
    opened(leader.failure(0, 0, fail(rank=0, signature=OTHER)))
    assert died(leader, 1, 1.0) == []
    assert (leader.generation, leader.restart_count) == (1, 1)
    assert leader.history[-1] == Failure(0, 2, POD_LOST, 0)  # context of generation 0
    only(leader.join(1, NPROC, None, 2.0), target=1)
    started(ready_all(leader, 1))


def test_a_pod_lost_before_the_first_start_interrupts_nothing() -> None:
    leader = make(2)
    join_all(leader)
    leader.pod_ready(1, 0)
    assert died(leader, 1, 1.0) == []
    assert (leader.restart_count, leader.history) == (0, [])
    assert leader.pod_ready(0, 0) == []
    only(leader.join(1, NPROC, None, 2.0), target=1)
    assert leader.pod_ready(0, 0) == []  # already counted
    started(leader.pod_ready(1, 0))  # the new incarnation must report again


def test_a_pod_lost_while_forming_is_waited_for() -> None:
    leader = make(2, timeout=10.0)
    leader.join(1, NPROC, None, 0.0)
    assert leader.tick(11.0) == []
    assert leader.join(0, NPROC, None, 11.0) == []  # pod 1 is gone: not formed yet
    opened(leader.join(1, NPROC, None, 12.0))


def test_lost_pods_never_make_a_crash_loop() -> None:
    leader = formed(2, threshold=3, max_restarts=10)
    for generation in range(4):
        opened(died(leader, 1, float(generation)))
        leader.join(1, NPROC, None, float(generation))
        started(ready_all(leader, generation + 1))
    assert (leader.end, leader.restart_count) == (None, 4)


def test_a_lost_pod_breaks_a_run_of_one_error() -> None:
    leader = formed(2, threshold=3, max_restarts=10)
    opened(leader.failure(1, 0, fail(rank=3)))
    started(ready_all(leader, 1))
    opened(died(leader, 1, 1.0))
    leader.join(1, NPROC, None, 1.0)
    started(ready_all(leader, 2))
    opened(leader.failure(1, 2, fail(rank=3)))  # two of one error, not in a row
    started(ready_all(leader, 3))
    opened(leader.failure(1, 3, fail(rank=3)))  # two in a row since the loss
    started(ready_all(leader, 4))
    ended(leader.failure(1, 4, fail(rank=3)))  # the third in a row


def test_lost_pods_spend_the_budget() -> None:
    leader = formed(2, max_restarts=1)
    opened(died(leader, 1, 1.0))
    leader.join(1, NPROC, None, 2.0)
    started(ready_all(leader, 1))
    end = ended(died(leader, 1, 3.0))
    assert end.exit_code == exit_codes.GAVE_UP
    for part in ("restart budget spent", "rank: 2", "node: 1", "step: unknown", POD_LOST):
        assert part in end.report


def test_a_pod_rejoining_while_still_live_is_lost_first() -> None:
    leader = formed(2)
    effects = leader.join(1, NPROC, None, 3.0)  # its replacement beat the timeout
    assert [e.target for e in effects] == [None, 1]
    assert effects[0].message == effects[1].message  # pods ignore a repeated Open
    message = opened(effects[:1])
    assert (message.generation, message.restart_count) == (1, 1)
    assert "re-joined" in message.reason
    started(ready_all(leader, 1))


def test_a_rejoin_while_open_needs_a_new_ready() -> None:
    leader = formed(2)
    opened(leader.failure(0, 0, fail(rank=0)))
    leader.pod_ready(1, 1)
    only(leader.join(1, NPROC, None, 1.0), target=1)
    assert leader.restart_count == 1
    assert leader.pod_ready(0, 1) == []
    started(leader.pod_ready(1, 1))


def test_a_rejoin_while_live_with_the_budget_spent_ends_the_job() -> None:
    leader = formed(2, max_restarts=0)
    effects = leader.join(1, NPROC, None, 1.0)
    assert [e.target for e in effects] == [None, 1]
    assert all(isinstance(e.message, EndJob) for e in effects)


# ---------------------------------------------------------- leader replacement
def followed(effects: Sequence[Broadcast], view: Optional[PodView] = None) -> Optional[PodView]:
    for effect in effects:
        view = follow(view, effect.message)
    return view


def job_at_generation_2() -> tuple[LeaderState, PodView]:
    """A 2-pod job that restarted twice; pod 1's view as it kept it."""
    leader = make(2, max_restarts=5)
    view = followed(join_all(leader))
    view = followed(ready_all(leader, 0), view)
    view = followed(leader.failure(1, 0, fail(rank=3, step=5)), view)
    leader.failure(0, 0, fail(rank=0, step=5, signature=OTHER))  # context
    view = followed(ready_all(leader, 1), view)
    view = followed(leader.failure(0, 1, fail(rank=1, step=8, signature=OTHER)), view)
    view = followed(ready_all(leader, 2), view)
    assert view is not None
    assert view == leader.pod_view()
    return leader, view


def test_a_follower_keeps_what_the_leader_knows() -> None:
    leader, view = job_at_generation_2()
    assert (view.generation, view.restart_count, view.finished) == (2, 2, False)
    assert view.history == tuple(leader.history)
    assert len(view.history) == 3


def test_a_new_leader_waits_for_every_pod_then_continues_the_count() -> None:
    old, view = job_at_generation_2()
    leader = make(2, max_restarts=5)
    assert leader.join(1, NPROC, view, 100.0) == []  # the leader pod has not joined
    assert leader.phase is Phase.FORMING
    message = opened(leader.join(0, NPROC, None, 101.0))
    assert (message.generation, message.restart_count) == (3, 3)  # neither is reset
    assert message.history == (*old.history, Failure(2, 0, POD_LOST, 0))
    assert "leader replaced" in message.reason
    assert leader.pod_ready(1, 3) == []
    start = started(leader.pod_ready(0, 3))
    assert (start.generation, start.restart_count, start.master_port) == (3, 3, FIRST_PORT)


def test_a_new_leader_does_not_act_until_the_last_pod_joined() -> None:
    _, view = job_at_generation_2()
    leader = make(3, max_restarts=5)
    assert leader.join(0, NPROC, None, 0.0) == []
    assert leader.join(2, NPROC, view, 0.0) == []
    assert leader.pod_ready(2, 2) == [] and leader.pod_ready(2, 3) == []
    assert leader.failure(2, 2, fail(rank=4)) == []
    assert leader.pod_finished(2, 2) == []
    assert leader.phase is Phase.FORMING
    assert opened(leader.join(1, NPROC, view, 0.0)).generation == 3


def test_a_rebuild_takes_the_newest_view() -> None:
    newest = PodView(7, 4, (fail(0, generation=5), fail(2, generation=6)))
    lagging = PodView(6, 3, (fail(0, generation=5),))  # missed the last Open
    leader = make(3, max_restarts=10)
    leader.join(1, NPROC, lagging, 0.0)
    leader.join(2, NPROC, newest, 0.0)
    message = opened(leader.join(0, NPROC, None, 0.0))
    assert (message.generation, message.restart_count) == (8, 5)
    assert message.history == (*newest.history, Failure(7, 0, POD_LOST, 0))


def test_a_rebuild_records_every_replaced_pod_but_restarts_once() -> None:
    leader = make(3, max_restarts=10)
    leader.join(1, NPROC, None, 0.0)  # replaced together with the leader pod
    leader.join(2, NPROC, PodView(4, 2, ()), 0.0)
    message = opened(leader.join(0, NPROC, None, 0.0))
    assert (message.generation, message.restart_count) == (5, 3)
    assert message.history == (Failure(4, 0, POD_LOST, 0), Failure(4, 2, POD_LOST, 0))


def test_a_rebuild_with_the_budget_spent_gives_up() -> None:
    leader = make(2, max_restarts=2)
    leader.join(1, NPROC, PodView(2, 2, (fail(3), fail(1, generation=1))), 0.0)
    end = ended(leader.join(0, NPROC, None, 0.0))
    assert end.exit_code == exit_codes.GAVE_UP
    assert "restart budget spent" in end.report and "node: 0" in end.report


def test_a_rebuild_with_no_view_given_back_is_a_new_job() -> None:
    leader = make(2)
    message = opened(join_all(leader))
    assert (message.generation, message.restart_count, message.history) == (0, 0, ())


def test_a_view_given_while_forming_survives_the_pods_loss() -> None:
    leader = make(2, timeout=10.0, max_restarts=10)
    leader.join(1, NPROC, PodView(4, 3, ()), 0.0)
    leader.tick(20.0)
    leader.join(1, NPROC, None, 21.0)  # came back with new processes
    message = opened(leader.join(0, NPROC, None, 21.0))
    assert (message.generation, message.restart_count) == (5, 4)


def test_a_job_every_pod_had_finished_ends_without_a_restart() -> None:
    done = PodView(3, 2, (fail(3),), finished=True)
    leader = make(2)
    leader.join(1, NPROC, done, 0.0)
    assert ended(leader.join(0, NPROC, done, 0.0)).exit_code == exit_codes.SUCCEEDED
    assert leader.restart_count == 2


def test_a_new_leader_pod_runs_the_last_generation_again() -> None:
    # Followers finished, but node 0's ranks are new: rank 0 may not have saved
    # the final model. The script resumes from its checkpoint and ends at once.
    leader = make(2)
    leader.join(1, NPROC, PodView(3, 2, (), finished=True), 0.0)
    message = opened(leader.join(0, NPROC, None, 0.0))
    assert (message.generation, message.restart_count) == (4, 3)


def test_the_crash_loop_rule_continues_across_a_rebuild() -> None:
    history = (fail(3, generation=0), fail(3, generation=1))
    leader = make(2, threshold=3, max_restarts=10)
    leader.join(1, NPROC, PodView(2, 2, history), 0.0)
    opened(leader.join(0, NPROC, None, 0.0))
    started(ready_all(leader, 3))
    opened(leader.failure(1, 3, fail(3)))  # the leader's loss broke the run
    started(ready_all(leader, 4))
    opened(leader.failure(1, 4, fail(3)))
    started(ready_all(leader, 5))
    end = ended(leader.failure(1, 5, fail(3)))
    assert "crash loop" in end.report


# --------------------------------------------------------------- follower view
def test_follow_adopts_open_and_start() -> None:
    open_ = OpenGeneration(2, 1, "why", (fail(3),))
    view = follow(None, open_)
    assert view == PodView(2, 1, (fail(3),), finished=False)
    start = StartGeneration(2, 1, MASTER, 1, 4, 2, (fail(3), fail(0)))
    assert follow(view, start) == PodView(2, 1, (fail(3), fail(0)), finished=False)


def test_follow_ignores_the_end_and_older_generations() -> None:
    view = PodView(3, 2, ())
    assert follow(view, EndJob(0, "done")) == view
    assert follow(None, EndJob(0, "done")) is None
    assert follow(view, OpenGeneration(2, 1, "late", ())) == view


def test_finished_survives_a_repeated_start_not_an_open() -> None:
    view = mark_finished(PodView(3, 2, ()))
    assert follow(view, StartGeneration(3, 2, MASTER, 1, 4, 2)) == view
    assert follow(view, OpenGeneration(3, 2, "again")) == PodView(3, 2, (), finished=False)
    assert follow(view, StartGeneration(4, 3, MASTER, 1, 4, 2)) == PodView(4, 3, ())


def test_pod_view_says_which_pods_finished() -> None:
    leader = formed(2)
    leader.pod_finished(1, 0)
    assert leader.pod_view(1).finished and not leader.pod_view(0).finished
    assert not leader.pod_view().finished


def test_policy_history_keeps_every_failure_and_blanks_lost_pods() -> None:
    # It kept only the first failure of each generation while the crash-loop rule keyed on
    # the signature alone; keyed on the rank (issue 21), it needs every rank's failure, and
    # counts each rank once per generation.
    history = [
        fail(3, generation=0),
        fail(0, generation=0, signature=OTHER),
        Failure(1, 2, POD_LOST, 0),
        Failure(1, 0, POD_LOST, 0),
        fail(1, generation=2),
    ]
    assert policy_history(history) == [
        fail(3, generation=0),
        fail(0, generation=0, signature=OTHER),
        Failure(1, 2, "", 0),
        Failure(1, 0, "", 0),
        fail(1, generation=2),
    ]


def test_one_bug_on_every_rank_loops_whichever_rank_reports_first() -> None:
    """The first report of each generation comes from another rank; every rank's own
    failures (kept as context) make the loop."""
    leader = formed(2, threshold=3, max_restarts=10)
    for generation, first in enumerate((3, 2)):
        opened(leader.failure(first // NPROC, generation, fail(rank=first)))
        for rank in (0, 1, 2, 3):
            if rank != first:
                leader.failure(rank // NPROC, generation, fail(rank=rank))
        started(ready_all(leader, generation + 1))
    end = ended(leader.failure(0, 2, fail(rank=1)))
    assert "crash loop: rank 1 failed 3 times" in end.report


def test_kills_on_two_ranks_with_progress_restart_within_the_budget() -> None:
    """Issue 21's run on two pods: ranks 1, 0, 1 killed at job steps 30, 45, 60."""
    leader = formed(2, threshold=3, max_restarts=3)
    for generation, (rank, step) in enumerate(((3, 30), (0, 45), (3, 60))):
        failure = Failure(generation, rank, "SIGKILL", step)
        opened(leader.failure(rank // NPROC, generation, failure))
        started(ready_all(leader, generation + 1))
    assert (leader.end, leader.restart_count) == (None, 3)


# -------------------------------------------------------------------- status
def test_the_view_shows_the_whole_job() -> None:
    leader = make(3)
    leader.join(0, NPROC, None, 0.0)
    leader.join(2, NPROC, None, 1.0)
    view = leader.view(4.0)
    assert (view.phase, view.missing, view.world_size) == (Phase.FORMING, (1,), 6)
    assert [(m.node_rank, m.first_rank, m.heartbeat_age_s) for m in view.members] == [
        (0, 0, 4.0),
        (2, 4, 3.0),
    ]
    leader.join(1, NPROC, None, 4.0)
    leader.pod_ready(1, 0)
    assert [m.ready for m in leader.view(4.0).members] == [False, True, False]
    ready_all(leader, 0)
    leader.pod_finished(2, 0)
    view = leader.view(5.0)
    assert (view.phase, view.master_port, view.master_addr) == (Phase.RUNNING, FIRST_PORT, MASTER)
    assert [m.finished for m in view.members] == [False, False, True]
    assert (view.leader_address, view.max_restarts, view.end) == ("job-0.job-svc:29400", 3, None)
    leader.failure(0, 0, fail(0))
    view = leader.view(5.0)
    assert (view.generation, view.restart_count, view.history) == (1, 1, (fail(0),))
    assert [m.finished for m in view.members] == [False, False, False]


def test_the_view_carries_the_end() -> None:
    leader = formed(2)
    end = ended(ready_all(leader, 0) + leader.pod_finished(0, 0) + leader.pod_finished(1, 0))
    assert leader.view(1.0).end == end
    assert leader.view(1.0).phase is Phase.ENDED


# --------------------------------------------------------------------- scale
def test_a_thousand_pods_form_one_generation() -> None:
    nnodes = 1000
    leader = make(nnodes)
    effects: list[Broadcast] = []
    for node in range(nnodes):
        effects += leader.join(node, NPROC, None, 0.0)
        assert leader.heartbeat(node, 0.5)
    assert opened(effects).generation == 0
    effects = ready_all(leader, 0)
    start = started(effects)
    assert (start.world_size, start.nnodes) == (nnodes * NPROC, nnodes)
    assert leader.tick(5.0) == []
    assert opened(died(leader, 999, 6.0)).generation == 1
    assert dataclasses.replace(leader.view(6.0), members=()).missing == (999,)


# ------------------------------------------------------------------ snapshots
def test_a_snapshot_step_commits_once_every_pod_holds_it() -> None:
    leader = formed(2)
    assert leader.pod_snapshots(0, 0, [5]) == []
    assert only(leader.pod_snapshots(1, 0, [4, 5])) == CommitStep(generation=0, step=5)
    assert leader.pod_snapshots(1, 0, [5]) == []  # a repeat commits nothing new
    # The next generation starts from it, on every pod.
    opened(leader.failure(1, 0, fail(rank=3)))
    assert started(ready_all(leader, 1)).restore_step == 5


def test_what_a_pod_finds_of_the_stopped_generation_counts_until_the_next_start() -> None:
    """The failure was on pod 0; pod 1 reports, when the Open comes, what its ranks had copied
    but not reported yet: the step the next generation restores (one step lost, not two)."""
    leader = formed(2)
    assert leader.pod_snapshots(0, 0, [4, 5]) == []  # pod 0's own, before its failure report
    opened(leader.failure(0, 0, fail(rank=1)))
    assert leader.pod_snapshots(1, 0, [4, 5]) == []  # no CommitStep: no round while open
    assert leader.snapshots.committed == 5
    assert started(ready_all(leader, 1)).restore_step == 5


def test_snapshots_of_another_generation_or_while_not_running_do_not_count() -> None:
    leader = formed(2)
    assert leader.pod_snapshots(0, 0, [5]) == []
    opened(leader.failure(1, 0, fail(rank=3)))
    assert leader.pod_snapshots(1, 1, [5]) == []  # open, not running
    assert leader.pod_snapshots(1, -1, [5]) == []  # never ran
    started(ready_all(leader, 1))
    assert leader.pod_snapshots(1, 0, [5]) == []  # generation 1 started: 0's steps are void
    assert leader.pod_snapshots(0, 1, []) == []
    assert leader.snapshots.committed == -1


def test_a_lost_pod_forgets_the_committed_step() -> None:
    """Its replacement's shared memory is empty: nobody restores a step it cannot have."""
    leader = formed(2)
    leader.pod_snapshots(0, 0, [5])
    only(leader.pod_snapshots(1, 0, [5]))
    opened(died(leader, 1, now=1.0))
    leader.join(1, NPROC, None, 2.0)
    assert started(ready_all(leader, 1)).restore_step == -1
