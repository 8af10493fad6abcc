"""Peer replicas (DESIGN section 5): a pod keeps the previous pod's committed snapshots.

Each pod's supervisor pushes its ranks' committed snapshots to the next pod's supervisor, which
keeps them in `RankArena(directory, rank)` files in its own shared memory; a replaced pod fetches
them back. One stream carries one rank's snapshot: a header, then payload chunks in order.

A push goes into the slot that does not hold the newest complete copy, and that slot reads as
WRITING until the whole copy verified against the sender's checksum: an interrupted or corrupt
push never costs the previous good replica. The server is grpc.aio; the client side (push,
fetch) is supervisor/snapshots/replica_client.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Optional

import crc32c
import grpc

from supervisor.rpc.call_checks import Refusal
from supervisor.rpc.refusals import RefusalLog
from train_supervisor.arena import (
    ArenaFull,
    CorruptSnapshot,
    RankArena,
    SlotInfo,
    SlotState,
    ranks_in,
)
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

log = logging.getLogger("train_supervisor")

NEWEST = -1  # ReplicaRequest.step: the newest complete copy
CHUNK_BYTES = 1 << 20
# Room for a chunk's other fields (or a header's) within one gRPC message.
ENVELOPE_BYTES = 64 * 1024
# Default deadline of one transfer; a capped push of a big image needs size / rate more.
TRANSFER_TIMEOUT_S = 600.0

# The current job's (run_id, replica directory), or None before a job attaches.
ReplicaJob = Callable[[], Optional[tuple[str, Path]]]
OnStored = Callable[[int, int], None]  # (rank, step) of a replica just stored
# Whether a pushed header fits the job (supervisor/rpc/call_checks.py replica_header), or why not.
CheckHeader = Callable[[pb.ReplicaHeader], Optional[Refusal]]
Code = grpc.StatusCode


class Refused(Exception):
    """Why the server refuses a call: the status code and a message naming what is wrong."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------ shared rules


def newest_complete(slots: Iterable[SlotInfo]) -> Optional[SlotInfo]:
    """The COMPLETE slot with the highest step (then generation), by header only."""
    complete = [s for s in slots if s.state is SlotState.COMPLETE]
    return max(complete, key=lambda s: (s.step, s.generation)) if complete else None


def push_slot(slots: Iterable[SlotInfo]) -> int:
    """Where a new copy goes: never over the newest complete one."""
    newest = newest_complete(slots)
    return 0 if newest is None else 1 - newest.slot


def header_problem(header: pb.ReplicaHeader) -> Optional[str]:
    """What makes a header unusable, or None."""
    if header.rank < 0:
        return f"rank {header.rank} is negative"
    if header.step < 0:
        return f"rank {header.rank}: step {header.step} is negative"
    if header.payload_len < 0:
        return f"rank {header.rank} step {header.step}: payload_len {header.payload_len} < 0"
    return None


def payload_chunks(payload: memoryview, chunk_bytes: int) -> Iterator[pb.ReplicaChunk]:
    for offset in range(0, payload.nbytes, chunk_bytes):
        data = bytes(payload[offset : offset + chunk_bytes])
        yield pb.ReplicaChunk(offset=offset, data=data, crc32c=crc32c.crc32c(data))


def inventory(directory: Path, verify: bool) -> dict[int, list[int]]:
    """Every rank with a complete copy in `directory` and its steps (verify: checksum ok)."""
    held: dict[int, list[int]] = {}
    for rank in ranks_in(directory):
        with RankArena(directory, rank) as arena:
            complete = [s for s in arena.slots() if s.state is SlotState.COMPLETE]
            steps = {s.step for s in complete if not verify or _verifies(arena, s.slot)}
        if steps:
            held[rank] = sorted(steps)
    return held


def _verifies(arena: RankArena, slot: int) -> bool:
    try:
        arena.read(slot, verify=True)[2].release()
        return True
    except CorruptSnapshot as err:
        log.warning("replica inventory skips a copy: %s", err)
        return False


