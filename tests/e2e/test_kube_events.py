"""A real sidecar posts Kubernetes Events about a real job to a loopback API server.

`train-supervisor serve` is configured as in a pod (SUPERVISOR_KUBE_EVENTS=on,
the downward API's POD_* variables, the API server's URL and a token file, as
in-cluster config gives them), with tests/kube_api.py standing in for the API
server; `train-launch` runs the toy DDP job against it and rank 1 is SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs import REPO, TOY_DDP, RunningJob, job_env, max_step, pids_by_rank, read_events
from kube_api import FakeKubeApi
from pods import Pods

from supervisor.workers.ports import free_port
from train_supervisor import exit_codes

TOKEN = "kube-events-test-token-0123456789"
POD = {"POD_NAME": "train-demo-0-x7k2p", "POD_NAMESPACE": "train", "POD_UID": "uid-e2e"}


@pytest.fixture
def api() -> Iterator[FakeKubeApi]:
    server = FakeKubeApi().start()
    yield server
    server.close()


def kube_env(api: FakeKubeApi, tmp_path: Path, port: int) -> dict[str, str]:
    token = tmp_path / "sa-token"
    token.write_text(api.token)
    return job_env(
        SUPERVISOR_NNODES="1",
        SUPERVISOR_PORT=str(port),
        SUPERVISOR_TOKEN=TOKEN,
        SUPERVISOR_BIND="127.0.0.1",
        SUPERVISOR_KUBE_EVENTS="on",
        SUPERVISOR_KUBE_API=api.url,
        SUPERVISOR_KUBE_TOKEN_FILE=str(token),
        **POD,
    )


def launch(port: int, events: Path, tmp_path: Path) -> RunningJob:
    argv = [
        sys.executable, "-m", "launcher.launch.main",
        "--supervisor-address", f"127.0.0.1:{port}",
        "--nproc-per-node", "2", "--max-restarts", "2",
        str(TOY_DDP),
        "--steps", "40", "--step-sleep", "0.05", "--ckpt-every", "5",
        "--events", str(events), "--ckpt-dir", str(tmp_path / "ckpt"),
    ]  # fmt: skip
    return RunningJob(argv, job_env(SUPERVISOR_TOKEN=TOKEN))


def reasons(api: FakeKubeApi) -> dict[str, dict[str, object]]:
    return {str(e["reason"]): e for e in api.event_list()}


@pytest.mark.slow
def test_a_killed_rank_is_a_rank_failed_then_rank_restarted_event_on_the_pod(
    api: FakeKubeApi, tmp_path: Path
) -> None:
    port = free_port()
    sidecar = RunningJob(
        [sys.executable, "-m", "supervisor.cli", "serve"], kube_env(api, tmp_path, port)
    )
    events = tmp_path / "events"
    job = launch(port, events, tmp_path)
    try:
        job.wait_for(lambda: max_step(read_events(events), 1) >= 7, 120, "rank 1 to step")
        victim = pids_by_rank(read_events(events), 0)[1]
        os.kill(victim, signal.SIGKILL)
        api.wait_for(lambda a: {"RankFailed", "RankRestarted"} <= set(reasons(a)), 60, "Events")
        failed, restarted = reasons(api)["RankFailed"], reasons(api)["RankRestarted"]
        assert failed["type"] == "Warning" and restarted["type"] == "Normal"
        message = str(failed["message"])
        assert f"rank 1 (pid {victim}) killed by SIGKILL at step " in message, message
        assert "action: restart" in message and "step " in str(restarted["message"])
        assert failed["involvedObject"]["uid"] == POD["POD_UID"]  # type: ignore[index]
        assert job.wait(180) == 0, job.stderr + sidecar.stderr
        api.wait_for(lambda a: "JobSucceeded" in reasons(a), 30, "the JobSucceeded Event")
    finally:
        sidecar.proc.send_signal(signal.SIGTERM)
        assert sidecar.wait(30) == 0, sidecar.stderr
    posted = [r for r in api.requests if r.method == "POST"]
    assert [r.status for r in posted] == [201] * len(posted)
    assert api.problems == []


def test_events_on_without_the_kubernetes_client_is_one_clear_error(
    api: FakeKubeApi, tmp_path: Path
) -> None:
    # sys.modules[name] = None is Python's own way to make an import fail.
    blocked = (
        "import sys; sys.modules['kubernetes'] = None; from supervisor.cli import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked, "serve"],
        cwd=REPO,
        env=kube_env(api, tmp_path, free_port()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == exit_codes.USAGE_ERROR, done.stderr
    lines = [line for line in done.stderr.splitlines() if "kubernetes" in line]
    assert len(lines) == 1 and "train-supervisor[kube]" in lines[0], done.stderr
    assert api.requests == []


@pytest.mark.slow
def test_two_pods_the_failed_ranks_pod_says_rank_failed_and_both_say_restart_decided(
    api: FakeKubeApi, tmp_path: Path
) -> None:
    token = tmp_path / "sa-token"
    token.write_text(api.token)
    kube = {
        "SUPERVISOR_KUBE_EVENTS": "on",
        "SUPERVISOR_KUBE_API": api.url,
        "SUPERVISOR_KUBE_TOKEN_FILE": str(token),
        **POD,
    }
    events = tmp_path / "events"
    pods = Pods(nnodes=2, sidecar_env=kube)
    try:
        pods.start_launchers(["--steps", "30", "--step-sleep", "0.05", "--events", str(events)])
        first = pods.launchers[0]
        first.wait_for(lambda: max_step(read_events(events), 3) >= 7, 180, "rank 3 to step")
        victim = pids_by_rank(read_events(events), 0)[3]  # rank 3 lives on pod 1
        os.kill(victim, signal.SIGKILL)
        for launcher in pods.launchers:
            assert launcher.wait(180) == 0, pods.logs()

        def posted(reason: str) -> list[dict[str, object]]:
            return [e for e in api.event_list() if e["reason"] == reason]

        # Each pod's supervisor records the leader's decision: one Event from each.
        api.wait_for(lambda a: len(posted("RestartDecided")) == 2, 30, "RestartDecided x2")
        (failed,) = posted("RankFailed")
        message = str(failed["message"])
        assert f"rank 3 (pid {victim}) killed by SIGKILL" in message, message
        assert "action: reported to the leader" in message
        assert posted("RankRestarted") == []  # a pod of several does not decide alone
        decided = {str(e["message"]) for e in posted("RestartDecided")}
        assert len(decided) == 1 and "rank 3" in decided.pop()
    finally:
        pods.stop()
    assert api.problems == []
