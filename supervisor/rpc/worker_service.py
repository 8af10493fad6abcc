"""WorkerService: each worker's command stream, its step heartbeats and how its run ended, over
the pod's core (supervisor/rpc/service.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Optional

import grpc

from supervisor.rpc import call_checks
from supervisor.rpc.service import Supervisor
from supervisor.rpc.state_wire import detail_from_wire, reattached_from_wire
from supervisor.rules.job import JobState
from supervisor.rules.vocabulary import OutcomeKind
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc


class WorkerServicer(pb_grpc.WorkerServiceServicer):
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    async def AttachWorker(
        self,
        request: pb.AttachWorkerRequest,
        context: grpc.aio.ServicerContext[pb.AttachWorkerRequest, pb.WorkerCommand],
    ) -> AsyncIterator[pb.WorkerCommand]:
        sup = self.sup
        job = await sup.require_job(context)
        refusal = call_checks.attach_worker(
            job, request, sup.worker_queues, sup.launcher_pid, sup.processes
        )
        await sup.refuse(context, "AttachWorker", refusal)
        queue: asyncio.Queue[Optional[pb.WorkerCommand]] = asyncio.Queue()
        old = sup.worker_queues.get(request.pid)
        if old is not None:
            old.put_nowait(None)  # that stream is dead: its worker attached again
        sup.worker_queues[request.pid] = queue
        if request.reattach:
            sup.apply(job.worker_reattached(reattached_from_wire(request), time.monotonic()))
        else:
            sup.apply(job.worker_attached(request.pid, request.rank, request.spare))
        await context.send_initial_metadata(())  # attached: the worker may report now
        try:
            while True:
                command = await queue.get()
                if command is None:
                    return
                yield command
        finally:
            if sup.worker_queues.get(request.pid) is queue:
                del sup.worker_queues[request.pid]

    async def Heartbeat(
        self,
        request: pb.HeartbeatRequest,
        context: grpc.aio.ServicerContext[pb.HeartbeatRequest, pb.Ack],
    ) -> pb.Ack:
        sup = self.sup
        job = await sup.require_job(context)
        await sup.refuse(context, "Heartbeat", call_checks.heartbeat(job, request))
        if sup.pod_health is not None:
            sup.pod_health.on_heartbeat(request.rank, request.step_time_s, request.compute_s)
        sup.apply(
            job.heartbeat(
                request.pid,
                request.generation,
                request.step,
                request.step_time_s,
                time.monotonic(),
                compute_s=request.compute_s,
            )
        )
        return pb.Ack()

    async def ReportOutcome(
        self,
        request: pb.WorkerOutcome,
        context: grpc.aio.ServicerContext[pb.WorkerOutcome, pb.OutcomeVerdict],
    ) -> pb.OutcomeVerdict:
        sup = self.sup
        job = await sup.require_job(context)
        await sup.refuse(context, "ReportOutcome", call_checks.outcome(job, request))
        failure = detail_from_wire(request.failure) if request.HasField("failure") else None
        kind = OutcomeKind(int(request.kind))  # a known one: call_checks.outcome
        verdict, effects = job.outcome(
            request.pid, request.generation, kind, failure, time.monotonic(), request.step
        )
        sup.apply(effects)
        for final in (False, True):  # a peer's error may wait a second window (JobState.settle)
            if verdict is not None:
                break
            await self._wait_for_abort(job, request.generation)
            verdict, effects = job.settle(request.pid, final)
            sup.apply(effects)
        assert verdict is not None  # the final window always decides
        return pb.OutcomeVerdict(verdict=verdict.name)

    async def _wait_for_abort(self, job: JobState, generation: int) -> None:
        def aborted() -> bool:
            return job.generation > generation or job.over or not job.started

        async with self.sup.changed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    self.sup.changed.wait_for(aborted), timeout=self.sup.settings.failure_settle_s
                )
