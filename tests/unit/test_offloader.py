"""The Offloader (supervisor/snapshots/offload.py) on real arenas, a real replica server and real
files."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from effects import make_spec
from test_replica import RUN, Peer

from launcher.worker.snapshot_payload import read_state, write_state
from supervisor.rules.job import JobState
from supervisor.rules.restart_policy import RestartPolicy
from supervisor.settings.snapshots import OffloadConfig
from supervisor.snapshots.offload import REPLICAS, STAGED, Offloader
from supervisor.snapshots.offload_runner import OffloadDriver
from supervisor.snapshots.restore import DURABLE, PEER, SHM, SOURCE_ORDER, NodeCopies
from supervisor.snapshots.rounds import OffloadRound
from supervisor.workers.ports import free_port
from train_supervisor.arena import HEADER_SIZE, RankArena, SlotState
from train_supervisor.credentials import client_channel
from train_supervisor.steps import NO_STEP
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

RANKS = (2, 3)  # pod 1 of a job with 2 ranks per pod


def state(rank: int, step: int) -> dict[str, Any]:
    return {"w": torch.full((4096,), float(step * 10 + rank)), "step": step}


def save(directory: Path, step: int) -> None:
    """What the workers do: each rank writes `step` into its own arena."""
    for rank in RANKS:
        with RankArena(directory, rank) as arena:
            write_state(arena, step % 2, step, generation=0, state=state(rank, step))


def restored(directory: Path, rank: int, step: int) -> Any:
    with RankArena(directory, rank) as arena:
        slot = arena.find(step)
        assert slot is not None, f"rank {rank}: step {step} is not in place"
        return read_state(arena, slot)


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    """The next pod's supervisor, keeping our replicas."""
    server = Peer(tmp_path / "next-pod" / REPLICAS)
    yield server
    server.close()


def offloader(tmp_path: Path, peer: Peer, **config: Any) -> Offloader:
    settings = OffloadConfig(durable_dir=tmp_path / "durable", persist_every_steps=1, **config)
    return Offloader(
        RUN,
        1,
        RANKS,
        tmp_path / "pod",
        settings,
        holder=lambda: pb_grpc.ReplicaServiceStub(peer.channel),
    )


def test_a_round_stages_replicates_and_persists_every_rank(tmp_path: Path, peer: Peer) -> None:
    pod = offloader(tmp_path, peer)
    save(pod.directory, 4)
    result = pod.run_round(OffloadRound(4, replicate=True, persist=True), generation=0)
    assert (result.stage_error, result.replica_error, result.persist_error) == ("", "", "")
    assert result.bytes > 2 * 4096 * 4
    assert peer.inventory() == {2: [4], 3: [4]}
    copies = pod.copies()
    assert copies.shm == {4} and copies.persisted == {4}
    for rank in RANKS:  # the staged copy is the rank's, bitwise
        assert torch.equal(restored(pod.directory / STAGED, rank, 4)["w"], state(rank, 4)["w"])


def test_the_last_complete_round_stays_staged_while_the_next_is_written(
    tmp_path: Path, peer: Peer
) -> None:
    pod = offloader(tmp_path, peer)
    for step in (4, 5, 6):
        save(pod.directory, step)
        pod.kept = step - 1 if step > 4 else -1
        assert pod.run_round(OffloadRound(step, True, False), 0).replica_error == ""
    with RankArena(pod.directory / STAGED, 2) as staged:
        assert sorted(s.step for s in staged.slots()) == [5, 6], "4 went; 5 was kept"


