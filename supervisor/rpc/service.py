"""The pod's core: one asyncio loop owns the JobState and applies what it decides.

One servicer per proto service feeds it events and reads it: launcher_service.py,
worker_service.py, status_service.py, snapshot_service.py (this pod's), peers.py and
supervisor/snapshots/replica.py (other pods'). supervisor/app.py wires them."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

import grpc

from supervisor.detect.gpu_probe import default_probes
from supervisor.detect.hang_watch import hang_watch_for
from supervisor.detect.pod_health import PodHealth
from supervisor.detect.pod_metrics import PodSampler
from supervisor.detect.process_table import ProcessTable, launcher_in_view
from supervisor.outputs.kube.reporter import KubeReporter
from supervisor.outputs.metrics import REFRESH_S, MetricsBoard, snapshot_of
from supervisor.rpc import call_checks
from supervisor.rpc.call_checks import NoProcesses, Processes, Refusal
from supervisor.rpc.effects_wire import (
    launcher_command_to_wire,
    report_to_wire,
    worker_command_to_wire,
)
from supervisor.rpc.peer_wire import copies_to_wire, message_from_wire
from supervisor.rpc.refusals import RefusalLog
from supervisor.rpc.state_wire import spec_from_wire
from supervisor.rpc.status_view import job_status
from supervisor.rules import restart_policy
from supervisor.rules.effects import Effect, Ready, Shutdown, ToLauncher, ToLeader, ToWorker
from supervisor.rules.failure_evidence import FailureMemory
from supervisor.rules.job import JobState, Timings
from supervisor.rules.leader import CommitStep, EndJob, OpenGeneration, PodView, StartGeneration
from supervisor.rules.spec import WorkerSpec
from supervisor.rules.vocabulary import JobPhase, WorkerState
from supervisor.settings.detection import DetectConfig
from supervisor.settings.snapshots import OffloadConfig
from supervisor.snapshots.harvest import harvest_arenas
from supervisor.snapshots.offload import REPLICAS
from supervisor.snapshots.offload_runner import OffloadDriver, ReplicaTarget
from supervisor.workers.ports import free_port
from train_supervisor.arena import remove_arena
from train_supervisor.v1 import supervisor_pb2 as pb

log = logging.getLogger("train_supervisor")
NOTABLE_EVENTS = frozenset(
    {
        "failure",
        "unwind_timeout",
        "gave_up",
        "replace_pod",
        "spare_lost",
        "snapshot_problem",
        "snapshot_lost",  # a committed step no pod can restore any more: steps redone
        "reentry_fallback",
        "persist_error",  # a full or failing durable disk: training goes on, unprotected
    }
)


@dataclass(frozen=True)
class SupervisorSettings:
    crash_loop_threshold: int = 3
    unwind_timeout_s: float = 10.0
    # Multi-pod: the leader loses a pod silent this long; a follower whose ranks stopped
    # stepping this long with the leader away counts itself cut off (rules/job.py).
    heartbeat_timeout_s: float = 10.0
    # How long a rank's exception waits for news of a peer's death before it
    # is judged to be the failure itself.
    failure_settle_s: float = 1.0
    tick_s: float = 0.1
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)


class Coordination(Protocol):
    """The link to the job's leader when the job spans pods (supervisor/rpc/peers.py)."""

    def check_spec(self, spec: WorkerSpec) -> Optional[str]:
        """Why this launcher's spec does not fit the job, or None."""

    def launcher_attached(self, spec: WorkerSpec, resumed: Optional[PodView] = None) -> None:
        """`resumed`: the pod's job as rebuilt under running ranks (a restarted supervisor)."""

    def report(self, report: pb.PodReport) -> None: ...

    async def job_status(self, local: pb.JobStatus) -> pb.JobStatus:
        """The whole job's status, given this pod's."""


