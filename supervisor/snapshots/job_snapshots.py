"""The leader's snapshot bookkeeping for a job of several pods: pure state, no I/O.

Commit: a step is committed once every pod holds it in all its ranks
(supervisor/snapshots/commit.py, with pods as members); what a pod finds in its ranks' arenas when
an Open comes still counts for the stopped generation until the next start. Offload: one
round at a time for the whole job (supervisor/snapshots/rounds.py); it ends when every pod
reported it. Restore: at each generation's start the step every pod has some
copy of, as the pods last reported them (supervisor/snapshots/restore.py). A lost pod
takes its memory with it: its copies, and the replicas it kept for another pod.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Optional

from supervisor.snapshots.commit import CommitTracker
from supervisor.snapshots.restore import NodeCopies, RestoreChoice, choose_restore
from supervisor.snapshots.rounds import OffloadRound, OffloadRounds
from train_supervisor.steps import NO_STEP


@dataclass(frozen=True)
class RoundNews:
    """What the pods learn after a commit or a round: the CommitStep's snapshot part."""

    committed: int
    offload: Optional[OffloadRound]
    replicated: int
    persisted: int
    drop_persisted: tuple[int, ...] = ()  # a round's step not every pod persisted
    newest_saved: int = NO_STEP  # set when a pod waits for a step no longer committable


@dataclass
class JobSnapshots:
    nnodes: int
    rounds: OffloadRounds
    commits: CommitTracker = field(init=False)
    copies: dict[int, NodeCopies] = field(default_factory=dict)
    unusable: dict[int, set[int]] = field(default_factory=dict)  # node -> steps that failed there
    _reported: dict[int, tuple[str, str]] = field(default_factory=dict)  # the round in flight

    def __post_init__(self) -> None:
        self.commits = CommitTracker(self.nnodes)  # members are pods

    @property
    def committed(self) -> int:
        return self.commits.committed

    def held(self, node: int, steps: Iterable[int], now: float) -> Optional[RoundNews]:
        """Every local rank of `node` holds `steps`; news when the commit moved, or when a
        pod waits for a step that another pod's ranks overtook (it can never commit)."""
        if self._count(node, steps):
            return self._news(now)
        if self._newest_saved() == NO_STEP:
            return None
        rounds = self.rounds
        return RoundNews(
            self.committed, None, rounds.replicated, rounds.persisted,
            newest_saved=self._newest_saved(),
        )  # fmt: skip

    def pod_copies(self, node: int, copies: NodeCopies) -> None:
        self.copies[node] = copies

    def offloaded(
        self, node: int, step: int, replica_error: str, persist_error: str, now: float
    ) -> Optional[RoundNews]:
        """`node` ended the round of `step`; news when the whole job has (and the next one)."""
        current = self.rounds.in_flight
        if current is None or current.step != step:
            return None
        self._reported[node] = (replica_error, persist_error)
        if len(self._reported) < self.nnodes:
            return None
        replica = "; ".join(f"node {n}: {e[0]}" for n, e in sorted(self._reported.items()) if e[0])
        persist = "; ".join(f"node {n}: {e[1]}" for n, e in sorted(self._reported.items()) if e[1])
        self._reported.clear()
        self.rounds.finished(step, replica, persist, now)
        # Some pods wrote their part, others could not: the parts written are no step
        # anyone can restore, and on a shared disk they keep it full. Every pod drops its own.
        incomplete = (step,) if current.persist and persist else ()
        return self._news(now, incomplete)

    def restore_failed(self, node: int, step: int) -> None:
        """No copy of `step` on `node` passed its checksums: never choose it again there."""
        self.unusable.setdefault(node, set()).add(step)

    def forget_held(self, node: int) -> None:
        """Pod `node` is away: nothing commits until it offers its steps again. Its round
        cannot end either: the supervisor that comes back never heard of it."""
        self.commits.ranks.pop(node, None)
        self.rounds.abandon()
        self._reported.clear()

    def lost(self, node: int) -> None:
        """The pod's memory is gone; its durable copies are not (it reports them again)."""
        self.commits.ranks.pop(node, None)
        self.copies.pop(node, None)
        self.rounds.abandon()
        self._reported.clear()

    def generation_opened(self) -> None:
        """The running generation stops: no round until the next one starts. What the pods
        hold of it still counts until then (late_held); choose() drops the rest."""
        self.rounds.abandon()
        self._reported.clear()

    def late_held(self, node: int, steps: Iterable[int]) -> None:
        """Between a generation's opening and the next start: what pod `node`'s ranks had
        copied of the stopped generation and not yet reported. It may move the commit (the
        step restored), never starts a round."""
        self._count(node, steps)

    def choose(self, nodes: Iterable[int]) -> RestoreChoice:
        """The step every pod restores in the generation that starts now."""
        nodes = list(nodes)
        persisted = [s for c in self.copies.values() for s in c.persisted]
        # A leader that replaced another committed nothing yet: the pods tell the old one's
        # commit, and no step older than it is chosen where every pod still has a copy.
        heard = [c.committed for c in self.copies.values()]
        newest = max([self.committed, *persisted, *heard])
        unusable = {n: frozenset(s) for n, s in self.unusable.items()}
        # What a pod reported for the commit is in its memory too.
        copies = {
            n: replace(c, shm=c.shm | self.commits.held(n))
            for n, c in ((n, self.copies.get(n, NodeCopies())) for n in nodes)
        }
        choice = choose_restore(nodes, copies, newest, unusable)
        self.commits.adopt(choice.step)
        self.commits.new_generation()
        self.rounds.restart_from(choice.step)
        return choice

    def _count(self, node: int, steps: Iterable[int]) -> bool:
        """`node` holds `steps`: whether the commit moved."""
        ordered = sorted(steps)
        if not ordered:
            return False
        try:
            return self.commits.saved(node, ordered[-1], ordered)
        except ValueError:  # a pod that broke the protocol: its steps count for nothing
            return False

    def _news(self, now: float, drop_persisted: tuple[int, ...] = ()) -> RoundNews:
        offload = self.rounds.next_round(self.committed, now)
        if offload is not None:
            self._reported.clear()  # reports of a round given up count for nothing
        return RoundNews(
            self.committed, offload, self.rounds.replicated, self.rounds.persisted, drop_persisted,
            self._newest_saved(),
        )  # fmt: skip

    def _newest_saved(self) -> int:
        """The newest step a pod saved, if another pod waits for an older one (NO_STEP: none
        does): that pod's ranks overwrote the older one, which can never commit."""
        behind = any(self.commits.waits_in_vain(node) for node in self.commits.ranks)
        return self.commits.newest if behind else NO_STEP
