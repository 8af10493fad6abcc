"""supervisor/snapshots/persist_policy.py: when a committed step is persisted, and which copies
go."""

from __future__ import annotations

import pytest

from supervisor.snapshots.persist_policy import persist_due, steps_to_prune

NONE = -1


@pytest.mark.parametrize(
    ("committed", "last", "last_at", "now", "every_steps", "every_s", "due"),
    [
        (5, NONE, 0.0, 1.0, 100, 0.0, True),  # the first committed step, a trigger on
        (5, NONE, 0.0, 1.0, 0, 60.0, True),
        (5, NONE, 0.0, 1.0, 0, 0.0, False),  # both triggers off: never
        (NONE, NONE, 0.0, 1e9, 1, 1.0, False),  # nothing committed yet
        (109, 10, 0.0, 1.0, 100, 0.0, False),
        (110, 10, 0.0, 1.0, 100, 0.0, True),  # every_steps since the last persisted step
        (150, 10, 0.0, 1.0, 100, 0.0, True),  # commits may skip steps
        (11, 10, 100.0, 159.9, 0, 60.0, False),
        (11, 10, 100.0, 160.0, 0, 60.0, True),  # every_s since it was written
        (11, 10, 100.0, 160.0, 100, 60.0, True),  # either trigger fires
        (10, 10, 100.0, 1e9, 1, 1.0, False),  # already persisted: never again
        (9, 10, 100.0, 1e9, 1, 1.0, False),  # an older step (after a fallback): never
    ],
)
def test_persist_due(
    committed: int, last: int, last_at: float, now: float, every_steps: int, every_s: float,
    due: bool,
) -> None:  # fmt: skip
    assert persist_due(committed, last, last_at, now, every_steps, every_s) is due


def test_negative_periods_are_refused() -> None:
    with pytest.raises(ValueError, match="every_steps and every_s must be >= 0"):
        persist_due(1, NONE, 0.0, 0.0, -1, 0.0)


def test_steps_to_prune_keeps_the_newest() -> None:
    assert steps_to_prune([30, 10, 50, 20, 40], 2) == [10, 20, 30]
    assert steps_to_prune([10, 20], 2) == [] and steps_to_prune([], 3) == []
    with pytest.raises(ValueError, match="keep must be >= 1"):
        steps_to_prune([1, 2], 0)


def test_an_incomplete_step_never_counts_towards_keep() -> None:
    """Incomplete steps older than the newest complete one go; newer ones may be finishing."""
    assert steps_to_prune([10, 30], 2, incomplete=[20, 40]) == [20]
    assert steps_to_prune([10, 30, 50], 2, incomplete=[20, 40, 60]) == [10, 20, 40]
    assert steps_to_prune([], 2, incomplete=[5]) == [], "no complete step: nothing to judge by"
