"""launcher/worker/snapshot.py's writer thread across an in-place re-entry: a save of a run that a
failure unwound never lands over the next run's snapshots.

The scripts' side is real (Snapshots, its writer thread, shared memory in tmp); the supervisor's
side is a gRPC server on loopback that records each ReportSaved and answers it as a one-rank job
would (the step is committed) — except that it can hold an answer, as the real one holds it until
the step commits.
"""

from __future__ import annotations

import fcntl
import gc
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from snapshot_service import CommittingSupervisor, on_loopback, rank0_env, serve_snapshots

from launcher.launch.processes import SCRIPT_ENDED_GENERATION_ENV, SCRIPT_GENERATION_ENV
from launcher.worker.bootstrap import Target, Worker
from launcher.worker.snapshot import Snapshots
from launcher.worker.snapshot_payload import fill, plan, read_state, write_state
from train_supervisor.arena import RankArena, SlotState, SnapshotImage
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc


@pytest.fixture
def supervisor() -> Iterator[tuple[str, CommittingSupervisor]]:
    with serve_snapshots() as served:
        yield served


def state(value: float) -> dict[str, Any]:
    return {"weights": torch.full((64, 1024), value), "step_data": [value]}


def a_save_queued_behind_one_waiting_for_its_commit(
    supervisor: tuple[str, CommittingSupervisor], snapshot_dir: Path
) -> tuple[dict[str, str], Snapshots]:
    """Generation 0's Snapshots: step 1 reported (its answer held), step 2 queued behind it."""
    address, recorder = supervisor
    env = rank0_env(address, snapshot_dir)
    recorder.hold_generation = 0
    snapshots = Snapshots(env)
    snapshots.save(1, state(1.0))
    assert recorder.holding.wait(30), "step 1 waits for its commit"
    snapshots.save(2, state(2.0))
    return env, snapshots


def test_a_queued_save_of_an_unwound_run_never_overwrites_the_next_runs_committed_step(
    tmp_path: Path, supervisor: tuple[str, CommittingSupervisor]
) -> None:
    recorder = supervisor[1]
    env, dead_run = a_save_queued_behind_one_waiting_for_its_commit(supervisor, tmp_path)
    # Then a failure unwinds the script.
    env[SCRIPT_GENERATION_ENV] = "1"  # as the bootstrap does when the next run starts in place
    next_run = Snapshots(env)
    next_run.save(1, state(10.0))
    next_run.flush()
    assert next_run.committed == 1
    recorder.release.set()  # the dead run's writer goes on with its queued step 2
    dead_run.flush()

    assert recorder.reports == [(0, 1), (1, 1)], "the dead run's step 2 was dropped, not reported"
    arena = RankArena(tmp_path, 0)
    slot = arena.find(1)
    assert slot is not None, [info for info in arena.slots()]
    header = arena.slots()[slot]
    assert (header.state, header.step, header.generation) == (SlotState.COMPLETE, 1, 1)
    assert torch.equal(read_state(arena, slot)["weights"], torch.full((64, 1024), 10.0))


def a_peers_copy(directory: Path, step: int, value: float) -> tuple[RankArena, SnapshotImage]:
    """Rank 0's snapshot of `step` as a peer pod's replica holds it (arena kept open: the
    image's payload is a view into it)."""
    arena = RankArena(directory, 0)
    write_state(arena, 0, step, 0, state(value))
    return arena, arena.image(0)


def test_a_queued_save_of_a_run_that_left_its_generation_never_lands_over_a_restored_step(
    tmp_path: Path, supervisor: tuple[str, CommittingSupervisor]
) -> None:
    recorder = supervisor[1]
    env, dead_run = a_save_queued_behind_one_waiting_for_its_commit(supervisor, tmp_path / "shm")
    # The script unwinds and the bootstrap reports it, saying so first; the next run (and with
    # it the new TRAIN_SUPERVISOR_GENERATION) starts only after the restore below.
    env[SCRIPT_ENDED_GENERATION_ENV] = "0"
    # This rank's own copy of the committed step 1 failed its checksum: the supervisor puts
    # the peer's replica in its arena, in the slot the queued step 2 is bound for.
    peer, image = a_peers_copy(tmp_path / "peer", 1, 7.0)
    with RankArena(tmp_path / "shm", 0) as arena:
        arena.store(0, image)
    peer.close()
    recorder.release.set()  # the dead run's writer goes on with its queued step 2
    dead_run.flush()

    assert recorder.reports == [(0, 1)], "the dead run's step 2 was dropped, not reported"
    with RankArena(tmp_path / "shm", 0) as arena:
        assert arena.find(1) == 0, [info for info in arena.slots()]
        weights = read_state(arena, 0)["weights"]
        assert torch.equal(weights, torch.full((64, 1024), 7.0)), "the restored step is intact"


