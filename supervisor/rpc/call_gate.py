"""The server's gate for every call of our services: the token first, then the body.

`CallGate` checks the job token (supervisor/rpc/auth.py's pure `decide`) before the
request's bytes are parsed, answers bytes that are not the method's message with
INVALID_ARGUMENT, and contains a servicer's unexpected exception (INTERNAL), so a
hostile caller sees a clear code and the log gets at most a bounded trickle of
lines (supervisor/rpc/refusals.py), never a traceback per call.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Optional

import grpc

from supervisor.rpc.auth import (
    ALLOW,
    OPEN_PREFIXES,
    Behaviour,
    Decision,
    MalformedRequest,
    decide,
    guarded_handler,
)
from supervisor.rpc.refusals import RefusalLog

Context = grpc.aio.ServicerContext[Any, Any]
OnError = Callable[[Context, BaseException], Awaitable[None]]


def _contained(inner: Behaviour, on_error: OnError, streams_responses: bool) -> Behaviour:
    """`inner` with any exception but an abort (or a cancel) handed to `on_error`."""
    if not streams_responses or inspect.iscoroutinefunction(inner):

        async def call(request: Any, context: Context) -> Any:
            try:
                result = inner(request, context)
                return await result if inspect.isawaitable(result) else result
            except grpc.aio.AbortError:
                raise
            except Exception as err:  # any: a bug must not cost more than one bounded line
                await on_error(context, err)

        return call

    async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
        responses = inner(request, context)
        try:
            async for response in responses:
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as err:  # any, as above
            await on_error(context, err)
        finally:
            await responses.aclose()

    return stream


_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
)


def contained_handler(handler: grpc.RpcMethodHandler[Any, Any], on_error: OnError) -> Any:
    for kind, factory, streams_responses in _KINDS:
        inner = getattr(handler, kind)
        if inner is not None:
            return factory(
                _contained(inner, on_error, streams_responses),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    raise ValueError("RPC method handler without a behaviour")


class CallGate(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Token (when the server has one) before body; malformed bodies and bugs contained."""

    def __init__(self, token: Optional[str], refusals: RefusalLog) -> None:
        if token is not None and not token:
            raise ValueError("empty token")
        self._token = token
        self.refusals = refusals

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler  # unknown methods get UNIMPLEMENTED from gRPC; health is gRPC's
        decision: Decision = ALLOW
        if self._token is not None:
            decision = decide(method, handler_call_details.invocation_metadata or (), self._token)
        refusals = self.refusals

        async def check(context: Context) -> None:
            reason = decision.refusal(context.peer())
            if reason is not None:
                # Never log what the caller presented: a near-miss token is still a secret.
                refusals.refusal(method, context.peer(), "UNAUTHENTICATED", reason)
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

        async def on_error(context: Context, err: BaseException) -> None:
            if isinstance(err, MalformedRequest):
                reason = f"the request is not a valid message for this method ({err})"
                refusals.refusal(method, context.peer(), "INVALID_ARGUMENT", reason)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)
            refusals.error(method, context.peer(), err)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"the supervisor failed: {type(err).__name__}"
            )

        return contained_handler(guarded_handler(handler, check), on_error)
