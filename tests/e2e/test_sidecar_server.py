"""`train-supervisor serve` as a real process: token, message limit, bad config, TLS, stop."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import grpc
import psutil
import pytest
from certs import self_signed
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jobs import REPO, RunningJob, job_env

from train_supervisor import exit_codes
from train_supervisor.credentials import MAX_MESSAGE_BYTES, client_channel
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

TOKEN = "e2e-sidecar-token-0123456789abcdef"
SERVING = re.compile(r"serving on \S+:(\d+)")
HEARTBEAT = "/train_supervisor.v1.WorkerService/Heartbeat"


def sidecar_env(**extra: str) -> dict[str, str]:
    """The test runner's environment minus anything that would configure the sidecar."""
    env = job_env()
    for name in [n for n in env if n.startswith("SUPERVISOR_") or n == "JOB_COMPLETION_INDEX"]:
        del env[name]
    env.update(extra)
    return env


class Sidecar:
    """A running `train-supervisor serve`, its port read from its "serving on" log line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        argv = [sys.executable, "-m", "supervisor.cli", "serve", "--port", "0", *args]
        self.job = RunningJob(argv, env)
        self.job.wait_for(lambda: SERVING.search(self.job.stderr) is not None, 20, "serving on")
        match = SERVING.search(self.job.stderr)
        assert match is not None
        self.port = int(match.group(1))
        self.address = f"127.0.0.1:{self.port}"

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.job.proc.poll() is None:
            self.job.proc.send_signal(signum)
        return self.job.wait(20)

    def wait_for_log(self, pattern: str) -> str:
        regex = re.compile(pattern)
        self.job.wait_for(lambda: regex.search(self.job.stderr) is not None, 10, pattern)
        match = regex.search(self.job.stderr)
        assert match is not None
        return match.group(0)


def rpc_error(call: Callable[[], Any]) -> tuple[Optional[grpc.StatusCode], str]:
    """(code, details) of a failed call; (None, '') when it succeeded."""
    try:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, pb.JobStatus):
            list(result)  # a server stream fails only when read
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return None, ""


def other_ipv4() -> Optional[str]:
    """An address of this machine that is not loopback: a non-local peer on one host."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return str(address.address)
    return None


@pytest.fixture(scope="module")
def sidecar() -> Iterator[Sidecar]:
    """One token-protected sidecar listening on every interface, shared by the auth tests."""
    running = Sidecar([], sidecar_env(SUPERVISOR_TOKEN=TOKEN))
    yield running
    assert running.stop() == 0, running.job.stderr


def heartbeat(address: str, token: Optional[str]) -> Callable[[], Any]:
    stub = pb_grpc.WorkerServiceStub(client_channel(address, token))
    return lambda: stub.Heartbeat(pb.HeartbeatRequest(pid=1, step=1), timeout=5)


def attach_worker(address: str, token: Optional[str]) -> Callable[[], Any]:
    stub = pb_grpc.WorkerServiceStub(client_channel(address, token))
    return lambda: stub.AttachWorker(pb.AttachWorkerRequest(pid=1, rank=0), timeout=5)


def get_status(address: str, token: Optional[str] = None) -> pb.JobStatus:
    with client_channel(address, token) as channel:
        status: pb.JobStatus = pb_grpc.StatusServiceStub(channel).GetStatus(
            pb.GetStatusRequest(), timeout=5
        )
        return status


# ------------------------------------------------------------------ the token
def test_status_is_open_on_loopback(sidecar: Sidecar) -> None:
    status = get_status(sidecar.address)
    assert status.state == pb.JobState.JOB_STATE_STARTING and not status.run_id
    done = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "status", "--address", sidecar.address],
        cwd=REPO,
        env=sidecar_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and "state starting" in done.stdout, done.stderr


def test_health_needs_no_token(sidecar: Sidecar) -> None:
    with grpc.insecure_channel(sidecar.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("call", [heartbeat, attach_worker], ids=["unary", "server-streaming"])
def test_no_token_is_refused_and_logged(sidecar: Sidecar, call: Any) -> None:
    code, details = rpc_error(call(sidecar.address, None))
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "no job token")
    method = "Heartbeat" if call is heartbeat else "AttachWorker"
    line = sidecar.wait_for_log(rf"WARNING refused \S+/{method} from ipv\S+: no job token")
    assert "127.0.0.1" in line