@dataclass
class IncomingCopy:
    """One copy coming in (a push here, or a fetch): its slot reads WRITING until verified."""

    header: pb.ReplicaHeader
    slot: int
    view: memoryview
    offset: int = 0

    def write(self, chunk: pb.ReplicaChunk) -> None:
        """Checks `chunk` follows on (Refused naming rank, step and offset), then copies it."""
        at, n, total = self.offset, len(chunk.data), self.header.payload_len
        if chunk.HasField("header"):
            raise self.refused(Code.INVALID_ARGUMENT, f"a second header at offset {at}")
        if chunk.offset != at:
            raise self.refused(
                Code.INVALID_ARGUMENT, f"chunk at offset {chunk.offset}, expected {at}"
            )
        if at + n > total:
            raise self.refused(
                Code.INVALID_ARGUMENT, f"{n} bytes at offset {at} run past payload_len {total}"
            )
        if (crc := crc32c.crc32c(chunk.data)) != chunk.crc32c:
            raise self.refused(
                Code.DATA_LOSS,
                f"{n} bytes at offset {at} have CRC-32C {crc:#010x}, "
                f"the sender says {chunk.crc32c:#010x}",
            )
        # Inline, even on the event loop: CRC and copy take ~0.25 ms per MiB here, against
        # ~3 ms for gRPC to bring the MiB (measured on loopback).
        self.view[at : at + n] = chunk.data
        self.offset = at + n

    def refused(self, code: grpc.StatusCode, problem: str) -> Refused:
        return Refused(
            code, f"replica of rank {self.header.rank} step {self.header.step}: {problem}"
        )

    def done(self) -> tuple[int, int]:
        """finish_write's arguments, once every byte came; releases the view."""
        if self.offset != self.header.payload_len:
            raise self.refused(
                Code.INVALID_ARGUMENT,
                f"the stream ended at offset {self.offset} of {self.header.payload_len}",
            )
        self.view.release()
        return self.slot, self.header.checksum


# ------------------------------------------------------------------ server


