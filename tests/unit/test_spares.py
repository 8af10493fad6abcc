"""supervisor/workers/spares.py: the warm spare pool's bookkeeping, alone."""

from __future__ import annotations

from supervisor.workers.spares import SparePool


def test_an_empty_pool_wants_its_target() -> None:
    pool = SparePool(target=2)
    assert pool.deficit() == 2
    assert (pool.idle, pool.spawning, pool.failures) == ([], 0, 0)
    assert pool.max_failures == 3


def test_no_spares_wanted_means_no_deficit() -> None:
    assert SparePool(target=0).deficit() == 0


def test_spawning_and_idle_spares_both_count_against_the_target() -> None:
    pool = SparePool(target=2)
    pool.spawned()
    assert (pool.spawning, pool.deficit()) == (1, 1)
    pool.spawned()
    assert (pool.spawning, pool.deficit()) == (2, 0)
    pool.attached(100)
    assert (pool.idle, pool.spawning, pool.deficit()) == ([100], 1, 0)
    pool.attached(101)
    assert (pool.idle, pool.spawning, pool.deficit()) == ([100, 101], 0, 0)


def test_attach_without_a_spawn_pending_keeps_spawning_at_zero() -> None:
    pool = SparePool(target=1)
    pool.attached(100)
    assert (pool.idle, pool.spawning) == ([100], 0)


def test_more_spares_than_wanted_is_no_negative_deficit() -> None:
    pool = SparePool(target=1)
    pool.attached(100)
    pool.attached(101)
    assert pool.deficit() == 0


def test_take_promotes_the_oldest_spare() -> None:
    pool = SparePool(target=3)
    for pid in (100, 101, 102):
        pool.spawned()
        pool.attached(pid)
    assert pool.take() == 100
    assert pool.take() == 101
    assert pool.idle == [102]
    assert pool.deficit() == 2  # taking opens a deficit; the job decides when to fill it


def test_take_from_an_empty_pool_is_none() -> None:
    pool = SparePool(target=1)
    assert pool.take() is None
    pool.spawned()
    assert pool.take() is None  # one still starting cannot take a rank
    assert pool.spawning == 1


def test_an_idle_spare_that_exits_is_a_failure() -> None:
    pool = SparePool(target=2)
    pool.attached(100)
    pool.attached(101)
    assert pool.exited(100, holds_rank=False) is True
    assert (pool.idle, pool.failures, pool.deficit()) == ([101], 1, 1)


def test_a_spare_that_exits_before_attaching_is_a_failure() -> None:
    pool = SparePool(target=1)
    pool.spawned()
    assert pool.exited(4242, holds_rank=False) is True  # pid not known yet
    assert (pool.spawning, pool.failures, pool.deficit()) == (0, 1, 1)


def test_a_rank_process_exiting_is_not_a_spare() -> None:
    pool = SparePool(target=1)
    pool.spawned()
    assert pool.exited(500, holds_rank=True) is False
    assert (pool.spawning, pool.failures) == (1, 0)


def test_a_promoted_spare_that_exits_is_no_longer_the_pools() -> None:
    pool = SparePool(target=1)
    pool.attached(100)
    assert pool.take() == 100
    assert pool.exited(100, holds_rank=True) is False
    assert pool.failures == 0


def test_an_unknown_exit_with_nothing_spawning_is_not_a_spare() -> None:
    pool = SparePool(target=1)
    pool.attached(100)
    assert pool.exited(999, holds_rank=False) is False
    assert (pool.idle, pool.failures) == ([100], 0)


def test_an_idle_pid_exiting_counts_even_if_another_is_spawning() -> None:
    pool = SparePool(target=2)
    pool.attached(100)
    pool.spawned()
    assert pool.exited(100, holds_rank=False) is True
    assert (pool.idle, pool.spawning, pool.failures) == ([], 1, 1)


def test_replacement_stops_after_max_failures() -> None:
    pool = SparePool(target=2, max_failures=2)
    for pid in (100, 101):
        pool.attached(pid)
        pool.exited(pid, holds_rank=False)
    assert pool.failures == 2
    assert pool.idle == [] and pool.spawning == 0
    assert pool.deficit() == 0  # broken spares: stop feeding them
    pool.attached(102)  # a late one still counts as idle and can take a rank
    assert pool.take() == 102


def test_failures_below_the_limit_still_leave_a_deficit() -> None:
    pool = SparePool(target=1, max_failures=3)
    for pid in (100, 101):
        pool.attached(pid)
        pool.exited(pid, holds_rank=False)
    assert pool.failures == 2
    assert pool.deficit() == 1