def test_a_replaced_pod_restores_from_the_peer_and_then_from_disk(
    tmp_path: Path, peer: Peer
) -> None:
    pod = offloader(tmp_path, peer)
    save(pod.directory, 7)
    pod.run_round(OffloadRound(7, replicate=True, persist=True), generation=0)
    for rank in RANKS:  # the pod is gone with its memory
        for where in ("", STAGED):
            for slot in (0, 1):
                (pod.directory / where / f"rank-{rank}.slot{slot}").unlink(missing_ok=True)
    done = pod.materialize(7, list(SOURCE_ORDER))
    assert done.complete and done.sources == {2: PEER, 3: PEER}, done.problems
    assert torch.equal(restored(pod.directory, 3, 7)["w"], state(3, 7)["w"])

    # Every memory copy corrupt, the peer's included: the durable one, checksum verified.
    for rank in RANKS:
        corrupt(pod.directory, rank)
    with client_channel(f"127.0.0.1:{free_port()}") as nobody:  # the peer pod is gone too
        pod.holder = lambda: pb_grpc.ReplicaServiceStub(nobody)
        done = pod.materialize(7, list(SOURCE_ORDER))
    assert done.sources == {2: DURABLE, 3: DURABLE}
    assert any("checksum" in p for p in done.problems), done.problems
    assert any(f"{PEER}:" in p for p in done.problems), done.problems
    assert restored(pod.directory, 2, 7)["step"] == 7


def corrupt(directory: Path, rank: int) -> None:
    with RankArena(directory, rank) as arena:
        slot = arena.find(7)
        assert slot is not None
        path = arena.path(slot)
    with open(path, "r+b") as handle:
        handle.seek(HEADER_SIZE + 8)
        byte = handle.read(1)
        handle.seek(HEADER_SIZE + 8)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_nothing_usable_anywhere_leaves_the_restore_incomplete(tmp_path: Path, peer: Peer) -> None:
    pod = offloader(tmp_path, peer)
    save(pod.directory, 3)
    corrupt_step = 3
    for rank in RANKS:
        with RankArena(pod.directory, rank) as arena:
            slot = arena.find(corrupt_step)
            assert slot is not None
            path = arena.path(slot)
        with open(path, "r+b") as handle:
            handle.seek(HEADER_SIZE + 8)
            handle.write(b"\xff\xfe")
    done = pod.materialize(3, list(SOURCE_ORDER))
    assert not done.complete
    assert [p.split(":")[1].strip() for p in done.problems[:3]] == [SHM, PEER, DURABLE]


def test_steps_past_the_restored_one_are_void_everywhere(tmp_path: Path, peer: Peer) -> None:
    pod = offloader(tmp_path, peer)
    for step in (4, 5):
        save(pod.directory, step)
        pod.kept = 4 if step == 5 else -1
        pod.run_round(OffloadRound(step, replicate=False, persist=True), generation=0)
    peer_pod = Offloader(RUN, 0, (0, 1), tmp_path / "next-pod", OffloadConfig())
    dropped = pod.discard_after(4)
    assert any("durable step 5" in d for d in dropped), dropped
    assert pod.copies().shm == {4} and pod.copies().persisted == {4}
    for rank in RANKS:
        with RankArena(pod.directory, rank) as arena:
            assert {s.state for s in arena.slots() if s.step == 5} <= {SlotState.EMPTY}
    assert peer_pod.copies().replicas == {}


def test_a_corrupt_own_copy_is_replaced_from_the_staged_one(tmp_path: Path, peer: Peer) -> None:
    pod = offloader(tmp_path, peer)
    save(pod.directory, 7)
    pod.run_round(OffloadRound(7, replicate=False, persist=False), generation=0)
    corrupt(pod.directory, 2)
    done = pod.materialize(7, list(SOURCE_ORDER))
    assert done.sources == {2: SHM, 3: SHM}, done.problems
    [problem] = done.problems
    assert "rank 2: shm:" in problem and "checksum" in problem and "staged copy used" in problem
    assert torch.equal(restored(pod.directory, 2, 7)["w"], state(2, 7)["w"])
    assert peer.inventory() == {}, "nothing came from the peer"


