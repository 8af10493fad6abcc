"""The one place the supervisor process is wired, from one SidecarConfig.

`train-supervisor serve` (supervisor/cli.py) runs an App on its main event loop;
`train-launch --standalone` (launcher/launch/main.py) runs the same App on a thread of its own
(EmbeddedSupervisor). Both build the core's settings with supervisor_settings, and the
standalone run builds its SidecarConfig with standalone_config.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

import grpc

from supervisor.outputs.kube.reporter import KUBE_FLUSH_S, KubeReporter
from supervisor.outputs.metrics import MetricsExporter, start_metrics
from supervisor.rpc.follower import FollowerLink
from supervisor.rpc.peers import LeaderHub, PeerServicer
from supervisor.rpc.server import start_server
from supervisor.rpc.service import Supervisor, SupervisorSettings
from supervisor.rules.effects import Shutdown
from supervisor.rules.leader import LeaderTimings
from supervisor.settings.detection import parse_detect
from supervisor.settings.outputs import outputs_from_env
from supervisor.settings.serve import SidecarConfig, split_host_port
from supervisor.settings.snapshots import parse_offload
from supervisor.snapshots.offload_runner import ReplicaTarget
from supervisor.snapshots.replica import ReplicaServicer

log = logging.getLogger("train_supervisor")
# The embedded supervisor's close waits this long: the shutdown flush is a capped write of the
# newest committed step.
CLOSE_LIMIT_S = 300.0
# In-flight calls get this long to finish when train-launch --standalone stops.
EMBEDDED_STOP_GRACE_S = 0.5


def supervisor_settings(config: SidecarConfig) -> SupervisorSettings:
    """The core's settings (supervisor/rpc/service.py): the one place they are built."""
    return SupervisorSettings(
        crash_loop_threshold=config.crash_loop_threshold,
        unwind_timeout_s=config.unwind_timeout_s,
        heartbeat_timeout_s=config.heartbeat_timeout_s,
        failure_settle_s=config.failure_settle_s,
        tick_s=config.tick_s,
        offload=config.offload,
        detect=config.detect,
    )


def standalone_config(
    env: Mapping[str, str],
    *,
    port: int,
    token: str,
    crash_loop_threshold: int,
    unwind_timeout_s: float,
    failure_settle_s: float,
    tick_s: float,
) -> SidecarConfig:
    """train-launch --standalone: one pod on loopback, its rules from train-launch's flags;
    snapshots, detection and outputs from their SUPERVISOR_* variables (ConfigError)."""
    return SidecarConfig(
        port=port,
        bind="127.0.0.1",
        token=token,
        unwind_timeout_s=unwind_timeout_s,
        failure_settle_s=failure_settle_s,
        crash_loop_threshold=crash_loop_threshold,
        tick_s=tick_s,
        offload=parse_offload(env),
        detect=parse_detect(env),
        outputs=outputs_from_env(env),  # SUPERVISOR_METRICS_PORT, SUPERVISOR_LOG_FORMAT
        # Any interface, as a sidecar's: a scraper is rarely on this host's loopback.
        metrics_bind="0.0.0.0",
    )


def coordinate(sup: Supervisor, config: SidecarConfig) -> Optional[PeerServicer]:
    """Multi-pod: node 0 hosts the leader (returns its servicer), the others follow it."""
    if config.nnodes == 1:
        return None
    sup.replica_target = ReplicaTarget(
        config.peer_address((config.node_rank + 1) % config.nnodes),
        config.token,
        tls_ca=config.tls.ca if config.tls is not None else None,
    )
    leader_address = config.peer_address(0)
    if config.node_rank == 0:
        master_addr = split_host_port(leader_address)[0]  # rank 0 runs on node 0
        timings = LeaderTimings(heartbeat_timeout_s=config.heartbeat_timeout_s)
        hub = LeaderHub(sup, config.nnodes, master_addr, timings)
        sup.coordination = hub
        return PeerServicer(hub)
    sup.coordination = FollowerLink(
        sup,
        config.nnodes,
        config.node_rank,
        leader_address,
        config.token,
        heartbeat_s=config.heartbeat_timeout_s / 4,
        tls_ca=config.tls.ca if config.tls is not None else None,
    )
    return None


@dataclass
class App:
    """One pod's running supervisor: the core, its gRPC server and /metrics."""

    sup: Supervisor
    server: grpc.aio.Server
    port: int  # the gRPC port bound
    metrics: Optional[MetricsExporter]

    @classmethod
    async def start(cls, config: SidecarConfig, kube: Optional[KubeReporter] = None) -> App:
        """Wire and start; OSError when the address cannot be bound, MetricsPortError when
        the metrics port cannot."""
        sup = Supervisor(supervisor_settings(config))
        sup.kube = kube
        peers = coordinate(sup, config)
        # Before the gRPC server: a port in use then leaves nothing running to stop.
        metrics = start_metrics(config.metrics_bind or config.bind, config.outputs.metrics_port)
        sup.metrics_board = metrics.board if metrics is not None else None
        replicas = None
        if config.nnodes > 1:  # holds the previous pod's snapshots
            replicas = ReplicaServicer(
                sup.replica_job, refusals=sup.refusals, check_header=sup.check_replica_header
            )
        try:
            server, port = await start_server(
                sup,
                config.bind_address,
                token=config.token,
                tls=config.tls,
                peers=peers,
                replicas=replicas,
                loopback_plaintext=config.loopback_plaintext,
            )
        except BaseException:
            if metrics is not None:
                metrics.close()
            raise
        return cls(sup, server, port, metrics)

    async def finish(self) -> Optional[Shutdown]:
        """The newest committed step to the durable directory; how the job ended, if it did."""
        await self.sup.finish_offload()
        return self.sup.ended

    async def close(self, grace_s: float) -> None:
        await self.server.stop(grace=grace_s)
        if self.metrics is not None:
            self.metrics.close()
        if self.sup.kube is not None:  # the job's last Events (the verdict), briefly
            await asyncio.to_thread(self.sup.kube.close, KUBE_FLUSH_S)


class EmbeddedSupervisor:
    """An App on its own thread and event loop, inside train-launch --standalone."""

    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.app: Optional[App] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._stop: Optional[asyncio.Event] = None
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def start(self) -> str:
        """The address this pod's launcher and workers reach the supervisor at."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self.app is not None
        return f"127.0.0.1:{self.app.port}"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced to start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.app = app = await App.start(self.config)
        self._ready.set()
        await self._stop.wait()
        await app.finish()
        await app.close(EMBEDDED_STOP_GRACE_S)

    def stop_job(self, report: str) -> None:
        """Tell the state machine no more restarts will happen (SIGTERM)."""
        if self.loop is not None and self.app is not None:
            self.loop.call_soon_threadsafe(self.app.sup.stop, report)

    def close(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=CLOSE_LIMIT_S)
        if self._thread.is_alive():
            log.warning("the supervisor did not stop within %gs", CLOSE_LIMIT_S)
