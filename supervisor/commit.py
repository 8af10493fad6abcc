"""The commit rule for in-memory snapshots, as pure state: no I/O, no clock.

Each rank's arena holds at most two complete steps (two slots). A step is
committed once every rank of the job holds it; the committed step only moves
forward, and it is what every rank restores after a failure — so no two ranks
ever resume from different steps. A rank may overwrite a slot only when the
step in it is not the committed one, which it learns from the answer to its
report (`committed`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

NONE = -1  # no step: nothing saved, or nothing committed yet


@dataclass
class RankSnapshots:
    held: frozenset[int] = frozenset()  # complete steps in the rank's arena
    saved_step: int = NONE  # the newest step it reported
    bytes: int = 0
    blocking_s: float = 0.0
    restored_step: int = NONE
    restored_from: str = ""


@dataclass
class CommitTracker:
    world_size: int
    committed: int = NONE
    ranks: dict[int, RankSnapshots] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, not {self.world_size}")

    def saved(
        self, rank: int, step: int, held: Iterable[int], size: int = 0, blocking_s: float = 0.0
    ) -> bool:
        """Rank `rank` wrote `step`; `held` is every complete step in its arena now.

        Returns whether this moved the committed step.
        """
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is not in 0..{self.world_size - 1}")
        held_steps = frozenset(held) | {step}
        if len(held_steps) > 2:
            raise ValueError(f"rank {rank} claims {len(held_steps)} steps; an arena holds 2")
        if self.committed != NONE and self.committed in self.held(rank) - held_steps:
            # The rank overwrote the committed step: its protocol is broken.
            raise ValueError(f"rank {rank} no longer holds the committed step {self.committed}")
        entry = self.ranks.setdefault(rank, RankSnapshots())
        entry.held, entry.saved_step = held_steps, max(entry.saved_step, step)
        entry.bytes, entry.blocking_s = size, blocking_s
        return self._advance()

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

    def forget(self) -> None:
        """The committed step cannot be restored (a corrupt copy): start over from none."""
        self.committed = NONE
        for entry in self.ranks.values():
            entry.held = frozenset()

    def restored(self, rank: int, step: int, source: str) -> None:
        entry = self.ranks.setdefault(rank, RankSnapshots())
        entry.restored_step, entry.restored_from = step, source

    def is_settled(self, step: int) -> bool:
        """`step` is committed, or a newer one is (it will never be needed)."""
        return self.committed >= step

    def _advance(self) -> bool:
        if len(self.ranks) < self.world_size:
            return False
        common = frozenset.intersection(*(r.held for r in self.ranks.values()))
        newest = max(common, default=NONE)
        if newest <= self.committed:
            return False
        self.committed = newest
        return True
