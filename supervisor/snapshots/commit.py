"""The commit rule for in-memory snapshots, as pure state: no I/O, no clock.

Each rank's arena holds at most two complete steps (two slots). A step is
committed once every rank of the job holds it; the committed step only moves
forward, and it is what every rank restores after a failure — so no two ranks
ever resume from different steps. A rank may overwrite a slot only when the
step in it is not the committed one, which it learns from the answer to its
report (`committed`).

A rank that saved a newer step keeps only the committed step and that one, so an
uncommitted step older than the newest any member saved can never be committed: a rank
waiting for it waits for nothing (`is_settled`). Ranks that stopped waiting for a while
(a pod away, a wait that timed out) report different steps when they wait again; without
this each would wait for a step another rank had already overwritten, a step at a time.

In a job of several pods each pod tracks its own ranks (`decides=False`) and
reports what all of them hold (`common`); the leader tracks pods the same way
and its commit comes back to every pod (`commit`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from train_supervisor.steps import NO_STEP


@dataclass
class RankSnapshots:
    held: frozenset[int] = frozenset()  # complete steps in the rank's arena
    saved_step: int = NO_STEP  # the newest step it reported
    bytes: int = 0
    blocking_s: float = 0.0
    restored_step: int = NO_STEP
    restored_from: str = ""


@dataclass
class CommitTracker:
    world_size: int  # members tracked: ranks first_rank .. first_rank + world_size - 1
    first_rank: int = 0
    decides: bool = True  # False: a pod of a larger job; the leader commits
    committed: int = NO_STEP
    ranks: dict[int, RankSnapshots] = field(default_factory=dict)
    # The newest step a member saved in this generation (a pod of a larger job: or, as its
    # leader says, that another pod's ranks all hold): older uncommitted steps are overtaken.
    newest: int = NO_STEP

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, not {self.world_size}")

    def saved(
        self, rank: int, step: int, held: Iterable[int], size: int = 0, blocking_s: float = 0.0
    ) -> bool:
        """Rank `rank` wrote `step`; `held` is every complete step in its arena now.

        Returns whether this moved the committed step.
        """
        last = self.first_rank + self.world_size - 1
        if not self.first_rank <= rank <= last:
            raise ValueError(f"rank {rank} is not in {self.first_rank}..{last}")
        held_steps = frozenset(held) | {step}
        if len(held_steps) > 2:
            raise ValueError(f"rank {rank} claims {len(held_steps)} steps; an arena holds 2")
        if self.committed != NO_STEP and self.committed in self.held(rank) - held_steps:
            # The rank overwrote the committed step: its protocol is broken.
            raise ValueError(f"rank {rank} no longer holds the committed step {self.committed}")
        entry = self.ranks.setdefault(rank, RankSnapshots())
        entry.held, entry.saved_step = held_steps, max(entry.saved_step, step)
        entry.bytes, entry.blocking_s = size, blocking_s
        self.newest = max(self.newest, step)
        return self._advance() if self.decides else False

    def common(self) -> frozenset[int]:
        """The steps every member holds (empty until every member reported)."""
        if len(self.ranks) < self.world_size:
            return frozenset()
        return frozenset.intersection(*(r.held for r in self.ranks.values()))

    def commit(self, step: int) -> bool:
        """The leader committed `step` (every pod holds it)."""
        if step <= self.committed:
            return False
        self.committed = step
        return True

    def adopt(self, restore_step: int) -> None:
        """A generation starts from the leader's `restore_step` (NO_STEP: nothing)."""
        if restore_step == NO_STEP:
            self.forget()
        else:
            self.committed = restore_step
        self.newest = self.committed

    def held(self, rank: int) -> frozenset[int]:
        entry = self.ranks.get(rank)
        return entry.held if entry is not None else frozenset()

    def new_generation(self) -> None:
        """A generation ended: its uncommitted steps are never committed.

        Every rank restores the committed step and trains on from there, so
        the next generation saves steps with the same numbers and new contents;
        an old report must not count for them.
        """
        for entry in self.ranks.values():
            entry.held = entry.held & {self.committed}
        self.newest = self.committed

    def overtaken(self, newest: int) -> bool:
        """Some member saved `newest` (the leader says so): True if that overtakes a step."""
        moved = newest > self.newest
        self.newest = max(self.newest, newest)
        return moved

    def waits_in_vain(self, member: int) -> bool:
        """`member`'s newest step can never be committed: another member saved a newer one."""
        entry = self.ranks.get(member)
        return entry is not None and self.committed < entry.saved_step < self.newest

    def forget(self) -> None:
        """The committed step cannot be restored (a corrupt copy): start over from none."""
        self.committed = self.newest = NO_STEP
        for entry in self.ranks.values():
            entry.held = frozenset()

    def restored(self, rank: int, step: int, source: str) -> None:
        entry = self.ranks.setdefault(rank, RankSnapshots())
        entry.restored_step, entry.restored_from = step, source

    def is_settled(self, step: int) -> bool:
        """`step` is committed, or a newer one is (it will never be needed), or a member saved
        a newer one (it can never be committed)."""
        return self.committed >= step or step < self.newest

    def _advance(self) -> bool:
        return self.commit(max(self.common(), default=NO_STEP))


def held_in_arena(
    complete: Iterable[tuple[int, int]], committed: int, generation: int
) -> frozenset[int]:
    """What a rank of the running `generation` holds, read from its arena's COMPLETE slots
    (`complete`: (step, generation) pairs) when a rank of the pod has just died. A rank reports
    a step only after its copy, so a rank killed right then (or a survivor whose report is
    still on its way) may hold a step it has not reported. Counted: the committed step, and
    newer ones of the same generation (an older generation's step of the same number has
    other contents). A dead rank's arena cannot change any more; a survivor's newest step
    cannot be overwritten while its report waits for the commit."""
    return frozenset(
        step
        for step, written_in in complete
        if step == committed or (step > committed and written_in == generation)
    )
