"""Finding the pod's supervisor sidecar: wait for it with backoff, or say it is not there."""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

log = logging.getLogger("train_launch")


class SupervisorUnreachable(Exception):
    """No supervisor answered at the configured address in time."""


def wait_for_supervisor(
    channel: grpc.Channel, address: str, timeout_s: float, quiet: bool = False
) -> None:
    """Poll grpc.health.v1 with exponential backoff until the supervisor is SERVING.

    The sidecar starts first (a native sidecar), but it may still be binding
    its port when the trainer container starts; backing off keeps a slow
    start from being mistaken for a missing one.
    """

    def say_waiting(state: RetryCallState) -> None:
        if state.attempt_number == 1 and not quiet:
            log.info("waiting up to %gs for the supervisor at %s", timeout_s, address)

    health = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="")
    retrying = Retrying(
        retry=retry_if_exception_type((grpc.RpcError, SupervisorUnreachable)),
        # Capped at 1 s: a restarted sidecar is found within a second of serving.
        wait=wait_exponential(multiplier=0.05, max=1.0),
        stop=stop_after_delay(timeout_s),
        before_sleep=say_waiting,
        reraise=False,
    )
    try:
        for attempt in retrying:
            with attempt:
                reply = health.Check(request, timeout=2.0)
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    raise SupervisorUnreachable("not serving yet")
    except RetryError as err:
        last = err.last_attempt.exception()
        why = last.code().name if isinstance(last, grpc.RpcError) else str(last)
        raise SupervisorUnreachable(
            f"no supervisor answered at {address} within {timeout_s:g}s ({why}); start "
            "`train-supervisor serve` in the pod (or pass --supervisor-address), "
            "or run with --standalone"
        ) from None
