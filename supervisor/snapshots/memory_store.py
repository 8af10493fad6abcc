"""This pod's shared memory as a snapshot store: the ranks' arenas and the sidecar's staged
copies (I/O), and the previous pod's replicas kept beside them.

Layout under the pod's snapshot directory:
  rank-<r>.slot{0,1}            the ranks' own arenas (the workers write them)
  staged/rank-<r>.slot{0,1}     this sidecar's copy of the last two rounds' steps
  replicas/rank-<r>.slot{0,1}   the previous pod's ranks, as pushed to us
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from supervisor.snapshots.restore import SHM
from supervisor.snapshots.store import RoundStopped, each_rank, free_slot
from train_supervisor.arena import CorruptSnapshot, RankArena, SlotState, SnapshotImage, ranks_in
from train_supervisor.steps import NO_STEP

STAGED, REPLICAS = "staged", "replicas"


def complete_steps(arena: RankArena) -> set[int]:
    """Steps whose slot header says COMPLETE (no checksum)."""
    return {s.step for s in arena.slots() if s.state is SlotState.COMPLETE}


def pin_step(arena: RankArena, step: int) -> int:
    """The slot holding `step`, pinned against the rank's writer (CorruptSnapshot: none)."""
    where = f"rank {arena.rank}: step {step}"
    slot = arena.find(step)
    if slot is None:
        raise CorruptSnapshot(f"{where} is not in {arena.directory}")
    if not arena.pin(slot):
        raise CorruptSnapshot(f"{where} is being overwritten by a newer save")
    if arena.find(step) != slot:  # rewritten between the look and the pin
        arena.unpin(slot)
        raise CorruptSnapshot(f"{where} was overwritten by a newer save")
    return slot


def void_after(arenas: Iterable[RankArena], step: int) -> list[str]:
    """Discard every complete slot past `step` in `arenas` (and close them); what went."""
    dropped = []
    for arena in arenas:
        for slot in (s.slot for s in arena.slots() if s.state is not SlotState.EMPTY):
            with arena.exclusive(slot):  # a copy still under way lands first, then goes
                info = arena.slots()[slot]
                if info.state is SlotState.COMPLETE and info.step > step:
                    arena.discard(slot)
                    dropped.append(f"{arena.path(slot).name} (step {info.step})")
        arena.close()
    return dropped


