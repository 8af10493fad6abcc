"""The job token on the server side: every RPC but health, reflection and local status needs it.

`decide` and `refusal` are pure (method, metadata, peer, token in; a reason out).
supervisor/rpc/call_gate.py applies them. A grpc.aio server interceptor sees the
method and metadata but not the peer, so every call gets its handler wrapped
(`guarded_handler`): the check runs inside it, where `context.peer()` is known,
and the request is parsed only after the check passed.
"""

from __future__ import annotations

import hmac
import inspect
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import grpc

from train_supervisor.credentials import TOKEN_METADATA_KEY

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
Parse = Optional[Callable[[bytes], Any]]


class MalformedRequest(Exception):
    """The request's bytes are not the message the method takes."""


def _parser(deserializer: Parse) -> Callable[[Any], Any]:
    def parse(raw: Any) -> Any:
        if deserializer is None or not isinstance(raw, bytes):
            return raw  # no deserializer (raw bytes), or already parsed
        try:
            return deserializer(raw)
        except Exception as err:  # any: protobuf's DecodeError, or a custom deserializer's
            raise MalformedRequest(type(err).__name__) from None

    return parse


def _guard(
    inner: Behaviour, check: Check, parse: Callable[[Any], Any], streams: tuple[bool, bool]
) -> Behaviour:
    """`inner` with `check` run first and its request parsed only after that (`streams`:
    request streaming, response streaming); keeps its calling convention."""
    streams_requests, streams_responses = streams

    async def request_of(raw: Any) -> Any:
        if not streams_requests:
            return parse(raw)

        async def parsed() -> AsyncIterator[Any]:
            async for item in raw:
                yield parse(item)

        return parsed()

    if not streams_responses or inspect.iscoroutinefunction(inner):

        async def call(raw: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await check(context)
            result = inner(await request_of(raw), context)
            return await result if inspect.isawaitable(result) else result

        return call

    async def stream(raw: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await check(context)
        responses = inner(await request_of(raw), context)
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
    ("unary_unary", grpc.unary_unary_rpc_method_handler, (False, False)),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, (False, True)),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, (True, False)),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, (True, True)),
)


def guarded_handler(handler: grpc.RpcMethodHandler[Any, Any], check: Check) -> Any:
    """A copy of `handler` whose behaviour runs `check(context)` before anything else.

    gRPC deserializes a request before any behaviour runs, so the copy takes raw bytes
    (no deserializer) and parses them itself once `check` passed: a refused call's body
    is never parsed. Bytes that do not parse raise MalformedRequest.
    """
    for kind, factory, streams in _KINDS:
        inner = getattr(handler, kind)
        if inner is not None:
            return factory(
                _guard(inner, check, _parser(handler.request_deserializer), streams),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
    raise ValueError("RPC method handler without a behaviour")
