"""One line for a failed gRPC call: its status code and details, never the call object's repr."""

from __future__ import annotations

import grpc

#: A supervisor that is restarting (or not up yet) answers with these: try again.
TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.FAILED_PRECONDITION,  # "no launcher attached yet": a new supervisor
    }
)


def describe_rpc_error(err: BaseException) -> str:
    """`UNAVAILABLE: failed to connect to all addresses` rather than `<_MultiThreadedRendezvous
    of RPC that terminated with: ...>`."""
    if isinstance(err, grpc.Call):
        code = err.code()
        name = code.name if code is not None else "UNKNOWN"
        details = err.details() or ""
        return f"{name}: {details}" if details else name
    return f"{type(err).__name__}: {err}"


def is_transient(err: grpc.RpcError) -> bool:
    code = err.code() if isinstance(err, grpc.Call) else None
    return code in TRANSIENT
