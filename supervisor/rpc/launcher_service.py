"""LauncherService: train-launch's command stream and its process reports, over the pod's core
(supervisor/rpc/service.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from signal import SIGKILL

import grpc

from supervisor.detect.gpu_probe import device_health
from supervisor.rpc import call_checks
from supervisor.rpc.service import Supervisor
from supervisor.rpc.state_wire import spec_from_wire
from supervisor.rules.classify import GpuHealth
from supervisor.rules.job import JobState
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

log = logging.getLogger("train_supervisor")
AttachContext = grpc.aio.ServicerContext[pb.AttachLauncherRequest, pb.LauncherCommand]


class LauncherServicer(pb_grpc.LauncherServiceServicer):
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.attached = False  # a launcher's command stream is open

    async def AttachLauncher(
        self, request: pb.AttachLauncherRequest, context: AttachContext
    ) -> AsyncIterator[pb.LauncherCommand]:
        sup = self.sup
        await sup.refuse(context, "AttachLauncher", call_checks.attach_launcher(request))
        if sup.job is not None:
            if sup.job.over or self.attached:
                why = "this supervisor's job is over" if sup.job.over else "a launcher is attached"
                await context.abort(grpc.StatusCode.ALREADY_EXISTS, why)
            async for command in self._launcher_back(request, context):
                yield command
            return
        if sup.coordination is not None:
            mismatch = sup.coordination.check_spec(spec_from_wire(request.spec))
            if mismatch is not None:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, mismatch)
        job = sup.attach_launcher(request)
        async for command in self._stream_to_launcher(job, context):
            yield command

    async def _launcher_back(
        self, request: pb.AttachLauncherRequest, context: AttachContext
    ) -> AsyncIterator[pb.LauncherCommand]:
        """The pod's launcher attaches again to this supervisor (its container restarted):
        its ranks failed when the old one's stream ended; it gets their new processes."""
        job = self.sup.job
        assert job is not None
        log.warning("launcher pid %d attached again", request.launcher_pid)
        job.record("launcher_attached", f"launcher pid {request.launcher_pid} attached again")
        for process in request.processes:  # counted failed already: not to run twice
            reason = "its launcher's stream broke: the rank was given a new process"
            self.sup.launcher_queue.put_nowait(
                pb.LauncherCommand(
                    kill=pb.KillProcess(pid=process.pid, signal=SIGKILL, reason=reason)
                )
            )
        async for command in self._stream_to_launcher(job, context):
            yield command

    async def _stream_to_launcher(
        self, job: JobState, context: AttachContext
    ) -> AsyncIterator[pb.LauncherCommand]:
        self.attached = True
        await context.send_initial_metadata(())  # attached: the launcher counts on us now
        try:
            while True:
                command = await self.sup.launcher_queue.get()
                if command is None:
                    return
                yield command
        finally:
            self.attached = False
            if not job.over:  # the launcher died (its workers with it), or was stopped
                self._drain_launcher_queue()
                self.sup.apply(job.launcher_lost(time.monotonic()))

    def _drain_launcher_queue(self) -> None:
        """Commands the gone launcher never got: for processes that are gone too."""
        queue = self.sup.launcher_queue
        kept = []
        while not queue.empty():
            command = queue.get_nowait()
            if command is not None and command.HasField("shutdown"):
                kept.append(command)
        for command in kept:
            queue.put_nowait(command)

    async def ReportProcessStarted(
        self,
        request: pb.ProcessStarted,
        context: grpc.aio.ServicerContext[pb.ProcessStarted, pb.Ack],
    ) -> pb.Ack:
        sup = self.sup
        job = await sup.require_job(context)
        refusal = call_checks.process_started(job, request, sup.launcher_pid, sup.processes)
        await sup.refuse(context, "ReportProcessStarted", refusal)
        if not request.spare:
            sup.apply(job.process_started(request.pid, request.rank))
        return pb.Ack()

    async def ReportProcessExit(
        self, request: pb.ProcessExit, context: grpc.aio.ServicerContext[pb.ProcessExit, pb.Ack]
    ) -> pb.Ack:
        sup = self.sup
        job = await sup.require_job(context)
        refusal = call_checks.process_exit(request, sup.launcher_pid, sup.processes)
        await sup.refuse(context, "ReportProcessExit", refusal)
        sup.harvest_arenas(request.pid)  # a step it held but had not reported yet
        queue = sup.worker_queues.pop(request.pid, None)
        if queue is not None:
            queue.put_nowait(None)
        sup.apply(
            job.process_exited(
                request.pid,
                request.exit_code,
                request.signal,
                request.output_tail,
                time.monotonic(),
                request.oom_kills,
                self._device_health(job, request.pid),
            )
        )
        return pb.Ack()

    def _device_health(self, job: JobState, pid: int) -> GpuHealth:
        """The exited rank's accelerator (by local rank), for the failure's classification."""
        slot = job.slot_of(pid)
        return device_health(self.sup.probes, slot.local_rank) if slot is not None else GpuHealth()
