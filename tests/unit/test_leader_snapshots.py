"""The leader's snapshot bookkeeping: commits, job-wide offload rounds, the restore choice."""

from __future__ import annotations

import itertools

from supervisor.rules.leader import (
    CommitStep,
    LeaderState,
    OpenGeneration,
    PodView,
    StartGeneration,
)
from supervisor.rules.restart_policy import RestartPolicy
from supervisor.snapshots.job_snapshots import JobSnapshots
from supervisor.snapshots.restore import DURABLE, PEER, SHM, NodeCopies
from supervisor.snapshots.rounds import OffloadRound, OffloadRounds
from train_supervisor.steps import NO_STEP


def snapshots(nnodes: int = 2, persist: bool = False) -> JobSnapshots:
    rounds = OffloadRounds(replicate=True, persist=persist, every_steps=10)
    return JobSnapshots(nnodes, rounds)


def test_a_commit_starts_a_round_and_the_round_ends_when_every_pod_reported() -> None:
    job = snapshots(persist=True)
    assert job.held(0, [3], now=0.0) is None, "pod 1 has not reported: nothing committed"
    news = job.held(1, [3], now=0.0)
    assert news is not None and news.committed == 3
    assert news.offload == OffloadRound(3, replicate=True, persist=True), "the first is persisted"
    moved = job.held(0, [3, 4], now=0.1)
    assert moved is None, "pod 1 lacks step 4"
    news = job.held(1, [3, 4], now=0.1)
    assert news is not None and news.committed == 4 and news.offload is None, "one round at a time"
    assert job.offloaded(0, 3, "", "", now=0.2) is None, "pod 1 has not finished it"
    done = job.offloaded(1, 3, "UNAVAILABLE: pod 0 gone", "", now=0.3)
    assert done is not None and done.offload == OffloadRound(4, True, False), "the newest next"
    assert (done.replicated, done.persisted) == (NO_STEP, 3)
    assert job.rounds.errors == {"replica": "node 1: UNAVAILABLE: pod 0 gone"}


def test_a_lost_pod_restores_the_step_its_replica_holds_and_the_rest_from_memory() -> None:
    job = snapshots()
    for node in (0, 1):
        job.held(node, [5, 6], now=0.0)
    job.pod_copies(0, NodeCopies(shm=frozenset({4, 5, 6}), replicas={1: frozenset({3, 4})}))
    job.pod_copies(1, NodeCopies(shm=frozenset({4, 5, 6}), replicas={0: frozenset({3, 4})}))
    job.lost(1)
    # The replacement holds nothing in memory, and pod 0's replica is gone with the old pod 1.
    job.pod_copies(1, NodeCopies(persisted=frozenset({2})))
    choice = job.choose([0, 1])
    assert (choice.step, choice.sources) == (4, {0: SHM, 1: PEER})
    assert job.committed == 4, "the commit moves back to what every rank restores"


def test_a_step_that_failed_on_a_pod_is_not_chosen_again() -> None:
    job = snapshots()
    copies = NodeCopies(shm=frozenset({6}), persisted=frozenset({2}))
    for node in (0, 1):
        job.held(node, [6], now=0.0)
        job.pod_copies(node, copies)
    assert job.choose([0, 1]).step == 6
    job.restore_failed(1, 6)
    choice = job.choose([0, 1])
    assert (choice.step, choice.sources) == (2, {0: DURABLE, 1: DURABLE})


def test_the_leader_restarts_a_generation_whose_restore_failed_without_that_step() -> None:
    ports = itertools.count(40000)
    leader = LeaderState(2, 2, RestartPolicy(max_restarts=3), lambda: next(ports), "node-0")
    for node in (0, 1):
        leader.join(node, 2, None, now=0.0)
        leader.pod_copies(node, NodeCopies(persisted=frozenset({5})))
    for node in (0, 1):
        start = [b.message for b in leader.pod_ready(node, 0)]
    [first] = start
    assert isinstance(first, StartGeneration) and first.restore_step == 5
    assert "durable: nodes 0,1" in first.restore_reason
    [opened] = [b.message for b in leader.restore_failed(1, 0, 5, "checksum mismatch")]
    assert isinstance(opened, OpenGeneration) and "could not restore step 5" in opened.reason
    for node in (0, 1):
        start = [b.message for b in leader.pod_ready(node, 1)]
    [second] = start
    assert isinstance(second, StartGeneration) and second.restore_step == NO_STEP


def test_rounds_reach_the_pods_in_the_commit_message() -> None:
    ports = itertools.count(40000)
    rounds = OffloadRounds(replicate=True, persist=False)
    leader = LeaderState(
        2, 2, RestartPolicy(max_restarts=3), lambda: next(ports), "node-0", rounds=rounds
    )
    for node in (0, 1):
        leader.join(node, 2, None, now=0.0)
    for node in (0, 1):
        leader.pod_ready(node, 0)
    leader.pod_snapshots(0, 0, [1], now=0.0)
    [commit] = [b.message for b in leader.pod_snapshots(1, 0, [1], now=0.0)]
    assert commit == CommitStep(0, 1, OffloadRound(1, True, False), NO_STEP, NO_STEP)
    leader.pod_offloaded(0, 1, "", "", now=0.1)
    leader.pod_snapshots(0, 0, [1, 2], now=0.1)
    leader.pod_snapshots(1, 0, [1, 2], now=0.1)
    [done] = [b.message for b in leader.pod_offloaded(1, 1, "", "", now=0.2)]
    assert done == CommitStep(0, 2, OffloadRound(2, True, False), 1, NO_STEP)