class MemoryStore:
    """The ranks' own arenas and their staged copies: the round's first copy (staging), and
    the restore's first source (the own copy, else the staged one)."""

    name = SHM

    def __init__(self, directory: Path, ranks: Sequence[int]) -> None:
        self.directory, self.ranks = directory, list(ranks)
        self.kept = NO_STEP  # the last round every pod finished: its staged copies stay whole
        # Kept open between rounds (the offload thread only): mapping a GB afresh each round
        # made staging 2.7x slower (bench/offload_throughput.py).
        self._mapped: dict[tuple[str, int], RankArena] = {}
        # rank -> (slot, step, checksum) of its own copy checksummed since the last failure
        self.verified: dict[int, tuple[int, int, int]] = {}

    def _mapped_arena(self, rank: int, where: str = "") -> RankArena:
        arena = self._mapped.get((where, rank))
        if arena is None:
            arena = self._mapped[(where, rank)] = self._arena(rank, where)
        return arena

    def _arena(self, rank: int, where: str = "") -> RankArena:
        return RankArena(self.directory / where if where else self.directory, rank)

    def _present(self) -> list[str]:
        """The own and staged directories that exist: reading never creates one."""
        return [w for w in ("", STAGED) if (self.directory / w).is_dir()]

    def close(self) -> None:
        for arena in self._mapped.values():
            arena.close()
        self._mapped.clear()

    # ------------------------------------------------------------ staging
    def stage(
        self, step: int, generation: int, stopped: Callable[[], bool]
    ) -> tuple[list[SnapshotImage], float]:
        """Copy every local rank's `step` into the staged arenas, checksum verified: the
        staged images, and the longest a rank's slot stayed pinned.

        Every rank's slot is pinned before the first copy and unpinned right after its own: a
        rank that saves every step reuses that slot two saves on, which under load came before
        its copy (or during it); its writer waits instead. Copies go one at a time (each holds
        the GIL); the checksums come after, every rank's at once (they do not hold it)."""
        pinned: list[tuple[int, RankArena, int]] = []
        began = time.perf_counter()
        try:
            for rank in self.ranks:
                source = self._mapped_arena(rank)
                pinned.append((rank, source, pin_step(source, step)))
            copied: dict[int, tuple[RankArena, int, int]] = {}  # rank -> staged arena, slot, crc
            for rank, source, slot in pinned:
                if stopped():
                    raise RoundStopped.of(generation)
                copied[rank] = self._copy_in(source.image(slot, verify=False))
                source.unpin(slot)  # the rank's writer may go on
            pinned_s = time.perf_counter() - began  # the last rank's slot was pinned longest
        finally:
            for _, source, slot in pinned:
                source.unpin(slot)
        return each_rank(self.ranks, lambda rank: self._finish(*copied[rank])), pinned_s

    def _copy_in(self, image: SnapshotImage) -> tuple[RankArena, int, int]:
        staged = self._mapped_arena(image.rank, STAGED)  # written by this thread only
        dst = free_slot(staged, self.kept)
        staged.copy_in(dst, image)
        return staged, dst, image.checksum

    @staticmethod
    def _finish(staged: RankArena, slot: int, checksum: int) -> SnapshotImage:
        staged.finish_write(slot, expect=checksum)
        return staged.image(slot, verify=False)

    def put(
        self,
        step: int,
        generation: int,
        images: Sequence[SnapshotImage],
        stopped: Callable[[], bool],
    ) -> None:
        """Stage copies made elsewhere (the round stages from the ranks' arenas: stage)."""
        for image in images:
            if stopped():
                raise RoundStopped.of(generation)
            self._finish(*self._copy_in(image))

    # -------------------------------------------------------------- reads
    def steps(self) -> frozenset[int]:
        """Complete in every rank's own arena or staged copy (headers only: no mapped arena,
        the event loop reads this while the offload thread writes)."""
        held_by_all: set[int] | None = None
        for rank in self.ranks:
            held: set[int] = set()
            for where in self._present():
                arena = self._arena(rank, where)
                held |= complete_steps(arena)
                arena.close()
            held_by_all = held if held_by_all is None else held_by_all & held
        return frozenset(held_by_all or ())

    def verify_own(self, step: int) -> None:
        """Checksum every rank's own copy of `step` now (see Offloader.verify_own)."""
        self.verified.clear()
        each_rank(self.ranks, lambda rank: self._verify_own(rank, step))

    def _verify_own(self, rank: int, step: int) -> None:
        arena = self._arena(rank)
        try:
            slot = arena.find(step)
            if slot is not None:
                info, _, payload = arena.read(slot, verify=True)
                del payload
                self.verified[rank] = (slot, step, info.checksum)
        except CorruptSnapshot:
            pass  # the restore finds it again, and reports it
        finally:
            arena.close()

    def get(self, step: int, into: RankArena) -> list[str]:
        """The rank's own copy if it verifies (or was verified since the failure, unchanged),
        else the staged copy, copied over."""
        rank = into.rank
        own, why = into.find(step), f"step {step} is not in this pod's memory"
        if own is not None:
            try:
                info, _, payload = into.read(own, verify=False)
                del payload
                if self.verified.get(rank) != (own, step, info.checksum):
                    into.read(own, verify=True)
                return []
            except CorruptSnapshot as err:  # the staged copy may still be good
                why = str(err)
        staged = self._arena(rank, STAGED)
        try:
            slot = staged.find(step)
            if slot is None:
                raise CorruptSnapshot(f"rank {rank}: {why}")
            into.store(free_slot(into, NO_STEP), staged.image(slot, verify=True))
            return [] if own is None else [f"rank {rank}: shm: {why}; the staged copy used"]
        finally:
            staged.close()

    def drop_after(self, step: int) -> list[str]:
        present = self._present()
        return void_after((self._arena(r, where) for r in self.ranks for where in present), step)


class KeptReplicas:
    """The previous pod's copies this pod keeps (the ReplicaService writes them): what a
    peer store holds, seen from the pod that holds it."""

    def __init__(self, directory: Path, nproc_per_node: int) -> None:
        self.directory, self.nproc = directory / REPLICAS, nproc_per_node

    def steps_by_node(self) -> dict[int, frozenset[int]]:
        """node -> the steps kept whole for every one of its ranks (headers only)."""
        if not self.directory.is_dir():
            return {}
        by_rank: dict[int, set[int]] = {}
        for rank in ranks_in(self.directory):
            arena = RankArena(self.directory, rank)
            by_rank[rank] = complete_steps(arena)
            arena.close()
        by_node: dict[int, frozenset[int]] = {}
        for node in {r // self.nproc for r in by_rank}:
            members = [
                by_rank.get(r, set()) for r in range(node * self.nproc, (node + 1) * self.nproc)
            ]
            by_node[node] = frozenset(set.intersection(*members))
        return by_node

    def drop_after(self, step: int) -> list[str]:
        """Every pod restores the same step: the copies kept here past it are void too."""
        if not self.directory.is_dir():
            return []
        return void_after((RankArena(self.directory, r) for r in ranks_in(self.directory)), step)
