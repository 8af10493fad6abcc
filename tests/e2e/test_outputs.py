"""The supervisor's outputs on a real job: `events --follow`, /metrics and JSON logs.

One `train-supervisor serve` (SUPERVISOR_METRICS_PORT, SUPERVISOR_LOG_FORMAT=json)
runs a real two-rank DDP job under `train-launch`; rank 1 SIGKILLs itself once.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from jobs import REPO, TOY_DDP, RunningJob, job_env, wait_until
from prometheus_client.parser import text_string_to_metric_families

from supervisor.workers.ports import free_port

TOKEN = "outputs-test-token-0123456789"
EVENT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z pod 0 #(\d+) (\w+): (.*)$")


def clean_env(**extra: str) -> dict[str, str]:
    """The runner's environment without anything that would configure a supervisor."""
    env = {k: v for k, v in job_env().items() if not k.startswith("SUPERVISOR_")}
    env.update(extra)
    return env


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.slow
def test_events_metrics_and_json_logs_of_a_job_with_a_killed_rank(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    sidecar = RunningJob(
        [sys.executable, "-m", "supervisor.cli", "serve"],
        clean_env(
            SUPERVISOR_PORT=str(port),
            SUPERVISOR_BIND="127.0.0.1",
            SUPERVISOR_TOKEN=TOKEN,
            SUPERVISOR_METRICS_PORT=str(metrics_port),
            SUPERVISOR_LOG_FORMAT="json",
        ),
    )
    events = None
    job = None
    try:
        sidecar.wait_for(lambda: "serving on" in sidecar.stderr, 20, "the sidecar to serve")
        # Follows before any launcher attached (it waits for the job), from
        # loopback without the token, as `status` may.
        events = subprocess.Popen(
            [sys.executable, "-m", "supervisor.cli", "events", "--follow"],
            cwd=REPO,
            env=clean_env(SUPERVISOR_PORT=str(port)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        job = RunningJob(
            [
                sys.executable,
                "-m",
                "launcher.launch.main",
                "--supervisor-address",
                f"127.0.0.1:{port}",
                "--nproc-per-node",
                "2",
                "--max-restarts",
                "2",
                str(TOY_DDP),
                "--steps",
                "8",
                "--kill-self-rank",
                "1",
                "--kill-self-at-step",
                "3",
            ],
            clean_env(SUPERVISOR_TOKEN=TOKEN),
        )
        assert job.wait(60) == 0, job.stderr + sidecar.stderr

        # (a) The follower printed every event, the failure among them, and ended with the job.
        out, err = events.communicate(timeout=15)
        assert events.returncode == 0, err
        lines = [EVENT_LINE.match(line) for line in out.splitlines()]
        assert all(lines), out
        seqs = [int(m.group(1)) for m in lines if m]
        assert seqs == list(range(1, len(seqs) + 1)), out
        failures = [m.group(3) for m in lines if m and m.group(2) == "failure"]
        assert failures and "rank 1" in failures[0] and "SIGKILL" in failures[0], out

        # (b) /metrics: the published snapshot catches up within a refresh.
        def succeeded() -> bool:
            return (
                scrape(metrics_port).get(("train_supervisor_job_state", (("state", "succeeded"),)))
                == 1
            )

        wait_until(succeeded, 10, "/metrics to show the job succeeded")
        got = scrape(metrics_port)
        assert got[("train_supervisor_generation", ())] >= 1
        for rank in ("0", "1"):
            assert got[("train_supervisor_rank_step", (("rank", rank),))] > 0
        failed = {labels: v for (name, labels), v in got.items() if name.endswith("failures_total")}
        assert sum(failed.values()) >= 1, got
        assert got[("train_supervisor_events_total", (("kind", "failure"),))] >= 1
    finally:
        for process in (job, sidecar):
            if process is not None and process.proc.poll() is None:
                process.proc.send_signal(signal.SIGTERM)
        if events is not None and events.poll() is None:
            events.kill()
    assert sidecar.wait(20) == 0, sidecar.stderr

    # (c) Every line the supervisor logged is a JSON object; job events carry their fields.
    logged = [json.loads(line) for line in sidecar.stderr.splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in logged)
    failure_logs = [entry for entry in logged if entry.get("kind") == "failure"]
    assert failure_logs and failure_logs[0]["node_rank"] == 0 and failure_logs[0]["seq"] >= 1
