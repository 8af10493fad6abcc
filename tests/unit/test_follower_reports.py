"""supervisor/rpc/follower.py: a pod's reports reach the leader one at a time, in the order they
were made (a real FollowerLink against a real gRPC server on loopback in the leader's place)."""

from __future__ import annotations

import asyncio

import grpc

from supervisor.rpc.follower import FollowerLink
from supervisor.rpc.service import Supervisor, SupervisorSettings
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

SLOW_HANDLING_S = 0.3


class SlowToTakeTheFirstReport(pb_grpc.PeerServiceServicer):
    """Records when each report's handling began and ended; takes its time over the first."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.changed = asyncio.Condition()

    async def handled(self, reports: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: len(self.seen) >= 2 * reports)

    async def Report(
        self, request: pb.PodReport, context: grpc.aio.ServicerContext
    ) -> pb.PodReportReply:
        kind = request.WhichOneof("report") or ""
        self.seen.append(("began", kind))
        if len(self.seen) == 1:  # a busy leader; a second report sent meanwhile would overtake
            await asyncio.sleep(SLOW_HANDLING_S)
        async with self.changed:
            self.seen.append(("ended", kind))
            self.changed.notify_all()
        return pb.PodReportReply()


def test_the_harvest_of_a_stopped_generation_reaches_the_leader_before_the_pods_ready() -> None:
    async def scenario() -> list[tuple[str, str]]:
        leader = SlowToTakeTheFirstReport()
        server = grpc.aio.server()
        pb_grpc.add_PeerServiceServicer_to_server(leader, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        link = FollowerLink(
            Supervisor(SupervisorSettings()), 2, 1, f"127.0.0.1:{port}", None, heartbeat_s=1.0
        )
        try:
            link._joined.set()  # joined: the Join stream is not what this test is about
            harvested = pb.PodSnapshots(generation=0)
            link.report(pb.PodReport(snapshots=harvested))
            link.report(pb.PodReport(ready=1))
            await asyncio.wait_for(leader.handled(2), timeout=10)
            return leader.seen
        finally:
            await link.channel.close()
            await server.stop(None)

    seen = asyncio.run(scenario())
    assert seen == [
        ("began", "snapshots"),
        ("ended", "snapshots"),
        ("began", "ready"),
        ("ended", "ready"),
    ], seen
