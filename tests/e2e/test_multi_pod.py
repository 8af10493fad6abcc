"""Two pods (sidecar + launcher each) on loopback form one 4-rank DDP job over gRPC."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import grpc
import pytest
from jobs import max_step, pids_by_rank, read_events
from pods import TOKEN, Pods

from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

NPROC = 2


def status_pids(pods: Pods, node: int) -> dict[int, int]:
    return {r.get("rank", 0): r.get("pid", 0) for r in pods.status(node).get("ranks", [])}


def training_args(tmp_path: Path) -> list[str]:
    return ["--steps", "30", "--step-sleep", "0.05", "--ckpt-every", "5",
            "--events", str(tmp_path / "events"), "--ckpt-dir", str(tmp_path / "ckpt")]  # fmt: skip


def test_sigkill_on_pod_1_gives_a_new_process_only_to_that_rank(tmp_path: Path) -> None:
    events = tmp_path / "events"
    pods = Pods(nnodes=2)
    try:
        pods.start_launchers(training_args(tmp_path))
        first = pods.launchers[0]
        first.wait_for(lambda: max_step(read_events(events), 3) >= 7, 180, "rank 3 to step")
        before = pids_by_rank(read_events(events), 0)
        assert sorted(before) == [0, 1, 2, 3]
        # Status on the follower pod shows the whole job (through the leader).
        first.wait_for(lambda: status_pids(pods, 1) == before, 60, "job-wide status")
        os.kill(before[3], signal.SIGKILL)  # rank 3 lives on pod 1
        for launcher in pods.launchers:
            assert launcher.wait(180) == 0, pods.logs()
        after = pids_by_rank(read_events(events), 1)
        assert sorted(after) == [0, 1, 2, 3]
        same_pid = {r: after[r] == before[r] for r in range(4)}
        assert same_pid == {0: True, 1: True, 2: True, 3: False}, pods.logs()
        done = {e["rank"]: e["step"] for e in read_events(events) if e["event"] == "done"}
        assert done == dict.fromkeys(range(4), 30)
        # One restart, counted job-wide: every pod reports the same count and generation.
        for node in (0, 1):
            status = pods.status(node)
            assert (status.get("restartCount"), status.get("generation")) == (1, "1"), status
    finally:
        pods.stop()


@pytest.mark.parametrize("lost", [1, 0], ids=["follower pod", "leader pod"])
def test_a_replaced_pod_rejoins_and_the_job_continues(lost: int, tmp_path: Path) -> None:
    """Every process of one pod dies; its replacement (same index) joins and the job finishes.

    The other pod's supervisor keeps the job view; for a lost leader pod the new
    leader rebuilds generation and restart count from it instead of starting over.
    Either way the other pod's ranks wait in place for the replacement.
    """
    events = tmp_path / "events"
    pods = Pods(nnodes=2)
    try:
        pods.start_launchers(training_args(tmp_path))
        other = pods.launchers[1 - lost]
        other.wait_for(lambda: max_step(read_events(events), 3) >= 7, 180, "rank 3 to step")
        before = pids_by_rank(read_events(events), 0)
        pods.replace_pod(lost)
        for launcher in pods.launchers:
            assert launcher.wait(240) == 0, pods.logs()
        records = read_events(events)
        done = {e["rank"]: (e["step"], e["gen"]) for e in records if e["event"] == "done"}
        assert sorted(done) == [0, 1, 2, 3] and {step for step, _ in done.values()} == {30}
        final_generation = {gen for _, gen in done.values()}
        assert len(final_generation) == 1 and final_generation.pop() >= 1, "not reset to 0"
        lost_ranks = {lost * 2, lost * 2 + 1}
        finished_by = {e["rank"]: e["pid"] for e in records if e["event"] == "done"}
        for rank in lost_ranks:
            assert finished_by[rank] != before[rank]
        # The other pod's ranks waited in place: the leader saw the follower's stream
        # break, or the follower saw the leader's.
        survivors = {r for r in range(4) if r not in lost_ranks}
        assert all(finished_by[r] == before[r] for r in survivors), pods.logs()
        resumed = [e["from_step"] for e in records if e["event"] == "resumed" and e["gen"] >= 1]
        assert resumed and min(resumed) >= 5, "resumed from the script's checkpoint"
    finally:
        pods.stop()


def test_bad_peer_calls_are_refused_and_change_nothing(tmp_path: Path) -> None:
    """No token, a wrong token, another job's id, an oversized message: refused, job unharmed."""
    events = tmp_path / "events"
    pods = Pods(nnodes=2)
    try:
        pods.start_launchers(training_args(tmp_path))
        pods.launchers[0].wait_for(
            lambda: max_step(read_events(events), 3) >= 3, 180, "the job to train"
        )
        leader = f"127.0.0.1:{pods.ports[0]}"
        join = pb.JoinRequest(run_id="none", node_rank=1, nproc=NPROC, incarnation=7)
        cases = {
            "no token": (join, (), grpc.StatusCode.UNAUTHENTICATED),
            "wrong token": (join, (("authorization", "Bearer nope-nope-nope-nope"),),
                            grpc.StatusCode.UNAUTHENTICATED),
            "other job": (pb.JoinRequest(run_id="another-job", node_rank=1, nproc=NPROC),
                          (("authorization", f"Bearer {TOKEN}"),),
                          grpc.StatusCode.FAILED_PRECONDITION),
            "oversized": (pb.JoinRequest(run_id="x" * (5 * 2**20), node_rank=1, nproc=NPROC),
                          (("authorization", f"Bearer {TOKEN}"),),
                          grpc.StatusCode.RESOURCE_EXHAUSTED),
        }  # fmt: skip
        options = [("grpc.max_send_message_length", 8 * 2**20)]
        with grpc.insecure_channel(leader, options=options) as channel:
            stub = pb_grpc.PeerServiceStub(channel)
            for name, (request, metadata, expected) in cases.items():
                with pytest.raises(grpc.RpcError) as refused:
                    next(iter(stub.Join(request, metadata=metadata, timeout=10)))
                assert refused.value.code() == expected, name
            report = pb.PodReport(node_rank=1, failure=pb.PolicyFailure(rank=3, signature="x"))
            with pytest.raises(grpc.RpcError) as refused:
                stub.Report(report, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            beat = pb.PodReport(node_rank=1, heartbeat=True)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Heartbeats(iter([beat]), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        leader_log = pods.sidecars[0].stderr
        assert "refused /train_supervisor.v1.PeerService/Join" in leader_log
        assert "run id 'another-job' is not this job's (FAILED_PRECONDITION)" in leader_log
        for launcher in pods.launchers:
            assert launcher.wait(180) == 0, pods.logs()
        records = read_events(events)
        assert {e["gen"] for e in records} == {0}, "no restart happened"
        assert len({e["pid"] for e in records}) == 4
    finally:
        pods.stop()
