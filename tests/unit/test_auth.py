"""supervisor/rpc/auth.py: who may call what, and the handler wrapping (no network)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any, Optional

import grpc
import pytest

from supervisor.rpc.auth import (
    Decision,
    MalformedRequest,
    decide,
    guarded_handler,
    is_loopback_peer,
    parse_bearer,
    refusal,
)

TOKEN = "0123456789abcdef-job-token"
HEARTBEAT = "/train_supervisor.v1.WorkerService/Heartbeat"
ATTACH = "/train_supervisor.v1.LauncherService/AttachLauncher"
STATUS = "/train_supervisor.v1.StatusService/GetStatus"
HEALTH = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
LOCAL = "ipv4:127.0.0.1:50000"
REMOTE = "ipv4:10.1.2.3:50000"


def auth(value: str) -> list[tuple[str, str]]:
    return [("authorization", value)]


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER   abc  ", "abc"),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic abc", None),
        ("abc", None),
        ("Bearer a b", None),
    ],
)
def test_parse_bearer(value: str, token: Optional[str]) -> None:
    assert parse_bearer(value) == token


@pytest.mark.parametrize(
    ("peer", "loopback"),
    [
        ("ipv4:127.0.0.1:5000", True),
        ("ipv4:127.8.9.1:5000", True),
        ("ipv6:[::1]:5000", True),
        ("ipv6:[::ffff:127.0.0.1]:5000", True),
        ("ipv4:10.0.0.1:5000", False),
        ("ipv6:[fd00::1]:5000", False),
        ("ipv6:[::ffff:10.0.0.1]:5000", False),
        ("unix:/tmp/sock", False),
        ("ipv4:localhost:5000", False),
        ("", False),
        ("garbage", False),
    ],
)
def test_is_loopback_peer(peer: str, loopback: bool) -> None:
    assert is_loopback_peer(peer) is loopback


@pytest.mark.parametrize("method", [HEALTH, REFLECTION, "/grpc.reflection.v1.ServerReflection/X"])
def test_health_and_reflection_are_open_to_everyone(method: str) -> None:
    assert refusal(method, REMOTE, [], TOKEN) is None
    assert refusal(method, REMOTE, auth("Bearer wrong-token-value"), TOKEN) is None


@pytest.mark.parametrize("method", [HEARTBEAT, ATTACH])
@pytest.mark.parametrize("peer", [LOCAL, REMOTE])
def test_control_calls_need_the_token_from_anywhere(method: str, peer: str) -> None:
    assert refusal(method, peer, [], TOKEN) == "no job token"
    assert refusal(method, peer, auth("Bearer wrong"), TOKEN) == "wrong job token"
    assert refusal(method, peer, auth(TOKEN), TOKEN) is not None  # no scheme
    assert refusal(method, peer, auth(f"Bearer {TOKEN}"), TOKEN) is None


def test_status_is_open_on_loopback_only() -> None:
    assert refusal(STATUS, LOCAL, [], TOKEN) is None
    assert refusal(STATUS, "ipv6:[::1]:1", [], TOKEN) is None
    assert refusal(STATUS, REMOTE, [], TOKEN) == "no job token"
    assert refusal(STATUS, REMOTE, auth(f"Bearer {TOKEN}"), TOKEN) is None


def test_a_wrong_token_is_refused_even_for_local_status() -> None:
    assert refusal(STATUS, LOCAL, auth("Bearer wrong"), TOKEN) == "wrong job token"


def test_malformed_authorization_is_named() -> None:
    reason = refusal(HEARTBEAT, LOCAL, auth("Token abc"), TOKEN)
    assert reason is not None and reason.startswith("malformed authorization")


def test_other_metadata_and_binary_values_are_ignored() -> None:
    metadata: list[tuple[str, Any]] = [
        ("user-agent", "grpc"),
        ("authorization", b"Bearer " + TOKEN.encode()),
        ("Authorization", f"Bearer {TOKEN}"),
    ]
    assert refusal(HEARTBEAT, REMOTE, metadata, TOKEN) is None
    assert refusal(HEARTBEAT, REMOTE, metadata[:2], TOKEN) is not None


def test_one_right_token_among_several_is_enough() -> None:
    metadata = [*auth("Bearer stale"), *auth(f"Bearer {TOKEN}")]
    assert refusal(HEARTBEAT, REMOTE, metadata, TOKEN) is None


def test_a_prefix_or_extension_of_the_token_is_wrong() -> None:
    for near in (TOKEN[:-1], TOKEN + "x", TOKEN.upper()):
        assert refusal(HEARTBEAT, REMOTE, auth(f"Bearer {near}"), TOKEN) == "wrong job token"


def test_non_ascii_presented_token_is_just_wrong() -> None:
    assert refusal(HEARTBEAT, REMOTE, auth("Bearer jéton"), TOKEN) == "wrong job token"


def test_decide_marks_only_tokenless_status_as_lifted_on_loopback() -> None:
    assert decide(STATUS, [], TOKEN) == Decision("no job token", loopback_ok=True)
    assert decide(HEARTBEAT, [], TOKEN) == Decision("no job token", loopback_ok=False)
    assert decide(HEARTBEAT, auth(f"Bearer {TOKEN}"), TOKEN).reason is None


# ----------------------------------------------------------- handler wrapping
class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self, peer: str) -> None:
        self._peer = peer
        self.aborted: Optional[tuple[grpc.StatusCode, str]] = None

    def peer(self) -> str:
        return self._peer

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted(details)


def checker(decision: Decision) -> Any:
    async def check(context: Any) -> None:
        reason = decision.refusal(context.peer())
        if reason is not None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    return check


async def unary(request: int, context: Any) -> int:
    return request + 1


async def async_stream(request: int, context: Any) -> AsyncIterator[int]:
    for i in range(request):
        yield i


def sync_stream(request: int, context: Any) -> Iterator[int]:
    yield from range(request)


async def writer_stream(request: int, context: Any) -> None:
    context.written = request


def serialize(value: int) -> bytes:
    return bytes([value])


def deserialize(data: bytes) -> int:
    return data[0]


async def collect(responses: AsyncIterator[int]) -> list[int]:
    return [r async for r in responses]


def test_wrapped_unary_handler_parses_after_the_check_and_runs_when_allowed() -> None:
    handler = grpc.unary_unary_rpc_method_handler(unary, deserialize, serialize)
    wrapped = guarded_handler(handler, checker(decide(STATUS, [], TOKEN)))
    assert wrapped.request_deserializer is None  # gRPC hands over the raw bytes
    assert wrapped.response_serializer is serialize
    assert not wrapped.request_streaming and not wrapped.response_streaming
    assert asyncio.run(wrapped.unary_unary(bytes([41]), FakeContext(LOCAL))) == 42


def test_a_refused_call_never_reaches_the_deserializer() -> None:
    parsed: list[bytes] = []

    def recording(data: bytes) -> int:
        parsed.append(data)
        return data[0]

    handler = grpc.unary_unary_rpc_method_handler(unary, recording, serialize)
    wrapped = guarded_handler(handler, checker(decide(HEARTBEAT, [], TOKEN)))
    context = FakeContext(LOCAL)
    with pytest.raises(Aborted):
        asyncio.run(wrapped.unary_unary(b"\xff\xff not protobuf", context))
    assert context.aborted == (grpc.StatusCode.UNAUTHENTICATED, "no job token")
    assert parsed == []


def test_bytes_that_do_not_parse_raise_malformed_request() -> None:
    handler = grpc.unary_unary_rpc_method_handler(unary, deserialize, serialize)
    wrapped = guarded_handler(handler, checker(decide(STATUS, [], TOKEN)))
    with pytest.raises(MalformedRequest):
        asyncio.run(wrapped.unary_unary(b"", FakeContext(LOCAL)))  # data[0]: IndexError


def test_wrapped_unary_handler_aborts_before_running() -> None:
    handler = grpc.unary_unary_rpc_method_handler(unary)
    wrapped = guarded_handler(handler, checker(decide(HEARTBEAT, [], TOKEN)))
    context = FakeContext(LOCAL)
    with pytest.raises(Aborted):
        asyncio.run(wrapped.unary_unary(1, context))
    assert context.aborted == (grpc.StatusCode.UNAUTHENTICATED, "no job token")


@pytest.mark.parametrize("behaviour", [async_stream, sync_stream])
def test_wrapped_streaming_handler(behaviour: Any) -> None:
    handler = grpc.unary_stream_rpc_method_handler(behaviour)
    allowed = guarded_handler(handler, checker(decide(STATUS, [], TOKEN)))
    assert allowed.response_streaming
    assert asyncio.run(collect(allowed.unary_stream(3, FakeContext(LOCAL)))) == [0, 1, 2]
    refused = guarded_handler(handler, checker(decide(STATUS, [], TOKEN)))
    context = FakeContext(REMOTE)
    with pytest.raises(Aborted):
        asyncio.run(collect(refused.unary_stream(3, context)))
    assert context.aborted == (grpc.StatusCode.UNAUTHENTICATED, "no job token")


def test_wrapped_writer_api_streaming_handler_stays_a_coroutine() -> None:
    handler = grpc.unary_stream_rpc_method_handler(writer_stream)
    wrapped = guarded_handler(handler, checker(decide(STATUS, [], TOKEN)))
    assert asyncio.iscoroutinefunction(wrapped.unary_stream)
    context = FakeContext(LOCAL)
    asyncio.run(wrapped.unary_stream(7, context))
    assert getattr(context, "written", None) == 7


def test_wrapped_client_streaming_handlers() -> None:
    async def total(requests: AsyncIterator[int], context: Any) -> int:
        return sum([r async for r in requests])

    async def requests() -> AsyncIterator[int]:
        for i in (1, 2, 3):
            yield i

    handler = grpc.stream_unary_rpc_method_handler(total)
    wrapped = guarded_handler(handler, checker(decide(STATUS, [], TOKEN)))
    assert wrapped.request_streaming
    assert asyncio.run(wrapped.stream_unary(requests(), FakeContext(LOCAL))) == 6


def test_closing_a_wrapped_stream_closes_the_inner_one_at_once() -> None:
    closed: list[bool] = []

    async def endless(request: int, context: Any) -> AsyncIterator[int]:
        try:
            while True:
                yield request
        finally:
            closed.append(True)  # the servicer's cleanup (e.g. dropping a worker's queue)

    async def take_one() -> None:
        handler = grpc.unary_stream_rpc_method_handler(endless)
        wrapped = guarded_handler(handler, checker(decide(STATUS, [], TOKEN)))
        responses = wrapped.unary_stream(5, FakeContext(LOCAL))
        assert await responses.__anext__() == 5
        await responses.aclose()
        assert closed == [True]  # now, not at the loop's shutdown

    asyncio.run(take_one())
