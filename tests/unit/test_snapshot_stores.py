"""The store seam (supervisor/snapshots/store.py): a fourth store, written here against the
interface alone, takes part in the offload round, the pod's report, the restore order and
the voiding of later steps, with no change to the Offloader.

BucketStore is a real store: a directory that stands in for an object-storage bucket, one
object per rank and step (manifest, payload, and a JSON head with the checksum).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import crc32c
import pytest
import torch
from effects import make_spec
from test_offloader import RANKS, corrupt, restored, save, state
from test_replica import RUN, Peer

from supervisor.rpc.peer_wire import copies_from_wire, copies_to_wire
from supervisor.rules.job import JobState
from supervisor.rules.restart_policy import RestartPolicy
from supervisor.settings.snapshots import OffloadConfig
from supervisor.snapshots.offload import REPLICAS, STAGED, Offloader
from supervisor.snapshots.offload_runner import OffloadDriver
from supervisor.snapshots.restore import DURABLE, PEER, SHM, NodeCopies, choose_restore
from supervisor.snapshots.rounds import OffloadRound
from supervisor.snapshots.store import PersistentStore, RoundStopped, free_slot
from train_supervisor.arena import CorruptSnapshot, RankArena, SnapshotImage
from train_supervisor.steps import NO_STEP
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

BUCKET = "bucket"


class BucketStore:
    """<root>/<step>/<rank>.head (JSON), .manifest, .payload; a step's head is written last."""

    name = BUCKET

    def __init__(self, root: Path) -> None:
        self.root = root
        self.puts: list[int] = []

    def _object(self, step: int, rank: int, part: str) -> Path:
        return self.root / str(step) / f"{rank}.{part}"

    def steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        heads = {p.name: len(list(p.glob("*.head"))) for p in self.root.iterdir()}
        return sorted(int(name) for name, count in heads.items() if count == len(RANKS))

    def put(
        self,
        step: int,
        generation: int,
        images: Sequence[SnapshotImage],
        stopped: Callable[[], bool],
    ) -> None:
        for image in images:
            if stopped():
                raise RoundStopped.of(generation)
            self._object(step, image.rank, "manifest").parent.mkdir(parents=True, exist_ok=True)
            self._object(step, image.rank, "manifest").write_bytes(image.manifest)
            self._object(step, image.rank, "payload").write_bytes(image.payload)
            head = {"generation": image.generation, "checksum": image.checksum}
            self._object(step, image.rank, "head").write_text(json.dumps(head))
        self.puts.append(step)

    def get(self, step: int, into: RankArena) -> list[str]:
        head_path = self._object(step, into.rank, "head")
        if not head_path.exists():
            raise CorruptSnapshot(f"{head_path}: no such object")
        head = json.loads(head_path.read_text())
        manifest = self._object(step, into.rank, "manifest").read_bytes()
        payload = self._object(step, into.rank, "payload").read_bytes()
        if crc32c.crc32c(payload, crc32c.crc32c(manifest)) != head["checksum"]:
            raise CorruptSnapshot(f"{head_path}: checksum mismatch")
        image = SnapshotImage(
            into.rank, step, head["generation"], manifest, memoryview(payload), head["checksum"]
        )
        into.store(free_slot(into, NO_STEP), image)
        return []

    def drop_after(self, step: int) -> list[str]:
        void = [s for s in self.steps() if s > step]
        for s in void:
            self.remove(s)
        return [f"bucket step {s}" for s in void]

    def prune(self, keep: int) -> list[int]:
        old = self.steps()[:-keep] if keep else self.steps()
        return [s for s in old if self.remove(s)]

    def remove(self, step: int) -> bool:
        if not (self.root / str(step)).is_dir():
            return False
        shutil.rmtree(self.root / str(step))
        return True


def bucket_is_a_persistent_store(bucket: BucketStore) -> BucketStore:
    checked: PersistentStore = bucket  # mypy checks BucketStore against the protocol here
    assert checked is bucket
    return bucket


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    server = Peer(tmp_path / "next-pod" / REPLICAS)
    yield server
    server.close()


