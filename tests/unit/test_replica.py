"""supervisor/snapshots/replica.py: peer replicas over a real gRPC server on loopback, real arena
files."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

import crc32c
import grpc
import pytest

from supervisor.rpc.server import start_server
from supervisor.rpc.service import Supervisor, SupervisorSettings
from supervisor.snapshots.replica import CHUNK_BYTES, NEWEST, ReplicaServicer
from supervisor.snapshots.replica_client import fetch_replica, push_replica, replica_chunks
from supervisor.snapshots.throttle import Throttle
from train_supervisor.arena import CorruptSnapshot, RankArena, SlotState, SnapshotImage
from train_supervisor.credentials import client_channel
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

RUN = "run-7"
TOKEN = "replica-test-token-0123456789abcdef"
MIB = 1 << 20


def no_pace(nbytes: int) -> None:
    pass


class Peer:
    """The next pod's supervisor: start_server with a ReplicaServicer, on its own loop thread."""

    def __init__(self, directory: Path, token: Optional[str] = None) -> None:
        self.directory = directory
        self.job: Optional[tuple[str, Path]] = (RUN, directory)
        self.stored: list[tuple[int, int]] = []
        self.servicer = ReplicaServicer(lambda: self.job, lambda r, s: self.stored.append((r, s)))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, self.port = self.call(self._start(token))
        self.channel = client_channel(f"127.0.0.1:{self.port}", token)
        self.stub = pb_grpc.ReplicaServiceStub(self.channel)

    async def _start(self, token: Optional[str]) -> tuple[grpc.aio.Server, int]:
        sup = Supervisor(SupervisorSettings())
        return await start_server(sup, "127.0.0.1:0", token=token, replicas=self.servicer)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.channel.close()
        self.call(self.server.stop(None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def inventory(self, verify: bool = True) -> dict[int, list[int]]:
        reply = self.stub.Inventory(pb.InventoryRequest(run_id=RUN, verify=verify))
        return {held.rank: list(held.steps) for held in reply.ranks}

    def push(self, image: SnapshotImage, **kwargs: Any) -> pb.ReplicaAck:
        return push_replica(self.stub, RUN, 0, image, kwargs.pop("pace", no_pace), **kwargs)

    def fetch(self, rank: int, step: int, into: RankArena, slot: int = 0) -> bytes:
        fetch_replica(self.stub, RUN, rank, step, into, slot)
        _, _, payload = into.read(slot)
        with payload:
            return bytes(payload)

    def slots(self, rank: int) -> list[tuple[SlotState, int]]:
        with RankArena(self.directory, rank) as arena:
            return [(s.state, s.step) for s in arena.slots()]


class Sources:
    """Images to push: each in its own arena (an image's payload is a view into its slot)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.arenas: list[RankArena] = []

    def image(self, rank: int, step: int, size: int, generation: int = 1) -> SnapshotImage:
        arena = RankArena(self.root / f"src-{len(self.arenas)}", rank)
        self.arenas.append(arena)
        manifest = f"manifest of rank {rank} step {step}".encode()
        view = arena.begin_write(0, step, generation, manifest, size)
        view[:] = os.urandom(size)
        view.release()
        arena.finish_write(0)
        return arena.image(0)

    def close(self) -> None:
        for arena in self.arenas:
            arena.close()


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    running = Peer(tmp_path / "peer" / "replicas")
    yield running
    running.close()


@pytest.fixture
def sources(tmp_path: Path) -> Iterator[Sources]:
    made = Sources(tmp_path / "source")
    yield made
    made.close()


def rpc_error(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    err: Any = caught.value
    return err.code(), err.details() or ""


def send(peer: Peer, chunks: Iterable[pb.ReplicaChunk]) -> tuple[grpc.StatusCode, str]:
    return rpc_error(lambda: peer.stub.PushReplica(iter(list(chunks)), timeout=30))


def chunks_of(image: SnapshotImage, chunk_bytes: int = CHUNK_BYTES) -> list[pb.ReplicaChunk]:
    return list(replica_chunks(RUN, 0, image, no_pace, chunk_bytes))


def test_round_trip_push_inventory_fetch(peer: Peer, sources: Sources, tmp_path: Path) -> None:
    image = sources.image(rank=3, step=40, size=3 * MIB + 12345, generation=2)
    ack = peer.push(image)
    assert (ack.rank, ack.step, ack.bytes) == (3, 40, 3 * MIB + 12345)
    assert peer.stored == [(3, 40)]
    assert peer.inventory(verify=True) == {3: [40]} == peer.inventory(verify=False)

    with RankArena(tmp_path / "replaced-pod", 3) as into:
        info = fetch_replica(peer.stub, RUN, 3, NEWEST, into, slot=1)
        assert (info.step, info.generation, info.checksum) == (40, 2, image.checksum)
        _, manifest, payload = into.read(1)
        with payload:
            assert bytes(payload) == bytes(image.payload)
        assert manifest == image.manifest
        assert peer.fetch(3, 40, into, slot=0) == bytes(image.payload)  # by step


def test_a_push_never_overwrites_the_newest_copy(peer: Peer, sources: Sources) -> None:
    images = {step: sources.image(rank=1, step=step, size=MIB + 7) for step in (10, 20, 30)}
    peer.push(images[10])
    peer.push(images[20])
    assert peer.inventory() == {1: [10, 20]}
    peer.push(images[30])
    assert peer.inventory() == {1: [20, 30]}
    with RankArena(peer.directory.parent / "fresh", 1) as into:
        assert peer.fetch(1, 20, into) == bytes(images[20].payload)
        assert peer.fetch(1, NEWEST, into) == bytes(images[30].payload)
        code, details = rpc_error(lambda: peer.fetch(1, 10, into))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "rank 1 step 10" in details and "[20, 30]" in details


def assert_still_holds(peer: Peer, image: SnapshotImage) -> None:
    assert peer.inventory() == {image.rank: [image.step]}
    with RankArena(peer.directory.parent / "check", image.rank) as into:
        assert peer.fetch(image.rank, NEWEST, into) == bytes(image.payload)


def test_a_corrupt_chunk_is_data_loss_and_keeps_the_previous_copy(
    peer: Peer, sources: Sources
) -> None:
    good = sources.image(rank=2, step=10, size=2 * MIB)
    peer.push(good)
    chunks = chunks_of(sources.image(rank=2, step=20, size=3 * MIB))
    chunks[2].crc32c ^= 1  # the chunk at offset 1 MiB
    code, details = send(peer, chunks)
    assert code == grpc.StatusCode.DATA_LOSS
    assert "rank 2 step 20" in details and f"offset {MIB}" in details
    assert (SlotState.WRITING, 20) in peer.slots(2)  # never readable as complete
    assert_still_holds(peer, good)
    assert peer.stored == [(2, 10)]


def test_a_copy_whose_checksum_differs_from_the_header_is_data_loss(
    peer: Peer, sources: Sources
) -> None:
    good = sources.image(rank=0, step=5, size=MIB)
    peer.push(good)
    bad = dataclasses.replace(sources.image(rank=0, step=6, size=MIB), checksum=good.checksum)
    code, details = rpc_error(lambda: peer.push(bad))
    assert code == grpc.StatusCode.DATA_LOSS
    assert "step 6" in details and "checksum" in details
    assert_still_holds(peer, good)


def malformed(image: SnapshotImage, case: str) -> list[pb.ReplicaChunk]:
    chunks = chunks_of(image, chunk_bytes=MIB // 2)
    if case == "gap in offsets":
        del chunks[2]
    elif case == "no header":
        del chunks[0]
    elif case == "wrong run_id":
        chunks[0].header.run_id = "run-6"
    elif case == "too many bytes":
        chunks.append(pb.ReplicaChunk(offset=2 * MIB, data=b"x", crc32c=crc32c.crc32c(b"x")))
    elif case == "too few bytes":
        del chunks[-1]
    elif case == "second header":
        chunks[1].header.CopyFrom(chunks[0].header)
    elif case == "negative length":
        chunks[0].header.payload_len = -1
    elif case == "empty stream":
        chunks = []
    return chunks


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        (
            "gap in offsets",
            "INVALID_ARGUMENT",
            ["rank 4 step 9", f"offset {MIB}, expected {MIB // 2}"],
        ),
        ("no header", "INVALID_ARGUMENT", ["must carry the header", "offset 0"]),
        ("wrong run_id", "FAILED_PRECONDITION", ["'run-6'", f"'{RUN}'"]),
        ("too many bytes", "INVALID_ARGUMENT", ["rank 4 step 9", f"past payload_len {2 * MIB}"]),
        (
            "too few bytes",
            "INVALID_ARGUMENT",
            ["rank 4 step 9", f"ended at offset {3 * MIB // 2} of {2 * MIB}"],
        ),
        ("second header", "INVALID_ARGUMENT", ["rank 4 step 9", "second header at offset 0"]),
        ("negative length", "INVALID_ARGUMENT", ["rank 4 step 9", "payload_len -1"]),
        ("empty stream", "INVALID_ARGUMENT", ["empty push"]),
    ],
)
def test_a_malformed_push_gets_one_clear_error_and_loses_nothing(
    peer: Peer, sources: Sources, case: str, code: str, words: list[str]
) -> None:
    good = sources.image(rank=4, step=8, size=MIB)
    peer.push(good)
    got, details = send(peer, malformed(sources.image(rank=4, step=9, size=2 * MIB), case))
    assert got == grpc.StatusCode[code], details
    assert all(word in details for word in words), details
    assert_still_holds(peer, good)
    assert SlotState.COMPLETE not in {state for state, step in peer.slots(4) if step == 9}


def test_no_job_yet_is_a_failed_precondition(peer: Peer, sources: Sources) -> None:
    peer.job = None
    image = sources.image(rank=0, step=1, size=10)
    calls: list[Callable[[], object]] = [
        lambda: peer.push(image),
        lambda: peer.inventory(),
        lambda: list(peer.stub.FetchReplica(pb.ReplicaRequest(run_id=RUN, rank=0, step=-1))),
    ]
    for call in calls:
        code, details = rpc_error(call)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "no job" in details


def test_a_replica_corrupted_on_disk_is_never_sent(
    peer: Peer, sources: Sources, tmp_path: Path
) -> None:
    image = sources.image(rank=5, step=3, size=MIB)
    peer.push(image)
    with RankArena(peer.directory, 5) as held:
        (info,) = [s for s in held.slots() if s.state is SlotState.COMPLETE]
        path, where = held.path(info.slot), info.payload_offset + 1000
    with open(path, "r+b") as f:
        f.seek(where)
        byte = f.read(1)
        f.seek(where)
        f.write(bytes([byte[0] ^ 0xFF]))
    with RankArena(tmp_path / "replaced-pod", 5) as into:
        code, details = rpc_error(lambda: fetch_replica(peer.stub, RUN, 5, NEWEST, into, 0))
        assert into.slots()[0].state is SlotState.EMPTY  # not a byte came
    assert code == grpc.StatusCode.DATA_LOSS and "checksum mismatch" in details
    assert peer.inventory(verify=True) == {}
    assert peer.inventory(verify=False) == {5: [3]}


class LyingPeer(pb_grpc.ReplicaServiceServicer):
    """A peer whose bytes do not match what it says about them."""

    def __init__(self, chunks: list[pb.ReplicaChunk]) -> None:
        self.chunks = chunks

    def FetchReplica(self, request: pb.ReplicaRequest, context: Any) -> Iterator[pb.ReplicaChunk]:
        yield from self.chunks


def flipped_data(chunks: list[pb.ReplicaChunk]) -> list[pb.ReplicaChunk]:
    chunks[1].data = bytes([chunks[1].data[0] ^ 1]) + chunks[1].data[1:]
    return chunks


def wrong_checksum(chunks: list[pb.ReplicaChunk]) -> list[pb.ReplicaChunk]:
    chunks[0].header.checksum ^= 1
    return chunks


def cut_short(chunks: list[pb.ReplicaChunk]) -> list[pb.ReplicaChunk]:
    return chunks[:-1]


@pytest.mark.parametrize(
    ("lie", "words"),
    [
        (flipped_data, "at offset 0 have CRC-32C"),
        (wrong_checksum, "the source says"),
        (cut_short, f"ended at offset {MIB} of {MIB + 5}"),
        (lambda chunks: chunks[1:], "did not start with a header"),
    ],
)
def test_fetch_refuses_a_stream_that_does_not_match_its_header(
    sources: Sources,
    tmp_path: Path,
    lie: Callable[[list[pb.ReplicaChunk]], list[pb.ReplicaChunk]],
    words: str,
) -> None:
    image = sources.image(rank=6, step=2, size=MIB + 5)
    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    pb_grpc.add_ReplicaServiceServicer_to_server(LyingPeer(lie(chunks_of(image))), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with client_channel(f"127.0.0.1:{port}") as channel, RankArena(tmp_path, 6) as into:
            stub = pb_grpc.ReplicaServiceStub(channel)
            with pytest.raises(CorruptSnapshot, match=words):
                fetch_replica(stub, RUN, 6, NEWEST, into, slot=1)
            assert into.slots()[1].state is not SlotState.COMPLETE
    finally:
        server.stop(None)


def test_a_push_without_the_token_is_unauthenticated(sources: Sources, tmp_path: Path) -> None:
    guarded = Peer(tmp_path / "replicas", token=TOKEN)
    try:
        image = sources.image(rank=0, step=1, size=MIB)
        with client_channel(f"127.0.0.1:{guarded.port}") as bare:
            stub = pb_grpc.ReplicaServiceStub(bare)
            code, details = rpc_error(lambda: push_replica(stub, RUN, 0, image, no_pace))
            assert code == grpc.StatusCode.UNAUTHENTICATED and "no job token" in details
            assert guarded.stored == [] and guarded.inventory() == {}
        with client_channel(f"127.0.0.1:{guarded.port}", TOKEN) as tokened:  # a streamed push
            push_replica(pb_grpc.ReplicaServiceStub(tokened), RUN, 0, image, no_pace)
        assert guarded.stored == [(0, 1)]
    finally:
        guarded.close()


def test_an_empty_payload_round_trips(peer: Peer, sources: Sources, tmp_path: Path) -> None:
    image = sources.image(rank=9, step=1, size=0)
    assert peer.push(image).bytes == 0
    with RankArena(tmp_path / "replaced-pod", 9) as into:
        assert peer.fetch(9, 1, into) == b""
        assert into.image(0).checksum == image.checksum


def test_a_second_push_of_a_rank_in_flight_is_aborted(peer: Peer, sources: Sources) -> None:
    first = chunks_of(sources.image(rank=7, step=1, size=MIB))
    go_on = threading.Event()

    def held_back() -> Iterator[pb.ReplicaChunk]:
        yield first[0]  # the header: the server starts writing
        go_on.wait(30)
        yield from first[1:]

    pushing: Future[pb.ReplicaAck] = peer.stub.PushReplica.future(held_back(), timeout=30)
    deadline = time.monotonic() + 10
    while (SlotState.WRITING, 1) not in peer.slots(7):  # the header has arrived
        assert time.monotonic() < deadline, "the first push never started"
        time.sleep(0.01)
    code, details = rpc_error(lambda: peer.push(sources.image(rank=7, step=2, size=10)))
    assert code == grpc.StatusCode.ABORTED and "push of step 1 is in progress" in details
    go_on.set()
    assert pushing.result(30).step == 1
    assert peer.inventory() == {7: [1]}


def test_push_paces_every_byte_through_the_throttle(peer: Peer, sources: Sources) -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    rate, size = 4 * MIB, 5 * MIB + 321
    throttle = Throttle(rate, clock=lambda: now[0], sleep=sleep)
    peer.push(sources.image(rank=0, step=1, size=size), pace=throttle.pace)
    assert throttle.sent == size
    assert sum(slept) == pytest.approx(size / rate)
    assert len(slept) == 6  # once per chunk: the cap holds during the transfer, not only after


@pytest.mark.slow
def test_measure_uncapped_loopback_throughput(peer: Peer) -> None:
    size = 256 * MIB
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=shm) as where:
        made = Sources(Path(where))
        image = made.image(rank=0, step=1, size=size)
        started = time.perf_counter()
        peer.push(image)
        pushed = time.perf_counter() - started
        with RankArena(Path(where) / "back", 0) as into:
            started = time.perf_counter()
            fetch_replica(peer.stub, RUN, 0, 1, into, 0)
            fetched = time.perf_counter() - started
        made.close()
    print(
        f"\n256 MiB over loopback (client and server in one process, "
        f"{os.cpu_count()} cores): push {size / pushed / 1e6:.0f} MB/s ({pushed:.2f} s), "
        f"fetch {size / fetched / 1e6:.0f} MB/s ({fetched:.2f} s)"
    )
