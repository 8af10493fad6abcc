"""SnapshotService: the gRPC adapter around the commit rule (supervisor/commit.py).

The snapshots themselves never pass through here: each rank writes its own
arena in shared memory (train_supervisor/arena.py) and only reports steps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc

from supervisor.commit import NONE
from supervisor.job import JobState
from supervisor.pod_job import CoordinatedJobState
from supervisor.service import Supervisor
from train_supervisor.arena import CorruptSnapshot, RankArena
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

# A report waits at most this long for the other ranks, rather than block the
# rank's next save forever. Past it the rank's next save may overwrite the
# step still waiting; were that step committed later, the verification before
# a restore would find it missing on that rank and fall back.
COMMIT_WAIT_S = 60.0


def unusable(directory: Path, ranks: Iterable[int], step: int) -> list[str]:
    """Why `step` cannot be restored on some of `ranks` (checksums verified); [] if it can."""
    problems = []
    for rank in ranks:
        arena = RankArena(directory, rank)
        try:
            slot = arena.find(step)
            if slot is None:
                problems.append(f"rank {rank}: step {step} is not in {directory}")
                continue
            arena.read(slot, verify=True)
        except (CorruptSnapshot, OSError) as err:
            problems.append(f"rank {rank}: {err}")
        finally:
            arena.close()
    return problems


class SnapshotServicer(pb_grpc.SnapshotServiceServicer):
    def __init__(self, sup: Supervisor, commit_wait_s: float = COMMIT_WAIT_S) -> None:
        self.sup = sup
        self.commit_wait_s = commit_wait_s
        # One decision per generation, shared by every rank that asks.
        self._restore_points: dict[int, asyncio.Task[int]] = {}

    async def ReportSaved(
        self, request: pb.SnapshotSaved, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CommitReply:
        job = await self.sup.require_job(context)
        slot = job.slot_of(request.pid)
        stale = slot is None or slot.rank != request.rank or request.generation != job.generation
        if stale:  # an old process or generation: its steps count for nothing
            return pb.CommitReply(committed_step=job.snapshots.committed)
        tracker = job.snapshots
        committed = tracker.committed
        try:
            effects = job.snapshot_saved(
                request.rank, request.step, list(request.held), request.bytes, request.blocking_s
            )
        except ValueError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
            raise AssertionError("unreachable: abort raises") from None
        if effects or tracker.committed != committed:  # a commit is no event: it is every step
            self.sup.apply(effects)  # reports to the leader; wakes the ranks waiting below

        def settled() -> bool:
            return tracker.is_settled(request.step) or job.generation != request.generation

        async with self.sup.changed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.sup.changed.wait_for(settled), self.commit_wait_s)
        return pb.CommitReply(committed_step=tracker.committed)

    async def GetRestorePoint(
        self, request: pb.RestoreRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RestorePoint:
        job = await self.sup.require_job(context)
        if isinstance(job, CoordinatedJobState):
            # The leader's start message named it; each rank verifies its own copy.
            return pb.RestorePoint(step=job.snapshots.committed)
        point = self._restore_points.get(job.generation)
        if point is None:
            self._restore_points = {job.generation: asyncio.create_task(self._restore_point(job))}
            point = self._restore_points[job.generation]
        return pb.RestorePoint(step=await asyncio.shield(point))

    async def _restore_point(self, job: JobState) -> int:
        """The committed step, once every rank's copy of it verifies: all restore it or none."""
        tracker, step = job.snapshots, job.snapshots.committed
        if step == NONE or not job.spec.snapshot_dir:
            return step
        directory = Path(job.spec.snapshot_dir)
        problems = await asyncio.to_thread(unusable, directory, sorted(job.ranks), step)
        if not problems:
            return step
        for problem in problems:
            job.record("snapshot_problem", problem)
        # No peer replica or durable copy yet: the next source is a fresh start.
        job.record("snapshot_fallback", f"step {step} is not usable on every rank: none restored")
        tracker.forget()
        self.sup.apply([])
        return NONE

    async def ReportRestore(
        self, request: pb.RestoreReport, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Ack:
        job = await self.sup.require_job(context)
        job.snapshots.restored(request.rank, request.step, request.source)
        where = f"step {request.step} from {request.source}" if request.step >= 0 else "nothing"
        message = f"rank {request.rank} restored {where} in {request.seconds:.3f}s"
        job.record("snapshot_restored", message)
        if request.problem:
            job.record("snapshot_problem", f"rank {request.rank}: {request.problem}")
        self.sup.apply([])
        return pb.Ack()