def pod_with_bucket(tmp_path: Path, peer: Peer, bucket: BucketStore) -> Offloader:
    """A pod with shared memory, a peer, a durable directory and the bucket, persisted last."""
    config = OffloadConfig(durable_dir=tmp_path / "durable", persist_every_steps=1)
    stub = pb_grpc.ReplicaServiceStub(peer.channel)
    return Offloader(RUN, 1, RANKS, tmp_path / "pod", config, lambda: stub, persist_to=[bucket])


def forget_memory(pod: Offloader) -> None:
    for rank in RANKS:  # the pod was replaced: its own and staged copies are gone
        for where in ("", STAGED):
            for slot in (0, 1):
                (pod.directory / where / f"rank-{rank}.slot{slot}").unlink(missing_ok=True)


def test_a_fourth_store_takes_the_round_and_is_last_in_the_restore_order(
    tmp_path: Path, peer: Peer
) -> None:
    bucket = BucketStore(tmp_path / "bucket")
    pod = pod_with_bucket(tmp_path, peer, bucket_is_a_persistent_store(bucket))
    assert [s.name for s in pod.restore_order] == [SHM, PEER, DURABLE, BUCKET]
    save(pod.directory, 4)
    pod.run_round(OffloadRound(4, replicate=False, persist=False), generation=0)
    assert bucket.puts == [], "a round that does not persist leaves the bucket alone"
    result = pod.run_round(OffloadRound(4, replicate=True, persist=True), generation=0)
    assert (result.replica_error, result.persist_error) == ("", "")
    assert bucket.puts == [4] and bucket.steps() == [4]
    assert pod.copies() == NodeCopies(
        shm=frozenset({4}), persisted=frozenset({4}), stored={BUCKET: frozenset({4})}
    )

    # Memory gone, the peer's copy and the durable one corrupt or gone: the bucket restores.
    forget_memory(pod)
    for rank in RANKS:
        corrupt_peer_copy(peer.directory, rank, 4)
    shutil.rmtree(tmp_path / "durable")
    done = pod.materialize(4)
    assert done.sources == {2: BUCKET, 3: BUCKET}, done.problems
    assert [p.split(":")[1].strip() for p in done.problems if "rank 2" in p] == [SHM, PEER, DURABLE]
    for rank in RANKS:
        assert torch.equal(restored(pod.directory, rank, 4)["w"], state(rank, 4)["w"])