class OutcomeRecorder(pb_grpc.WorkerServiceServicer):
    """Notes what the worker's environment said of its ended generation when it reported."""

    def __init__(self) -> None:
        self.ended_at_report: list[tuple[int, str | None]] = []

    def ReportOutcome(self, request: pb.WorkerOutcome, context: Any) -> pb.OutcomeVerdict:
        # Same process: the bootstrap's os.environ is this one.
        self.ended_at_report.append((request.kind, os.environ.get(SCRIPT_ENDED_GENERATION_ENV)))
        return pb.OutcomeVerdict(verdict=pb.Verdict.VERDICT_WAIT)


def test_the_bootstrap_marks_its_generation_ended_before_it_reports_an_unwind_or_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Put back as it was after the test: processes spawned later inherit this environment.
    monkeypatch.setenv(SCRIPT_ENDED_GENERATION_ENV, "")
    monkeypatch.delenv(SCRIPT_ENDED_GENERATION_ENV)
    recorder = OutcomeRecorder()
    register = partial(pb_grpc.add_WorkerServiceServicer_to_server, recorder)
    with on_loopback(register) as address:
        worker = Worker(address, None, 0, Target(False, "train.py", []))
        worker.attached.set()  # reports go once its command stream is open (not served here)
        kinds = pb.OutcomeKind
        for generation, kind in [
            (3, kinds.OUTCOME_FINISHED),  # a script that ended well keeps its last save
            (4, kinds.OUTCOME_UNWOUND),
            (5, kinds.OUTCOME_RAISED),
        ]:
            worker.generation = generation
            worker._report(kind)
        worker.channel.close()
    assert recorder.ended_at_report == [
        (kinds.OUTCOME_FINISHED, None),
        (kinds.OUTCOME_UNWOUND, "4"),
        (kinds.OUTCOME_RAISED, "5"),
    ]


def test_a_scripts_last_save_is_written_after_the_script_let_go_of_its_snapshots(
    tmp_path: Path, supervisor: tuple[str, CommittingSupervisor]
) -> None:
    recorder = supervisor[1]
    _, snapshots = a_save_queued_behind_one_waiting_for_its_commit(supervisor, tmp_path)
    del snapshots  # the script ends: nothing of it holds the object any more
    gc.collect()
    recorder.release.set()
    assert recorder.wait_for_report(0, 2), f"the last save was dropped: {recorder.reports}"
    with RankArena(tmp_path, 0) as arena:
        slot = arena.find(2)
        assert slot is not None
        assert torch.equal(read_state(arena, slot)["weights"], torch.full((64, 1024), 2.0))


def test_a_copy_stops_between_two_tensors_once_it_is_no_longer_wanted() -> None:
    tensors = [torch.full((16,), 1.0), torch.full((16,), 2.0), torch.full((16,), 3.0)]
    _, entries, size, _ = plan(tensors)
    payload = bytearray(b"\xee" * size)
    answers = iter([True, False])
    assert not fill(memoryview(payload), entries, tensors, lambda: next(answers))
    first, second = entries[0], entries[1]
    copied = payload[first.offset : first.offset + first.nbytes]
    assert copied == bytes(tensors[0].untyped_storage())
    assert payload[second.offset :] == b"\xee" * (size - second.offset), "nothing after it"
    assert fill(memoryview(payload), entries, tensors)


def test_the_slot_lock_excludes_a_writer_in_another_arena_until_released(tmp_path: Path) -> None:
    holder = RankArena(tmp_path, 3)
    # Another open file of each slot, as another Snapshots (or process) would hold.
    probes = [os.open(holder.path(slot), os.O_RDWR | os.O_CREAT) for slot in (0, 1)]
    try:
        with holder.exclusive(1):
            with pytest.raises(BlockingIOError):
                fcntl.flock(probes[1], fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(probes[0], fcntl.LOCK_EX | fcntl.LOCK_NB)  # the other slot is free
        fcntl.flock(probes[1], fcntl.LOCK_EX | fcntl.LOCK_NB)  # and this one once released
    finally:
        for probe in probes:
            os.close(probe)
        holder.close()


@pytest.mark.parametrize("step", [-1, 2**63, 1.5, True, "3"])
def test_a_step_no_slot_can_hold_is_refused_in_save_itself(
    tmp_path: Path, supervisor: tuple[str, CommittingSupervisor], step: object
) -> None:
    snapshots = Snapshots(rank0_env(supervisor[0], tmp_path))
    with pytest.raises(ValueError, match="snapshot step must be an int"):
        snapshots.save(step, state(1.0))  # type: ignore[arg-type]
    snapshots.save(1, state(1.0))  # the writer goes on
    snapshots.flush()
    assert snapshots.committed == 1
