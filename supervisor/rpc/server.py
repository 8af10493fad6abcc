"""The supervisor's gRPC server: our services, grpc.health.v1 and reflection."""

from __future__ import annotations

import socket
from typing import Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from supervisor.rpc.call_gate import CallGate
from supervisor.rpc.launcher_service import LauncherServicer
from supervisor.rpc.service import Supervisor
from supervisor.rpc.snapshot_service import SnapshotServicer
from supervisor.rpc.status_service import StatusServicer
from supervisor.rpc.worker_service import WorkerServicer
from supervisor.settings.serve import TlsConfig
from train_supervisor.credentials import MAX_MESSAGE_BYTES
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

SERVICE_NAMES = tuple(
    pb.DESCRIPTOR.services_by_name[name].full_name
    for name in (
        "LauncherService",
        "WorkerService",
        "SnapshotService",
        "StatusService",
        "PeerService",
        "ReplicaService",
    )
)


def check_bindable(address: str) -> None:
    """Raise OSError with a one-line reason when `address` cannot be bound.

    gRPC's own bind failure is a bare RuntimeError plus C-core log lines on
    stderr; trying first with a plain socket gives one clean message instead.
    """
    host, _, port_text = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") else host
    if port_text == "0":
        return
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            # As gRPC's listener does, so that TIME_WAIT leftovers do not count.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(sockaddr)
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise OSError(f"cannot bind {address}: {reason}") from None


async def start_server(
    sup: Supervisor,
    address: str,
    *,
    token: Optional[str] = None,
    tls: Optional[TlsConfig] = None,
    peers: Optional[pb_grpc.PeerServiceServicer] = None,
    replicas: Optional[pb_grpc.ReplicaServiceServicer] = None,
    loopback_plaintext: bool = False,
) -> tuple[grpc.aio.Server, int]:
    """Bind and start; returns the server and the bound port.

    With a token, every call but health, reflection and loopback status must
    carry it (supervisor/rpc/auth.py). With TLS, the server presents tls's
    certificate; it asks for no client certificate (the token authenticates).
    With `loopback_plaintext`, it also listens in plaintext on 127.0.0.1 at the
    same port, for the pod's own launcher and workers.
    """
    if token is not None and not token:
        raise ValueError("empty token: pass None for no authentication")
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
        # Followers ping every second to notice a silent leader (peers.py).
        ("grpc.http2.min_ping_interval_without_data_ms", 500),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 0),
    ]
    # Token before body; malformed bodies and servicer bugs answered, logged at a bounded rate.
    server = grpc.aio.server(options=options, interceptors=[CallGate(token, sup.refusals)])
    pb_grpc.add_LauncherServiceServicer_to_server(LauncherServicer(sup), server)
    pb_grpc.add_WorkerServiceServicer_to_server(WorkerServicer(sup), server)
    pb_grpc.add_StatusServiceServicer_to_server(StatusServicer(sup), server)
    pb_grpc.add_SnapshotServiceServicer_to_server(SnapshotServicer(sup), server)
    if peers is not None:  # node 0 of a multi-pod job: the leader
        pb_grpc.add_PeerServiceServicer_to_server(peers, server)
    if replicas is not None:  # a multi-pod job: holds the previous pod's snapshots
        pb_grpc.add_ReplicaServiceServicer_to_server(replicas, server)
    # grpc_health-stubs lacks the `aio` submodule that grpc_health.v1.health exports.
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    check_bindable(address)
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials([(tls.private_key, tls.cert_chain)])
            port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        maybe = "port in use, or bad TLS certificate/key?" if tls else "port in use?"
        raise OSError(f"cannot bind {address} ({maybe})")
    if loopback_plaintext:
        local = f"127.0.0.1:{port}"
        check_bindable(local)
        if server.add_insecure_port(local) == 0:
            raise OSError(f"cannot bind {local} (port in use?)")
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port
