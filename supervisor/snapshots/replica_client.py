"""The client side of peer replicas: push a snapshot to the next pod, fetch one back.

Sync gRPC, for the offload worker thread (supervisor/snapshots/offload.py): PeerStore is the
next pod as a snapshot store (supervisor/snapshots/store.py). The server and the rules both
sides share are in supervisor/snapshots/replica.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Optional, Union

import grpc

from supervisor.snapshots.replica import (
    CHUNK_BYTES,
    ENVELOPE_BYTES,
    NEWEST,
    TRANSFER_TIMEOUT_S,
    IncomingCopy,
    Refused,
    header_problem,
    payload_chunks,
)
from supervisor.snapshots.restore import PEER
from supervisor.snapshots.store import RoundStopped, free_slot
from supervisor.snapshots.throttle import Throttle
from train_supervisor.arena import CorruptSnapshot, RankArena, SlotInfo, SnapshotImage
from train_supervisor.credentials import MAX_MESSAGE_BYTES
from train_supervisor.steps import NO_STEP
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

Target = Union[grpc.Channel, pb_grpc.ReplicaServiceStub]


def _stub(target: Target) -> pb_grpc.ReplicaServiceStub:
    return (
        target
        if isinstance(target, pb_grpc.ReplicaServiceStub)
        else pb_grpc.ReplicaServiceStub(target)
    )


def replica_chunks(
    run_id: str,
    node_rank: int,
    image: SnapshotImage,
    pace: Callable[[int], None],
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[pb.ReplicaChunk]:
    """The messages of one push: the header, then payload chunks; pace(n) after each is taken.

    Checks its arguments now (ValueError), not when gRPC's thread starts iterating.
    """
    limit = MAX_MESSAGE_BYTES - ENVELOPE_BYTES
    if not 0 < chunk_bytes <= limit:
        raise ValueError(f"chunk_bytes must be in 1..{limit}, not {chunk_bytes}")
    if len(image.manifest) > limit:
        raise ValueError(
            f"rank {image.rank} step {image.step}: a manifest of {len(image.manifest)} bytes "
            f"does not fit one message (at most {limit})"
        )
    header = pb.ReplicaHeader(
        run_id=run_id,
        node_rank=node_rank,
        rank=image.rank,
        step=image.step,
        generation=image.generation,
        manifest=image.manifest,
        payload_len=image.payload.nbytes,
        checksum=image.checksum,
    )
    return _paced(header, image.payload, pace, chunk_bytes)


class TransferStopped(Exception):
    """Raised by a `pace` callable: end the push here (the peer refuses the short stream)."""


def _paced(
    header: pb.ReplicaHeader,
    payload: memoryview,
    pace: Callable[[int], None],
    chunk_bytes: int,
) -> Iterator[pb.ReplicaChunk]:
    yield pb.ReplicaChunk(header=header)
    for chunk in payload_chunks(payload, chunk_bytes):
        yield chunk
        try:
            pace(len(chunk.data))  # runs when gRPC asks for the next: this one was handed over
        except TransferStopped:
            return


def push_replica(
    target: Target,
    run_id: str,
    node_rank: int,
    image: SnapshotImage,
    pace: Callable[[int], None],
    chunk_bytes: int = CHUNK_BYTES,
    timeout_s: Optional[float] = TRANSFER_TIMEOUT_S,
) -> pb.ReplicaAck:
    """Push one rank's snapshot to a peer; grpc.RpcError when the peer refuses it.

    pace: e.g. supervisor.snapshots.throttle.Throttle(rate).pace to cap the bandwidth.
    """
    chunks = replica_chunks(run_id, node_rank, image, pace, chunk_bytes)
    ack: pb.ReplicaAck = _stub(target).PushReplica(chunks, timeout=timeout_s)
    return ack


def fetch_replica(
    target: Target,
    run_id: str,
    rank: int,
    step: int,
    into: RankArena,
    slot: int,
    timeout_s: Optional[float] = TRANSFER_TIMEOUT_S,
) -> SlotInfo:
    """Copy a peer's replica of `rank` (`step`, or NEWEST) into `slot` of `into`, verified.

    CorruptSnapshot when the bytes that came are not the snapshot the header describes (the
    slot then stays WRITING); grpc.RpcError when the peer refuses (NOT_FOUND, DATA_LOSS, ...).
    """
    if rank != into.rank:
        raise ValueError(f"replica of rank {rank} asked into rank {into.rank}'s arena")
    request = pb.ReplicaRequest(run_id=run_id, rank=rank, step=step)
    responses = _stub(target).FetchReplica(request, timeout=timeout_s)
    try:
        with into.exclusive(slot):  # a worker's writer may still be in this slot
            return _receive(responses, rank, step, into, slot)
    finally:
        responses.cancel()  # a no-op once the stream is over; stops the peer after an error


def _receive(
    responses: Iterator[pb.ReplicaChunk], rank: int, step: int, into: RankArena, slot: int
) -> SlotInfo:
    what = f"replica of rank {rank} step {step} from the peer"
    first = next(responses, None)
    if first is None or not first.HasField("header"):
        raise CorruptSnapshot(f"{what}: the stream did not start with a header")
    h = first.header
    if h.rank != rank or step not in (NEWEST, h.step) or header_problem(h) is not None:
        problem = header_problem(h) or f"got rank {h.rank} step {h.step} instead"
        raise CorruptSnapshot(f"{what}: {problem}")
    copy = IncomingCopy(
        h, slot, into.begin_write(slot, h.step, h.generation, h.manifest, h.payload_len)
    )
    try:
        for chunk in responses:
            copy.write(chunk)
        return into.finish_write(*copy.done())
    except Refused as refused:
        raise CorruptSnapshot(f"{refused} (from the peer)") from None
    finally:
        copy.view.release()


SLOWEST_LINK_BYTES_PER_S = 50e6


def transfer_deadline_s(size: int, rate_bytes_per_s: float) -> float:
    """How long one copy may take before the peer counts as hung: twice its time at the cap
    (or at a slow 50 MB/s without one), plus a minute."""
    return 60.0 + 2 * size / (rate_bytes_per_s or SLOWEST_LINK_BYTES_PER_S)


class PeerStore:
    """The next pod's shared memory as a snapshot store: its ReplicaService keeps this pod's
    ranks (supervisor/snapshots/replica.py), pushed each round, fetched back by a replaced pod.

    The next pod lists what it keeps (its report's `replicas`) and voids it when the job
    restores an older step (every pod restores the same one): here, steps() and drop_after()
    have nothing to do."""

    name = PEER

    def __init__(
        self,
        run_id: str,
        node_rank: int,
        holder: Callable[[], pb_grpc.ReplicaServiceStub],
        bytes_per_s: float = 0.0,
    ) -> None:
        self.run_id, self.node_rank = run_id, node_rank
        self.holder = holder  # the next pod's replica service
        self.bytes_per_s = bytes_per_s  # 0: no cap

    def steps(self) -> frozenset[int]:
        return frozenset()

    def put(
        self,
        step: int,
        generation: int,
        images: Sequence[SnapshotImage],
        stopped: Callable[[], bool],
    ) -> None:
        """Push every rank's image, paced at the cap; a push cut short by `stopped` is
        refused by the peer (its previous good copy stays) and raises RoundStopped."""
        throttle = Throttle(self.bytes_per_s)

        def pace(nbytes: int) -> None:
            if stopped():
                raise TransferStopped  # the push ends short; the peer refuses it
            throttle.pace(nbytes)

        stub = self.holder()
        for image in images:
            if stopped():
                raise RoundStopped.of(generation)
            size = len(image.manifest) + len(image.payload)
            deadline = transfer_deadline_s(size, self.bytes_per_s)
            try:
                push_replica(stub, self.run_id, self.node_rank, image, pace, timeout_s=deadline)
            except grpc.RpcError:
                if stopped():  # pace() cut the push short
                    raise RoundStopped.of(generation) from None
                raise

    def get(self, step: int, into: RankArena) -> list[str]:
        fetch_replica(self.holder(), self.run_id, into.rank, step, into, free_slot(into, NO_STEP))
        return []

    def drop_after(self, step: int) -> list[str]:
        return []