def test_a_round_not_every_pod_persisted_tells_every_pod_to_drop_its_part() -> None:
    """A full disk on one pod: the other's part of the step is no step anyone can restore
    (and on a shared disk it kept it full): the round's end says to drop it."""
    job = snapshots(persist=True)
    job.held(0, [3], now=0.0)
    news = job.held(1, [3], now=0.0)
    assert news is not None and news.offload == OffloadRound(3, True, True)
    job.offloaded(0, 3, "", "", now=0.1)
    done = job.offloaded(1, 3, "", "node-1/step-000000000003.tmp-9: No space left (ENOSPC)", 0.2)
    assert done is not None and done.drop_persisted == (3,) and done.persisted == NO_STEP
    assert "ENOSPC" in job.rounds.errors["persist"]
    job.held(0, [3, 13], now=10.0)
    news = job.held(1, [3, 13], now=10.0)
    assert news is not None and news.offload == OffloadRound(13, True, True), "retried later"
    assert news.drop_persisted == (), "said once, with the round's end"
    job.offloaded(0, 13, "", "", now=10.1)
    done = job.offloaded(1, 13, "", "", now=10.2)
    assert done is not None and done.drop_persisted == () and done.persisted == 13


def test_a_pod_waiting_for_a_step_another_pod_overtook_is_told_so() -> None:
    """After a pod was away, pods report different steps: the one behind waits for a step the
    other overwrote. Only then does the leader say so (not for every step of a pod in front)."""
    job = snapshots()
    for node in (0, 1):
        job.held(node, [5], now=0.0)
    assert job.held(0, [5, 6], now=0.1) is None, "pod 1 simply has not saved 6 yet"
    news = job.held(1, [5, 6], now=0.1)
    assert news is not None and (news.committed, news.newest_saved) == (6, NO_STEP)
    job.held(1, [6, 9], now=0.2)  # pod 1 saved 7..9 while nobody waited: 7 and 8 are gone
    news = job.held(0, [6, 8], now=0.3)
    assert news is not None and (news.committed, news.newest_saved) == (6, 9)
    assert news.offload is None, "no commit: no round"
    done = job.held(0, [6, 9], now=0.4)
    assert done is not None and (done.committed, done.newest_saved) == (9, NO_STEP)


def test_a_pod_away_ends_the_round_it_can_no_longer_report() -> None:
    """The pod's new supervisor never heard of the round: it would hold every next round back."""
    job = snapshots()
    for node in (0, 1):
        job.held(node, [3], now=0.0)
    assert job.rounds.in_flight is not None
    job.forget_held(1)
    assert job.offloaded(0, 3, "", "", now=0.1) is None
    for node in (1, 0):
        news = job.held(node, [3, 4], now=0.2)
    assert news is not None and news.offload == OffloadRound(4, True, False)


def test_a_replacement_leader_restores_no_step_older_than_the_one_its_predecessor_committed() -> (
    None
):
    """The copies of the fault matrix's sigkill_leader_sidecar run that lost a step: step 23
    committed by the old leader, the ranks trained on while it was away and overwrote it in
    their arenas; each pod still keeps the other's replicas of 23 and 24, both persisted 21.
    The new leader committed nothing: it restored 21 (durable), older than 23."""
    ports = itertools.count(40000)
    leader = LeaderState(2, 2, RestartPolicy(max_restarts=3), lambda: next(ports), "node-0")
    leader.join(0, 2, PodView(0, 0, (), running=True), now=0.0)  # its sidecar is new
    [rebuilt] = [b.message for b in leader.join(1, 2, PodView(0, 0, ()), now=0.1)]
    assert isinstance(rebuilt, OpenGeneration) and rebuilt.generation == 1
    persisted = frozenset({16, 21})
    leader.pod_copies(0, NodeCopies(replicas={1: frozenset({23, 24})}, persisted=persisted))
    heard = NodeCopies(replicas={0: frozenset({23, 24})}, persisted=persisted, committed=23)
    leader.pod_copies(1, heard)
    leader.pod_ready(0, 1)
    [start] = [b.message for b in leader.pod_ready(1, 1)]
    assert isinstance(start, StartGeneration)
    assert (start.restore_step, start.restore_reason) == (23, "step 23 (peer: nodes 0,1)")


def test_a_replacement_leader_still_takes_an_older_step_when_the_committed_one_is_gone() -> None:
    job = snapshots()
    job.pod_copies(0, NodeCopies(shm=frozenset({30, 31}), persisted=frozenset({21})))
    job.pod_copies(1, NodeCopies(persisted=frozenset({21}), committed=23))
    assert job.choose([0, 1]).step == 21, "the newest whole step: a loss the pods report"
