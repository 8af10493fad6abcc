"""supervisor/snapshots/commit.py: a step is committed once every rank holds it, never two steps
apart."""

from __future__ import annotations

import pytest

from supervisor.snapshots.commit import CommitTracker, held_in_arena
from train_supervisor.steps import NO_STEP


def test_a_step_commits_only_when_the_last_rank_holds_it() -> None:
    tracker = CommitTracker(world_size=3)
    assert not tracker.saved(0, 5, [5])
    assert not tracker.saved(1, 5, [5])
    assert tracker.committed == NO_STEP and not tracker.is_settled(5)
    assert tracker.saved(2, 5, [5])
    assert tracker.committed == 5 and tracker.is_settled(5) and tracker.is_settled(4)


def test_the_newest_step_every_rank_holds_wins_and_never_moves_back() -> None:
    tracker = CommitTracker(world_size=2)
    tracker.saved(0, 5, [5])
    tracker.saved(1, 5, [5])
    tracker.saved(0, 6, [5, 6])
    assert tracker.committed == 5  # rank 1 has no 6 yet
    assert tracker.saved(1, 6, [5, 6])
    assert tracker.committed == 6
    # Rank 0 reuses the slot of 5 (no longer committed) for 7.
    assert not tracker.saved(0, 7, [6, 7])
    assert tracker.committed == 6


def test_an_arena_holds_two_steps_and_the_committed_one_must_stay() -> None:
    tracker = CommitTracker(world_size=1)
    tracker.saved(0, 5, [5])
    with pytest.raises(ValueError, match="an arena holds 2"):
        tracker.saved(0, 8, [5, 6, 7])
    tracker2 = CommitTracker(world_size=2)
    tracker2.saved(0, 5, [5])
    tracker2.saved(1, 5, [5])
    with pytest.raises(ValueError, match="no longer holds the committed step 5"):
        tracker2.saved(0, 7, [6, 7])
    with pytest.raises(ValueError, match=r"rank 2 is not in 0\.\.1"):
        tracker2.saved(2, 7, [7])


def test_a_new_generation_drops_uncommitted_steps() -> None:
    """Steps are re-trained from the committed one: an old report of a number is not the new one."""
    tracker = CommitTracker(world_size=2)
    tracker.saved(0, 10, [10])
    tracker.saved(1, 10, [10])
    tracker.saved(0, 11, [10, 11])  # rank 1 died before it saved 11
    tracker.new_generation()
    assert tracker.held(0) == {10}
    assert not tracker.saved(1, 11, [10, 11])  # the new 11 of rank 1 alone
    assert tracker.committed == 10
    assert tracker.saved(0, 11, [10, 11])
    assert tracker.committed == 11


def test_forget_starts_over_and_restores_are_recorded() -> None:
    tracker = CommitTracker(world_size=1)
    tracker.saved(0, 3, [3], size=4096, blocking_s=0.01)
    tracker.forget()
    assert tracker.committed == NO_STEP and tracker.held(0) == frozenset()
    assert tracker.saved(0, 1, [1]) and tracker.committed == 1
    tracker.restored(0, 1, "shm")
    entry = tracker.ranks[0]
    assert (entry.restored_step, entry.restored_from, entry.bytes) == (1, "shm", 0)


def test_a_rank_holds_the_committed_step_and_newer_ones_of_the_running_generation() -> None:
    # (step, generation written in) of its arena's COMPLETE slots
    assert held_in_arena([(6, 2), (7, 2)], committed=6, generation=2) == {6, 7}
    # The committed step may come from an earlier generation (the one restored).
    assert held_in_arena([(6, 1), (7, 2)], committed=6, generation=2) == {6, 7}
    # A step of an older generation has other contents than this generation's step 7.
    assert held_in_arena([(6, 2), (7, 1)], committed=6, generation=2) == {6}
    assert held_in_arena([(5, 2)], committed=6, generation=2) == frozenset()
    assert held_in_arena([], committed=-1, generation=0) == frozenset()


def test_a_step_another_rank_already_overwrote_is_not_waited_for() -> None:
    """Ranks that did not wait for commits for a while (a pod away, a wait that timed out) report
    different steps once they wait again. A rank keeps only the committed step and its newest:
    a step older than another rank's newest can never commit, and waiting for it (60 s a step)
    while that rank waits for its own newest stalled training for good."""
    tracker = CommitTracker(world_size=2)
    tracker.saved(0, 5, [5])
    tracker.saved(1, 5, [5])
    tracker.saved(1, 9, [5, 9])  # rank 1 saved 6..9 while nobody waited: 6..8 are gone from it
    assert not tracker.saved(0, 8, [5, 8])
    assert tracker.is_settled(8), "rank 0 goes on to 9 instead of waiting for 8"
    assert not tracker.is_settled(9), "9 can still commit: rank 1 waits for it"
    assert tracker.saved(0, 9, [5, 9]) and tracker.committed == 9


def test_a_pod_learns_from_its_leader_that_another_pods_ranks_overtook_a_step() -> None:
    tracker = CommitTracker(world_size=2, first_rank=2, decides=False)
    tracker.saved(2, 8, [5, 8])
    tracker.saved(3, 8, [5, 8])
    assert not tracker.is_settled(8)
    assert tracker.overtaken(9), "the leader says another pod's ranks all saved 9"
    assert tracker.is_settled(8) and not tracker.is_settled(9)
    assert not tracker.overtaken(9), "said again: nothing new"


def test_a_new_generation_overtakes_nothing_yet() -> None:
    """Steps are re-trained from the committed one: the old generation's newest counts no more."""
    tracker = CommitTracker(world_size=2)
    tracker.saved(0, 5, [5])
    tracker.saved(1, 5, [5])
    tracker.saved(0, 7, [5, 7])
    tracker.new_generation()
    assert not tracker.saved(1, 6, [5, 6])
    assert not tracker.is_settled(6), "the old 7 is gone with its generation"
