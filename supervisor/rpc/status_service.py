"""StatusService: the job's status (the whole job's, where it spans pods) and its events, read
from the pod's core (supervisor/rpc/service.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from supervisor.rpc import call_checks
from supervisor.rpc.event_watch import watch_events
from supervisor.rpc.service import Supervisor
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc


class StatusServicer(pb_grpc.StatusServiceServicer):
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.JobStatus:
        local = self.sup.local_status()
        if self.sup.coordination is None:
            return local
        return await self.sup.coordination.job_status(local)

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.JobEvent]:
        # Authorized as GetStatus is: the whole StatusService (supervisor/rpc/auth.py).
        await self.sup.refuse(context, "WatchEvents", call_checks.watch_events(request))
        async for event in watch_events(self.sup, request.after, request.follow):
            yield event
