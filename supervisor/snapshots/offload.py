"""Copies of committed snapshots outside the ranks' arenas: staging, replica, durable (I/O).

Called from one worker thread (never the event loop): a round (stage, push
to the next pod, persist) and a restore's copy into a rank's arena never run
at the same time. What to do and when is decided elsewhere
(supervisor/snapshots/rounds.py, supervisor/snapshots/restore.py).

Shared-memory layout under the pod's snapshot directory:
  rank-<r>.slot{0,1}            the ranks' own arenas (the workers write them)
  staged/rank-<r>.slot{0,1}     this sidecar's copy of the last two rounds' steps
  replicas/rank-<r>.slot{0,1}   the previous pod's ranks, as pushed to us
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, TypeVar

import grpc

from supervisor.settings.snapshots import OffloadConfig
from supervisor.snapshots.durable import DurableError, DurableStore
from supervisor.snapshots.replica_client import TransferStopped, fetch_replica, push_replica
from supervisor.snapshots.restore import DURABLE, PEER, SHM, NodeCopies
from supervisor.snapshots.rounds import OffloadRound
from supervisor.snapshots.throttle import Throttle
from train_supervisor.arena import (
    CorruptSnapshot,
    RankArena,
    SlotState,
    SnapshotImage,
    ranks_in,
)
from train_supervisor.steps import NO_STEP
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

SLOWEST_LINK_BYTES_PER_S = 50e6


@dataclass(frozen=True)
class RoundResult:
    step: int
    stage_error: str = ""
    replica_error: str = ""
    persist_error: str = ""
    persist_reason: str = ""  # with persist_error: an errno name (ENOSPC, EIO, ...) or "other"
    bytes: int = 0
    stage_s: float = 0.0
    replica_s: float = 0.0
    persist_s: float = 0.0
    pinned_s: float = 0.0  # the longest a rank's slot stayed pinned: its writer's longest wait


@dataclass
class Materialized:
    """How a restore of one step went on this pod."""

    step: int
    sources: dict[int, str] = field(default_factory=dict)  # rank -> where it came from
    problems: list[str] = field(default_factory=list)  # sources passed over, and why

    @property
    def complete(self) -> bool:
        return all(self.sources.values())


def complete_steps(arena: RankArena) -> set[int]:
    """Steps whose slot header says COMPLETE (no checksum)."""
    return {s.step for s in arena.slots() if s.state is SlotState.COMPLETE}


def transfer_deadline_s(size: int, rate_bytes_per_s: float) -> float:
    """How long one copy may take before the peer counts as hung: twice its time at the cap
    (or at a slow 50 MB/s without one), plus a minute."""
    return 60.0 + 2 * size / (rate_bytes_per_s or SLOWEST_LINK_BYTES_PER_S)


def free_slot(arena: RankArena, keep: int) -> int:
    """A slot to write, never the one holding `keep` complete."""
    slots = arena.slots()
    for info in slots:
        if not (info.state is SlotState.COMPLETE and info.step == keep):
            return info.slot
    raise RuntimeError(f"{arena.directory}: both slots hold step {keep}")


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


class RoundStopped(Exception):
    """The generation a round was started in ended while it ran."""

    @classmethod
    def of(cls, generation: int) -> RoundStopped:
        return cls(f"generation {generation} ended: round stopped")


STAGED, REPLICAS = "staged", "replicas"
Done = TypeVar("Done")  # what a per-rank piece of work returns


class Offloader:
    def __init__(
        self,
        run_id: str,
        node_rank: int,
        ranks: Iterable[int],
        snapshot_dir: Path,
        config: OffloadConfig,
        holder: Optional[Callable[[], pb_grpc.ReplicaServiceStub]] = None,
    ) -> None:
        self.run_id, self.node_rank, self.ranks = run_id, node_rank, sorted(ranks)
        self.directory = snapshot_dir
        self.config = config
        self.holder = holder  # the next pod's replica service; None: no replica
        self.store = (
            DurableStore(config.durable_dir, run_id, node_rank) if config.durable_dir else None
        )
        self.kept = NO_STEP  # the last round every pod finished: its staged copies stay whole
        # The job's newest generation (the driver sets it when one opens): a round of an older
        # one stops between ranks and chunks, so the restore does not wait behind it.
        self.open_generation = 0
        # Kept open between rounds (this thread only): mapping a GB afresh each round made
        # staging 2.7x slower (bench/offload_throughput.py).
        self._mapped: dict[tuple[str, int], RankArena] = {}
        # rank -> (slot, step, checksum) of its own copy checksummed since the last failure
        self.verified: dict[int, tuple[int, int, int]] = {}

    def _mapped_arena(self, rank: int, where: str = "") -> RankArena:
        arena = self._mapped.get((where, rank))
        if arena is None:
            arena = self._mapped[(where, rank)] = self._arena(rank, where)
        return arena

    def close(self) -> None:
        for arena in self._mapped.values():
            arena.close()
        self._mapped.clear()

    def _present(self, places: tuple[str, ...]) -> list[str]:
        """Those of `places` that exist: reading never creates a directory."""
        return [w for w in places if (self.directory / w).is_dir()]

    def _arena(self, rank: int, where: str = "") -> RankArena:
        return RankArena(self.directory / where if where else self.directory, rank)

    # -------------------------------------------------------------- rounds
    def run_round(self, rnd: OffloadRound, generation: int) -> RoundResult:
        began = time.perf_counter()
        try:
            images, pinned_s = self._stage(rnd.step, generation)
        except (CorruptSnapshot, OSError, RoundStopped) as err:
            why = f"staging step {rnd.step}: {err}"
            return RoundResult(
                rnd.step, why, why if rnd.replicate else "", why if rnd.persist else ""
            )
        staged_s = time.perf_counter() - began
        size = sum(len(i.manifest) + len(i.payload) for i in images)
        replica_error, persist_error, persist_reason = "", "", ""
        replica_s = persist_s = 0.0
        if rnd.replicate:
            began = time.perf_counter()
            replica_error = self._replicate(images, generation)
            replica_s = time.perf_counter() - began
        if rnd.persist:
            began = time.perf_counter()
            persist_error, persist_reason = self._persist(rnd.step, generation, images)
            persist_s = time.perf_counter() - began
        return RoundResult(
            rnd.step, replica_error=replica_error, persist_error=persist_error,
            persist_reason=persist_reason, bytes=size,
            stage_s=staged_s, replica_s=replica_s, persist_s=persist_s, pinned_s=pinned_s,
        )  # fmt: skip

    def _stage(self, step: int, generation: int) -> tuple[list[SnapshotImage], float]:
        """Copy every local rank's `step` into the staged arenas, checksum verified; and the
        longest a rank's slot stayed pinned.

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
                self._check_current(generation)
                staged = self._mapped_arena(rank, STAGED)  # written by this thread only
                dst = free_slot(staged, self.kept)
                image = source.image(slot, verify=False)
                staged.copy_in(dst, image)
                source.unpin(slot)  # the rank's writer may go on
                copied[rank] = (staged, dst, image.checksum)
            pinned_s = time.perf_counter() - began  # the last rank's slot was pinned longest
        finally:
            for _, source, slot in pinned:
                source.unpin(slot)

        def verified(rank: int) -> SnapshotImage:
            staged, dst, checksum = copied[rank]
            staged.finish_write(dst, expect=checksum)
            return staged.image(dst, verify=False)

        return self._each_rank(verified), pinned_s

    def _ended(self, generation: int) -> bool:
        return self.open_generation > generation

    def _check_current(self, generation: int) -> None:
        if self._ended(generation):
            raise RoundStopped.of(generation)

    def _replicate(self, images: list[SnapshotImage], generation: int) -> str:
        if self.holder is None:
            return "no pod to replicate to"
        throttle = Throttle(self.config.replica_bytes_per_s)

        def pace(nbytes: int) -> None:
            if self._ended(generation):
                raise TransferStopped  # the push ends short; the peer refuses it
            throttle.pace(nbytes)

        try:
            stub = self.holder()
            for image in images:
                self._check_current(generation)
                size = len(image.manifest) + len(image.payload)
                deadline = transfer_deadline_s(size, self.config.replica_bytes_per_s)
                push_replica(stub, self.run_id, self.node_rank, image, pace, timeout_s=deadline)
        except RoundStopped as err:
            return f"replica of step {images[0].step}: {err}"
        except grpc.RpcError as err:
            if self._ended(generation):  # pace() cut the push short
                return f"replica of step {images[0].step}: {RoundStopped.of(generation)}"
            return f"replica of step {images[0].step}: {err.code().name}: {err.details()}"
        return ""

    def _persist(self, step: int, generation: int, images: list[SnapshotImage]) -> tuple[str, str]:
        """("", "") or the error and its reason (an errno name, or "other"). Pruning waits
        until every pod's part is written (prune_persisted)."""
        assert self.store is not None
        try:
            self.store.persist(
                step, generation, images, Throttle(self.config.persist_bytes_per_s).pace
            )
        except (DurableError, OSError) as err:
            return str(err), errno.errorcode.get(err.errno or 0, "other")
        return "", ""

    def prune_persisted(self) -> list[int]:
        """The job's newest persisted step is complete on every pod: keep the newest
        `persist_keep` steps here (all complete: incomplete ones were dropped)."""
        if self.store is None:
            return []
        return self.store.prune(self.config.persist_keep)

    def drop_persisted(self, steps: Iterable[int]) -> list[int]:
        """Delete this pod's part of `steps` (not every pod could write theirs)."""
        if self.store is None:
            return []
        return [step for step in steps if self.store.remove(step)]

    def persist_committed(self, step: int, generation: int) -> str:
        """Persist `step` straight from the ranks' arenas (shutdown: the ranks are gone)."""
        if self.store is None or step == NO_STEP:
            return ""
        if step in self.store.steps():
            return ""
        try:
            images, _ = self._stage(step, generation)
        except (CorruptSnapshot, OSError, RoundStopped) as err:
            return f"staging step {step}: {err}"
        return self._persist(step, generation, images)[0]

    # ------------------------------------------------------------- copies
    def copies(self) -> NodeCopies:
        """What this pod holds for all of its ranks (headers only; restore verifies)."""
        shm: Optional[set[int]] = None
        for rank in self.ranks:
            held = set()
            for where in self._present(("", STAGED)):
                arena = self._arena(rank, where)
                held |= complete_steps(arena)
                arena.close()
            shm = held if shm is None else shm & held
        return NodeCopies(
            shm=frozenset(shm or ()),
            replicas=self._replica_copies(),
            persisted=frozenset(self.store.steps()) if self.store else frozenset(),
        )

    def _replica_copies(self) -> dict[int, frozenset[int]]:
        directory = self.directory / REPLICAS
        if not directory.is_dir():
            return {}
        by_rank: dict[int, set[int]] = {}
        for rank in ranks_in(directory):
            arena = RankArena(directory, rank)
            by_rank[rank] = complete_steps(arena)
            arena.close()
        nproc = len(self.ranks)
        by_node: dict[int, frozenset[int]] = {}
        for node in {r // nproc for r in by_rank}:
            members = [by_rank.get(r, set()) for r in range(node * nproc, (node + 1) * nproc)]
            by_node[node] = frozenset(set.intersection(*members))
        return by_node

    def discard_after(self, step: int) -> list[str]:
        """Steps past `step` are void once a generation restores `step` (the ranks redo
        them with new contents): drop every copy of them here. Returns what went."""
        dropped = []
        replica_dir = self.directory / REPLICAS
        present = self._present(("", STAGED))
        arenas = [self._arena(r, where) for r in self.ranks for where in present]
        if replica_dir.is_dir():
            arenas += [RankArena(replica_dir, r) for r in ranks_in(replica_dir)]
        for arena in arenas:
            for slot in (s.slot for s in arena.slots() if s.state is not SlotState.EMPTY):
                with arena.exclusive(slot):  # a copy still under way lands first, then goes
                    info = arena.slots()[slot]
                    if info.state is SlotState.COMPLETE and info.step > step:
                        arena.discard(slot)
                        dropped.append(f"{arena.path(slot).name} (step {info.step})")
            arena.close()
        if self.store is not None:
            for old in self.store.steps():
                if old > step:
                    self.store.remove(old)
                    dropped.append(f"durable step {old}")
        return dropped

    # ------------------------------------------------------------- restore
    def materialize(self, step: int, order: list[str]) -> Materialized:
        """Put `step` in every local rank's own arena, trying `order`'s sources in turn.

        Ranks in parallel (8 ranks of 10 GB: ~10 s of CRC-32C one after another)."""
        done = Materialized(step)
        configured = {SHM: True, PEER: self.holder is not None, DURABLE: self.store is not None}
        order = [source for source in order if configured[source]]
        placed = self._each_rank(lambda rank: self._first_source(rank, step, order))
        for rank, (source, problems) in zip(self.ranks, placed):
            done.sources[rank] = source
            done.problems += problems
        return done

    def verify_own(self, step: int) -> None:
        """Checksum every rank's own copy of `step` now: a failure just happened, and the
        restore will want it once the ranks have unwound and rebuilt their models. The restore
        then skips a copy verified here whose header is unchanged (a rewrite changes it)."""
        self.verified.clear()
        self._each_rank(lambda rank: self._verify_own(rank, step))

    def _each_rank(self, work: Callable[[int], Done]) -> list[Done]:
        """`work(rank)` for every local rank, in parallel (up to the core count): each rank
        has its own arenas, and checksums and copies release the GIL."""
        threads = max(1, min(len(self.ranks), os.cpu_count() or 1))
        with ThreadPoolExecutor(threads, thread_name_prefix="per-rank") as pool:
            return list(pool.map(work, self.ranks))

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

    def _first_source(self, rank: int, step: int, order: list[str]) -> tuple[str, list[str]]:
        """The first of `order` that put rank's `step` in place ("" for none), and the problems."""
        problems: list[str] = []
        for source in order:
            try:
                problems += self._place(rank, step, source)
            except (CorruptSnapshot, DurableError, OSError, grpc.RpcError) as err:
                text = (
                    f"{err.code().name}: {err.details()}"
                    if isinstance(err, grpc.RpcError)
                    else str(err)
                )
                problems.append(f"rank {rank}: {source}: {text}")
                continue
            return source, problems
        return "", problems

    def _place(self, rank: int, step: int, source: str) -> list[str]:
        """Put rank's `step` from `source` in its arena (raises when it cannot); returns the
        copies passed over on the way."""
        arena = self._arena(rank)
        try:
            if source == SHM:
                own, why = arena.find(step), f"step {step} is not in this pod's memory"
                if own is not None:
                    try:
                        info, _, payload = arena.read(own, verify=False)
                        del payload
                        if self.verified.get(rank) != (own, step, info.checksum):
                            arena.read(own, verify=True)
                        return []
                    except CorruptSnapshot as err:  # the staged copy may still be good
                        why = str(err)
                staged = self._arena(rank, STAGED)
                try:
                    slot = staged.find(step)
                    if slot is None:
                        raise CorruptSnapshot(f"rank {rank}: {why}")
                    arena.store(free_slot(arena, NO_STEP), staged.image(slot, verify=True))
                    return [] if own is None else [f"rank {rank}: shm: {why}; the staged copy used"]
                finally:
                    staged.close()
            elif source == PEER:
                assert self.holder is not None  # materialize tries only configured sources
                fetch_replica(
                    self.holder(), self.run_id, rank, step, arena, free_slot(arena, NO_STEP)
                )
            elif source == DURABLE:
                assert self.store is not None
                arena.store(free_slot(arena, NO_STEP), self.store.load(step, rank))
            else:
                raise ValueError(f"unknown restore source {source!r}")
            return []
        finally:
            arena.close()
