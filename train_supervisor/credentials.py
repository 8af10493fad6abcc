"""The job token on the wire: shared by the supervisor (checks it) and its clients (send it).

Every peer and control RPC carries `authorization: Bearer <token>` metadata.
An interceptor adds it, so it works on plaintext and TLS channels alike
(gRPC call credentials would demand TLS).
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Optional

import grpc

TOKEN_METADATA_KEY = "authorization"
TOKEN_ENV = "SUPERVISOR_TOKEN"
# Largest message either side accepts: commands and status are small.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def bearer(token: str) -> str:
    return f"Bearer {token}"


class _ClientCallDetails(
    collections.namedtuple(
        "_ClientCallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class TokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds the job token to every call made on a channel."""

    def __init__(self, token: str) -> None:
        self.entry = (TOKEN_METADATA_KEY, bearer(token))

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), self.entry]
        return _ClientCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._with_token(details), request)

    # Streamed requests (a replica push) carry it too.
    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, requests: Any
    ) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, requests: Any
    ) -> Any:
        return continuation(self._with_token(details), requests)


def client_channel(
    address: str,
    token: Optional[str] = None,
    tls_ca: Optional[bytes] = None,
    server_name: Optional[str] = None,
) -> grpc.Channel:
    """A channel to a supervisor, carrying the token when there is one.

    With `tls_ca` (PEM bytes of the CA that signed the supervisor's certificate)
    the channel is TLS; `server_name` overrides the name the certificate must
    carry (for reaching a pod by IP, or over loopback).
    """
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        # A restarted supervisor (the sidecar) is reached again within a second, not after
        # gRPC's default reconnect back-off (up to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if tls_ca is None:
        if server_name is not None:
            raise ValueError("server_name needs tls_ca: it names the TLS certificate")
        channel = grpc.insecure_channel(address, options=options)
    else:
        if server_name is not None:
            options.append(("grpc.ssl_target_name_override", server_name))
        credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca)
        channel = grpc.secure_channel(address, credentials, options=options)
    if token:
        return grpc.intercept_channel(channel, TokenInterceptor(token))
    return channel
