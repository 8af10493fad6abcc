"""Nodes 1..N-1 of a multi-pod job: join the leader over gRPC, carry out what it pushes.

A follower keeps the job view from every message and gives it back when it
re-joins, which is how a replacement leader rebuilds the job (supervisor/rules/leader.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Optional

import grpc

from supervisor.rpc.peer_wire import message_from_wire, view_to_wire
from supervisor.rpc.peers import KEEPALIVE_TIME_MS, spec_mismatch
from supervisor.rpc.service import Supervisor
from supervisor.rules.leader import PodView, follow, mark_finished
from supervisor.rules.spec import WorkerSpec
from train_supervisor.credentials import MAX_MESSAGE_BYTES, TOKEN_METADATA_KEY, bearer
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

log = logging.getLogger("train_supervisor")


class FollowerLink:
    """Nodes 1..N-1: join the leader, apply what it pushes, report and heartbeat."""

    def __init__(
        self,
        local: Supervisor,
        nnodes: int,
        node_rank: int,
        leader_address: str,
        token: Optional[str],
        heartbeat_s: float,
        tls_ca: Optional[bytes] = None,
    ) -> None:
        self.local = local
        self.nnodes = nnodes
        self.node_rank = node_rank
        self.leader_address = leader_address
        self.metadata = ((TOKEN_METADATA_KEY, bearer(token)),) if token else ()
        self.heartbeat_s = heartbeat_s
        self.incarnation = random.getrandbits(62)
        self.view: Optional[PodView] = None
        self.spec: Optional[WorkerSpec] = None
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # A silent leader (partition, dead node) breaks the Join stream in
            # seconds instead of waiting for TCP to give up (minutes).
            ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
            ("grpc.keepalive_timeout_ms", max(1000, int(heartbeat_s * 4000))),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        if tls_ca is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca)
            self.channel = grpc.aio.secure_channel(leader_address, credentials, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(leader_address, options=options)
        self.stub = pb_grpc.PeerServiceStub(self.channel)
        self.status_stub = pb_grpc.StatusServiceStub(self.channel)
        self._tasks: list[asyncio.Task[None]] = []
        self._joined = asyncio.Event()
        # Reports go one at a time, in the order made: what a pod's ranks hold of a stopped
        # generation (harvested when the leader's Open comes) must reach the leader before
        # the pod's "ready" for the next one, which starts it.
        self._outbox: asyncio.Queue[pb.PodReport] = asyncio.Queue()
        self._sender: Optional[asyncio.Task[None]] = None

    def check_spec(self, spec: WorkerSpec) -> Optional[str]:
        return spec_mismatch(spec, self.nnodes, self.node_rank)

    def launcher_attached(self, spec: WorkerSpec, resumed: Optional[PodView] = None) -> None:
        """`resumed`: this supervisor is new and rebuilt the pod's job from its running
        ranks; the leader (or its replacement) keeps their generation running."""
        self.spec = spec
        self.view = resumed
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow()), loop.create_task(self._heartbeat())]

    async def job_status(self, local: pb.JobStatus) -> pb.JobStatus:
        """The leader's view of the whole job; this pod's own when it is unreachable."""
        try:
            status: pb.JobStatus = await self.status_stub.GetStatus(
                pb.GetStatusRequest(), metadata=self.metadata, timeout=2
            )
        except grpc.RpcError as err:
            local.leader = f"{self.leader_address} (unreachable: {err.code().name})"
            return local
        status.leader = self.leader_address
        return status

    def report(self, report: pb.PodReport) -> None:
        report.node_rank, report.incarnation = self.node_rank, self.incarnation
        if not report.ranks:  # the ranks as of this report: after "finished", no beat follows
            report.ranks.extend(self.local.local_ranks())
        if report.HasField("finished") and self.view is not None:
            self.view = mark_finished(self.view)
        self._outbox.put_nowait(report)
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_in_order())

    async def _send_in_order(self) -> None:
        while True:
            report = await self._outbox.get()
            try:
                await self._send(report)
            except Exception:  # any: one bad report must not silence the ones after it
                log.exception("report to the leader dropped")

    async def _send(self, report: pb.PodReport) -> None:
        for delay in (0.1, 0.2, 0.5, 1.0, 2.0):
            await self._joined.wait()
            try:
                reply = await self.stub.Report(report, metadata=self.metadata, timeout=5)
                if not reply.rejoin:
                    return
            except grpc.RpcError as err:
                log.warning("report to the leader failed: %s", err.code().name)
            await asyncio.sleep(delay)
        # A later re-join re-sends ready/finished (rejoined()); failures are in the view.

    async def _follow(self) -> None:
        assert self.spec is not None
        delay = 0.1
        while True:
            request = pb.JoinRequest(
                run_id=self.spec.run_id,
                node_rank=self.node_rank,
                nproc=self.spec.nproc_per_node,
                incarnation=self.incarnation,
                has_view=self.view is not None,
                view=view_to_wire(self.view) if self.view is not None else None,
                running=self.view is not None
                and self.local.running_generation() == self.view.generation,
                ranks=self.local.local_ranks(),
            )
            try:
                stream = self.stub.Join(request, metadata=self.metadata)
                await stream.wait_for_connection()
                # Joined (the leader may still be forming): heartbeat from now on,
                # and give a new leader the reports it never had.
                delay = 0.1
                self._joined.set()
                self.local.rejoined()
                async for message in stream:
                    if not message.HasField("replace"):  # not part of the job's view
                        self.view = follow(self.view, message_from_wire(message))
                    self.local.on_leader_message(message)
            except grpc.RpcError as err:
                if not self._job_over():
                    log.warning(
                        "leader at %s: %s; re-joining", self.leader_address, err.code().name
                    )
            if self._job_over():  # nothing left to coordinate: no re-join for as long as we run
                self._stop_following()
                return
            if self._joined.is_set():
                self.local.leader_lost()
            self._joined.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _job_over(self) -> bool:
        job = self.local.job
        return job is not None and job.over

    def _stop_following(self) -> None:
        """The job is over: no more joins or heartbeats (they looped every 2.5 s before)."""
        log.info("the job is over: this pod no longer joins the leader")
        self._joined.clear()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async def _heartbeat(self) -> None:
        """One Heartbeats stream per join; a beat (with this pod's ranks) every heartbeat_s."""
        while True:
            await self._joined.wait()
            call = self.stub.Heartbeats(metadata=self.metadata)
            try:
                while self._joined.is_set() and not call.done():
                    health = self.local.pod_health
                    beat = pb.PodReport(
                        node_rank=self.node_rank,
                        incarnation=self.incarnation,
                        heartbeat=True,
                        ranks=self.local.local_ranks(),
                        sample=None if health is None else health.latest,
                    )
                    await call.write(beat)
                    await asyncio.sleep(self.heartbeat_s)
                if not call.done():  # the Join stream broke: beat again once re-joined
                    call.cancel()
                    continue
                reply = await call
            except (grpc.RpcError, asyncio.InvalidStateError) as err:
                code = err.code().name if isinstance(err, grpc.RpcError) else "ended"
                log.warning("heartbeats to the leader: %s", code)
                call.cancel()
                await asyncio.sleep(self.heartbeat_s)
                continue
            if reply.rejoin and self._job_over():  # it ended the job: nothing to re-join
                self._stop_following()
                return
            if reply.rejoin:  # the leader no longer counts this pod (it was lost)
                log.warning("the leader no longer counts this pod; re-joining")
                self.local.leader_lost()
                self._joined.clear()
                self._tasks[0].cancel()
                self._tasks[0] = asyncio.get_running_loop().create_task(self._follow())
