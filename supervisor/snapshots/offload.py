"""The offload round and the restore, over the pod's snapshot stores (I/O).

Called from one worker thread (never the event loop): a round (stage in this pod's
memory, then put the staged step into the peer, the durable directory and any further
store) and a restore's copy into a rank's arena never run at the same time. What to do and
when is decided elsewhere (supervisor/snapshots/rounds.py, supervisor/snapshots/restore.py);
the stores are supervisor/snapshots/store.py's.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import grpc

from supervisor.settings.snapshots import OffloadConfig
from supervisor.snapshots.durable import DurableStore
from supervisor.snapshots.memory_store import REPLICAS, STAGED, KeptReplicas, MemoryStore
from supervisor.snapshots.replica_client import PeerStore
from supervisor.snapshots.restore import NodeCopies
from supervisor.snapshots.rounds import OffloadRound
from supervisor.snapshots.store import PersistentStore, RoundStopped, SnapshotStore, each_rank
from train_supervisor.arena import CorruptSnapshot, RankArena, SnapshotImage
from train_supervisor.steps import NO_STEP
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

__all__ = [
    "REPLICAS",
    "STAGED",
    "Materialized",
    "Offloader",
    "RoundResult",
]  # REPLICAS, STAGED: the layout's names, for the server and tests

# What a store's put or get raises for a copy it cannot write or read (store.py).
STORE_ERRORS = (CorruptSnapshot, OSError, grpc.RpcError, RoundStopped)


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


def problem(err: Exception) -> str:
    """A store error as one line (a gRPC error: its code and details)."""
    return f"{err.code().name}: {err.details()}" if isinstance(err, grpc.RpcError) else str(err)


def reason(err: Exception) -> str:
    """A persist error's errno name (ENOSPC, EIO, ...), or "other"."""
    code = err.errno if isinstance(err, OSError) else None
    return errno.errorcode.get(code or 0, "other")