def test_a_fresh_start_drops_every_older_copy_on_one_pod_as_on_several(tmp_path: Path) -> None:
    """Nothing committed: the ranks redo step 1.. with new contents, so a leftover COMPLETE
    step in memory must not be restorable later under the same number."""
    spec = make_spec(nproc=2)
    spec.node_rank, spec.nnodes, spec.snapshot_dir = 1, 2, str(tmp_path / "pod")
    job = JobState(spec=spec, policy=RestartPolicy(max_restarts=3), allocate_port=lambda: 1)
    driver = OffloadDriver(job, OffloadConfig(), target=None, on_change=lambda: None)
    save(Path(spec.snapshot_dir), 4)  # the ranks' own arenas, and the staged copy
    driver.offloader.run_round(OffloadRound(4, replicate=False, persist=False), generation=0)
    assert driver.offloader.copies().shm == {4}

    async def restore() -> int:
        done = await driver.restore_here()
        driver.close()
        return done.step

    assert asyncio.run(restore()) == NO_STEP, "nothing is committed: a fresh start"
    assert driver.offloader.copies() == NodeCopies(), "no copy of the old step 4 is left"
    assert any(e.kind == "snapshot_void" for e in job.events)


def test_the_check_after_a_failure_spares_the_restore_a_second_checksum_of_the_same_copy(
    tmp_path: Path, peer: Peer
) -> None:
    pod = offloader(tmp_path, peer)
    save(pod.directory, 7)
    pod.verify_own(7)  # while the ranks unwind
    assert sorted(pod.verified) == [2, 3]
    done = pod.materialize(7, list(SOURCE_ORDER))
    assert done.sources == {2: SHM, 3: SHM} and done.problems == []
    assert torch.equal(restored(pod.directory, 3, 7)["w"], state(3, 7)["w"])


def test_a_copy_rewritten_after_that_check_is_checksummed_again(tmp_path: Path, peer: Peer) -> None:
    pod = offloader(tmp_path, peer)
    save(pod.directory, 7)
    pod.run_round(OffloadRound(7, replicate=False, persist=False), generation=0)
    pod.verify_own(7)
    with RankArena(pod.directory, 2) as arena:  # new contents under the same step, then damage
        write_state(arena, 7 % 2, 7, generation=0, state={"w": torch.zeros(4096), "step": 7})
    corrupt(pod.directory, 2)
    done = pod.materialize(7, list(SOURCE_ORDER))
    [problem] = done.problems
    assert "rank 2: shm:" in problem and "checksum" in problem and "staged copy used" in problem
    assert torch.equal(restored(pod.directory, 2, 7)["w"], state(2, 7)["w"])


def test_a_corrupt_copy_fails_that_check_and_the_restore_still_reports_it(
    tmp_path: Path, peer: Peer
) -> None:
    pod = offloader(tmp_path, peer)
    save(pod.directory, 7)
    pod.run_round(OffloadRound(7, replicate=False, persist=False), generation=0)
    corrupt(pod.directory, 2)
    pod.verify_own(7)
    assert sorted(pod.verified) == [3]
    done = pod.materialize(7, list(SOURCE_ORDER))
    [problem] = done.problems
    assert "rank 2: shm:" in problem and "checksum" in problem
    assert done.sources == {2: SHM, 3: SHM}


def test_a_generation_opened_by_a_failure_checksums_the_committed_step_at_once(
    tmp_path: Path,
) -> None:
    spec = make_spec(nproc=2)
    spec.node_rank, spec.nnodes, spec.snapshot_dir = 1, 2, str(tmp_path / "pod")
    job = JobState(spec=spec, policy=RestartPolicy(max_restarts=3), allocate_port=lambda: 1)
    driver = OffloadDriver(job, OffloadConfig(), target=None, on_change=lambda: None)
    save(Path(spec.snapshot_dir), 4)
    job.snapshots.commit(4)

    async def see(generation: int) -> list[int]:
        job.generation = generation
        driver.generation_seen()
        if driver._preparing is not None:
            await driver._preparing
        return sorted(driver.offloader.verified)

    assert asyncio.run(see(0)) == [], "the generation the job began in follows no failure"
    assert asyncio.run(see(1)) == [2, 3]
    driver.close()


