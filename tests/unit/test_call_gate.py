"""A real server: the token is checked before the body is parsed, and bad bodies change nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import pytest
from effects import wire_spec

from supervisor.rpc.call_gate import CallGate
from supervisor.rpc.peers import LeaderHub, PeerServicer
from supervisor.rpc.refusals import RefusalLog, TokenBucket
from supervisor.rpc.server import start_server
from supervisor.rpc.service import Supervisor, SupervisorSettings
from supervisor.rules.leader import LeaderTimings
from supervisor.snapshots.replica import ReplicaServicer
from train_supervisor.credentials import bearer
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

TOKEN = "call-gate-test-token"
GOOD = (("authorization", bearer(TOKEN)),)
WRONG = (("authorization", bearer("not-the-token")),)
GARBAGE = b"\xff\xff\xff\xff\x0f not a protobuf message"
METHODS = [
    (f"/{service.full_name}/{method.name}", method.client_streaming, method.server_streaming)
    for service in pb.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]
T = TypeVar("T")


async def raw_call(
    channel: grpc.aio.Channel, method: str, streams: tuple[bool, bool], body: bytes, metadata: Any
) -> grpc.StatusCode:
    """Send `body` as the request bytes, whatever the method takes; the status code."""
    client_streaming, server_streaming = streams
    maker: Any
    try:
        if client_streaming:
            maker = channel.stream_stream if server_streaming else channel.stream_unary
            requests: Any = iter([body])
            call: Any = maker(method)(requests, metadata=metadata, timeout=10)
        else:
            maker = channel.unary_stream if server_streaming else channel.unary_unary
            call = maker(method)(body, metadata=metadata, timeout=10)
        if server_streaming:
            async for _ in call:
                pass
        else:
            await call
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as err:
        return err.code()


def tracebacks_of_calls(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """Tracebacks logged by the supervisor or by gRPC's server for a call (asyncio's own
    notes on tasks cancelled at the server's stop are not about the calls)."""
    loggers = ("train_supervisor", "grpc")
    return [
        (r.name, r.getMessage())
        for r in caplog.records
        if r.exc_info and r.name.startswith(loggers)
    ]


async def with_server(test: Callable[[Supervisor, grpc.aio.Channel], Awaitable[T]]) -> T:
    sup = Supervisor(SupervisorSettings())
    hub = LeaderHub(sup, 2, "127.0.0.1", LeaderTimings())
    server, port = await start_server(
        sup,
        "127.0.0.1:0",
        token=TOKEN,
        peers=PeerServicer(hub),
        replicas=ReplicaServicer(sup.replica_job, refusals=sup.refusals),
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await test(sup, channel)
    finally:
        sup.stop("test over")
        await server.stop(grace=None)


@pytest.mark.parametrize(("method", "client_streaming", "server_streaming"), METHODS)
def test_garbage_without_the_token_is_unauthenticated_and_never_parsed(
    method: str, client_streaming: bool, server_streaming: bool, caplog: pytest.LogCaptureFixture
) -> None:
    streams = (client_streaming, server_streaming)

    async def calls(sup: Supervisor, channel: grpc.aio.Channel) -> list[grpc.StatusCode]:
        codes = [await raw_call(channel, method, streams, GARBAGE, WRONG)]
        if "StatusService" not in method:  # loopback status needs no token
            codes.append(await raw_call(channel, method, streams, GARBAGE, ()))
        return codes

    with caplog.at_level(logging.WARNING):
        codes = asyncio.run(with_server(calls))
    assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}
    assert tracebacks_of_calls(caplog) == []


def test_garbage_with_the_token_is_invalid_argument_with_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def calls(sup: Supervisor, channel: grpc.aio.Channel) -> list[grpc.StatusCode]:
        return [
            await raw_call(channel, method, (cs, ss), GARBAGE, GOOD) for method, cs, ss in METHODS
        ]

    with caplog.at_level(logging.WARNING):
        codes = asyncio.run(with_server(calls))
    assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}
    assert tracebacks_of_calls(caplog) == []


def test_an_empty_attach_with_the_token_does_not_take_rank_0() -> None:
    """The issue's finding: AttachWorker with the token and an empty body took over rank 0."""

    async def attack(sup: Supervisor, channel: grpc.aio.Channel) -> tuple[Any, Any]:
        launcher = pb_grpc.LauncherServiceStub(channel)
        spec = wire_spec(nproc=2, spares=0)
        commands: AsyncIterator[pb.LauncherCommand] = launcher.AttachLauncher(
            pb.AttachLauncherRequest(spec=spec, launcher_pid=1), metadata=GOOD
        ).__aiter__()
        await commands.__anext__()  # attached: the first spawn came
        assert sup.job is not None
        before = [(s.pid, s.state, s.spawning) for s in sup.job.ranks.values()]
        worker = pb_grpc.WorkerServiceStub(channel)
        try:
            async for _ in worker.AttachWorker(pb.AttachWorkerRequest(), metadata=GOOD):
                pass
        except grpc.aio.AioRpcError as err:
            code = err.code()
        after = [(s.pid, s.state, s.spawning) for s in sup.job.ranks.values()]
        return code, before == after

    assert asyncio.run(with_server(attack)) == (grpc.StatusCode.INVALID_ARGUMENT, True)


def test_a_servicer_bug_is_internal_with_a_bounded_number_of_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """50 calls into a servicer that raises: INTERNAL each, and a few logged lines, not 50."""

    async def boom(request: bytes, context: Any) -> bytes:
        raise KeyError(7)

    async def calls() -> list[grpc.StatusCode]:
        refusals = RefusalLog(TokenBucket(rate=0.1, burst=3))
        server = grpc.aio.server(interceptors=[CallGate(None, refusals)])
        handler = grpc.unary_unary_rpc_method_handler(boom)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("t.T", {"B": handler})]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return [
                    await raw_call(channel, "/t.T/B", (False, False), b"x", ()) for _ in range(50)
                ]
        finally:
            await server.stop(grace=None)

    with caplog.at_level(logging.WARNING):
        codes = asyncio.run(calls())
    assert set(codes) == {grpc.StatusCode.INTERNAL}
    ours = [r for r in caplog.records if "/t.T/B" in r.getMessage()]
    assert 1 <= len(ours) <= 4 and ours[0].exc_info is not None
