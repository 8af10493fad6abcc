"""Node 0 of a multi-pod job over gRPC: the leader's hub (followers: supervisor/rpc/follower.py).

Thin I/O around supervisor/rules/leader.py (the rules), supervisor/rules/job_health.py
(the pods compared) and supervisor/rules/job.py (one pod carrying them out).
Changes are pushed on each follower's Join stream; followers report
ready/finished/failures with unary Report calls and heartbeat (with their
ranks and metrics sample) on one stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Optional

import grpc

from supervisor.rpc import call_checks
from supervisor.rpc.peer_wire import (
    copies_from_wire,
    failure_from_wire,
    message_to_wire,
    view_from_wire,
)
from supervisor.rpc.service import Supervisor
from supervisor.rpc.state_wire import record_from_wire, sample_from_wire
from supervisor.rpc.status_view import health_status, job_wide_ranks
from supervisor.rules import restart_policy
from supervisor.rules.anomaly import AnomalyTracker
from supervisor.rules.job import evidence_of, fresh_from_the_start
from supervisor.rules.job_health import JobHealth
from supervisor.rules.leader import Broadcast, JoinRefused, LeaderState, LeaderTimings, PodView
from supervisor.rules.spec import WorkerSpec
from supervisor.rules.vocabulary import ReentryMode
from supervisor.snapshots.rounds import OffloadRounds
from supervisor.workers.ports import free_port
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

log = logging.getLogger("train_supervisor")
TICK_S = 0.2
KEEPALIVE_TIME_MS = 1000


def spec_mismatch(spec: WorkerSpec, nnodes: int, node_rank: int) -> Optional[str]:
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
        detect = local.settings.detect
        self.health = JobHealth(AnomalyTracker(detect.anomaly), detect.sample_s)

    # -------------------------------------------------- Coordination (node 0)
    def check_spec(self, spec: WorkerSpec) -> Optional[str]:
        return spec_mismatch(spec, self.nnodes, 0)

    def launcher_attached(self, spec: WorkerSpec, resumed: Optional[PodView] = None) -> None:
        self.run_id = spec.run_id
        settings = self.local.settings
        policy = restart_policy.RestartPolicy(
            spec.max_restarts, settings.crash_loop_threshold, settings.detect.crash_loop_window_s
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
            fresh_processes=fresh_from_the_start(spec, "node 0's "),
            falls_back=spec.reentry != ReentryMode.REENTRY_ALWAYS,
        )
        self._deliver(self.leader.join(0, spec.nproc_per_node, resumed, time.monotonic()))
        job = self.local.job
        if resumed is not None and job is not None:  # for status: the generation runs on it
            self.leader.master_port = job.master_port
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
        status.fresh_processes = self.leader.fresh_processes or local.fresh_processes
        status.leader = "node 0 (this pod)"
        others = [r for n in sorted(self.pod_ranks) for r in self.pod_ranks[n]]
        del status.ranks[:]
        status.ranks.extend(job_wide_ranks(local, others))
        failures = [f for f in (local.last_failure, *self.pod_failures.values()) if f.time_unix]
        if failures:
            status.last_failure.CopyFrom(max(failures, key=lambda f: f.time_unix))
        # The job's rounds end on the leader, with every pod's problems ("node 1: ENOSPC");
        # this pod's own driver knows only its part.
        del status.offload_errors[:]
        job_errors = self.leader.snapshots.rounds.errors
        status.offload_errors.extend(f"{k}: {v}" for k, v in sorted(job_errors.items()))
        health_status(self.health, status)
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
        # Before anything is replaced: a refused join leaves the joined pod's stream alone.
        refusal = call_checks.join(self.membership(leader), request)
        await self.local.refuse(context, "Join", refusal)
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
        if request.ranks and node != 0:  # a job that ends at this join sees no heartbeat
            self.pod_ranks[node] = list(request.ranks)
        self.health.drop(node)  # a new incarnation starts a new series
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

    def membership(self, leader: LeaderState) -> call_checks.Membership:
        return call_checks.Membership(
            run_id=self.run_id,
            nnodes=self.nnodes,
            nproc=leader.nproc,
            incarnations={node: m.incarnation for node, m in leader.members.items()},
            streaming=frozenset(self.streams),
        )

    async def _check_report(
        self, context: grpc.aio.ServicerContext[Any, Any], call: str, report: pb.PodReport
    ) -> None:
        if self.leader is not None:
            refusal = call_checks.pod_report(self.membership(self.leader), report)
            await self.local.refuse(context, call, refusal)

    async def report_rpc(
        self, request: pb.PodReport, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PodReportReply:
        await self._check_report(context, "Report", request)
        known = self._on_report(request.node_rank, request)
        return pb.PodReportReply(rejoin=not known)

    async def heartbeats_rpc(
        self, beats: AsyncIterator[pb.PodReport], context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PodReportReply:
        async for beat in beats:
            await self._check_report(context, "Heartbeats", beat)
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
        if report.HasField("sample"):
            self.health.add(node, sample_from_wire(report.sample), time.monotonic())
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
            last = report.last_failure
            seen = evidence_of(record_from_wire(last)) if report.HasField("last_failure") else None
            self._deliver(leader.failure(node, failure.generation, failure, seen))
        elif kind == "snapshots":
            held = report.snapshots
            self._deliver(leader.pod_snapshots(node, held.generation, held.held, now))
        elif kind == "offloaded":
            done = report.offloaded
            errors = (done.replica_error, done.persist_error)
            self._deliver(leader.pod_offloaded(node, done.step, *errors, now))
        elif kind == "reentry_failed":
            leader.reentry_failed(node, report.reentry_failed)
        elif kind == "collective_broke":
            self._deliver(leader.collective_broke(node, report.collective_broke))
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
            self._check_health(now)

    def _check_health(self, now: float) -> None:
        own = self.local.pod_health
        if own is not None and own.latest is not None:
            self.health.add(0, sample_from_wire(own.latest), now)
        news = self.health.tick(now)
        if news.events:
            self.local.record_news(news.events)
        for replace in news.replace:
            asked = pb.ReplacePodMsg(node_rank=replace.node_rank, reason=replace.reason)
            leave = pb.LeaderMessage(replace=asked)
            if replace.node_rank == 0:
                asyncio.get_running_loop().call_soon(self.local.on_leader_message, leave)
            elif replace.node_rank in self.streams:
                self.streams[replace.node_rank].put_nowait(leave)


class PeerServicer(pb_grpc.PeerServiceServicer):
    def __init__(self, hub: LeaderHub) -> None:
        self.hub = hub

    async def Join(self, request, context):  # type: ignore[no-untyped-def]
        async for message in self.hub.join(request, context):
            yield message

    async def Report(self, request, context):  # type: ignore[no-untyped-def]
        return await self.hub.report_rpc(request, context)

    async def Heartbeats(self, request_iterator, context):  # type: ignore[no-untyped-def]
        return await self.hub.heartbeats_rpc(request_iterator, context)
