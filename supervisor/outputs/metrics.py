"""Prometheus metrics of one supervisor, served on SUPERVISOR_METRICS_PORT.

Scrapes run on prometheus_client's HTTP thread while the job's state belongs
to the event-loop thread. So the loop publishes an immutable MetricsSnapshot
(rebuilt at most once a second, supervisor/rpc/service.py) to a MetricsBoard, one
reference swap, and the collector reads nothing else. `metric_families` is
pure. Everything lives on the exporter's own registry, not the global one.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Optional
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from supervisor.rules.failure_evidence import FailureRecord
from supervisor.settings.outputs import METRICS_PORT_ENV
from supervisor.settings.serve import join_host_port
from train_supervisor.v1 import supervisor_pb2 as pb

log = logging.getLogger("train_supervisor")
PREFIX = "train_supervisor_"
# How stale a scrape may be; also bounds the cost of the snapshot on a busy loop.
REFRESH_S = 1.0
JOB_STATES = tuple(v.name for v in pb.JobState.DESCRIPTOR.values if v.number != 0)


@dataclass(frozen=True)
class MetricsSnapshot:
    status: pb.JobStatus  # never changed once published
    failures_by_class: tuple[tuple[str, int], ...] = ()
    events_by_kind: tuple[tuple[str, int], ...] = ()
    # Kubernetes API requests (supervisor/outputs/kube/reporter.py): ((call, outcome), count)
    kube_requests: tuple[tuple[tuple[str, str], int], ...] = ()
    kube_drops: tuple[tuple[str, int], ...] = ()  # (why, count): Events never sent


def snapshot_of(
    local: pb.JobStatus,
    failures: Iterable[FailureRecord],
    events_by_kind: Mapping[str, int],
    job_wide: Optional[pb.JobStatus] = None,
) -> MetricsSnapshot:
    """This pod's ranks (each pod exports its own: no series twice); the findings and
    samples of `job_wide` when given (the leader's pod exports the job's)."""
    status = pb.JobStatus()
    status.CopyFrom(local)
    if job_wide is not None:
        del status.findings[:], status.samples[:]
        status.findings.extend(job_wide.findings)
        status.samples.extend(job_wide.samples)
    by_class = collections.Counter(f.failure_class or "unknown" for f in failures)
    return MetricsSnapshot(
        status, tuple(sorted(by_class.items())), tuple(sorted(events_by_kind.items()))
    )


class MetricsBoard:
    """The latest snapshot: written by the event-loop thread, read by scrapes."""

    def __init__(self) -> None:
        starting = pb.JobStatus(
            state=pb.JobState.JOB_STATE_STARTING,
            committed_step=-1,
            replicated_step=-1,
            persisted_step=-1,
        )
        self._latest = MetricsSnapshot(starting)

    def publish(self, snapshot: MetricsSnapshot) -> None:
        self._latest = snapshot  # a reference swap: a scrape sees the old or the new one

    @property
    def latest(self) -> MetricsSnapshot:
        return self._latest


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def metric_families(snapshot: MetricsSnapshot) -> list[Metric]:
    """The snapshot as Prometheus metric families (pure)."""
    status = snapshot.status
    state = pb.JobState.Name(status.state)
    job_state = GaugeMetricFamily(
        PREFIX + "job_state", "1 for the job's current state, 0 for the others", labels=["state"]
    )
    for name in JOB_STATES:
        job_state.add_metric([name.removeprefix("JOB_STATE_").lower()], 1.0 if name == state else 0)
    info = GaugeMetricFamily(PREFIX + "job_info", "the job's run id", labels=["run_id"])
    info.add_metric([status.run_id], 1.0)
    families: list[Metric] = [
        job_state,
        info,
        _gauge("generation", "the current generation (0: the first)", status.generation),
        _gauge("restart_count", "restarts used of the job-wide budget", status.restart_count),
        _gauge("max_restarts", "the job-wide restart budget", status.max_restarts),
        _gauge("committed_step", "newest committed snapshot step; -1: none", status.committed_step),
        _gauge("replicated_step", "newest step a peer pod holds; -1: none", status.replicated_step),
        _gauge("persisted_step", "newest step persisted; -1: none", status.persisted_step),
    ]
    families += _rank_families(status.ranks)
    failures = CounterMetricFamily(
        PREFIX + "failures",
        "rank failures by class (supervisor/rules/classify.py)",
        labels=["failure_class"],
    )
    for failure_class, count in snapshot.failures_by_class:
        failures.add_metric([failure_class], count)
    events = CounterMetricFamily(PREFIX + "events", "job events recorded, by kind", labels=["kind"])
    for kind, count in snapshot.events_by_kind:
        events.add_metric([kind], count)
    persist_failures = CounterMetricFamily(
        PREFIX + "persist_failures",
        "this pod's failed writes to the durable directory, by errno name",
        labels=["reason"],
    )
    for reason, count in sorted(status.persist_failures.items()):
        persist_failures.add_metric([reason], count)
    families += [
        failures,
        events,
        persist_failures,
        *_health_families(status),
        *_kube_families(snapshot),
    ]
    return families


def _kube_families(snapshot: MetricsSnapshot) -> list[Metric]:
    requests = CounterMetricFamily(
        PREFIX + "kube_requests",
        "Kubernetes API requests (Events, node condition, taint) by call and outcome",
        labels=["call", "outcome"],
    )
    for (call, outcome), count in snapshot.kube_requests:
        requests.add_metric([call, outcome], count)
    dropped = CounterMetricFamily(
        PREFIX + "kube_events_dropped",
        "Kubernetes Events never sent: rate_limited, queue_full (the API is slow or hangs), error",
        labels=["reason"],
    )
    for why, count in snapshot.kube_drops:
        dropped.add_metric([why], count)
    return [requests, dropped]


def _rank_families(ranks: Iterable[pb.RankStatus]) -> list[Metric]:
    def family(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(PREFIX + "rank_" + name, doc, labels=["rank"])

    step = family("step", "the rank's last reported optimizer step")
    step_time = family("step_time_seconds", "the rank's last step, wall time")
    compute = family("compute_seconds", "the rank's own work in its last step")
    age = family("heartbeat_age_seconds", "seconds since the rank's last heartbeat")
    starts = family("process_starts", "processes that have held the rank")
    for rank in ranks:
        label = [str(rank.rank)]
        step.add_metric(label, rank.step)
        step_time.add_metric(label, rank.step_time_s)
        compute.add_metric(label, rank.compute_s)
        if rank.heartbeat_age_s >= 0:  # -1: no heartbeat yet
            age.add_metric(label, rank.heartbeat_age_s)
        starts.add_metric(label, rank.process_starts)
    return [step, step_time, compute, age, starts]


def _health_families(status: pb.JobStatus) -> list[Metric]:
    labels = ["kind", "node_rank"]
    findings = GaugeMetricFamily(
        PREFIX + "findings", "1 per pod standing out from its peers now", labels=labels
    )
    scores = GaugeMetricFamily(
        PREFIX + "finding_score", "largest robust z-score behind a finding", labels=labels
    )
    for finding in status.findings:
        label = [finding.kind, str(finding.node_rank)]
        findings.add_metric(label, 1.0)
        scores.add_metric(label, finding.score)
    pod = GaugeMetricFamily(
        PREFIX + "pod_metric",
        "each pod's latest sample (pod_metrics.py)",
        labels=["node_rank", "metric"],
    )
    for sample in status.samples:
        for metric in sorted(sample.metrics):
            pod.add_metric([str(sample.node_rank), metric], sample.metrics[metric])
    return [findings, scores, pod]


class SupervisorCollector(Collector):
    def __init__(self, board: MetricsBoard) -> None:
        self.board = board

    def collect(self) -> Iterator[Metric]:
        return iter(metric_families(self.board.latest))


class MetricsPortError(OSError):
    """The metrics port cannot be bound: one line naming SUPERVISOR_METRICS_PORT."""


class MetricsExporter:
    """prometheus_client's HTTP server on its own thread and registry."""

    def __init__(self, board: MetricsBoard, server: WSGIServer, thread: threading.Thread) -> None:
        self.board = board
        self._server = server
        self._thread = thread

    @classmethod
    def start(cls, host: str, port: int) -> MetricsExporter:
        board = MetricsBoard()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SupervisorCollector(board))
        ProcessCollector(registry=registry)  # this process's CPU seconds, RSS, open files
        try:
            server, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as err:
            reason = err.strerror or str(err)
            raise MetricsPortError(
                f"{METRICS_PORT_ENV}={port}: cannot bind {host}:{port}: {reason}"
            ) from None
        log.info("metrics on http://%s/metrics", join_host_port(host, server.server_port))
        return cls(board, server, thread)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics(host: str, port: int) -> Optional[MetricsExporter]:
    """The exporter, or None when port is 0 (off); MetricsPortError when it cannot bind."""
    return MetricsExporter.start(host, port) if port else None
