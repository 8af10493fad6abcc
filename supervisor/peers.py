"""Supervisors of a multi-pod job over gRPC: node 0 hosts the leader, the others follow.

Thin I/O around supervisor/leader.py (the rules) and supervisor/pod_job.py
(one pod carrying them out). Changes are pushed on each follower's Join
stream; followers report ready/finished/failures and heartbeat with unary
Report calls. A follower keeps the job view from every message and gives it
back when it re-joins, which is how a replacement leader rebuilds the job.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any, Optional

import grpc

from supervisor import restart_policy
from supervisor.leader import JoinRefused, LeaderState
from supervisor.leader_types import Broadcast, LeaderTimings, PodView, follow, mark_finished
from supervisor.offload_rounds import OffloadRounds
from supervisor.peer_wire import (
    copies_from_wire,
    failure_from_wire,
    message_from_wire,
    message_to_wire,
    view_from_wire,
    view_to_wire,
)
from supervisor.ports import free_port
from supervisor.service import Supervisor
from train_supervisor.credentials import MAX_MESSAGE_BYTES, TOKEN_METADATA_KEY, bearer
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

log = logging.getLogger("train_supervisor")
TICK_S = 0.2
KEEPALIVE_TIME_MS = 1000


def _check_spec(spec: pb.WorkerSpec, nnodes: int, node_rank: int) -> Optional[str]:
    if spec.nnodes != nnodes or spec.node_rank != node_rank:
        return (
            f"train-launch has --nnodes {spec.nnodes} --node-rank {spec.node_rank}, but this "
            f"supervisor is node {node_rank} of SUPERVISOR_NNODES={nnodes}"
        )
    return None


class LeaderHub:
    """Node 0: the job's LeaderState, the followers' streams, and node 0's own pod."""

    def __init__(
        self, local: Supervisor, nnodes: int, master_addr: str, timings: LeaderTimings
    ) -> None:
        self.local = local
        self.nnodes = nnodes
        self.master_addr = master_addr
        self.timings = timings
        self.leader: Optional[LeaderState] = None  # made when node 0's launcher attaches
        self.streams: dict[int, asyncio.Queue[Optional[pb.LeaderMessage]]] = {}
        self.pod_ranks: dict[int, list[pb.RankStatus]] = {}
        self.pod_failures: dict[int, pb.FailureRecord] = {}
        self._ticker: Optional[asyncio.Task[None]] = None
        self.run_id = ""

    # -------------------------------------------------- Coordination (node 0)
    def check_spec(self, spec: pb.WorkerSpec) -> Optional[str]:
        return _check_spec(spec, self.nnodes, 0)

    def launcher_attached(self, spec: pb.WorkerSpec) -> None:
        self.run_id = spec.run_id
        policy = restart_policy.RestartPolicy(
            spec.max_restarts, self.local.settings.crash_loop_threshold
        )
        offload = self.local.settings.offload
        rounds = OffloadRounds(
            replicate=offload.replicate and bool(spec.snapshot_dir),
            persist=offload.durable_dir is not None and bool(spec.snapshot_dir),
            every_steps=offload.persist_every_steps,
            every_s=offload.persist_every_s,
        )
        self.leader = LeaderState(
            self.nnodes,
            spec.nproc_per_node,
            policy,
            free_port,
            self.master_addr,
            self.timings,
            rounds=rounds,
        )
        self._deliver(self.leader.join(0, spec.nproc_per_node, None, time.monotonic()))
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    def report(self, report: pb.PodReport) -> None:
        self._on_report(0, report)

    async def job_status(self, local: pb.JobStatus) -> pb.JobStatus:
        """Node 0's ranks and generation, plus every follower's last reported ranks."""
        if self.leader is None:
            return local
        view = self.leader.view(time.monotonic())
        status = pb.JobStatus()
        status.CopyFrom(local)
        status.generation, status.restart_count = view.generation, view.restart_count
        status.world_size = view.world_size
        status.leader = "node 0 (this pod)"
        ranks = [*local.ranks, *(r for n in sorted(self.pod_ranks) for r in self.pod_ranks[n])]
        del status.ranks[:]
        status.ranks.extend(sorted(ranks, key=lambda r: r.rank))
        failures = [f for f in (local.last_failure, *self.pod_failures.values()) if f.time_unix]
        if failures:
            status.last_failure.CopyFrom(max(failures, key=lambda f: f.time_unix))
        return status

    # ------------------------------------------------------------ PeerService
    async def join(
        self, request: pb.JoinRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.LeaderMessage]:
        leader = self.leader
        if leader is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the leader's launcher is not up yet")
            return
        node = request.node_rank
        if request.run_id != self.run_id:
            log.warning(
                "node %d: refused a join for job %r (this job: %r)",
                node,
                request.run_id[:64],
                self.run_id,
            )
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not this job's run id")
        if node == 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node 0 is the leader")
        queue: asyncio.Queue[Optional[pb.LeaderMessage]] = asyncio.Queue()
        old = self.streams.get(node)
        self.streams[node] = queue
        if old is not None:
            old.put_nowait(None)
        try:
            effects = leader.join(
                node,
                request.nproc,
                view_from_wire(request),
                time.monotonic(),
                request.incarnation,
            )
        except JoinRefused as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        log.info("node %d joined (incarnation %d)", node, request.incarnation)
        # Answer at once: the follower counts itself joined (and heartbeats)
        # even while the leader waits for the other pods.
        await context.send_initial_metadata(())
        self._deliver(effects)
        try:
            while True:
                message = await queue.get()
                if message is None:
                    return
                yield message
        finally:
            if self.streams.get(node) is queue:
                del self.streams[node]
                log.warning("node %d: stream lost", node)
                self._deliver(leader.pod_lost(node, time.monotonic(), request.incarnation))

    async def report_rpc(
        self, request: pb.PodReport, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PodReportReply:
        known = self._on_report(request.node_rank, request)
        return pb.PodReportReply(rejoin=not known)

    async def heartbeats_rpc(self, beats: AsyncIterator[pb.PodReport]) -> pb.PodReportReply:
        async for beat in beats:
            if not self._on_report(beat.node_rank, beat):
                return pb.PodReportReply(rejoin=True)
        return pb.PodReportReply()

    # --------------------------------------------------------------- internals
    def _on_report(self, node: int, report: pb.PodReport) -> bool:
        leader = self.leader
        if leader is None or not leader.heartbeat(node, time.monotonic()):
            return False
        if report.ranks and node != 0:
            self.pod_ranks[node] = list(report.ranks)
        if report.HasField("last_failure") and node != 0:
            self.pod_failures[node] = report.last_failure
        if report.HasField("copies"):  # before "ready": the restore choice needs them
            leader.pod_copies(node, copies_from_wire(report.copies))
        kind = report.WhichOneof("report")
        now = time.monotonic()
        if kind == "ready":
            self._deliver(leader.pod_ready(node, report.ready))
        elif kind == "finished":
            self._deliver(leader.pod_finished(node, report.finished))
        elif kind == "failure":
            failure = failure_from_wire(report.failure)
            self._deliver(leader.failure(node, failure.generation, failure))
        elif kind == "snapshots":
            held = report.snapshots
            self._deliver(leader.pod_snapshots(node, held.generation, held.held, now))
        elif kind == "offloaded":
            done = report.offloaded
            errors = (done.replica_error, done.persist_error)
            self._deliver(leader.pod_offloaded(node, done.step, *errors, now))
        elif kind == "restore_failed":
            failed = report.restore_failed
            self._deliver(
                leader.restore_failed(node, failed.generation, failed.step, failed.problem)
            )
        return True

    def _deliver(self, broadcasts: list[Broadcast]) -> None:
        for broadcast in broadcasts:
            message = message_to_wire(broadcast.message)
            nodes = range(self.nnodes) if broadcast.target is None else [broadcast.target]
            for node in nodes:
                if node == 0:  # after the current effects are applied: no re-entry
                    asyncio.get_running_loop().call_soon(self.local.on_leader_message, message)
                elif node in self.streams:
                    self.streams[node].put_nowait(message)

    async def _tick_forever(self) -> None:
        while self.leader is not None:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            self.leader.heartbeat(0, now)  # our own pod is alive while this loop runs
            self._deliver(self.leader.tick(now))


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
        self.spec: Optional[pb.WorkerSpec] = None
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

    def check_spec(self, spec: pb.WorkerSpec) -> Optional[str]:
        return _check_spec(spec, self.nnodes, self.node_rank)

    def launcher_attached(self, spec: pb.WorkerSpec) -> None:
        self.spec = spec
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
        if report.HasField("finished") and self.view is not None:
            self.view = mark_finished(self.view)
        asyncio.get_running_loop().create_task(self._send(report))

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
                    self.view = follow(self.view, message_from_wire(message))
                    self.local.on_leader_message(message)
            except grpc.RpcError as err:
                log.warning("leader at %s: %s; re-joining", self.leader_address, err.code().name)
            if self._joined.is_set():
                self.local.leader_lost()
            self._joined.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _heartbeat(self) -> None:
        """One Heartbeats stream per join; a beat (with this pod's ranks) every heartbeat_s."""
        while True:
            await self._joined.wait()
            call = self.stub.Heartbeats(metadata=self.metadata)
            try:
                while self._joined.is_set() and not call.done():
                    beat = pb.PodReport(
                        node_rank=self.node_rank,
                        incarnation=self.incarnation,
                        heartbeat=True,
                        ranks=self.local.local_ranks(),
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
            if reply.rejoin:  # the leader no longer counts this pod (it was lost)
                log.warning("the leader no longer counts this pod; re-joining")
                self.local.leader_lost()
                self._joined.clear()
                self._tasks[0].cancel()
                self._tasks[0] = asyncio.get_running_loop().create_task(self._follow())


class PeerServicer(pb_grpc.PeerServiceServicer):
    def __init__(self, hub: LeaderHub) -> None:
        self.hub = hub

    async def Join(self, request, context):  # type: ignore[no-untyped-def]
        async for message in self.hub.join(request, context):
            yield message

    async def Report(self, request, context):  # type: ignore[no-untyped-def]
        return await self.hub.report_rpc(request, context)

    async def Heartbeats(self, request_iterator, context):  # type: ignore[no-untyped-def]
        return await self.hub.heartbeats_rpc(request_iterator)