def test_a_round_stops_when_its_generation_ends_so_the_restore_need_not_wait(
    tmp_path: Path, peer: Peer
) -> None:
    """The restore runs on the round's thread: a round capped at 1 MB/s for 8 MB would hold
    it for 8 s; it stops at its next chunk once the driver says a generation opened."""
    pod = offloader(tmp_path, peer, replica_bytes_per_s=1e6)
    for rank in RANKS:
        with RankArena(pod.directory, rank) as arena:
            write_state(arena, 0, 4, generation=0, state={"w": torch.zeros(2**20)})  # 4 MB
    results: list[Any] = []
    rnd = OffloadRound(4, replicate=True, persist=False)
    round_thread = threading.Thread(target=lambda: results.append(pod.run_round(rnd, 0)))
    round_thread.start()
    deadline = time.monotonic() + 30
    while not peer_receiving(peer.directory) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert peer_receiving(peer.directory), "the push never began"
    pod.open_generation = 1  # what OffloadDriver.generation_seen does
    round_thread.join(30)
    [result] = results
    assert "generation 0 ended" in result.replica_error, result
    assert peer.inventory() == {}, "a stopped push leaves no complete replica"


def peer_receiving(directory: Path) -> bool:
    if not directory.is_dir():
        return False
    for rank in RANKS:
        with RankArena(directory, rank) as arena:
            if any(s.state is SlotState.WRITING for s in arena.slots()):
                return True
    return False


def test_staging_pins_every_ranks_step_so_a_rank_saving_on_waits_instead_of_tearing_it(
    tmp_path: Path, peer: Peer
) -> None:
    """Rank 3 saves again (into the slot of the step being staged) as soon as the round begins
    with rank 2: before pinning, its save replaced step 4 before or while it was copied."""
    pod = offloader(tmp_path, peer)
    sizes = {2: 2**26, 3: 2**20}  # rank 2's 256 MB take a while to copy; rank 3 saves meanwhile
    for step in (4, 5):  # 4 is the round's step, in slot 0; 5 is in slot 1
        for rank in RANKS:
            with RankArena(pod.directory, rank) as arena:
                write_state(arena, step % 2, step, 0, {"w": torch.full((sizes[rank],), step)})
    began = pod.directory / STAGED / "rank-2.slot0"
    step_6 = {"w": torch.full((sizes[3],), 6)}
    saved_6: list[int] = []

    def rank_3_saves_step_6() -> None:
        deadline = time.monotonic() + 30
        while not began.exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        with RankArena(pod.directory, 3) as arena:  # what its writer thread does
            with arena.exclusive(0):
                write_state(arena, 0, 6, 0, step_6)
            saved_6.append(6)

    writer = threading.Thread(target=rank_3_saves_step_6)
    writer.start()
    result = pod.run_round(OffloadRound(4, replicate=False, persist=False), generation=0)
    writer.join(60)
    assert result.stage_error == "", result
    assert 0 < result.pinned_s < result.stage_s, "unpinned before the checksums"
    assert saved_6 == [6], "the rank's save went on after its copy"
    for rank in RANKS:
        assert restored(pod.directory / STAGED, rank, 4)["w"][0] == 4.0
    assert restored(pod.directory, 3, 6)["w"][-1] == 6.0


def test_a_step_whose_rank_is_writing_over_it_fails_the_round_at_once(
    tmp_path: Path, peer: Peer
) -> None:
    """The round never waits for a rank (a stopped one would hold it): the step is going."""
    pod = offloader(tmp_path, peer)
    save(pod.directory, 4)
    with RankArena(pod.directory, 3) as arena, arena.exclusive(0):
        result = pod.run_round(OffloadRound(4, replicate=True, persist=False), generation=0)
    assert "rank 3: step 4 is being overwritten by a newer save" in result.stage_error
    assert peer.inventory() == {}
