"""docs/metrics.md lists exactly what the exporter serves and what the pod sampler measures.

The exporter is the real one (its own registry, over HTTP), fed a snapshot in which every
family has series; the pod sample comes from a real PodSampler measuring this process, with an
accelerator probe that reports one healthy-but-throttled GPU (the probe interface's own way to
add an accelerator; this machine has none).
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from supervisor.detect.gpu_probe import DeviceHealth, ProbeReport
from supervisor.detect.pod_health import PodHealth
from supervisor.detect.pod_metrics import PodSampler
from supervisor.outputs.metrics import MetricsExporter, snapshot_of
from supervisor.rules.classify import FailureClass
from supervisor.rules.failure_evidence import FailureRecord
from train_supervisor.v1 import supervisor_pb2 as pb

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def table(heading: str) -> list[list[str]]:
    """The rows of the markdown table whose header row starts with `heading`, as cells."""
    text = DOC.read_text(encoding="utf-8")
    block = text.split(f"| {heading} |", 1)[1].split("\n\n", 1)[0]
    return [[c.strip() for c in row.strip("|").split("|")] for row in block.splitlines()[2:]]


def names_in(cell: str) -> list[str]:
    return re.findall(r"`([a-z_]+)`", cell)


def representative_snapshot() -> pb.JobStatus:
    status = pb.JobStatus(
        run_id="doc-run",
        generation=1,
        state=pb.JobState.JOB_STATE_RUNNING,
        restart_count=1,
        max_restarts=3,
        committed_step=7,
        replicated_step=6,
        persisted_step=5,
    )
    status.ranks.add(rank=0, step=8, step_time_s=0.5, compute_s=0.3, heartbeat_age_s=0.1)
    status.findings.add(kind="straggler", node_rank=2, score=9.1)
    status.samples.add(node_rank=2, metrics={"compute_s": 0.4})
    status.persist_failures["ENOSPC"] = 2
    return status


def test_the_metrics_table_is_what_the_exporter_serves() -> None:
    failures = [FailureRecord(rank=0, failure_class="transient")]
    exporter = MetricsExporter.start("127.0.0.1", 0)
    try:
        snapshot = snapshot_of(representative_snapshot(), failures, {"failure": 1})
        requests, drops = ((("create_event", "ok"), 1),), (("queue_full", 1),)
        exporter.board.publish(
            dataclasses.replace(snapshot, kube_requests=requests, kube_drops=drops)
        )
        url = f"http://127.0.0.1:{exporter.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    finally:
        exporter.close()
    served = {
        (sample.name, family.type, tuple(sorted(sample.labels)))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    documented = {
        (names_in(name)[0], kind, tuple(sorted(names_in(labels))))
        for name, kind, labels, _meaning in table("metric | type")
    }
    assert documented == served


def test_every_failure_class_is_named() -> None:
    row = next(r for r in table("metric | type") if "failures_total" in r[0])
    assert {c.value for c in FailureClass} <= set(names_in(row[3]))


class OneThrottledGpu:
    """An accelerator probe (supervisor/detect/gpu_probe.py's interface) with every figure set."""

    name = "doc-gpu"

    def read(self) -> ProbeReport:
        device = DeviceHealth(
            index=0,
            ecc_uncorrectable=0,
            ecc_corrected=2,
            temperature_c=71.0,
            throttle_reasons=("hw_slowdown",),
            utilization_percent=93.0,
            memory_used_bytes=1 << 30,
            memory_total_bytes=1 << 34,
        )
        return ProbeReport("doc-gpu", True, devices=(device,))

    def close(self) -> None:
        pass


def test_the_pod_metric_table_is_what_a_pod_sample_holds() -> None:
    health = PodHealth(node_rank=0, sampler=PodSampler([OneThrottledGpu()]), sample_s=1.0)
    pids = [os.getpid()]  # this process: a rank
    assert health.tick(pids, now=100.0) is None
    health.on_heartbeat(0, step_time_s=0.5, compute_s=0.3)
    sample = health.tick(pids, now=101.0)
    assert sample is not None
    documented = {name for row in table("metric | meaning") for name in names_in(row[0])}
    assert documented == set(sample.metrics)
