"""Two pods on two "hosts" (network namespaces); the link between them is cut, then restored."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import netns
import pytest
from certs import self_signed
from jobs import REPO, job_env, max_step, pids_by_rank, read_events, wait_until
from pods import Pods

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(netns.unavailable()), reason="no netns")]

HEARTBEAT_TIMEOUT_S = 3.0
LEADER_TICK_S = 0.2  # supervisor/rpc/peers.py TICK_S: how often the leader looks for silent pods


def loss_reported(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        e
        for e in status.get("recentEvents", [])
        if e.get("kind") == "leader_decision" and "node 1 lost: no heartbeat" in e["message"]
    ]


def test_a_pod_cut_off_is_detected_and_the_job_continues_once_the_link_is_back(
    tmp_path: Path,
) -> None:
    events = tmp_path / "events"
    hosts = netns.HostPair("part")
    pods = Pods(nnodes=2, hosts=hosts.hosts, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S)
    try:
        pods.start_launchers(
            ["--steps", "40", "--step-sleep", "0.05", "--ckpt-every", "5",
             "--events", str(events), "--ckpt-dir", str(tmp_path / "ckpt")]
        )  # fmt: skip
        leader = pods.launchers[0]
        leader.wait_for(lambda: max_step(read_events(events), 3) >= 7, 180, "rank 3 to step")
        before = pids_by_rank(read_events(events), 0)
        assert sorted(before) == [0, 1, 2, 3]

        cut_at = time.time()
        hosts.hosts[1].set_link(up=False)
        # The leader finds pod 1 silent within the configured timeout and says so.
        reported: list[dict[str, Any]] = []

        def leader_reports_loss() -> bool:
            reported[:] = loss_reported(pods.status(0))
            return bool(reported)

        leader.wait_for(leader_reports_loss, HEARTBEAT_TIMEOUT_S + 10, "the loss reported")
        detected_s = reported[0]["timeUnix"] - cut_at
        assert detected_s <= HEARTBEAT_TIMEOUT_S + LEADER_TICK_S + 1.0, detected_s
        # Pod 1 finds its leader gone too, and its status says so.
        wait_until(
            lambda: "unreachable" in pods.status(1).get("leader", ""),
            30,
            "pod 1 to report its leader unreachable",
        )
        # Pod 0's ranks wait in place for pod 1: no new process, no end of the job.
        assert all(launcher.proc.poll() is None for launcher in pods.launchers), pods.logs()

        hosts.hosts[1].set_link(up=True)
        for launcher in pods.launchers:
            assert launcher.wait(240) == 0, pods.logs()
        records = read_events(events)
        done = {e["rank"]: e for e in records if e["event"] == "done"}
        assert sorted(done) == [0, 1, 2, 3] and {e["step"] for e in done.values()} == {40}
        assert len({e["gen"] for e in done.values()}) == 1 and done[0]["gen"] >= 1
        # A partition is not a crash: every rank, on both sides, waited in place.
        assert {r: e["pid"] for r, e in done.items()} == before, pods.logs()
        resumed = [e["from_step"] for e in records if e["event"] == "resumed" and e["gen"] >= 1]
        assert resumed and min(resumed) >= 5, "resumed from the script's checkpoint"
    finally:
        pods.stop()
        hosts.delete()


def test_supervisors_talk_tls_across_hosts_while_each_pod_stays_plaintext_inside(
    tmp_path: Path,
) -> None:
    """TLS between pods (token on top); the launchers and workers use loopback plaintext."""
    events = tmp_path / "events"
    hosts = netns.HostPair("tls")
    cert = self_signed(tmp_path, [h.address for h in hosts.hosts])
    pods = Pods(nnodes=2, hosts=hosts.hosts, tls=cert)
    try:
        pods.start_launchers(["--steps", "8", "--events", str(events)])
        for launcher in pods.launchers:
            assert launcher.wait(180) == 0, pods.logs()
        done = {e["rank"]: e["step"] for e in read_events(events) if e["event"] == "done"}
        assert done == dict.fromkeys(range(4), 8)
        assert "TLS on; plaintext on 127.0.0.1" in pods.sidecars[0].stderr
        assert "node 1 joined" in pods.sidecars[0].stderr
        # From the other host, plaintext to the leader's pod address is not answered.
        leader = f"{hosts.hosts[0].address}:{pods.ports[0]}"
        probe = (
            "import grpc, sys\n"
            "from train_supervisor.v1 import supervisor_pb2 as pb, supervisor_pb2_grpc as g\n"
            f"c = grpc.insecure_channel({leader!r})\n"
            "try:\n"
            "    g.StatusServiceStub(c).GetStatus(pb.GetStatusRequest(), timeout=5)\n"
            "except grpc.RpcError as e:\n"
            "    sys.exit(e.code().name)\n"
        )
        refused = subprocess.run(
            pods.command(1, [sys.executable, "-c", probe]), cwd=REPO, env=job_env(),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert refused.stderr.strip().splitlines()[-1] == "UNAVAILABLE", refused.stderr
    finally:
        pods.stop()
        hosts.delete()
