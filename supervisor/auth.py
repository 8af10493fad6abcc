"""The job token on the server side: every RPC but health, reflection and local status needs it.

`decide` and `refusal` are pure (method, metadata, peer, token in; a reason out).
`TokenAuthInterceptor` applies them. A grpc.aio server interceptor sees the
method and metadata but not the peer, so calls whose verdict depends on the
peer (status without a token) and refused calls get their handler wrapped: the
check runs inside it, where `context.peer()` is known.
"""

from __future__ import annotations

import hmac
import inspect
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import grpc

from train_supervisor.credentials import TOKEN_METADATA_KEY

log = logging.getLogger("train_supervisor")

# Kubernetes grpc probes and grpcurl carry no token.
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
# Read-only: open to processes in this pod, token needed from anywhere else.
LOOPBACK_OPEN_PREFIXES = ("/train_supervisor.v1.StatusService/",)

Metadata = Sequence[tuple[str, Union[str, bytes]]]


@dataclass(frozen=True)
class Decision:
    """`reason` is None when the call may go on; `loopback_ok` lifts a refusal for local peers."""

    reason: Optional[str] = None
    loopback_ok: bool = False

    def refusal(self, peer: str) -> Optional[str]:
        if self.reason is not None and self.loopback_ok and is_loopback_peer(peer):
            return None
        return self.reason


ALLOW = Decision()


def parse_bearer(value: str) -> Optional[str]:
    """The token in an `authorization: Bearer <token>` value; None when malformed."""
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def is_loopback_peer(peer: str) -> bool:
    """For context.peer() strings: `ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`."""
    scheme, _, rest = peer.partition(":")
    host, sep, _port = rest.rpartition(":")
    if scheme not in ("ipv4", "ipv6") or not sep:
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback  # a dual-stack listener's view of 127.0.0.1
    return ip.is_loopback


def decide(method: str, metadata: Metadata, token: str) -> Decision:
    """What the peer-independent facts say about a call."""
    if method.startswith(OPEN_PREFIXES):
        return ALLOW
    presented = [
        parse_bearer(value) if isinstance(value, str) else None
        for key, value in metadata
        if key.lower() == TOKEN_METADATA_KEY
    ]
    if not presented:
        return Decision("no job token", loopback_ok=method.startswith(LOOPBACK_OPEN_PREFIXES))
    expected = token.encode()
    for candidate in presented:
        # Constant time: how much of a guess matched must not show in the timing.
        if candidate is not None and hmac.compare_digest(candidate.encode(), expected):
            return ALLOW
    # A wrong token is refused even where none is needed: it means a misconfigured caller.
    if all(candidate is None for candidate in presented):
        return Decision("malformed authorization metadata (want 'Bearer <token>')")
    return Decision("wrong job token")


def refusal(method: str, peer: str, metadata: Metadata, token: str) -> Optional[str]:
    """Why the call must be refused, or None when it may go on."""
    return decide(method, metadata, token).refusal(peer)


Check = Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]
Behaviour = Callable[..., Any]


def _guard(inner: Behaviour, check: Check, streams_responses: bool) -> Behaviour:
    """`inner` with `check` run first; keeps its calling convention (coroutine or generator)."""
    if not streams_responses or inspect.iscoroutinefunction(inner):

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await check(context)
            result = inner(request, context)
            return await result if inspect.isawaitable(result) else result

        return call

    async def stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await check(context)
        responses = inner(request, context)
        if hasattr(responses, "__aiter__"):
            try:
                async for response in responses:
                    yield response
            finally:
                # Closed with us, not whenever GC gets to it: its `finally` may release state.
                await responses.aclose()
        else:
            for response in responses:
                yield response

    return stream


_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
)


def guarded_handler(handler: grpc.RpcMethodHandler[Any, Any], check: Check) -> Any:
    """A copy of `handler` whose behaviour runs `check(context)` before anything else."""
    for kind, factory, streams_responses in _KINDS:
        inner = getattr(handler, kind)
        if inner is not None:
            return factory(
                _guard(inner, check, streams_responses),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    raise ValueError("RPC method handler without a behaviour")


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses calls without the job token with UNAUTHENTICATED, and logs them."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("empty token")
        self._token = token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        decision = decide(method, handler_call_details.invocation_metadata or (), self._token)
        if handler is None or decision.reason is None:
            return handler  # unknown methods get UNIMPLEMENTED from gRPC itself

        async def check(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            peer = context.peer()
            reason = decision.refusal(peer)
            if reason is not None:
                # Never log what the caller presented: a near-miss token is still a secret.
                log.warning("refused %s from %s: %s", method, peer, reason)
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

        return guarded_handler(handler, check)
