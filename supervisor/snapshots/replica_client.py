"""The client side of peer replicas: push a snapshot to the next pod, fetch one back.

Sync gRPC, for the offload worker thread (supervisor/snapshots/offload.py); the server and the rules
both sides share are in supervisor/snapshots/replica.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
from train_supervisor.arena import CorruptSnapshot, RankArena, SlotInfo, SnapshotImage
from train_supervisor.credentials import MAX_MESSAGE_BYTES
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
