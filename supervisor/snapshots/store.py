"""The seam between snapshot copies and the places they live: a store interface (I/O).

A pod's committed snapshots have copies in several stores: this pod's shared memory
(supervisor/snapshots/memory_store.py), the next pod's (supervisor/snapshots/replica_client.py
PeerStore) and the durable directory (supervisor/snapshots/durable.py). The offload round
(supervisor/snapshots/offload.py) stages a step in memory, then `put`s it into every store the
round is for; the restore tries a list of stores in order, and the first whose `get` puts a
rank's copy in place wins. A further store (object storage, say) implements these methods and
is handed to the Offloader; nothing else changes for it.

Stores are called from the offloader's one worker thread, so an implementation need not lock.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from train_supervisor.arena import RankArena, SlotState, SnapshotImage

# Raised by put and get: a copy that cannot be written or read (CorruptSnapshot: a copy that
# fails its checksum or is not there; OSError: the medium; grpc.RpcError: the peer), or
# RoundStopped. Every other exception is a bug.

Done = TypeVar("Done")  # what a per-rank piece of work returns


class RoundStopped(Exception):
    """The generation a round was started in ended while it ran."""

    @classmethod
    def of(cls, generation: int) -> RoundStopped:
        return cls(f"generation {generation} ended: round stopped")


class SnapshotStore(Protocol):
    """One place a pod's committed snapshots are copied to and restored from."""

    # How events, status and the restore choice name it ("shm", "peer", "durable", ...): the
    # names the pods' reports use (supervisor/snapshots/restore.py).
    name: str

    def steps(self) -> Collection[int]:
        """The steps this store holds whole for every one of this pod's ranks, as far as this
        pod can list them (a copy another pod keeps is listed by that pod)."""
        ...

    def put(
        self,
        step: int,
        generation: int,
        images: Sequence[SnapshotImage],
        stopped: Callable[[], bool],
    ) -> None:
        """Keep `images` (this pod's ranks at `step`). A store that may take long checks
        `stopped()` between pieces and raises RoundStopped once it is true."""
        ...

    def get(self, step: int, into: RankArena) -> list[str]:
        """Put `into.rank`'s copy of `step` in a free slot of `into`, checksum verified; the
        copies passed over on the way. Raises when there is no good copy here."""
        ...

    def drop_after(self, step: int) -> list[str]:
        """Void the copies of steps past `step` (the ranks redo them with new contents);
        what went, for the event."""
        ...


class PersistentStore(SnapshotStore, Protocol):
    """A store written every K steps or T seconds that outlives the pods: a step counts once
    every pod's part of it is written, so the rounds' leader prunes and drops by step."""

    def prune(self, keep: int) -> list[int]:
        """Keep the newest `keep` complete steps; the steps removed."""
        ...

    def remove(self, step: int) -> bool:
        """Delete this pod's part of `step`; False if it was not there."""
        ...


def free_slot(arena: RankArena, keep: int) -> int:
    """A slot to write, never the one holding `keep` complete."""
    slots = arena.slots()
    for info in slots:
        if not (info.state is SlotState.COMPLETE and info.step == keep):
            return info.slot
    raise RuntimeError(f"{arena.directory}: both slots hold step {keep}")


def each_rank(ranks: Sequence[int], work: Callable[[int], Done]) -> list[Done]:
    """`work(rank)` for every rank, in parallel (up to the core count): each rank has its own
    arenas, and checksums and copies release the GIL."""
    threads = max(1, min(len(ranks), os.cpu_count() or 1))
    with ThreadPoolExecutor(threads, thread_name_prefix="per-rank") as pool:
        return list(pool.map(work, ranks))