class ReplicaServicer(pb_grpc.ReplicaServiceServicer):
    """Holds other pods' rank snapshots: one RankArena per rank under the job's directory."""

    def __init__(
        self,
        job: ReplicaJob,
        on_stored: Optional[OnStored] = None,
        refusals: Optional[RefusalLog] = None,
        check_header: Optional[CheckHeader] = None,
    ) -> None:
        self._job = job
        self._check_header = check_header
        self._refusals = refusals if refusals is not None else RefusalLog()
        self._on_stored = on_stored
        # In flight, per (directory, rank): one push at a time (its step), and never a push
        # into a slot being fetched (counts per slot). Only the event loop touches these.
        self._pushing: dict[tuple[Path, int], int] = {}
        self._reading: collections.Counter[tuple[Path, int, int]] = collections.Counter()

    def _directory(self, run_id: str) -> Path:
        job = self._job()
        if job is None:
            raise Refused(Code.FAILED_PRECONDITION, "no job attached yet: holding no replicas")
        current, directory = job
        if run_id != current:
            raise Refused(
                Code.FAILED_PRECONDITION,
                f"replica request for run {run_id!r}, but this pod runs {current!r}",
            )
        return directory

    async def _refuse(
        self, context: grpc.aio.ServicerContext[Any, Any], call: str, refused: Refused
    ) -> NoReturn:
        self._refusals.refusal(f"replica {call}", context.peer(), refused.code.name, str(refused))
        await context.abort(refused.code, str(refused))
        raise AssertionError("unreachable: abort raises")

    async def PushReplica(
        self,
        request_iterator: AsyncIterable[pb.ReplicaChunk],
        context: grpc.aio.ServicerContext[pb.ReplicaChunk, pb.ReplicaAck],
    ) -> pb.ReplicaAck:
        try:
            return await self._push(request_iterator)
        except Refused as refused:
            await self._refuse(context, "push", refused)

    async def _push(self, chunks: AsyncIterable[pb.ReplicaChunk]) -> pb.ReplicaAck:
        with contextlib.ExitStack() as stack:
            copy: Optional[IncomingCopy] = None
            arena: Optional[RankArena] = None
            async for chunk in chunks:
                if copy is None:
                    arena, copy = await self._begin(chunk, stack)
                    if not chunk.data:
                        continue  # a header alone
                copy.write(chunk)
            if copy is None or arena is None:
                raise Refused(Code.INVALID_ARGUMENT, "empty push: no header, no data")
            try:  # checksums the whole copy: a thread, not the event loop
                info = await asyncio.to_thread(arena.finish_write, *copy.done())
            except CorruptSnapshot as err:
                raise copy.refused(Code.DATA_LOSS, str(err)) from None
        self._stored(info.rank, info.step)
        return pb.ReplicaAck(rank=info.rank, step=info.step, bytes=info.payload_len)

    async def _begin(
        self, first: pb.ReplicaChunk, stack: contextlib.ExitStack
    ) -> tuple[RankArena, IncomingCopy]:
        if not first.HasField("header"):
            raise Refused(
                Code.INVALID_ARGUMENT,
                f"the first message of a push must carry the header (got a chunk at offset "
                f"{first.offset} with {len(first.data)} bytes)",
            )
        header = first.header
        directory = self._directory(header.run_id)
        if (problem := header_problem(header)) is not None:
            raise Refused(Code.INVALID_ARGUMENT, problem)
        if self._check_header is not None and (refusal := self._check_header(header)) is not None:
            raise Refused(refusal.code, refusal.reason)
        key = (directory, header.rank)
        if key in self._pushing:
            raise Refused(
                Code.ABORTED,
                f"rank {header.rank}: a push of step {self._pushing[key]} is in progress, "
                f"refusing step {header.step}",
            )
        arena = stack.enter_context(RankArena(directory, header.rank))
        slot = push_slot(arena.slots())
        if self._reading[(*key, slot)]:
            raise Refused(
                Code.ABORTED,
                f"rank {header.rank}: slot {slot} is being fetched, refusing step {header.step}",
            )
        self._pushing[key] = header.step
        stack.callback(self._pushing.pop, key)
        begin = (slot, header.step, header.generation, header.manifest, header.payload_len)
        try:  # growing and populating a big slot takes a while: a thread
            view = await asyncio.to_thread(arena.begin_write, *begin)
        except ArenaFull as err:
            raise Refused(Code.RESOURCE_EXHAUSTED, f"rank {header.rank}: {err}") from None
        stack.callback(view.release)
        return arena, IncomingCopy(header, slot, view)

    def _stored(self, rank: int, step: int) -> None:
        log.info("stored the replica of rank %d step %d", rank, step)
        if self._on_stored is not None:
            try:
                self._on_stored(rank, step)
            except Exception:  # the copy is good: the sender must still hear so
                log.exception("on_stored(%d, %d) failed", rank, step)

    async def FetchReplica(
        self,
        request: pb.ReplicaRequest,
        context: grpc.aio.ServicerContext[pb.ReplicaRequest, pb.ReplicaChunk],
    ) -> AsyncIterator[pb.ReplicaChunk]:
        with contextlib.ExitStack() as stack:
            try:
                header, payload = await self._open_fetch(request, stack)
            except Refused as refused:
                await self._refuse(context, "fetch", refused)
            yield pb.ReplicaChunk(header=header)
            for chunk in payload_chunks(payload, CHUNK_BYTES):
                yield chunk

    async def _open_fetch(
        self, request: pb.ReplicaRequest, stack: contextlib.ExitStack
    ) -> tuple[pb.ReplicaHeader, memoryview]:
        directory = self._directory(request.run_id)
        rank, step = request.rank, request.step
        if rank < 0 or step < NEWEST:
            raise Refused(Code.INVALID_ARGUMENT, f"bad replica request: rank {rank} step {step}")
        arena = stack.enter_context(RankArena(directory, rank))
        slots = arena.slots()
        newest = newest_complete(slots)
        slot = (newest.slot if newest else None) if step == NEWEST else arena.find(step)
        if slot is None:
            held = sorted(s.step for s in slots if s.state is SlotState.COMPLETE)
            wanted = "any step" if step == NEWEST else f"step {step}"
            raise Refused(
                Code.NOT_FOUND, f"no replica of rank {rank} {wanted} (complete steps held: {held})"
            )
        key = (directory, rank, slot)
        self._reading[key] += 1
        stack.callback(self._reading.subtract, [key])
        try:  # verified before the first byte leaves
            info, manifest, payload = await asyncio.to_thread(arena.read, slot, True)
        except CorruptSnapshot as err:
            raise Refused(Code.DATA_LOSS, f"replica of rank {rank}: {err}") from None
        stack.callback(payload.release)
        header = pb.ReplicaHeader(
            rank=rank,
            step=info.step,
            generation=info.generation,
            manifest=manifest,
            payload_len=info.payload_len,
            checksum=info.checksum,
        )
        return header, payload

    async def Inventory(
        self,
        request: pb.InventoryRequest,
        context: grpc.aio.ServicerContext[pb.InventoryRequest, pb.ReplicaInventory],
    ) -> pb.ReplicaInventory:
        try:
            directory = self._directory(request.run_id)
        except Refused as refused:
            await self._refuse(context, "inventory", refused)
        held = await asyncio.to_thread(inventory, directory, request.verify)
        return pb.ReplicaInventory(
            ranks=[pb.ReplicaInventory.Held(rank=r, steps=steps) for r, steps in held.items()]
        )
