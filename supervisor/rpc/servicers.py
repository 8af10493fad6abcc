"""The gRPC servicers of one pod's Supervisor: thin delegation to supervisor/rpc/service.py."""

from __future__ import annotations

from supervisor.rpc import call_checks
from supervisor.rpc.event_watch import watch_events
from supervisor.rpc.service import Supervisor
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc


class LauncherServicer(pb_grpc.LauncherServiceServicer):
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    async def AttachLauncher(self, request, context):  # type: ignore[no-untyped-def]
        async for command in self.sup.attach_launcher(request, context):
            yield command

    async def ReportProcessStarted(self, request, context):  # type: ignore[no-untyped-def]
        return await self.sup.report_process_started(request, context)

    async def ReportProcessExit(self, request, context):  # type: ignore[no-untyped-def]
        await self.sup.require_job(context)
        refusal = call_checks.process_exit(request, self.sup.launcher_pid, self.sup.processes)
        await self.sup.refuse(context, "ReportProcessExit", refusal)
        self.sup.harvest_arenas(request.pid)  # a step it held but had not reported yet
        return await self.sup.report_process_exit(request, context)


class WorkerServicer(pb_grpc.WorkerServiceServicer):
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    async def AttachWorker(self, request, context):  # type: ignore[no-untyped-def]
        async for command in self.sup.attach_worker(request, context):
            yield command

    async def Heartbeat(self, request, context):  # type: ignore[no-untyped-def]
        return await self.sup.heartbeat(request, context)

    async def ReportOutcome(self, request, context):  # type: ignore[no-untyped-def]
        return await self.sup.report_outcome(request, context)


class StatusServicer(pb_grpc.StatusServiceServicer):
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    async def GetStatus(self, request, context):  # type: ignore[no-untyped-def]
        return await self.sup.get_status(request, context)

    async def WatchEvents(self, request, context):  # type: ignore[no-untyped-def]
        # Authorized as GetStatus is: the whole StatusService (supervisor/rpc/auth.py).
        await self.sup.refuse(context, "WatchEvents", call_checks.watch_events(request))
        async for event in watch_events(self.sup, request.after, request.follow):
            yield event