@pytest.mark.parametrize("call", [heartbeat, attach_worker], ids=["unary", "server-streaming"])
def test_wrong_token_is_refused_and_not_logged(sidecar: Sidecar, call: Any) -> None:
    wrong = "wrong-token-never-logged-" + "x" * 10
    code, details = rpc_error(call(sidecar.address, wrong))
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "wrong job token")
    sidecar.wait_for_log(r"WARNING refused \S+ from \S+: wrong job token")
    assert "never-logged" not in sidecar.job.stderr


@pytest.mark.parametrize("call", [heartbeat, attach_worker], ids=["unary", "server-streaming"])
def test_right_token_passes(sidecar: Sidecar, call: Any) -> None:
    # The job's own answer (no launcher yet) shows the call got past the token check.
    code, details = rpc_error(call(sidecar.address, TOKEN))
    assert (code, details) == (grpc.StatusCode.FAILED_PRECONDITION, "no launcher attached yet")


def test_status_from_another_host_needs_the_token(sidecar: Sidecar) -> None:
    ip = other_ipv4()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    remote = f"{ip}:{sidecar.port}"
    code, _ = rpc_error(lambda: get_status(remote))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    sidecar.wait_for_log(rf"refused /train_supervisor.v1.StatusService/GetStatus from \S+{ip}")
    assert get_status(remote, TOKEN).state == pb.JobState.JOB_STATE_STARTING