class Offloader:
    """One pod's stores: its shared memory (always), the next pod's (`holder`: its replica
    service), the durable directory (config.durable_dir) and any further ones given.

    A round stages a step in memory and puts it into the replicate stores (every round) and
    the persist stores (when the round persists); a restore tries `restore_order`, memory
    first, and each rank takes the first store that puts its copy in place."""

    def __init__(
        self,
        run_id: str,
        node_rank: int,
        ranks: Iterable[int],
        snapshot_dir: Path,
        config: OffloadConfig,
        holder: Optional[Callable[[], pb_grpc.ReplicaServiceStub]] = None,
        replicate_to: Sequence[SnapshotStore] = (),
        persist_to: Sequence[PersistentStore] = (),
    ) -> None:
        self.run_id, self.node_rank, self.ranks = run_id, node_rank, sorted(ranks)
        self.directory = snapshot_dir
        self.config = config
        self.memory = MemoryStore(snapshot_dir, self.ranks)
        self.kept_replicas = KeptReplicas(snapshot_dir, len(self.ranks))
        self.peer = (
            PeerStore(run_id, node_rank, holder, config.replica_bytes_per_s) if holder else None
        )
        self.durable = (
            DurableStore(config.durable_dir, run_id, node_rank, config.persist_bytes_per_s)
            if config.durable_dir
            else None
        )
        self.more_replicate_to, self.more_persist_to = list(replicate_to), list(persist_to)
        # The job's newest generation (the driver sets it when one opens): a round of an older
        # one stops between ranks and chunks, so the restore does not wait behind it.
        self.open_generation = 0

    # ----------------------------------------------------------- the stores
    @property
    def replicate_to(self) -> list[SnapshotStore]:
        """The stores every round puts its step into."""
        return [*([self.peer] if self.peer else []), *self.more_replicate_to]

    @property
    def persist_to(self) -> list[PersistentStore]:
        """The stores a persisting round puts its step into."""
        return [*([self.durable] if self.durable else []), *self.more_persist_to]

    @property
    def restore_order(self) -> list[SnapshotStore]:
        """Where a rank's copy is looked for, first that has it wins: memory, peer, disk."""
        return [self.memory, *self.replicate_to, *self.persist_to]

    @property
    def holder(self) -> Optional[Callable[[], pb_grpc.ReplicaServiceStub]]:
        return self.peer.holder if self.peer else None

    @holder.setter
    def holder(self, holder: Callable[[], pb_grpc.ReplicaServiceStub]) -> None:
        """Another way to the next pod's replica service (e.g. a new channel)."""
        if self.peer is None:
            bytes_per_s = self.config.replica_bytes_per_s
            self.peer = PeerStore(self.run_id, self.node_rank, holder, bytes_per_s)
        self.peer.holder = holder

    @property
    def kept(self) -> int:
        """The last round every pod finished: its staged copies stay whole."""
        return self.memory.kept

    @kept.setter
    def kept(self, step: int) -> None:
        self.memory.kept = step

    @property
    def verified(self) -> dict[int, tuple[int, int, int]]:
        return self.memory.verified

    def close(self) -> None:
        self.memory.close()

    # -------------------------------------------------------------- rounds
    def run_round(self, rnd: OffloadRound, generation: int) -> RoundResult:
        began = time.perf_counter()
        try:
            images, pinned_s = self.memory.stage(rnd.step, generation, self._stopped(generation))
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

    def _stopped(self, generation: int) -> Callable[[], bool]:
        """Whether the round's generation has ended (a failure opened the next one)."""
        return lambda: self.open_generation > generation

    def _replicate(self, images: list[SnapshotImage], generation: int) -> str:
        if not self.replicate_to:
            return "no pod to replicate to"
        errors = []
        for store in self.replicate_to:
            try:
                store.put(images[0].step, generation, images, self._stopped(generation))
            except STORE_ERRORS as err:
                errors.append(f"replica of step {images[0].step}: {problem(err)}")
        return "; ".join(errors)

    def _persist(self, step: int, generation: int, images: list[SnapshotImage]) -> tuple[str, str]:
        """("", "") or the error and its reason (an errno name, or "other"). Pruning waits
        until every pod's part is written (prune_persisted)."""
        errors, reasons = [], []
        for store in self.persist_to:
            try:
                store.put(step, generation, images, self._stopped(generation))
            except STORE_ERRORS as err:
                errors.append(problem(err))
                reasons.append(reason(err))
        return "; ".join(errors), reasons[0] if reasons else ""

    def prune_persisted(self) -> list[int]:
        """The job's newest persisted step is complete on every pod: keep the newest
        `persist_keep` steps here (all complete: incomplete ones were dropped)."""
        return [s for store in self.persist_to for s in store.prune(self.config.persist_keep)]

    def drop_persisted(self, steps: Iterable[int]) -> list[int]:
        """Delete this pod's part of `steps` (not every pod could write theirs)."""
        return [s for s in steps if any([store.remove(s) for store in self.persist_to])]

    def persist_committed(self, step: int, generation: int) -> str:
        """Persist `step` straight from the ranks' arenas (shutdown: the ranks are gone)."""
        due = [store for store in self.persist_to if step not in store.steps()]
        if not due or step == NO_STEP:
            return ""
        try:
            images, _ = self.memory.stage(step, generation, self._stopped(generation))
        except (CorruptSnapshot, OSError, RoundStopped) as err:
            return f"staging step {step}: {err}"
        errors = []
        for store in due:
            try:
                store.put(step, generation, images, self._stopped(generation))
            except STORE_ERRORS as err:
                errors.append(problem(err))
        return "; ".join(errors)

    # ------------------------------------------------------------- copies
    def copies(self) -> NodeCopies:
        """What this pod holds for all of its ranks (headers only; restore verifies)."""
        listed = {store.name: frozenset(store.steps()) for store in self.restore_order}
        return NodeCopies.of(listed, self.kept_replicas.steps_by_node())

    def discard_after(self, step: int) -> list[str]:
        """Steps past `step` are void once a generation restores `step` (the ranks redo
        them with new contents): drop every copy of them here. Returns what went."""
        dropped = self.memory.drop_after(step) + self.kept_replicas.drop_after(step)
        for store in self.restore_order[1:]:
            dropped += store.drop_after(step)
        return dropped

    # ------------------------------------------------------------- restore
    def materialize(self, step: int, order: Optional[Sequence[str]] = None) -> Materialized:
        """Put `step` in every local rank's own arena, trying the stores in `order` (their
        names; None: restore_order) in turn.

        Ranks in parallel (8 ranks of 10 GB: ~10 s of CRC-32C one after another)."""
        done = Materialized(step)
        by_name = {store.name: store for store in self.restore_order}
        stores = (
            [by_name[name] for name in order if name in by_name]
            if order
            else list(by_name.values())
        )
        placed = each_rank(self.ranks, lambda rank: self._first_store(rank, step, stores))
        for rank, (source, problems) in zip(self.ranks, placed):
            done.sources[rank] = source
            done.problems += problems
        return done

    def verify_own(self, step: int) -> None:
        """Checksum every rank's own copy of `step` now: a failure just happened, and the
        restore will want it once the ranks have unwound and rebuilt their models. The restore
        then skips a copy verified here whose header is unchanged (a rewrite changes it)."""
        self.memory.verify_own(step)

    def _first_store(
        self, rank: int, step: int, stores: list[SnapshotStore]
    ) -> tuple[str, list[str]]:
        """The name of the first store that put rank's `step` in place ("" for none), and the
        problems on the way."""
        problems: list[str] = []
        for store in stores:
            arena = RankArena(self.directory, rank)
            try:
                problems += store.get(step, arena)
            except STORE_ERRORS as err:
                problems.append(f"rank {rank}: {store.name}: {problem(err)}")
                continue
            finally:
                arena.close()
            return store.name, problems
        return "", problems
