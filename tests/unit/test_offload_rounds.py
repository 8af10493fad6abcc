"""One offload round at a time; persistence every K steps or T seconds; failures retried later."""

from __future__ import annotations

from supervisor.snapshots.rounds import PERSIST_RETRY_S, ROUND_LIMIT_S, OffloadRounds
from train_supervisor.steps import NO_STEP


def test_one_round_at_a_time_and_the_newest_committed_step_next() -> None:
    rounds = OffloadRounds(replicate=True, persist=False)
    first = rounds.next_round(3, now=0.0)
    assert first is not None and (first.step, first.replicate, first.persist) == (3, True, False)
    assert rounds.next_round(4, now=0.1) is None, "a round is in flight"
    assert rounds.finished(3, "", "", now=0.2)
    assert rounds.replicated == 3
    second = rounds.next_round(6, now=0.3)
    assert second is not None and second.step == 6
    assert not rounds.finished(5, "", "", now=0.4), "not the round in flight"


def test_a_failed_persist_is_reported_and_retried_after_a_pause() -> None:
    rounds = OffloadRounds(replicate=False, persist=True, every_steps=1)
    rnd = rounds.next_round(1, now=0.0)
    assert rnd is not None and rnd.persist
    rounds.finished(1, "", "No space left on device: /durable", now=1.0)
    assert rounds.persisted == NO_STEP and "persist" in rounds.errors
    assert rounds.next_round(2, now=1.0 + PERSIST_RETRY_S / 2) is None, "no retry every step"
    again = rounds.next_round(3, now=1.0 + PERSIST_RETRY_S)
    assert again is not None and again.persist
    rounds.finished(3, "", "", now=7.0)
    assert rounds.persisted == 3 and not rounds.errors, "the error clears once it works"


def test_restoring_an_older_step_voids_later_copies() -> None:
    rounds = OffloadRounds(replicate=True, persist=True, every_steps=1)
    rnd = rounds.next_round(8, now=0.0)
    assert rnd is not None
    rounds.finished(8, "", "", now=1.0)
    rounds.restart_from(5)
    assert (rounds.replicated, rounds.persisted, rounds.last_round) == (NO_STEP, NO_STEP, 5)
    again = rounds.next_round(6, now=2.0)
    assert again is not None and again.step == 6


def test_a_round_whose_end_never_comes_is_given_up_and_reported() -> None:
    rounds = OffloadRounds(replicate=True, persist=False)
    assert rounds.next_round(3, now=0.0) is not None
    assert rounds.next_round(4, now=ROUND_LIMIT_S) is None, "still within the limit"
    later = rounds.next_round(5, now=ROUND_LIMIT_S + 1)
    assert later is not None and later.step == 5
    assert "never ended" in rounds.errors["round"]
    rounds.finished(5, "", "", now=ROUND_LIMIT_S + 2)
    assert "round" not in rounds.errors