def corrupt_peer_copy(directory: Path, rank: int, step: int) -> None:
    with RankArena(directory, rank) as arena:
        slot = arena.find(step)
        assert slot is not None
        path = arena.path(slot)
    with open(path, "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 0xFF]))


def test_an_earlier_store_wins_and_a_bad_bucket_copy_is_passed_over(
    tmp_path: Path, peer: Peer
) -> None:
    bucket = BucketStore(tmp_path / "bucket")
    pod = pod_with_bucket(tmp_path, peer, bucket)
    save(pod.directory, 7)
    pod.run_round(OffloadRound(7, replicate=False, persist=True), generation=0)
    corrupt(pod.directory, 2)  # rank 2's own copy: the staged one serves, the bucket untouched
    done = pod.materialize(7)
    assert done.sources == {2: SHM, 3: SHM}, done.problems

    forget_memory(pod)
    (bucket.root / "7" / "3.payload").write_bytes(b"not the payload")
    done = pod.materialize(7, [SHM, BUCKET])  # the order as names: peer and durable left out
    assert done.sources == {2: BUCKET, 3: ""}
    assert any("rank 3: bucket:" in p and "checksum" in p for p in done.problems), done.problems


def test_a_restore_of_an_older_step_voids_the_later_ones_in_the_bucket(
    tmp_path: Path, peer: Peer
) -> None:
    bucket = BucketStore(tmp_path / "bucket")
    pod = pod_with_bucket(tmp_path, peer, bucket)
    for step in (4, 5):
        save(pod.directory, step)
        pod.kept = 4 if step == 5 else NO_STEP
        pod.run_round(OffloadRound(step, replicate=False, persist=True), generation=0)
    assert bucket.steps() == [4, 5]
    dropped = pod.discard_after(4)
    assert "bucket step 5" in dropped and "durable step 5" in dropped, dropped
    assert bucket.steps() == [4]
    assert pod.drop_persisted([4]) == [4] and bucket.steps() == []


def test_the_job_wide_choice_counts_a_further_store_by_its_name() -> None:
    """A pod whose only copy of step 5 is in the bucket still makes 5 restorable."""
    order = (SHM, PEER, DURABLE, BUCKET)
    copies = {
        0: NodeCopies(shm=frozenset({6}), stored={BUCKET: frozenset({5})}),
        1: NodeCopies(shm=frozenset({5}), persisted=frozenset({5})),
    }
    choice = choose_restore([0, 1], copies, newest=6, order=order)
    assert (choice.step, dict(choice.sources)) == (5, {0: BUCKET, 1: SHM})
    assert choose_restore([0, 1], copies, newest=6) == choice, "by default: the stores reported"
    without = choose_restore([0, 1], copies, newest=6, order=(SHM, PEER, DURABLE))
    assert without.step == NO_STEP


def test_a_further_stores_steps_cross_the_wire_so_the_leader_counts_them() -> None:
    """The leader of a multi-pod job sees other pods' copies only through their reports: a
    step a follower holds only in its bucket is restorable once its report crosses the wire."""
    follower = NodeCopies(
        shm=frozenset({6}), replicas={0: frozenset({5})}, stored={BUCKET: frozenset({5})}
    )
    report = pb.PodReport(node_rank=1, copies=copies_to_wire(follower))
    received = copies_from_wire(pb.PodReport.FromString(report.SerializeToString()).copies)
    assert received == follower
    copies = {0: NodeCopies(shm=frozenset({5, 6})), 1: received}
    choice = choose_restore([0, 1], copies, newest=5)
    assert (choice.step, dict(choice.sources)) == (5, {0: SHM, 1: BUCKET})


def test_a_single_pod_with_only_a_bucket_persists_there_and_restores_from_it(
    tmp_path: Path,
) -> None:
    """No peer, no durable directory: the rounds persist because a persist store exists, the
    shutdown flush writes there, and the pod's restore chooses and places the bucket's step."""
    spec = make_spec(nproc=2)
    spec.node_rank, spec.nnodes, spec.snapshot_dir = 1, 2, str(tmp_path / "pod")
    job = JobState(spec=spec, policy=RestartPolicy(max_restarts=3), allocate_port=lambda: 1)
    bucket = BucketStore(tmp_path / "bucket")
    config = OffloadConfig(persist_every_steps=1)
    driver = OffloadDriver(job, config, None, lambda: None, persist_to=[bucket])
    assert driver.rounds.persist and not driver.rounds.replicate

    async def offload_then_restore() -> tuple[dict[int, str], list[int]]:
        save(Path(spec.snapshot_dir), 4)
        job.snapshots.commit(4)
        result = await driver.run_round(OffloadRound(4, replicate=False, persist=True))
        assert result.persist_error == "", result
        save(Path(spec.snapshot_dir), 5)
        job.snapshots.commit(5)
        await driver.flush()  # SIGTERM: the newest committed step goes to the bucket
        flushed = bucket.steps()
        forget_memory(driver.offloader)
        done = await driver.restore_here()
        driver.close()
        return done.sources, flushed

    sources, flushed = asyncio.run(offload_then_restore())
    assert flushed == [4, 5]
    assert sources == {2: BUCKET, 3: BUCKET}
    assert restored(Path(spec.snapshot_dir), 3, 5)["w"][0] == state(3, 5)["w"][0]
    assert any(e.kind == "snapshot_restore" and "bucket" in e.message for e in job.events)
