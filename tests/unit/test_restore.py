"""The restore choice: one step for every pod, the newest with a copy for each."""

from __future__ import annotations

from supervisor.snapshots.restore import DURABLE, PEER, SHM, NodeCopies, choose_restore, sources
from train_supervisor.steps import NO_STEP


def test_every_pod_in_its_own_memory_restores_the_committed_step() -> None:
    copies = {0: NodeCopies(shm=frozenset({7, 8})), 1: NodeCopies(shm=frozenset({7, 8}))}
    choice = choose_restore([0, 1], copies, newest=7)
    assert choice.step == 7, "never past the committed step"
    assert choice.sources == {0: SHM, 1: SHM}


def test_a_lost_pod_restores_the_step_its_peer_replica_holds() -> None:
    # Pod 1 was replaced (nothing in memory); pod 0 holds pod 1's replica of step 5.
    copies = {
        0: NodeCopies(shm=frozenset({5, 9}), replicas={1: frozenset({3, 5})}),
        1: NodeCopies(),
    }
    choice = choose_restore([0, 1], copies, newest=9)
    assert choice.step == 5
    assert choice.sources == {0: SHM, 1: PEER}
    assert "peer: nodes 1" in choice.why()


def test_durable_copies_are_the_last_resort() -> None:
    copies = {
        0: NodeCopies(shm=frozenset({9}), persisted=frozenset({4})),
        1: NodeCopies(persisted=frozenset({4})),
    }
    choice = choose_restore([0, 1], copies, newest=9)
    assert (choice.step, choice.sources) == (4, {0: DURABLE, 1: DURABLE})
    assert sources(0, 9, copies) == [SHM]


def test_a_step_whose_copies_failed_is_left_out() -> None:
    copies = {0: NodeCopies(shm=frozenset({9}), persisted=frozenset({4, 9}))}
    assert choose_restore([0], copies, 9).step == 9
    assert choose_restore([0], copies, 9, unusable={0: frozenset({9})}).step == 4


def test_nothing_common_means_a_fresh_start() -> None:
    copies = {0: NodeCopies(shm=frozenset({9})), 1: NodeCopies(shm=frozenset({8}))}
    choice = choose_restore([0, 1], copies, newest=9)
    assert choice.step == NO_STEP
    assert choice.why() == (
        "no step has a usable copy for every pod (held in part: 9, 8): "
        "the script starts from its beginning"
    )
    # A pod's own replica of itself does not count as a peer copy.
    alone = {0: NodeCopies(replicas={0: frozenset({3})})}
    assert choose_restore([0], alone, 9).step == NO_STEP


def test_a_first_start_does_not_read_like_an_error() -> None:
    """A first start with snapshots on said "no step has a copy for every pod: fresh start"."""
    choice = choose_restore([0, 1], {0: NodeCopies(), 1: NodeCopies()}, newest=NO_STEP)
    assert choice.step == NO_STEP
    assert choice.why() == "no snapshot saved yet: the script starts from its beginning"
