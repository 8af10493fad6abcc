"""SnapshotService: the gRPC adapter around the commit rule (supervisor/snapshots/commit.py).

The snapshots themselves never pass through here: each rank writes its own
arena in shared memory (train_supervisor/arena.py) and only reports steps.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc

from supervisor.rpc import call_checks
from supervisor.rpc.service import Supervisor
from supervisor.rules.job import JobState
from supervisor.snapshots.offload import Materialized
from supervisor.snapshots.offload_runner import OffloadDriver
from train_supervisor.steps import NO_STEP
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

# A report waits at most this long for the other ranks, rather than block the
# rank's next save forever. Past it the rank's next save may overwrite the
# step still waiting; were that step committed later, the verification before
# a restore would find it missing on that rank and fall back.
COMMIT_WAIT_S = 60.0


class SnapshotServicer(pb_grpc.SnapshotServiceServicer):
    def __init__(self, sup: Supervisor, commit_wait_s: float = COMMIT_WAIT_S) -> None:
        self.sup = sup
        self.commit_wait_s = commit_wait_s
        self._restore_points: dict[int, asyncio.Future[Materialized]] = {}

    async def ReportSaved(
        self, request: pb.SnapshotSaved, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CommitReply:
        job = await self.sup.require_job(context)
        await self.sup.refuse(context, "ReportSaved", call_checks.snapshot_saved(job, request))
        slot = job.slot_of(request.pid)
        stale = slot is None or slot.rank != request.rank or request.generation != job.generation
        if stale:  # an old process or generation: its steps count for nothing
            return pb.CommitReply(committed_step=job.snapshots.committed)
        tracker = job.snapshots
        try:
            self.sup.record_saved(
                job, request.rank, request.step, list(request.held),
                request.bytes, request.blocking_s,
            )  # fmt: skip
        except ValueError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
            raise AssertionError("unreachable: abort raises") from None

        def settled() -> bool:
            settled = tracker.is_settled(request.step) or not job.commits_wait()
            return settled or job.generation != request.generation

        async with self.sup.changed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.sup.changed.wait_for(settled), self.commit_wait_s)
        return pb.CommitReply(committed_step=tracker.committed)

    async def GetRestorePoint(
        self, request: pb.RestoreRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RestorePoint:
        job = await self.sup.require_job(context)
        await self.sup.refuse(context, "GetRestorePoint", call_checks.restore_request(job, request))
        offload = self.sup.offload
        if offload is None:
            return pb.RestorePoint(step=NO_STEP)
        generation = job.generation
        point = self._restore_points.get(generation)
        if point is None:  # one decision per generation, shared by every rank that asks
            point = asyncio.ensure_future(self._restore(job, offload))
            self._restore_points = {generation: point}
        done = await asyncio.shield(point)
        if not done.complete:
            # The leader opens the next generation without this step; the abort unwinds
            # the rank right after this answer. Never sooner: a rank that went on from
            # nothing would train beside ranks that restored the step.
            async with self.sup.changed:
                await self.sup.changed.wait_for(lambda: job.generation != generation or job.over)
            return pb.RestorePoint(step=NO_STEP)
        return pb.RestorePoint(step=done.step, source=done.sources.get(request.rank, ""))

    async def _restore(self, job: JobState, offload: OffloadDriver) -> Materialized:
        """Every local rank's copy of one step in place (shm -> peer -> durable), or none.

        One pod chooses the step itself; in a job of several the leader chose it."""
        if job.leader_remote:
            return await offload.restore_leaders_step(job.snapshots.committed, job.generation)
        done = await offload.restore_here()
        job.snapshots.adopt(done.step)
        job.snapshots.new_generation()  # held steps past the restored one are void
        self.sup.apply([])
        return done

    async def ReportRestore(
        self, request: pb.RestoreReport, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Ack:
        job = await self.sup.require_job(context)
        await self.sup.refuse(context, "ReportRestore", call_checks.restore_report(job, request))
        if request.generation != job.generation:
            return pb.Ack()  # a stopped generation's restore: nothing of it counts now
        job.snapshots.restored(request.rank, request.step, request.source)
        where = f"step {request.step} from {request.source}" if request.step >= 0 else "nothing"
        message = f"rank {request.rank} restored {where} in {request.seconds:.3f}s"
        job.record("snapshot_restored", message)
        if request.problem:
            job.record("snapshot_problem", f"rank {request.rank}: {request.problem}")
        self.sup.apply([])
        return pb.Ack()
