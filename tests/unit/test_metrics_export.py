"""supervisor/outputs/metrics.py: a published snapshot as Prometheus text; the exporter over
HTTP."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.outputs.metrics import (
    MetricsBoard,
    MetricsExporter,
    MetricsPortError,
    SupervisorCollector,
    snapshot_of,
    start_metrics,
)
from supervisor.rules.failure_evidence import FailureRecord
from train_supervisor.v1 import supervisor_pb2 as pb

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """{(sample name, sorted labels): value} of Prometheus exposition text."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(board: MetricsBoard) -> Samples:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SupervisorCollector(board))
    return parse(generate_latest(registry).decode())


def local_status() -> pb.JobStatus:
    status = pb.JobStatus(
        run_id="job1",
        generation=2,
        state=pb.JobState.JOB_STATE_RUNNING,
        restart_count=2,
        max_restarts=5,
        committed_step=40,
        replicated_step=35,
        persisted_step=-1,
    )
    status.ranks.add(rank=0, step=41, step_time_s=0.5, compute_s=0.4, heartbeat_age_s=0.2)
    status.ranks.add(rank=1, step=40, process_starts=2, heartbeat_age_s=-1)  # no heartbeat yet
    status.samples.add(node_rank=0, metrics={"cpu_percent": 50.0})
    return status


def job_wide_status() -> pb.JobStatus:
    status = pb.JobStatus()
    status.findings.add(kind="straggler", node_rank=1, score=7.5)
    status.samples.add(node_rank=0, metrics={"cpu_percent": 50.0})
    status.samples.add(node_rank=1, metrics={"cpu_percent": 95.0, "rss_bytes": 1e9})
    return status


FAILURES = [
    FailureRecord(rank=1, failure_class="software"),
    FailureRecord(rank=1, failure_class="software"),
    FailureRecord(rank=0, failure_class=""),  # not classified
]


def test_a_snapshot_becomes_the_documented_series() -> None:
    board = MetricsBoard()
    board.publish(snapshot_of(local_status(), FAILURES, {"failure": 3, "generation": 2}))
    got = scrape(board)
    expected = {
        ("train_supervisor_generation", ()): 2,
        ("train_supervisor_restart_count", ()): 2,
        ("train_supervisor_max_restarts", ()): 5,
        ("train_supervisor_committed_step", ()): 40,
        ("train_supervisor_replicated_step", ()): 35,
        ("train_supervisor_persisted_step", ()): -1,
        ("train_supervisor_job_state", (("state", "running"),)): 1,
        ("train_supervisor_job_state", (("state", "restarting"),)): 0,
        ("train_supervisor_job_info", (("run_id", "job1"),)): 1,
        ("train_supervisor_rank_step", (("rank", "0"),)): 41,
        ("train_supervisor_rank_step", (("rank", "1"),)): 40,
        ("train_supervisor_rank_step_time_seconds", (("rank", "0"),)): 0.5,
        ("train_supervisor_rank_compute_seconds", (("rank", "0"),)): 0.4,
        ("train_supervisor_rank_heartbeat_age_seconds", (("rank", "0"),)): 0.2,
        ("train_supervisor_rank_process_starts", (("rank", "1"),)): 2,
        ("train_supervisor_failures_total", (("failure_class", "software"),)): 2,
        ("train_supervisor_failures_total", (("failure_class", "unknown"),)): 1,
        ("train_supervisor_events_total", (("kind", "failure"),)): 3,
        ("train_supervisor_events_total", (("kind", "generation"),)): 2,
        (
            "train_supervisor_pod_metric",
            (("metric", "cpu_percent"), ("node_rank", "0")),
        ): 50.0,
    }
    assert {key: got.get(key) for key in expected} == expected
    # A rank without a heartbeat has no age rather than a made-up one.
    assert ("train_supervisor_rank_heartbeat_age_seconds", (("rank", "1"),)) not in got
    assert not any(name == "train_supervisor_findings" for name, _ in got)


def test_the_leaders_pod_exports_the_job_wide_findings_and_samples() -> None:
    board = MetricsBoard()
    board.publish(snapshot_of(local_status(), [], {}, job_wide=job_wide_status()))
    got = scrape(board)
    finding = (("kind", "straggler"), ("node_rank", "1"))
    assert got[("train_supervisor_findings", finding)] == 1
    assert got[("train_supervisor_finding_score", finding)] == 7.5
    pod_metrics = {labels: v for (name, labels), v in got.items() if name.endswith("pod_metric")}
    assert pod_metrics == {
        (("metric", "cpu_percent"), ("node_rank", "0")): 50.0,
        (("metric", "cpu_percent"), ("node_rank", "1")): 95.0,
        (("metric", "rss_bytes"), ("node_rank", "1")): 1e9,
    }
    # Ranks stay this pod's own: each pod exports its ranks once.
    assert {labels for (name, labels) in got if name == "train_supervisor_rank_step"} == {
        (("rank", "0"),),
        (("rank", "1"),),
    }


def test_before_any_job_the_state_is_starting_and_no_step_is_committed() -> None:
    got = scrape(MetricsBoard())
    assert got[("train_supervisor_job_state", (("state", "starting"),))] == 1
    assert got[("train_supervisor_committed_step", ())] == -1


def test_a_published_snapshot_does_not_follow_later_changes_to_the_status() -> None:
    status = local_status()
    board = MetricsBoard()
    board.publish(snapshot_of(status, [], {}))
    status.generation = 99  # the loop's next status: not what scrapes see until published
    assert scrape(board)[("train_supervisor_generation", ())] == 2


def test_the_exporter_serves_its_own_registry_over_http() -> None:
    exporter = MetricsExporter.start("127.0.0.1", 0)
    try:
        exporter.board.publish(snapshot_of(local_status(), FAILURES, {}))
        url = f"http://127.0.0.1:{exporter.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            got = parse(response.read().decode())
    finally:
        exporter.close()
    assert got[("train_supervisor_generation", ())] == 2
    assert got[("process_resident_memory_bytes", ())] > 0  # the process collector
    assert not any(name.startswith("python_gc") for name, _ in got)  # not the global registry


def test_port_zero_is_off_and_a_port_in_use_is_one_line_naming_the_variable() -> None:
    assert start_metrics("127.0.0.1", 0) is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsPortError) as caught:
            start_metrics("127.0.0.1", port)
    message = str(caught.value)
    assert message.startswith(f"SUPERVISOR_METRICS_PORT={port}: cannot bind 127.0.0.1:{port}")
    assert "\n" not in message