class Supervisor:
    """Holds one pod's JobState, delivers its effects (DELIVERY), runs its timers and the
    watchers. Every method runs on the event loop thread."""

    def __init__(
        self,
        settings: SupervisorSettings,
        leader: str = "local",
        coordination: Optional[Coordination] = None,
    ) -> None:
        self.settings = settings
        self.leader = leader
        self.coordination = coordination
        self.job: Optional[JobState] = None
        self.launcher_queue: asyncio.Queue[Optional[pb.LauncherCommand]] = asyncio.Queue()
        self.worker_queues: dict[int, asyncio.Queue[Optional[pb.WorkerCommand]]] = {}
        self.changed = asyncio.Condition()
        self.ended: Optional[Shutdown] = None  # how the job ended, once it did
        self.events_logged = 0
        self._ticker: Optional[asyncio.Task[None]] = None
        self.replica_target: Optional[ReplicaTarget] = None  # the next pod (multi-pod only)
        self.offload: Optional[OffloadDriver] = None  # once a job with snapshots attached
        self.hang_watch = hang_watch_for(settings.detect)
        self.pod_health: Optional[PodHealth] = None  # once a launcher attached
        self.probes = default_probes()  # accelerator health (supervisor/detect/gpu_probe.py)
        self.closing = False  # stopping: event streams end (supervisor/rpc/event_watch.py)
        self.metrics_board: Optional[MetricsBoard] = None  # set when /metrics is served
        self.kube: Optional[KubeReporter] = None  # Kubernetes Events (supervisor/outputs/kube/)
        self._metrics_at = -REFRESH_S
        self.refusals = RefusalLog()  # refused calls, logged at a bounded rate
        # The launcher's pid once /proc can vouch for worker pids
        # (supervisor/detect/process_table.py).
        self.launcher_pid: Optional[int] = None
        self.processes: Processes = NoProcesses()
        self.resume_pending = False  # rebuilding the job under running ranks (_resumed)

    # ------------------------------------------------------------- plumbing
    def apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            DELIVERY[type(effect)](self, effect)
        if self.offload is not None:
            self.offload.generation_seen()
        if self.resume_pending and self.job is not None and not self.job.resuming:
            self._resumed()
        asyncio.get_running_loop().create_task(self._notify())
        self._log_new_events()

    def _to_worker(self, effect: ToWorker) -> None:
        queue = self.worker_queues.get(effect.pid)
        if queue is not None:
            queue.put_nowait(worker_command_to_wire(effect.command))

    def _to_launcher(self, effect: ToLauncher) -> None:
        self.launcher_queue.put_nowait(launcher_command_to_wire(effect.command))
        if isinstance(effect.command, Shutdown):
            self.ended = effect.command

    def _to_leader(self, effect: ToLeader) -> None:
        if self.coordination is None:
            return
        report = report_to_wire(effect.report)
        if isinstance(effect.report, Ready) and self.offload is not None:
            # The leader chooses the restore step from every pod's copies (and, if it
            # replaced another, from the commit this pod heard of last).
            held = self.offload.copies_now()
            if self.job is not None:
                held = dataclasses.replace(held, committed=self.job.snapshots.committed)
            report.copies.CopyFrom(copies_to_wire(held))
        self.coordination.report(report)

    def _report_to_leader(self, report: pb.PodReport) -> None:
        """A report of the offload driver's own (supervisor/snapshots/offload_runner.py)."""
        if self.coordination is not None:
            self.coordination.report(report)
        self.apply([])

    def _log_new_events(self) -> None:
        if self.job is None:
            return
        for event in self.job.events.since(self.events_logged):
            level = logging.WARNING if event.kind in NOTABLE_EVENTS else logging.INFO
            fields = {"kind": event.kind, "seq": event.seq, "node_rank": event.node_rank}
            log.log(level, "%s: %s", event.kind, event.message, extra=fields)
            if self.kube is not None:
                self.kube.job_event(event, self.job)  # queued: never waits on the API
        self.events_logged = self.job.events.recorded

    def record_news(self, news: Sequence[tuple[str, str]]) -> None:
        """Job events (kind, message) a watcher found: recorded, logged, watchers woken."""
        if self.job is not None:
            for kind, message in news:
                self.job.record(kind, message)
        self.apply([])

    def on_leader_message(self, message: pb.LeaderMessage) -> None:
        """Apply what the leader decided to this pod's ranks."""
        job = self.job
        if job is None:
            return
        if message.WhichOneof("message") == "replace":
            if message.replace.node_rank == job.spec.node_rank:
                self.apply(job.asked_to_leave(message.replace.reason))
            return
        told = message_from_wire(message)
        if isinstance(told, OpenGeneration):  # first: what the ranks copied of the one it stops
            self.harvest_arenas()
            self.apply(job.open_generation(told, time.monotonic()))
        elif isinstance(told, StartGeneration):
            self.apply(job.start_generation(told))
        elif isinstance(told, EndJob):
            self.apply(job.end_job(told))
        elif isinstance(told, CommitStep):
            if job.commit_snapshot(told):
                self.apply([])  # wakes the ranks waiting for this commit
            if self.offload is not None and told.generation == job.generation:
                self.offload.leader_round(message.commit)

    def record_saved(
        self, job: JobState, rank: int, step: int, held: list[int], size: int, wait: float
    ) -> None:
        """Rank `rank` holds `held` (ValueError: that breaks the protocol)."""
        tracker = job.snapshots
        committed, newest = tracker.committed, tracker.newest
        effects = job.snapshot_saved(rank, step, held, size, wait)
        moved = (tracker.committed, tracker.newest) != (committed, newest)
        if effects or moved:  # a commit is no event: it is every step
            self.apply(effects)  # reports to the leader; wakes the ranks waiting for a commit
            if self.offload is not None and not job.leader_remote:  # else the leader's round
                self.offload.committed(tracker.committed)

    def harvest_arenas(self, pid: Optional[int] = None) -> None:
        """What the running ranks copied and had not reported yet counts (before `pid`'s
        death is handled; None: before the leader's Open), supervisor/snapshots/harvest.py."""
        job = self.job
        if job is not None:
            harvest_arenas(job, functools.partial(self.record_saved, job), pid)

    def replica_job(self) -> Optional[tuple[str, Path]]:
        """Where the previous pod's replicas go: (run id, directory), once a job attached."""
        if self.job is None or not self.job.spec.snapshot_dir:
            return None
        return self.job.spec.run_id, Path(self.job.spec.snapshot_dir) / REPLICAS

    def local_ranks(self) -> list[pb.RankStatus]:
        return list(self.local_status().ranks)

    def local_status(self) -> pb.JobStatus:
        """This pod's part of the job's status."""
        if self.job is None:
            return pb.JobStatus(state=pb.JobState.JOB_STATE_STARTING, leader=self.leader)
        status = job_status(self.job, time.monotonic(), self.leader)
        if self.offload is not None:
            self.offload.status(status)
        if self.pod_health is not None and self.pod_health.latest is not None:
            status.samples.append(self.pod_health.latest)
        return status

    def running_generation(self) -> Optional[int]:
        """The generation every local rank runs (or finished) now; None between generations."""
        job = self.job
        live = (WorkerState.WORKER_STATE_HEALTHY, WorkerState.WORKER_STATE_SUCCEEDED)
        if job is None or not job.started or job.over:
            return None
        if all(s.state in live and s.generation == job.generation for s in job.ranks.values()):
            return job.generation
        return None

    def leader_lost(self) -> None:
        if self.job is not None:
            self.apply(self.job.leader_lost(time.monotonic()))

    def rejoined(self) -> None:
        if self.job is not None:
            self.apply(self.job.rejoined())

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_s)
            if self.job is not None:
                now = time.monotonic()
                effects = self.job.tick(now)
                for finding in self.hang_watch.check(self.job, now):  # the watch only reads
                    effects += self.job.hang_found(finding)
                if effects or self.job.events.recorded != self.events_logged:
                    self.apply(effects)  # else nothing changed: wake no one (the sidecar's CPU)
                if self.pod_health is not None:
                    pids = [slot.pid for slot in self.job.ranks.values() if slot.pid]
                    self.pod_health.tick(pids, now)
            await self._publish_metrics()

    async def _publish_metrics(self) -> None:
        """Rebuild what /metrics shows (supervisor/outputs/metrics.py), at most every REFRESH_S."""
        job, now = self.job, time.monotonic()
        if self.metrics_board is None or job is None or now - self._metrics_at < REFRESH_S:
            return
        self._metrics_at = now
        job_wide = None
        if self.coordination is not None and job.spec.node_rank == 0:
            # The leader's pod also exports the job's findings and every pod's sample.
            job_wide = await self.coordination.job_status(self.local_status())
        snapshot = snapshot_of(self.local_status(), job.failures, job.events.by_kind, job_wide)
        if self.kube is not None:
            snapshot = dataclasses.replace(
                snapshot, kube_requests=self.kube.counts(), kube_drops=self.kube.drops()
            )
        self.metrics_board.publish(snapshot)

    async def refuse(
        self, context: grpc.aio.ServicerContext[Any, Any], call: str, refusal: Optional[Refusal]
    ) -> None:
        """Abort the call when `refusal` says so (supervisor/rpc/call_checks.py), before any
        change."""
        if refusal is None:
            return
        self.refusals.refusal(call, context.peer(), refusal.code.name, refusal.reason)
        await context.abort(refusal.code, refusal.reason)

    async def require_job(self, context: grpc.aio.ServicerContext[Any, Any]) -> JobState:
        if self.job is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no launcher attached yet")
            raise AssertionError("unreachable: abort raises")
        return self.job

    # ------------------------------------------------------------- launcher
    def attach_launcher(self, request: pb.AttachLauncherRequest) -> JobState:
        """The pod's job, made when its launcher first attaches (the leader's check of the
        spec passed: supervisor/rpc/launcher_service.py)."""
        policy = restart_policy.RestartPolicy(
            max_restarts=request.spec.max_restarts,
            crash_loop_threshold=self.settings.crash_loop_threshold,
            crash_loop_window_s=self.settings.detect.crash_loop_window_s,
        )
        timings = Timings(unwind_timeout_s=self.settings.unwind_timeout_s)
        memory = FailureMemory(pod_fault_rule=self.settings.detect.pod_faults)
        # One pod: the leader runs inside the job's state; several: node 0's (coordination).
        spec = spec_from_wire(request.spec)
        self.job = JobState(
            spec=spec,
            policy=policy,
            allocate_port=free_port,
            timings=timings,
            failure_memory=memory,
            leader_remote=self.coordination is not None,
            stall_timeout_s=self.settings.heartbeat_timeout_s,
        )
        if self.coordination is not None and not request.reattach:  # else once rebuilt
            self.coordination.launcher_attached(spec)
        log.info("launcher pid %d attached: %s", request.launcher_pid, request.spec.run_id)
        self.note_launcher(request)
        if request.spec.snapshot_dir:
            target = self.replica_target if self.coordination is not None else None
            self.offload = OffloadDriver(
                self.job,
                self.settings.offload,
                target,
                on_change=lambda: self.apply([]),
                to_leader=self._report_to_leader,
            )
        sampler = PodSampler(self.probes)
        self.pod_health = PodHealth(request.spec.node_rank, sampler, self.settings.detect.sample_s)
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())
        job = self.job
        if request.reattach:  # this supervisor is new: the launcher and its workers train on
            processes = [(p.pid, p.rank) for p in request.processes]
            self.resume_pending = True
            self.apply(job.resume_launcher(processes, time.monotonic()))
        else:
            self.apply(job.attach_launcher())
        return job

    def _resumed(self) -> None:
        """The job is rebuilt from the running launcher and workers (this supervisor is new).

        The committed step is not read back from the arenas: a rank whose last commit answer
        was lost with the old supervisor may already be overwriting the newest common step.
        The ranks' next reports commit again (one step later); with several pods the leader's
        commit comes once this pod re-joined, and until then no rank waits for one."""
        job = self.job
        assert job is not None
        self.resume_pending = False
        if self.coordination is not None:
            job.pod_away = True
            self.coordination.launcher_attached(job.spec, job.resumed_view())

    def check_replica_header(self, header: pb.ReplicaHeader) -> Optional[Refusal]:
        """For ReplicaService pushes: the copy is of another pod of the job that runs here."""
        return None if self.job is None else call_checks.replica_header(self.job.spec, header)

    def note_launcher(self, request: pb.AttachLauncherRequest) -> None:
        """Whether /proc can vouch for this launcher's worker pids (call on every attach,
        a re-attach included: the checks follow the launcher that runs now)."""
        if launcher_in_view(request.launcher_pid, request.pid_namespace):
            self.launcher_pid, self.processes = request.launcher_pid, ProcessTable()
        else:
            self.launcher_pid, self.processes = None, NoProcesses()

    def stop(self, report: str) -> None:
        self.closing = True
        if self.job is not None:
            self.apply(self.job.stop(report))
        else:
            asyncio.get_running_loop().create_task(self._notify())  # wakes event watchers

    async def finish_offload(self) -> None:
        """Before exit: persist the newest committed step, then free the shared memory of a
        job that succeeded (a failed one keeps it for whoever comes next)."""
        if self.offload is None or self.job is None:
            return
        await self.offload.flush()
        self.offload.close()
        if self.job.state == JobPhase.JOB_STATE_SUCCEEDED:
            try:
                remove_arena(Path(self.job.spec.snapshot_dir))
            except OSError as err:  # the job succeeded all the same
                log.warning("could not remove %s: %s", self.job.spec.snapshot_dir, err)


# Where each kind of effect goes (every kind of Effect has its entry: tests/unit/test_app.py).
DELIVERY: dict[type[Effect], Callable[[Supervisor, Any], None]] = {
    ToWorker: Supervisor._to_worker,
    ToLauncher: Supervisor._to_launcher,
    ToLeader: Supervisor._to_leader,
}