def test_oversized_message_is_refused_and_changes_nothing(sidecar: Sidecar) -> None:
    spec = pb.WorkerSpec(run_id="huge", nproc_per_node=1, base_env={"X": "a" * MAX_MESSAGE_BYTES})
    request = pb.AttachLauncherRequest(spec=spec, launcher_pid=1)
    # A client without our send limit: the server's own limit must hold.
    options = [("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(sidecar.address, options=options) as channel:
        stub = pb_grpc.LauncherServiceStub(channel)
        metadata = [("authorization", f"Bearer {TOKEN}")]
        code, _ = rpc_error(lambda: stub.AttachLauncher(request, metadata=metadata, timeout=10))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = get_status(sidecar.address)
    assert status.state == pb.JobState.JOB_STATE_STARTING and not status.run_id
    assert "attached" not in sidecar.job.stderr


# ------------------------------------------------------------------ stopping
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully_with_exit_0(signum: int) -> None:
    running = Sidecar(["--bind", "127.0.0.1"], sidecar_env())
    assert get_status(running.address).state == pb.JobState.JOB_STATE_STARTING
    assert running.stop(signum) == 0, running.job.stderr
    assert f"{signal.Signals(signum).name}: stopping" in running.job.stderr


def test_sigterm_with_an_attached_launcher_stops_the_job_and_exits_0(tmp_path: Path) -> None:
    running = Sidecar(["--bind", "127.0.0.1"], sidecar_env(SUPERVISOR_TOKEN=TOKEN))
    spec = pb.WorkerSpec(
        run_id="stop-me",
        role="default",
        nnodes=1,
        nproc_per_node=1,
        master_addr="127.0.0.1",
        bootstrapped=True,
        error_file_dir=str(tmp_path),
    )
    with client_channel(running.address, TOKEN) as channel:
        stream = pb_grpc.LauncherServiceStub(channel).AttachLauncher(
            pb.AttachLauncherRequest(spec=spec, launcher_pid=1), timeout=20
        )
        assert next(stream).HasField("spawn")
        running.job.proc.send_signal(signal.SIGTERM)
        # The open stream holds the stop only for the grace period, then it is cut.
        code, _ = rpc_error(lambda: stream)
        assert code in (None, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert running.stop() == 0, running.job.stderr
    assert "stopped: train-supervisor stopped by SIGTERM" in running.job.stderr


# ---------------------------------------------------------------- bad config
def serve_error(args: list[str], **env: str) -> str:
    """The one stderr line of a `serve` that must refuse to start."""
    done = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "serve", *args],
        cwd=REPO,
        env=sidecar_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == exit_codes.USAGE_ERROR, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("train-supervisor: error: "), lines
    return lines[0]


TWO_PODS = {
    "SUPERVISOR_NNODES": "2",
    "SUPERVISOR_NODE_RANK": "0",
    "SUPERVISOR_PEER_ADDRESS_TEMPLATE": "job-{index}.job-svc:29400",
    "SUPERVISOR_TOKEN": TOKEN,
}
BAD_CONFIG = {
    "node rank >= nnodes": ({**TWO_PODS, "SUPERVISOR_NODE_RANK": "2"}, "SUPERVISOR_NODE_RANK='2'"),
    "job index >= nnodes": (
        {**TWO_PODS, "SUPERVISOR_NODE_RANK": "", "JOB_COMPLETION_INDEX": "3"},
        "JOB_COMPLETION_INDEX='3'",
    ),
    "unparsable template": (
        {**TWO_PODS, "SUPERVISOR_PEER_ADDRESS_TEMPLATE": "job-{index.svc:1"},
        "SUPERVISOR_PEER_ADDRESS_TEMPLATE='job-{index.svc:1': unparsable",
    ),
    "template without port": (
        {**TWO_PODS, "SUPERVISOR_PEER_ADDRESS_TEMPLATE": "job-{index}.svc"},
        "SUPERVISOR_PEER_ADDRESS_TEMPLATE=",
    ),
    "short token": ({"SUPERVISOR_TOKEN": "tiny-secret"}, "SUPERVISOR_TOKEN is too short"),
    "no token off loopback": ({}, "SUPERVISOR_TOKEN: not set"),
    "bad port": ({"SUPERVISOR_BIND": "127.0.0.1", "SUPERVISOR_PORT": "http"}, "SUPERVISOR_PORT="),
    "missing TLS file": (
        {"SUPERVISOR_TOKEN": TOKEN, "SUPERVISOR_TLS_CERT": "/nonexistent/cert.pem"},
        "SUPERVISOR_TLS_CERT='/nonexistent/cert.pem': cannot read",
    ),
    "template without index": (
        {**TWO_PODS, "SUPERVISOR_PEER_ADDRESS_TEMPLATE": "job.job-svc:29400"},
        "SUPERVISOR_PEER_ADDRESS_TEMPLATE='job.job-svc:29400'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIG))
def test_bad_config_is_one_line_and_exit_2(case: str) -> None:
    env, expected = BAD_CONFIG[case]
    line = serve_error([], **env)
    assert expected in line, line
    assert "tiny-secret" not in line


def test_flag_overrides_env_and_is_named() -> None:
    line = serve_error(["--port", "-5"], SUPERVISOR_BIND="127.0.0.1", SUPERVISOR_PORT="1")
    assert "--port='-5'" in line


def test_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = serve_error(["--bind", "127.0.0.1", "--port", str(port)])
    assert f"SUPERVISOR_PORT: cannot bind 127.0.0.1:{port}: Address already in use" in line


# ----------------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 (it is its own CA)."""
    return self_signed(tmp_path_factory.mktemp("tls"), ["localhost", "127.0.0.1"])


def test_tls_client_with_the_ca_works_and_plaintext_fails(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    env = sidecar_env(
        SUPERVISOR_TOKEN=TOKEN, SUPERVISOR_TLS_CERT=str(cert), SUPERVISOR_TLS_KEY=str(key)
    )
    running = Sidecar(["--bind", "127.0.0.1"], env)
    try:
        assert "TLS on" in running.job.stderr
        ca = cert.read_bytes()
        with client_channel(running.address, TOKEN, tls_ca=ca) as channel:
            status = pb_grpc.StatusServiceStub(channel).GetStatus(pb.GetStatusRequest(), timeout=5)
            assert status.state == pb.JobState.JOB_STATE_STARTING
        named = client_channel(
            f"localhost:{running.port}", None, tls_ca=ca, server_name="localhost"
        )
        with named as channel:
            stub = pb_grpc.WorkerServiceStub(channel)
            code, _ = rpc_error(lambda: stub.Heartbeat(pb.HeartbeatRequest(), timeout=5))
            assert code == grpc.StatusCode.UNAUTHENTICATED  # TLS is no substitute for the token
        code, _ = rpc_error(lambda: get_status(running.address))
        assert code == grpc.StatusCode.UNAVAILABLE
        done = subprocess.run(
            [
                *(sys.executable, "-m", "supervisor.cli", "status", "--json"),
                *("--address", running.address, "--tls-ca", str(cert)),
            ],
            cwd=REPO,
            env=sidecar_env(SUPERVISOR_TOKEN=TOKEN),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0 and '"state": "JOB_STATE_STARTING"' in done.stdout, done.stderr
    finally:
        assert running.stop() == 0, running.job.stderr
